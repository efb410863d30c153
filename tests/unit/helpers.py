# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers the unit tests call (neither tests nor fixtures; the fixtures are in the conftest.py
files): WSGI apps served on loopback over TLS or plain HTTP, and an enrolled attestation site."""
from __future__ import annotations

import contextlib
import os
import ssl
import threading
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from werkzeug.serving import WSGIRequestHandler, make_server

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.web.attest_app import create_app as create_attest_app

DEAD = "http://127.0.0.1:1"
"""A URL nothing listens on (connection refused at once)."""

ATTEST_PROFILE = {"assets": ["hostname", "rootfs-key", "issuer-ca"]}
"""The client profile an AttestSite enrolls its TPM with unless told otherwise."""

ENROLL_PROFILE = {"assets": ["hostname", "rootfs-key"]}
"""The client profile the enrollment client tests enroll with."""


@contextlib.contextmanager
def _serve(app, ssl_context, request_handler, url_format):
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context, request_handler=request_handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield url_format % server.server_port
    finally:
        server.shutdown()
        server.server_close()


def serve_wsgi(app, server_cert, server_key, client_ca=None, verify_mode=ssl.CERT_REQUIRED, request_handler=None):
    """Serve a WSGI app over TLS on a loopback port (werkzeug, threaded, in a daemon thread) while
    the context is open; gives its base URL https://localhost:<port>. With client_ca, client
    certificates are verified against it with verify_mode (CERT_REQUIRED or CERT_OPTIONAL)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = verify_mode
    return _serve(app, context, request_handler, "https://localhost:%d")


def serve_http(app):
    """Serve a WSGI app over plain HTTP on a loopback port while the context is open; gives its
    base URL http://127.0.0.1:<port>."""
    return _serve(app, None, None, "http://127.0.0.1:%d")


class NginxLikeHandler(WSGIRequestHandler):
    """Passes the verified peer certificate the way nginx does (SSL_CLIENT_VERIFY/SSL_CLIENT_CERT)."""

    def make_environ(self):
        environ = super().make_environ()
        der = self.connection.getpeercert(binary_form=True)
        if der:
            environ["SSL_CLIENT_VERIFY"] = "SUCCESS"
            environ["SSL_CLIENT_CERT"] = quote(ssl.DER_cert_to_PEM_cert(der))
        return environ


class AttestSite(object):
    """An enrolled swtpm, an Attestor behind the attestation app on a loopback port (url; requests
    counts /v1/initiate calls), the asset signer's public key (signer, signer_file); close() stops it."""

    def __init__(self, tpm_fixture, tmp_path, policy=None, profile=None, secrets=None):
        self.db = EnrollmentDb(str(tmp_path / "db"))
        self.db.init()
        cas = []
        for path in tpm_fixture.vendor_ca_files:
            with open(path, "rb") as handle:
                cas.extend(pki.load_certificates(handle.read()))
        ca_key, ca_cert = pki.create_ca("HCP test attester CA")
        self.config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]),
                                              signer=pki.Signer(pki.new_private_key("ec-p256")),
                                              postclient={"seal_policy": policy or {"type": "none"}}, vendor_cas=cas,
                                              secrets=secrets)
        with tpm_fixture.open() as tpm:
            cert = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
        self.hash, host, files, _s = enroll.build_entry(self.config, cert, "node1.example.test", profile or ATTEST_PROFILE)
        enroll.store_entry(self.db, self.config, self.hash, host, files)
        self.signer = self.config.signer.public_key_pem()
        self.signer_file = tmp_path / "signer.pub.pem"
        self.signer_file.write_bytes(self.signer)
        self.attestor = attest.Attestor(lambda: self.db, os.urandom(32), signer_pub=self.signer, vendor_cas=cas)
        self.requests = 0
        app = create_attest_app({}, attestor=self.attestor)

        def counting(environ, start_response):
            if environ.get("PATH_INFO") == "/v1/initiate":
                self.requests += 1
            return app(environ, start_response)
        self._server = contextlib.ExitStack()
        self.url = self._server.enter_context(serve_http(counting))
        self.tcti = tpm_fixture.tcti

    def close(self):
        self._server.close()
