#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Speed of the TPM core: prints figures, asserts nothing (benchmarks are not tests).

  seal/s on the server (no TPM), with and without the scrypt fingerprint, against the floor
    of the bare primitives (MakeCredential + AES-GCM);
  unseal latency on a real swtpm;
  quote latency on swtpm, and pure-Python verification against the floor (one ECDSA verify).

Run: make bench   (or .venv/bin/python benchmarks/tpm_core.py with hcp.core on the path)
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.envelope import well_known_name  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from tpm2_pytss.types import TPM2B_NAME  # noqa: E402
from tpm2_pytss.utils import make_credential  # noqa: E402


def _harness():
    """The Swtpm process harness of the unit tests (real swtpm, private vendor CA)."""
    spec = importlib.util.spec_from_file_location("hcp_swtpm_harness", os.path.join(REPO, "tests", "unit", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Swtpm


def rate(fn, seconds=2.0, min_runs=20):
    """Calls per second of fn over about ``seconds`` (bounded)."""
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        fn()
        runs += 1
        if runs >= 200000:
            break
    return runs / (time.perf_counter() - start)


def latencies(fn, runs):
    out = []
    for _run in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return statistics.median(out), sorted(out)[int(len(out) * 0.95) - 1]


def main():
    warnings.simplefilter("ignore")
    payload = os.urandom(1024)
    with tempfile.TemporaryDirectory() as workdir:
        tpm_proc = _harness()(workdir).start()
        try:
            with tpm_proc.open() as tpm:
                ek = tpm.ek_public()
                name = TPM2B_NAME(well_known_name(envelope.tpm_policy.policy_digest(None)))

                def floor():
                    key = os.urandom(32)
                    make_credential(ek, key, name)
                    AESGCM(key).encrypt(os.urandom(12), payload, b"")

                seal_floor = rate(floor)
                seal_plain = rate(lambda: envelope.seal(ek, payload, fingerprint=False))
                seal_fp = rate(lambda: envelope.seal(ek, payload), seconds=1.0, min_runs=5)
                print("server seal, 1 KiB payload, no TPM (one core):")
                print("  seals/s without fingerprint : %8.0f  (floor MakeCredential+AES-GCM %.0f/s, ratio %.2fx)"
                      % (seal_plain, seal_floor, seal_floor / seal_plain))
                print("  seals/s with scrypt fingerprint: %5.0f" % seal_fp)

                env_none = envelope.seal(ek, payload, fingerprint=False)
                pcrs = tpm.read_pcrs("sha256", [0, 7])
                env_pcr = envelope.seal(
                    ek, payload, {"type": "pcr", "pcrs": {str(k): v.hex() for k, v in pcrs.items()}}, fingerprint=False
                )
                med, p95 = latencies(lambda: envelope.unseal(tpm, env_none), 50)
                print("unseal on swtpm (ActivateCredential + AES-GCM):")
                print("  policy none: median %.2f ms, p95 %.2f ms" % (med, p95))
                med, p95 = latencies(lambda: envelope.unseal(tpm, env_pcr), 50)
                print("  policy pcr : median %.2f ms, p95 %.2f ms" % (med, p95))

                nonce = os.urandom(16)
                med, p95 = latencies(lambda: quote.quote(tpm, nonce, [0, 1, 2, 3, 4, 5, 6, 7]), 30)
                print("quote on swtpm (AK create+load under EK, quote, PCR read):")
                print("  median %.2f ms, p95 %.2f ms" % (med, p95))
                bundle = quote.quote(tpm, nonce, list(range(24)))
                verify_rate = rate(lambda: quote.verify_quote(bundle, nonce))
                key = ec.generate_private_key(ec.SECP256R1())
                sig = key.sign(b"x" * 100, ec.ECDSA(hashes.SHA256()))
                pub = key.public_key()
                ecdsa_rate = rate(lambda: pub.verify(sig, b"x" * 100, ec.ECDSA(hashes.SHA256())))
                print("quote verification, 24 PCRs, pure Python (one core):")
                print("  verifications/s %.0f = %.3f ms each (floor one ECDSA P-256 verify %.0f/s, ratio %.2fx)"
                      % (verify_rate, 1000 / verify_rate, ecdsa_rate, ecdsa_rate / verify_rate))
        finally:
            tpm_proc.stop()


if __name__ == "__main__":
    main()
