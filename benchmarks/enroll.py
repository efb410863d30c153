#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enrollments per second (simulated EKs; real asset generation, sealing, signing and git
commits) at DB sizes 0, 1k and 10k, and hostname lookup latency at 10k. Prints figures;
asserts nothing; then where the time of one enrollment goes (cProfile over the service's add
with the example policy in process: git processes, sealing, certificate signing, key
generation, the policy call). Run from the repo root after `make install`:
    .venv/bin/python benchmarks/enroll.py
The DB is grown between measurements with bulk commits of realistic synthetic entries
(not timed). Simulated EKs are P-256 keys in the TCG default EK template (no TPM needed on
an enrollment server)."""

from __future__ import annotations

import cProfile
import hashlib
import json
import os
import pstats
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collections"))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_from_key, ek_public_pem  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# (label, file name suffix, function name): cumulative time of each, as a share of the add
PHASES = (
    ("git processes (fork+exec+wait)", "subprocess.py", "run"),
    ("git fast-import commit", "enrollment/db.py", "_commit"),
    ("sealing to the EK (envelope.seal)", "tpm/envelope.py", "seal"),
    ("certificate signing (pki.Issuer.issue)", "module_utils/pki.py", "issue"),
    ("key generation (pki.new_private_key)", "module_utils/pki.py", "new_private_key"),
    ("policy call (LocalPolicy load + evaluate)", "enrollment/service.py", "check"),
    ("EK checks (check_ek)", "enrollment/pipeline.py", "check_ek"),
    ("manifest signing (manifest.stamp)", "enrollment/manifest.py", "stamp"),
)

PROFILE = {"assets": ["hostname", "rootfs-key", "https-server", "https-client", "issuer-ca", "ssh-host-keys", "reenroll-hint"],
           "seal_policy": {"type": "none"}}
COUNT = 40


def simulated_ek():
    return ek_public_pem(ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key()))


def grow(db, template, start, stop):
    files, shards = {}, {}
    for n in range(start, stop):
        h = hashlib.sha256(b"bulk-%d" % n).hexdigest()
        host = "bulk%06d.example.test" % n
        base = enroll_db.entry_dir(h)
        for name, data in template.items():
            files["%s/%s" % (base, name)] = data
        files[base + "/ekpubhash"] = h.encode() + b"\n"
        files[base + "/hostname"] = host.encode() + b"\n"
        shards.setdefault(enroll_db.hostname_shard(host), []).append({"hostname": host, "ekpubhash": h})
    for path, rows in shards.items():
        old = db.read_file(path)
        rows = sorted((json.loads(old) if old else []) + rows, key=lambda r: r["hostname"])
        files[path] = json.dumps(rows).encode()
    db._commit("bulk %d..%d" % (start, stop), files, ())


def main():
    ca_key, ca_cert = pki.create_ca("bench CA")
    # simulated EKs have no certificate: trust on first use, asked for by name
    config = enroll.EnrollmentConfig(pki.Issuer(ca_key, [ca_cert]), pki.Signer(pki.new_private_key("ec-p256")), ek_trust="tofu")
    eks = [simulated_ek() for _i in range(3 * COUNT + 1)]
    _h, _n, template, _s = enroll.build_entry(config, eks[-1], "template.example.test", PROFILE)
    with tempfile.TemporaryDirectory() as tmp:
        db = enroll_db.EnrollmentDb(os.path.join(tmp, "db"))
        db.init()
        size, serial = 0, 0
        for target in (0, 1000, 10000):
            if target > size:
                grow(db, template, size, target)
                size = target
            t_build = t_store = 0.0
            for _i in range(COUNT):
                t0 = time.perf_counter()
                h, host, files, _s = enroll.build_entry(config, eks[serial], "host%06d.example.test" % serial, PROFILE)
                t1 = time.perf_counter()
                enroll.store_entry(db, config, h, host, files)
                t_store += time.perf_counter() - t1
                t_build += t1 - t0
                serial += 1
            total = t_build + t_store
            print("%6d entries: %5.1f enrollments/s  (generate+seal+sign %5.1f ms, git commit %5.1f ms per enrollment; %d assets, %d files)"
                  % (size, COUNT / total, 1e3 * t_build / COUNT, 1e3 * t_store / COUNT, len(PROFILE["assets"]), len(files)))
            size += COUNT
        t0 = time.perf_counter()
        for i in range(100):
            db.by_hostname("bulk%06d.example.test" % (i * 97))
        print("hostname lookup at %d entries: %.2f ms" % (size, (time.perf_counter() - t0) * 10))
        t0 = time.perf_counter()
        for _i in range(10):
            db.find(r"^bulk0012")
        print("hostname regex find at %d entries: %.1f ms" % (size, (time.perf_counter() - t0) * 100))
    breakdown()


def breakdown(count=20):
    """cProfile over ``count`` service adds (as the writer runs them, example policy in process)."""
    root = tempfile.mkdtemp(prefix="hcp-bench-enroll-")
    try:
        cred = os.path.join(root, "cred")
        paths = pki.bootstrap_site_credentials(cred, "bench", ["localhost"], ["orchestrator"])["paths"]
        db = enroll_db.EnrollmentDb(os.path.join(root, "db"))
        db.init()
        service = enroll_service.EnrollmentService({
            "db": db.path, "credentials_dir": cred, "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}},
            "service_client_ca": paths["svc_ca_cert"],
            "policy": {"file": os.path.join(ROOT, "examples", "policy", "enrollment-policy.json")}})
        service.enrollment_config()
        eks = [simulated_ek() for _i in range(count)]
        assets = list(PROFILE["assets"])
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for i, ek in enumerate(eks):
            service.perform({"op": "add", "ekpub": ek, "hostname": "prof%04d.example.test" % i, "profile": {"assets": assets}})
        profiler.disable()
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stats = pstats.Stats(profiler).stats  # pylint: disable=no-member
    print("where the time of one add goes (%d adds under cProfile, %.1f ms each, %d assets, example policy):"
          % (count, 1e3 * total / count, len(PROFILE["assets"])))
    for label, suffix, func in PHASES:
        cumulative = sum(row[3] for (path, _line, name), row in stats.items() if name == func and path.endswith(suffix))
        calls = sum(row[1] for (path, _line, name), row in stats.items() if name == func and path.endswith(suffix))
        print("  %-44s %6.1f ms/add  %4.0f%%  (%d calls)" % (label, 1e3 * cumulative / count, 100 * cumulative / total, calls))


if __name__ == "__main__":
    main()
