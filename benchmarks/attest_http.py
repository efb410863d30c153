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
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import requests

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
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

CLIENTS = (1, 4, 16)
WORKERS = 2
UWSGI_PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"
# the webapi role's nginx-site.conf.j2 cipher list
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))
APP_MODULE = "ansible_collections.hcp.core.plugins.module_utils.web.attest_app:application"


def _bench_attest():
    """benchmarks/attest.py as a module: its swtpm harness, vendor CA loader and profile."""
    spec = importlib.util.spec_from_file_location("hcp_bench_attest", os.path.join(HERE, "attest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find(*names):
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
        if found:
            return found
    return None


def _missing_tools():
    missing = []
    for tool, names in (("nginx", ("nginx",)), ("uwsgi", ("uwsgi-core", "uwsgi")), ("swtpm", ("swtpm",)),
                        ("swtpm_setup", ("swtpm_setup",))):
        if not _find(*names):
            missing.append(tool)
    if not os.path.isfile(UWSGI_PLUGIN):
        missing.append("uwsgi python3 plugin")
    if not os.path.isfile(UWSGI_PARAMS):
        missing.append(UWSGI_PARAMS)
    return missing


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


UWSGI_INI = """[uwsgi]
plugin = python3
strict = true
master = true
need-app = true
die-on-term = true
vacuum = true
disable-logging = true
log-4xx = true
log-5xx = true
virtualenv = {venv}
pythonpath = {pythonpath}
module = {module}
socket = {socket}
chmod-socket = 660
processes = {workers}
threads = 1
harakiri = 60
limit-post = 1048576
buffer-size = 16384
env = HCP_ATTEST_CONFIG={config}
"""

NGINX_CONF = """daemon off;
master_process on;
worker_processes auto;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format hcp_webapi_attest escape=json
      '{{"time":"$time_iso8601","remote":"$remote_addr","method":"$request_method",'
      '"path":"$uri","status":$status,"bytes":$body_bytes_sent,"duration":$request_time,'
      '"client_verify":"$ssl_client_verify"}}';
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        server_tokens off;
        access_log {prefix}/access.log hcp_webapi_attest;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:hcp_webapi_attest:1m;
        ssl_session_timeout 1h;
        ssl_session_tickets off;
        client_max_body_size 1m;
        location / {{
            include {params};
            uwsgi_param HTTP_X_FORWARDED_PROTO https;
            uwsgi_param SSL_CLIENT_CERT "";
            uwsgi_param SSL_CLIENT_VERIFY "";
            uwsgi_param SSL_CLIENT_S_DN "";
            uwsgi_read_timeout 65s;
            uwsgi_pass unix:{socket};
        }}
    }}
}}
"""


class Stack(object):
    """uwsgi + nginx serving the attestation app from ``workdir``; ``url`` once started."""

    def __init__(self, workdir, config_path, cred_paths):
        self.workdir = workdir
        self.config_path = config_path
        self.cred = cred_paths
        self.port = _free_port()
        self.url = "https://localhost:%d" % self.port
        self.socket = os.path.join(workdir, "attest.sock")
        self.procs = []
        self.logs = []

    def _spawn(self, argv, log_name):
        log = open(os.path.join(self.workdir, log_name), "wb")
        self.logs.append(log)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start(self):
        ini = _write(os.path.join(self.workdir, "uwsgi.ini"), UWSGI_INI.format(
            venv=os.path.join(REPO, ".venv"), pythonpath=os.path.join(REPO, "collections"), module=APP_MODULE,
            socket=self.socket, workers=WORKERS, config=self.config_path))
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.workdir, name), mode=0o700, exist_ok=True)
        # as root, nginx workers would drop to nobody and lose the 0700 temp dir and socket
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = _write(os.path.join(self.workdir, "nginx.conf"), NGINX_CONF.format(
            user=user, prefix=self.workdir, port=self.port, cert=self.cred["server_cert"], key=self.cred["server_key"],
            params=UWSGI_PARAMS, socket=self.socket, ciphers=CIPHERS))
        self._spawn([_find("uwsgi-core", "uwsgi"), "--ini", ini], "uwsgi.log")
        self._spawn([_find("nginx"), "-p", self.workdir, "-e", os.path.join(self.workdir, "nginx-error.log"),
                     "-c", conf], "nginx.log")
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError("%s exited (%d): see %s" % (proc.args[0], proc.returncode, self.workdir))
            try:
                resp = requests.get(self.url + "/healthcheck", verify=self.cred["ca_cert"], timeout=5)
                if resp.status_code == 200:
                    return resp.json()
                last = resp.status_code
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise RuntimeError("the stack did not answer /healthcheck (last: %s)" % last)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()
        self.procs = []


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
    missing = _missing_tools()
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
