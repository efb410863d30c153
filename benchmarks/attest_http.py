#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attestations per second through the production HTTP stack (protocol v1): prints figures,
asserts nothing (not a test).

nginx (TLS, the webapi role's site settings) -> uwsgi (2 worker processes, 1 thread, the repo
.venv) -> services/attest_app.py, all in a temp dir on loopback, started and stopped here.
C concurrent client threads (C = 1, 4, 16; one requests.Session each, keep-alive) run
initiate + complete pairs; the complete bodies carry evidence recorded in advance from one
real swtpm (fresh ticket and quote each, recorded just before each C level so tickets stay
within the default max_ticket_age). Printed per C: pairs/s and p50/p95 pair latency; next
to them the same run's crypto floor (verify_quote + MakeCredential + AES-GCM, one core) and
the ratio floor / stack; then end-to-end client latency with the swtpm through the stack.
The clients run on the same machine as nginx and uwsgi and compete with them for the cores.

Needs nginx-light, uwsgi-core and uwsgi-plugin-python3 (Debian), swtpm and swtpm-tools;
without them it prints a skip line and exits 0.
Run from the repo root after `make install`: .venv/bin/python benchmarks/attest_http.py [PAIRS]
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))
sys.path.insert(0, HERE)

import _stack  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

CLIENTS = (1, 4, 16)
WORKERS = 2


def _bench_attest():
    """benchmarks/attest.py as a module: its swtpm harness, vendor CA loader and profile."""
    spec = importlib.util.spec_from_file_location("hcp_bench_attest", os.path.join(HERE, "attest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, text):
    return _stack.write(path, text)


def Stack(workdir, config_path, cred_paths):  # pylint: disable=invalid-name  # the class it was
    """uwsgi + nginx serving the attestation app from ``workdir`` (benchmarks/_stack.py)."""
    return _stack.Stack(workdir, _stack.ATTEST_APP, {"HCP_ATTEST_CONFIG": config_path}, cred_paths, workers=WORKERS,
                        name="attest")


def record(server, tpm, h, ekpub, cert_der, count):
    """``count`` complete bodies, each with a fresh ticket and a swtpm quote over its nonce."""
    bodies = []
    with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
        for _i in range(count):
            started = server.initiate(h)
            bundle = quote_mod.quote_with_ak(tpm, ak, ak_public, base64.b64decode(started["nonce"]),
                                             started["pcrs"]["sha256"])
            bodies.append(json.dumps({"ticket": started["ticket"], "ekpub": ekpub,
                                      "ek_cert": base64.b64encode(cert_der).decode(), "quote": bundle}).encode())
    return bodies


def run_clients(url, ca_file, h, bodies, clients):
    """initiate + complete pairs from ``clients`` threads; (successful pairs/s, pair latencies, failures)."""
    chunks = [bodies[i::clients] for i in range(clients)]
    latencies = []
    failures = []
    succeeded = []
    lock = threading.Lock()
    initiate_body = json.dumps({"ekpubhash": h}).encode()
    headers = {"Content-Type": "application/json"}
    barrier = threading.Barrier(clients + 1)

    def worker(chunk):
        session = requests.Session()
        mine = []
        try:
            # verify per request: a session's verify loses to $REQUESTS_CA_BUNDLE
            session.get(url + "/healthcheck", verify=ca_file, timeout=60)  # TLS handshake outside the measurement
        finally:
            barrier.wait(timeout=120)
        try:
            for body in chunk:
                t0 = time.perf_counter()
                first = session.post(url + "/v1/initiate", data=initiate_body, headers=headers, verify=ca_file,
                                     timeout=60)
                second = session.post(url + "/v1/complete", data=body, headers=headers, verify=ca_file, timeout=60)
                mine.append(time.perf_counter() - t0)
                if first.status_code == 200 and second.status_code == 200:
                    succeeded.append(1)
                else:
                    with lock:
                        failures.append((first.status_code, second.status_code))
        except requests.RequestException as exc:
            with lock:
                failures.append(type(exc).__name__)
        finally:
            session.close()
            with lock:
                latencies.extend(mine)
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return len(succeeded) / elapsed, latencies, failures


def crypto_floor(server, db, h, tpm, body, rounds=200):
    """Median seconds of verify_quote + MakeCredential + AES-GCM of the entry's payload."""
    request = json.loads(body)
    entry = db.get(h)
    payload = json.dumps({"files": dict((n, base64.b64encode(d).decode()) for n, d in entry.items())}).encode()
    public = tpm.ek_public()
    nonce = base64.b64decode(server.open_ticket(request["ticket"])["nonce"])
    timings = []
    for _i in range(rounds):
        t0 = time.perf_counter()
        proven = quote_mod.verify_quote(request["quote"], nonce)
        key = os.urandom(32)
        envelope.make_credential_to_ek(public, key, bytes.fromhex(proven["ak_name"]))
        AESGCM(key).encrypt(os.urandom(12), payload, b"")
        timings.append(time.perf_counter() - t0)
    return statistics.median(timings)


def _percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(len(ordered) * fraction)) - 1))]


