#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Key-server figures, all in one run on loopback; prints figures, asserts nothing (not a test).

* retrieves/s over mTLS with connection reuse through the production stack: nginx (TLS 1.2/1.3,
  client certificate verified against the enrollment CA and passed as SSL_CLIENT_CERT, keep-alive)
  -> uwsgi (2 workers, the running interpreter's venv) -> web/keyserver_app.py, its store's master
  key unsealed from a real swtpm at start. One keep-alive requests.Session speaking wire format v1
  with the session token (one proof of possession first); TLS connections counted by nginx's log.
* the same through the client library (keyserver/client.py over web/client.py: one pooled
  connection, new TLS connections counted the same way);
* floors of the same run: a bare TLS handshake with client certificate against the same nginx,
  and AES-256-GCM encrypt+decrypt of the item (one core);
* stores/s of the store library with fsync (file + directory: the real path) and without
  (os.fsync stubbed), so the fsync cost shows separately; stores/s through the stack.

Needs nginx-light, uwsgi-core and uwsgi-plugin-python3, swtpm and swtpm-tools (as
benchmarks/attest_http.py); without them it prints a skip line and exits 0.
Run from the repo root after `make install`: .venv/bin/python benchmarks/keyserver.py
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient, sign_challenge  # noqa: E402
from ansible_collections.hcp.core.tests.unit.conftest import Swtpm  # noqa: E402
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import KeyServerSite  # noqa: E402

SECONDS = 3.0
ITEM = os.urandom(256)  # a typical key item
APP_MODULE = "ansible_collections.hcp.core.plugins.module_utils.web.keyserver_app:application"

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    tcp_nodelay on;
    keepalive_requests 100000;
    log_format ks escape=json '{{"conn":"$connection","reqs":"$connection_requests","status":$status}}';
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        access_log {prefix}/access.log ks;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_session_cache off;
        ssl_session_tickets off;
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        client_max_body_size 2m;
        location / {{
            include {params};
            uwsgi_param SSL_CLIENT_CERT $ssl_client_escaped_cert;
            uwsgi_param SSL_CLIENT_VERIFY $ssl_client_verify;
            uwsgi_pass unix:{socket};
        }}
    }}
}}
"""


def _attest_http():
    """benchmarks/attest_http.py as a module: its tool checks, uwsgi template and helpers."""
    spec = importlib.util.spec_from_file_location("hcp_bench_attest_http", os.path.join(HERE, "attest_http.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Path(str):
    """A str path with the ``/`` and ``mkdir`` KeyServerSite uses (it expects pytest's tmp_path)."""

    def __truediv__(self, other):
        return _Path(os.path.join(self, other))

    def mkdir(self):
        os.mkdir(self, 0o700)


def rate(func, seconds=SECONDS):
    count, start = 0, time.perf_counter()
    while True:
        func()
        count += 1
        now = time.perf_counter()
        if now - start >= seconds:
            return count / (now - start), count


class KeyServerStack(object):
    """nginx (mTLS, keep-alive) -> uwsgi -> the key-server app, from ``workdir``."""

    def __init__(self, ah, workdir, site):
        self.ah = ah
        self.workdir = workdir
        self.site = site
        self.port = ah._free_port()  # pylint: disable=protected-access
        self.url = "https://localhost:%d" % self.port
        self.socket = os.path.join(workdir, "ks.sock")
        self.procs = []
        self.logs = []

    def start(self):
        ah = self.ah
        config = ah._write(os.path.join(self.workdir, "ks.json"), json.dumps(self.site.config))  # pylint: disable=protected-access
        ini = ah.UWSGI_INI.format(venv=sys.prefix, pythonpath=os.path.join(REPO, "collections"), module=APP_MODULE,
                                  socket=self.socket, workers=2, config=config)
        ini = ini.replace("HCP_ATTEST_CONFIG=", "HCP_KEYSERVER_CONFIG=").replace("limit-post = 1048576", "limit-post = 2097152")
        ini_path = ah._write(os.path.join(self.workdir, "uwsgi.ini"), ini)  # pylint: disable=protected-access
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.workdir, name), mode=0o700, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = ah._write(os.path.join(self.workdir, "nginx.conf"), NGINX_CONF.format(  # pylint: disable=protected-access
            user=user, prefix=self.workdir, port=self.port, cert=self.site.server_cert, key=self.site.server_key,
            client_ca=self.site.ca_file, params=ah.UWSGI_PARAMS, socket=self.socket, ciphers=ah.CIPHERS))
        for argv, log_name in (([ah._find("uwsgi-core", "uwsgi"), "--ini", ini_path], "uwsgi.log"),  # pylint: disable=protected-access
                               ([ah._find("nginx"), "-p", self.workdir, "-e", os.path.join(self.workdir, "nginx-error.log"),  # pylint: disable=protected-access
                                 "-c", conf], "nginx.log")):
            log = open(os.path.join(self.workdir, log_name), "wb")  # pylint: disable=consider-using-with
            self.logs.append(log)
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError("%s exited (%d): see %s" % (proc.args[0], proc.returncode, self.workdir))
            try:
                if requests.get(self.url + "/healthcheck", verify=self.site.ca_file, cert=self.site.cred("node1"),
                                timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the stack did not answer /healthcheck: see %s" % self.workdir)

    def connections(self):
        """{connection id: requests} from nginx's access log."""
        counts = collections.Counter()
        with open(os.path.join(self.workdir, "access.log"), encoding="utf-8") as handle:
            for line in handle:
                counts[json.loads(line)["conn"]] += 1
        return counts

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=20)
        for log in self.logs:
            log.close()


