#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Speed of attestation (protocol v1): prints figures, asserts nothing (not a test).

  server ``complete`` per second (one core, in process: ticket, replay set, EK + cached EK
    certificate check, quote verification, git snapshot read, manifest check, MakeCredential,
    AES-GCM), on evidence recorded in advance from a real swtpm with fresh tickets;
  the same run's crypto floor: verify_quote + MakeCredential + AES-GCM of the same payload;
  end-to-end client latency with swtpm (both round trips in process, ActivateCredential,
    manifest check, unseal of the sensitive assets);
  ``complete`` per second through HTTP on loopback (Flask app under werkzeug's threaded
    server, no TLS; concurrent clients posting recorded evidence): the Python web stack's
    share; the production stack (nginx TLS -> uwsgi workers) is measured by benchmarks/attest_http.py.

Also printed (issue 20): ``initiate`` + ``complete`` against the same run's crypto floor (a bare
ECDSA P-256 verify with the key object ready, MakeCredential over cryptography, AES-GCM of the
payload); the quote check against a bare ECDSA verify of the same TPMS_ATTEST; MakeCredential over
cryptography against tpm2-pytss' type layer; and where the client's time goes (every ESAPI call
timed: TPM round trips, and the rest).

Run: make bench   (or .venv/bin/python benchmarks/attest.py [N] with hcp.core on the path)
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings

import requests  # noqa: E402
from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.web.attest_app import Metrics, create_app  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

PROFILE = {"assets": ["hostname", "rootfs-key", "https-server", "issuer-ca"]}