def run(bench, swtpm, workdir, pairs):
    cas = bench._vendor_cas(swtpm)
    vendor_dir = os.path.join(workdir, "vendor-ca")
    os.makedirs(vendor_dir, mode=0o700)
    for path in swtpm.vendor_ca_files:
        shutil.copy(path, vendor_dir)
    cred = pki.bootstrap_site_credentials(os.path.join(workdir, "cred"), "bench", ["localhost"], [])["paths"]
    ca_key, ca_cert = pki.create_ca("bench enrollment CA")
    signer = pki.Signer(pki.new_private_key())
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=signer,
                                     postclient={"seal_policy": {"type": "none"}}, vendor_cas=cas)
    db = EnrollmentDb(os.path.join(workdir, "db"))
    db.init()
    signer_pub = _write(os.path.join(workdir, "signer.pub.pem"), signer.public_key_pem().decode("ascii"))
    ticket_key_file = os.path.join(workdir, "ticket.key")
    attest.write_ticket_key_file(ticket_key_file)
    config_path = _write(os.path.join(workdir, "attest.json"), json.dumps({
        "db": db.path, "ticket_key_file": ticket_key_file, "asset_signer_pub": signer_pub,
        "vendor_ca_dir": vendor_dir, "ek_trust": "vendor_ca"}))
    results = []
    with swtpm.open() as tpm:
        cert_der = tpm.ek_certificate_der()
        pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
        h, host, files, _s = enroll.build_entry(config, pem, "bench.example.test", bench.PROFILE)
        enroll.store_entry(db, config, h, host, files)
        ekpub = base64.b64encode(tpm.ek_public().marshal()).decode()
        # the recording side: same ticket key and DB as the served app
        server = attest.Attestor(lambda: db, attest.load_ticket_keys(ticket_key_file), vendor_cas=cas)
        stack = Stack(workdir, config_path, cred)
        try:
            health = stack.start()
            t0 = time.perf_counter()
            warm = record(server, tpm, h, ekpub, cert_der, 8 * WORKERS)
            quote_ms = (time.perf_counter() - t0) * 1000 / len(warm)
            run_clients(stack.url, cred["ca_cert"], h, warm, 2 * WORKERS)  # app load + EK cache in each worker
            for clients in CLIENTS:
                bodies = record(server, tpm, h, ekpub, cert_der, pairs)
                rate, latencies, failures = run_clients(stack.url, cred["ca_cert"], h, bodies, clients)
                results.append((clients, rate, _percentile(latencies, 0.5), _percentile(latencies, 0.95), failures))
            floor = crypto_floor(server, db, h, tpm, record(server, tpm, h, ekpub, cert_der, 1)[0])
            e2e = []
            for _i in range(10):
                t0 = time.perf_counter()
                attest_client.attest(tpm, stack.url, signer.public_key_pem(), ca_file=cred["ca_cert"])
                e2e.append((time.perf_counter() - t0) * 1000)
        finally:
            stack.stop()

    print("attestation (protocol v1) through nginx (TLS, keep-alive) -> uwsgi (%d workers x 1 thread) -> "
          "attest_app, loopback, %d cores" % (WORKERS, os.cpu_count() or 0))
    print("  %d initiate+complete pairs per level, evidence recorded from one swtpm (%.1f ms per quote); "
          "snapshot %s" % (pairs, quote_ms, (health.get("head") or "?")[:12]))
    print("  crypto floor (verify_quote + MakeCredential + AES-GCM, one core, same run): %.0f /s (%.0f us)" % (
        1 / floor, floor * 1e6))
    print("  %8s %14s %10s %10s %14s %s" % ("clients", "attest/s", "p50 ms", "p95 ms", "floor/stack", "failures"))
    for clients, rate, p50, p95, failures in results:
        print("  %8d %14.0f %10.1f %10.1f %13.1fx %s" % (clients, rate, p50 * 1000, p95 * 1000, (1 / floor) / rate,
                                                         len(failures) if failures else "-"))
    print("  client end to end with swtpm through the stack: %.1f ms median (max %.1f ms)" % (
        statistics.median(e2e), max(e2e)))


def main():
    warnings.simplefilter("ignore")
    missing = _stack.missing_tools(extra=("swtpm", "swtpm_setup"))
    if missing:
        print("SKIP attest_http: missing %s (Debian: apt-get install nginx-light uwsgi-core uwsgi-plugin-python3 "
              "swtpm swtpm-tools)" % ", ".join(missing))
        return 0
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 192
    bench = _bench_attest()
    with tempfile.TemporaryDirectory() as workdir:
        swtpm = bench._harness()(os.path.join(workdir, "tpm")).start()
        try:
            run(bench, swtpm, workdir, pairs)
        finally:
            swtpm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
