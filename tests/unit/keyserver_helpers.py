# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A key-server site for the unit tests (neither tests nor fixtures): an enrollment CA, key-server
client certificates with and without the purpose, a store whose master key is sealed to a real
swtpm, the ACL, and the key-server app over real TLS on loopback."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.keyserver import store as ks_store
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of
from ansible_collections.hcp.core.plugins.module_utils.web import keyserver_app
from ansible_collections.hcp.core.tests.unit.helpers import NginxLikeHandler, serve_wsgi

M1 = measurement_of({"sha256": {"7": "11" * 32}})
"""The measurement node1 was enrolled with."""
M2 = measurement_of({"sha256": {"7": "22" * 32}})
"""node2's: the same profile, another boot state (its golden PCRs changed)."""

# name -> (common name, binding or None (no key-server purpose), issued by the site CA?)
CLIENTS = {
    "deploy": ("deploy.example.test", {"profile": "deployer", "measurement": None}, True),
    "node1": ("node1.example.test", {"profile": "vm", "measurement": M1}, True),
    "node2": ("node2.example.test", {"profile": "vm", "measurement": M2}, True),
    "plain": ("plain.example.test", None, True),
    "foreign": ("deploy.example.test", {"profile": "deployer", "measurement": None}, False),
}

ACL = {
    "format": "hcp.core.keyserver-acl", "version": 1,
    "rules": [
        {"prefix": "datica-test/",
         "store": [{"cn": "deploy.example.test", "profile": "deployer"}],
         "retrieve": [{"cn": "deploy.example.test"}, {"profile": "vm"}],
         "delete": [{"cn": "deploy.example.test"}],
         "list": [{"cn": "deploy.example.test"}, {"profile": "vm"}]},
        {"prefix": "datica-test/deploy-only/", "store": [{"cn": "deploy.example.test"}],
         "retrieve": [{"cn": "deploy.example.test"}]},
    ],
}


class NoDelayHandler(NginxLikeHandler):
    """NginxLikeHandler with TCP_NODELAY, as nginx (tcp_nodelay on) answers: werkzeug's server writes
    headers and body apart, and Nagle's algorithm then waits for the client's delayed ACK (40 ms
    per call otherwise)."""

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def write(path, data, mode=0o600):
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return str(path)


class KeyServerSite(object):
    """Credentials under ``tmp_path/site``, a store sealed to ``tpm_fixture`` (``store_path``), the
    app over TLS (``url`` once ``start()``ed; the TLS front end accepts the site CA and a foreign
    CA, as a front end shared with other services might: the app decides). ``cred(name)``: (cert,
    key) paths of a client; ``client(name)``: a KeyServerClient."""

    def __init__(self, tpm_fixture, tmp_path, acl=None, **config):
        self.dir = tmp_path / "site"
        self.dir.mkdir()
        ca_key, ca_cert = pki.create_ca("test enrollment CA")
        self.issuer = pki.Issuer(ca_key, [ca_cert])
        foreign_key, foreign_cert = pki.create_ca("another CA")
        foreign = pki.Issuer(foreign_key, [foreign_cert])
        self.ca_file = write(self.dir / "ca.pem", pki.certificate_pem(ca_cert), 0o644)
        self.front_ca_file = write(self.dir / "front-ca.pem", pki.certificate_pem(ca_cert) + pki.certificate_pem(foreign_cert), 0o644)
        server_key = pki.new_private_key()
        server_cert = self.issuer.issue(server_key.public_key(), "https-server", "localhost", dns_names=["localhost"])
        self.server_key = write(self.dir / "server.key", pki.private_key_pem(server_key))
        self.server_cert = write(self.dir / "server.pem", pki.certificate_pem(server_cert), 0o644)
        self.creds = {}
        for name, (cn, binding, site) in CLIENTS.items():
            key = pki.new_private_key()
            cert = (self.issuer if site else foreign).issue(key.public_key(), "https-client", cn, dns_names=[cn],
                                                            keyserver_binding=binding)
            self.creds[name] = (write(self.dir / ("%s.pem" % name), pki.certificate_pem(cert), 0o644),
                                write(self.dir / ("%s.key" % name), pki.private_key_pem(key)))
        self.acl_file = write(self.dir / "acl.json", json.dumps(acl or ACL).encode(), 0o644)
        self.audit_file = str(self.dir / "audit.log")
        self.store_path = str(tmp_path / "store")
        with tpm_fixture.open() as tpm:
            ks_store.init_store(self.store_path, tpm.ek_public())
            self.store = ks_store.open_store(self.store_path, tpm)
        self.config = dict({"store": self.store_path, "client_ca": self.ca_file, "acl": self.acl_file,
                            "audit_log": self.audit_file, "own_credentials": [self.server_key],
                            "tcti": tpm_fixture.tcti}, **config)
        self.app = None
        self.url = None
        self._stack = contextlib.ExitStack()

    def start(self, handler=None, **app_options):
        self.app = keyserver_app.create_app(self.config, store=self.store, **app_options)
        self.url = self._stack.enter_context(serve_wsgi(self.app, self.server_cert, self.server_key,
                                                        client_ca=self.front_ca_file, verify_mode=ssl.CERT_OPTIONAL,
                                                        request_handler=handler or NoDelayHandler))
        return self

    def cred(self, name):
        return self.creds[name]

    def client(self, name, **options):
        cert, key = self.creds[name]
        return KeyServerClient(self.url, ca_file=self.ca_file, client_cert=cert, client_key=key, timeout=30, **options)

    def audit(self):
        if not os.path.exists(self.audit_file):
            return []
        with open(self.audit_file, "r", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def close(self):
        self._stack.close()


def tree_digest(path):
    """{relative path: bytes} of every file under ``path`` (to prove that nothing changed)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = handle.read()
    return out