def _harness():
    """The Swtpm process harness of the unit tests (real swtpm, private vendor CA)."""
    spec = importlib.util.spec_from_file_location("hcp_swtpm_harness", os.path.join(REPO, "tests", "unit", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Swtpm


def _vendor_cas(swtpm):
    cas = []
    for path in swtpm.vendor_ca_files:
        with open(path, "rb") as handle:
            cas.extend(pki.load_certificates(handle.read()))
    return cas


def state_writes(workdir, rounds=3000, prefill=0):
    """CPU per attestation of the server's shared state as production configures it (a
    used_ticket_dir and a metrics_dir): the used-ticket create, the metrics counters (initiate +
    complete) and the freshness success, 16 hosts in turn; ``prefill`` used-ticket files of the
    window already there (a busy server's directory: its purge scans them)."""
    used_dir, metrics_dir = os.path.join(workdir, "used-%d" % prefill), os.path.join(workdir, "metrics-%d" % prefill)
    os.makedirs(metrics_dir)
    used = attest.UsedTickets(attest.DEFAULT_MAX_TICKET_AGE, used_dir, max_entries=10 ** 7)
    for _i in range(prefill):
        os.close(os.open(os.path.join(used_dir, os.urandom(16).hex()), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    metrics = Metrics(metrics_dir)
    store = freshness.FreshnessStore(metrics_dir)
    hosts = ["%064x" % i for i in range(16)]
    ids = [os.urandom(16).hex() for _i in range(rounds)]
    now = time.time()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, ticket_id in enumerate(ids):
        used.consume(ticket_id, now)
        metrics.initiate()
        metrics.observe("ok", 0.001)
        store.success(hosts[i % 16], "host%d" % (i % 16))
    cpu, wall = (time.process_time() - cpu0) / rounds, (time.perf_counter() - wall0) / rounds
    if hasattr(metrics, "flush"):
        metrics.flush()
        store.flush()
    return cpu, wall


def main():
    warnings.simplefilter("ignore")
    count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200
    with tempfile.TemporaryDirectory() as workdir:
        figures = [state_writes(workdir), state_writes(workdir, prefill=50000)]
        print("server state writes per attestation (used ticket + metrics + freshness, files as in production):")
        print("  empty used-ticket store: %.0f us CPU (%.0f us wall); 50,000 used tickets in the window: %.0f us CPU (%.0f us wall)"
              % (figures[0][0] * 1e6, figures[0][1] * 1e6, figures[1][0] * 1e6, figures[1][1] * 1e6))
        if "--state-only" in sys.argv:
            return
        swtpm = _harness()(os.path.join(workdir, "tpm")).start()
        try:
            run(swtpm, workdir, count)
        finally:
            swtpm.stop()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


def http_rate(server, requests_, clients=4):
    """complete/s through HTTP on loopback with ``clients`` concurrent client threads."""
    app = create_app({"db": "/nonexistent/current", "ticket_key_file": "/nonexistent"}, attestor=server)
    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d/v1/complete" % httpd.server_port
    bodies = [json.dumps(r).encode() for r in requests_]
    chunks = [bodies[i::clients] for i in range(clients)]
    failures = []

    def worker(chunk):
        session = requests.Session()
        for body in chunk:
            resp = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            if resp.status_code != 200:
                failures.append(resp.status_code)
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    httpd.shutdown()
    return len(bodies) / elapsed, failures


def run(swtpm, workdir, count):
    cas = _vendor_cas(swtpm)
    ca_key, ca_cert = pki.create_ca("bench CA")
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=pki.Signer(pki.new_private_key()),
                                     postclient={"seal_policy": {"type": "none"}}, vendor_cas=cas)
    db = EnrollmentDb(os.path.join(workdir, "db"))
    db.init()
    with swtpm.open() as tpm:
        cert_der = tpm.ek_certificate_der()
        pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
        h, host, files, _s = enroll.build_entry(config, pem, "bench.example.test", PROFILE)
        enroll.store_entry(db, config, h, host, files)
        signer = config.signer.public_key_pem()
        server = attest.Attestor(lambda: db, os.urandom(32), signer_pub=signer, vendor_cas=cas)

        # evidence recorded in advance: one fresh ticket and quote per request
        start = time.perf_counter()
        requests = []
        ekpub = base64.b64encode(tpm.ek_public().marshal()).decode()
        with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
            for _i in range(2 * count):
                started = server.initiate(h)
                bundle = quote_mod.quote_with_ak(tpm, ak, ak_public, base64.b64decode(started["nonce"]),
                                                 started["pcrs"]["sha256"])
                requests.append({"ticket": started["ticket"], "ekpub": ekpub,
                                 "ek_cert": base64.b64encode(cert_der).decode(), "quote": bundle})
        quote_ms = (time.perf_counter() - start) * 1000 / (2 * count)

        http_requests = requests[count:]
        requests = requests[:count]
        # server complete
        server.complete(json.loads(json.dumps(requests[0])))  # warm the EK-certificate cache
        timings = []
        cpu0 = time.process_time()
        for request in requests[1:]:
            t0 = time.perf_counter()
            server.complete(request)
            timings.append(time.perf_counter() - t0)
        cpu_complete = (time.process_time() - cpu0) / len(timings)
        per_call = statistics.median(timings)

        # initiate alone
        init_timings = []
        for _i in range(max(200, count)):
            t0 = time.perf_counter()
            server.initiate(h)
            init_timings.append(time.perf_counter() - t0)
        per_initiate = statistics.median(init_timings)

        # the crypto floor on the same payload: bare ECDSA verify (key object ready), MakeCredential
        # over cryptography (EK parsed), AES-GCM of the payload
        entry = db.get(h)
        payload = json.dumps({"files": dict((n, base64.b64encode(d).decode()) for n, d in entry.items())}).encode()
        public = tpm.ek_public()
        target = envelope.credential_target(public.marshal())
        bundle = requests[1]["quote"]
        ak_name, ak_key = quote_mod.parse_ak_public(base64.b64decode(bundle["ak_public"]))
        attest_raw = base64.b64decode(bundle["attest"])
        der = quote_mod.parse_signature(base64.b64decode(bundle["signature"]))
        ecdsa = ec.ECDSA(hashes.SHA256())
        ticket_nonce = base64.b64decode(server.open_ticket(requests[1]["ticket"])["nonce"])
        warm = quote_mod.AkCache()
        warm.remember(base64.b64decode(bundle["ak_public"]), (ak_name, ak_key))
        figures = collections.defaultdict(list)
        for _i in range(max(300, count)):
            t0 = time.perf_counter()
            ak_key.verify(der, attest_raw, ecdsa)
            t1 = time.perf_counter()
            key = os.urandom(32)
            envelope.make_credential_fast(target, key, ak_name)
            t2 = time.perf_counter()
            AESGCM(key).encrypt(os.urandom(12), payload, b"")
            t3 = time.perf_counter()
            quote_mod.verify_quote(bundle, ticket_nonce, ak_cache=warm)
            t4 = time.perf_counter()
            quote_mod.verify_quote(bundle, ticket_nonce)
            t5 = time.perf_counter()
            envelope.make_credential_reference(public, key, ak_name)
            t6 = time.perf_counter()
            figures["floor"].append(t3 - t0)
            figures["bare"].append(t1 - t0)
            figures["mc"].append(t2 - t1)
            figures["verify_warm"].append(t4 - t3)
            figures["verify_cold"].append(t5 - t4)
            figures["mc_pytss"].append(t6 - t5)
        med = dict((k, statistics.median(v)) for k, v in figures.items())
        floor = med["floor"]
        # CPU time (this process only: steadier than wall time on a shared machine)
        rounds = max(300, count)
        cpu0 = time.process_time()
        for _i in range(rounds):
            ak_key.verify(der, attest_raw, ecdsa)
            key = os.urandom(32)
            envelope.make_credential_fast(target, key, ak_name)
            AESGCM(key).encrypt(os.urandom(12), payload, b"")
        cpu_floor = (time.process_time() - cpu0) / rounds
        cpu0 = time.process_time()
        for _i in range(rounds):
            ak_key.verify(der, attest_raw, ecdsa)
        cpu_bare = (time.process_time() - cpu0) / rounds
        cpu0 = time.process_time()
        for _i in range(rounds):
            quote_mod.verify_quote(bundle, ticket_nonce, ak_cache=warm)
        cpu_verify = (time.process_time() - cpu0) / rounds

        # the git snapshot read alone
        git_timings = []
        for _i in range(50):
            t0 = time.perf_counter()
            db.get(h)
            git_timings.append(time.perf_counter() - t0)
        git_read = statistics.median(git_timings)

        rate_http, failures = http_rate(server, http_requests)

        # end-to-end client with swtpm, every ESAPI call timed
        e2e = []
        transport = attest_client.attestor_transport(server)
        timed = _TimedEsapi(tpm)
        for _i in range(10):
            timed.reset()
            t0 = time.perf_counter()
            attest_client.attest(tpm, transport, signer)
            e2e.append((time.perf_counter() - t0) * 1000)
            timed.runs.append((e2e[-1], timed.snapshot()))
        timed.restore()

    print("attestation (protocol v1), %d recorded quotes, entry of %d files (%d bytes), one core" % (
        count, len(entry), len(payload)))
    print("  quote on swtpm (recording):          %8.1f ms each" % quote_ms)
    print("  server complete:                     %8.0f /s  (median %.0f us, p95 %.0f us)" % (
        1 / per_call, per_call * 1e6, sorted(timings)[int(len(timings) * 0.95) - 1] * 1e6))
    print("  server initiate:                     %8.0f us median" % (per_initiate * 1e6))
    print("  uncached git snapshot read (2 git processes; cached per head): %.0f us" % (git_read * 1e6))
    print("  crypto floor (bare ECDSA verify %.0f us + MakeCredential %.0f us + AES-GCM): %.0f /s (%.0f us)" % (
        med["bare"] * 1e6, med["mc"] * 1e6, 1 / floor, floor * 1e6))
    print("  ratio complete / floor:              %8.2f x" % (per_call / floor))
    print("  ratio (initiate + complete) / floor: %8.2f x" % ((per_call + per_initiate) / floor))
    print("  CPU time: complete %.0f us, floor %.0f us, ratio %.2f x; quote verify %.0f us / bare verify %.0f us = %.2f x" % (
        cpu_complete * 1e6, cpu_floor * 1e6, cpu_complete / cpu_floor, cpu_verify * 1e6, cpu_bare * 1e6,
        cpu_verify / cpu_bare))
    print("  quote verify, AK cached:             %8.0f us = %.2f x bare ECDSA verify (AK parsed: %.0f us = %.2f x)" % (
        med["verify_warm"] * 1e6, med["verify_warm"] / med["bare"], med["verify_cold"] * 1e6,
        med["verify_cold"] / med["bare"]))
    print("  MakeCredential over cryptography:    %8.0f us (tpm2-pytss make_credential: %.0f us, %.1f x)" % (
        med["mc"] * 1e6, med["mc_pytss"] * 1e6, med["mc_pytss"] / med["mc"]))
    print("  complete over HTTP (werkzeug threaded, 4 client threads in the same process): %.0f /s%s" % (
        rate_http, " (%d failures)" % len(failures) if failures else ""))
    print("  client end to end with swtpm:        %8.1f ms median (p max %.1f ms)" % (statistics.median(e2e), max(e2e)))
    timed.report()


class _TimedEsapi(object):
    """Times every ESAPI call of ``tpm`` (each one TPM round trip or more, on swtpm a TCP exchange)."""

    def __init__(self, tpm):
        self.tpm = tpm
        self.real = tpm.ectx
        self.calls = collections.defaultdict(lambda: [0, 0.0])
        self.runs = []
        tpm.ectx = self

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                slot = self.calls[name]
                slot[0] += 1
                slot[1] += time.perf_counter() - t0
        return timed

    def reset(self):
        self.calls = collections.defaultdict(lambda: [0, 0.0])

    def snapshot(self):
        return dict((k, tuple(v)) for k, v in self.calls.items())

    def restore(self):
        self.tpm.ectx = self.real

    def report(self):
        elapsed, run = sorted(self.runs, key=lambda r: r[0])[len(self.runs) // 2]
        total = sum(n for n, _t in run.values())
        spent = sum(t for _n, t in run.values()) * 1000
        print("  client: %d ESAPI calls, %.1f ms in them, %.1f ms elsewhere (the median run, %.1f ms); by command:" % (
            total, spent, elapsed - spent, elapsed))
        for name, (n, t) in sorted(run.items(), key=lambda kv: -kv[1][1]):
            print("    %-24s %3d calls %7.2f ms" % (name, n, t * 1000))


if __name__ == "__main__":
    main()
