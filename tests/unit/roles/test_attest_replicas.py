# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scale-out (docs/attestation-deploy.md): two attestation app replicas, each its own real uwsgi
process, sharing the ticket key file and the used-ticket store, behind a real nginx round-robin
upstream (the nginx harness of test_webapi_nginx.py). A ticket issued by one
replica is completed by the other; the attack: a replayed complete, sent again through the load
balancer and to each replica directly, is refused (409) by both."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.test_attest import PROFILE, _config
from ansible_collections.hcp.core.tests.unit.roles.test_webapi_nginx import NGINX, Nginx, _free_port, workdir  # noqa: F401  # pylint: disable=unused-import

UWSGI = shutil.which("uwsgi") or "/usr/bin/uwsgi"
UWSGI_PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"
UWSGI_PARAMS = "/etc/nginx/uwsgi_params"
APP = "ansible_collections.hcp.core.plugins.module_utils.web.attest_app:application"
# the collection's parent of ansible_collections/ (the staged tree the tests run from)
COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(__file__), *([".."] * 6)))

pytestmark = pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and os.access(UWSGI, os.X_OK) and os.path.exists(UWSGI_PLUGIN)),
    reason="nginx, uwsgi and its python3 plugin are needed")

SITE = """
upstream hcp_attest_replicas {
    server 127.0.0.1:%(a)d;
    server 127.0.0.1:%(b)d;
}
server {
    listen 127.0.0.1:@PORT@;
    access_log off;
    location / {
        include %(params)s;
        uwsgi_pass hcp_attest_replicas;
        # which replica answered: the test's own header, not the role's site
        add_header X-Hcp-Replica $upstream_addr always;
    }
}
"""