def handshake_floor(url, ca_file, cred):
    """Bare TLS handshakes/s (a new connection each, client certificate) against ``url``."""
    port = int(url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(*cred)

    def once():
        with socket.create_connection(("localhost", port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.do_handshake()
    return rate(once)[0]


def main():
    ah = _attest_http()
    missing = ah._missing_tools()  # pylint: disable=protected-access
    if missing:
        print("skip: missing %s" % ", ".join(missing))
        return 0
    workdir = tempfile.mkdtemp(prefix="hcp-bench-keyserver.")
    tpm = stack = None
    figures = {}
    try:
        tpm = Swtpm(os.path.join(workdir, "tpm")).start()
        site = KeyServerSite(tpm, _Path(workdir))
        site.store.store("datica-test/bench", ITEM)
        stack = KeyServerStack(ah, workdir, site).start()
        with open(site.cred("node1")[1], "rb") as handle:
            key = pki.load_private_key(handle.read())
        http = requests.Session()
        tls = {"verify": site.ca_file, "cert": site.cred("node1"), "timeout": 30}
        body = {"protocol": 1, "action": "retrieve", "name": "datica-test/bench"}
        challenge = http.post(stack.url + "/v1/request", json=body, **tls).json()["data"]["challenge"]
        answer = http.post(stack.url + "/v1/request", **tls, json=dict(body, credentials={
            "challenge": challenge, "signature": base64.b64encode(sign_challenge(key, challenge)).decode()})).json()
        body["credentials"] = {"session": answer["session"]["token"]}

        def reused():
            response = http.post(stack.url + "/v1/request", json=body, **tls)
            assert response.status_code == 200, response.text

        before = stack.connections()
        figures["retrieve_reused_per_s"], calls = rate(reused)
        new = len(set(stack.connections()) - set(before))
        print("retrieve over mTLS, connection reused (nginx -> uwsgi): %7.0f /s (%d calls, %d new TLS connections)"
              % (figures["retrieve_reused_per_s"], calls, new))
        client = KeyServerClient(stack.url, ca_file=site.ca_file, client_cert=site.cred("node1")[0],
                                 client_key=site.cred("node1")[1])
        client.retrieve("datica-test/bench")
        before = stack.connections()
        figures["retrieve_library_per_s"], calls = rate(lambda: client.retrieve("datica-test/bench"))
        new = len(set(stack.connections()) - set(before))
        print("retrieve, client library (web/client.py):             %7.0f /s (%d calls, %d new TLS connections)"
              % (figures["retrieve_library_per_s"], calls, new))
        figures["tls_handshake_per_s"] = handshake_floor(stack.url, site.ca_file, site.cred("node1"))
        print("floor: bare TLS handshake with client certificate:    %7.0f /s" % figures["tls_handshake_per_s"])
        aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
        figures["aes_gcm_per_s"] = rate(lambda: aead.decrypt(nonce, aead.encrypt(nonce, ITEM, b"aad"), b"aad"), 1.0)[0]
        print("floor: AES-256-GCM encrypt+decrypt of %d B:           %7.0f /s" % (len(ITEM), figures["aes_gcm_per_s"]))
        counter = iter(range(10 ** 9))

        def one_store():
            site.store.store("datica-test/bench-%d" % (next(counter) % 64), os.urandom(256))
        figures["store_fsync_per_s"] = rate(one_store)[0]
        print("store (library, fsync of file and directory):         %7.0f /s" % figures["store_fsync_per_s"])
        real_fsync = os.fsync
        os.fsync = lambda fd: None
        try:
            figures["store_nofsync_per_s"] = rate(one_store)[0]
        finally:
            os.fsync = real_fsync
        print("store without fsync (the difference is fsync's cost): %7.0f /s" % figures["store_nofsync_per_s"])
        deploy = KeyServerClient(stack.url, ca_file=site.ca_file, client_cert=site.cred("deploy")[0],
                                 client_key=site.cred("deploy")[1])
        figures["store_stack_per_s"] = rate(lambda: deploy.store("datica-test/bench-stack", os.urandom(256)))[0]
        print("store through the stack (client library, fsync):      %7.0f /s" % figures["store_stack_per_s"])
        print(json.dumps(dict((k, round(v)) for k, v in figures.items()), sort_keys=True))
    finally:
        if stack is not None:
            stack.stop()
        if tpm is not None:
            tpm.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