class Replica(object):
    """One attestation app under its own uwsgi master (1 worker) on a loopback uwsgi socket."""

    def __init__(self, directory, config):
        self.port = _free_port()
        self.config = os.path.join(directory, "attest-%d.json" % self.port)
        with open(self.config, "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        self.log = open(os.path.join(directory, "uwsgi-%d.log" % self.port), "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [UWSGI, "--plugin", UWSGI_PLUGIN, "--strict", "--master", "--need-app", "--die-on-term",
             "--processes", "1", "--threads", "1", "--socket", "127.0.0.1:%d" % self.port,
             "--virtualenv", sys.prefix, "--pythonpath", COLLECTIONS, "--module", APP,
             "--env", "HCP_ATTEST_CONFIG=%s" % self.config, "--disable-logging"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("uwsgi exited: %s" % self.output())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("uwsgi did not listen: %s" % self.output())

    def output(self):
        self.log.flush()
        with open(self.log.name, "rb") as handle:
            return handle.read()[-4000:].decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def post(port, path, body):
    """(status, replica address, JSON answer) of one POST through nginx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("X-Hcp-Replica"), json.loads(response.read() or b"null")
    finally:
        conn.close()


@pytest.fixture
def replicas(swtpm, tmp_path, workdir):  # pylint: disable=redefined-outer-name
    """An enrolled swtpm; two replicas sharing the ticket key file and the used-ticket store
    (as docs/attestation-deploy.md describes) behind nginx round robin."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config(swtpm)
    with swtpm.open() as tpm:
        pem = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
    h, host, files, _summary = enroll.build_entry(config, pem, "replicated.example.test", PROFILE)
    enroll.store_entry(db, config, h, host, files)
    shared = tmp_path / "shared"
    shared.mkdir()
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for path in swtpm.vendor_ca_files:
        shutil.copy(path, str(vendor))
    signer = tmp_path / "signer.pub.pem"
    signer.write_bytes(config.signer.public_key_pem())
    key_file = str(shared / "ticket.key")
    attest.write_ticket_key_file(key_file)
    app_config = {"db": db.path, "ticket_key_file": key_file, "used_ticket_dir": str(shared / "used-tickets"),
                  "vendor_ca_dir": str(vendor), "ek_trust": "vendor_ca", "asset_signer_pub": str(signer),
                  "arepl_state": str(tmp_path / "no-state.json")}
    started = [Replica(str(tmp_path), app_config), Replica(str(tmp_path), app_config)]
    nginx = None
    try:
        for replica in started:
            replica.wait()
        (workdir / "nginx").mkdir()
        nginx = Nginx(workdir / "nginx", SITE % {"a": started[0].port, "b": started[1].port, "params": UWSGI_PARAMS})
        result = nginx.check()
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        nginx.start()
        yield {"port": nginx.port, "hash": h, "signer": config.signer.public_key_pem(), "shared": shared,
               "replicas": ["127.0.0.1:%d" % r.port for r in started], "direct": [r.port for r in started],
               "nginx": nginx}
    finally:
        if nginx is not None:
            nginx.stop()
        for replica in started:
            replica.stop()


def _evidence(tpm, started):
    bundle = quote_mod.quote(tpm, base64.b64decode(started["nonce"]), started["pcrs"]["sha256"])
    return {"ticket": started["ticket"], "ekpub": base64.b64encode(tpm.ek_public().marshal()).decode(),
            "ek_cert": base64.b64encode(tpm.ek_certificate_der()).decode(), "quote": bundle}


def _initiate_on(port, replica, ekpubhash):
    """A ticket issued by ``replica`` (round robin: at most a few tries)."""
    for _try in range(8):
        status, by, started = post(port, "/v1/initiate", {"ekpubhash": ekpubhash})
        assert status == 200, started
        if by == replica:
            return started
    raise AssertionError("nginx never routed to %s" % replica)


def test_ticket_from_one_replica_completes_on_the_other_and_replay_is_refused_everywhere(swtpm, replicas):
    port, h = replicas["port"], replicas["hash"]
    one, other = replicas["replicas"]
    served = set()
    with swtpm.open() as tpm:
        for issuer in (one, other):
            started = _initiate_on(port, issuer, h)
            request = _evidence(tpm, started)
            # round robin sends the next request to the other replica: retry initiates until it does
            status, by, answer = post(port, "/v1/complete", request)
            while by == issuer:
                _initiate_on(port, issuer, h)  # moves the round robin on
                status, by, answer = post(port, "/v1/complete", request)
            assert status == 200, answer
            assert by != issuer and answer["ekpubhash"] == h and answer["hostname"] == "replicated.example.test"
            served.add((issuer, by))
            # the attack: the same complete again, through nginx (either replica) and to each one
            for _again in range(2):
                status, by, answer = post(port, "/v1/complete", request)
                assert status == 409 and "already used" in answer["error"], (status, by, answer)
            for replica_port in replicas["direct"]:
                assert _uwsgi_post(replica_port, "/v1/complete", request)[0] == 409
        assert served == {(one, other), (other, one)}
        # the whole client library through the balancer: both round trips may land anywhere
        result = attest_client.attest(tpm, "http://127.0.0.1:%d" % port, replicas["signer"])
    assert result["hostname"] == "replicated.example.test" and len(result["assets"]["rootfs.key"]) == 64
    used = os.listdir(str(replicas["shared"] / "used-tickets"))
    assert attest.USED_TICKETS_MARKER in used and len(used) == 1 + 3


def _uwsgi_post(port, path, body):
    """(status, JSON) of a POST straight to a replica's uwsgi socket (uwsgi protocol, no nginx)."""
    data = json.dumps(body).encode()
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "REQUEST_URI": path, "QUERY_STRING": "",
           "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
           "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(data)), "REMOTE_ADDR": "127.0.0.1"}
    payload = b"".join(len(k).to_bytes(2, "little") + k.encode() + len(v).to_bytes(2, "little") + v.encode()
                       for k, v in env.items())
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"\x00" + len(payload).to_bytes(2, "little") + b"\x00" + payload + data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)
