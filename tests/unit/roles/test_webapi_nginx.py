# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The webapi role's nginx site (roles/webapi/templates/nginx-site.conf.j2) in a real nginx.

The site is rendered by Ansible's own templating with the role's defaults and vars, checked
with ``nginx -t`` and served by a real nginx on loopback (as ``nobody`` when the tests run
as root). No uwsgi runs behind it, so whatever reaches the app is nginx's 502: that tells
requests nginx refused itself (400/413/414/429) from those it let through. The attacks:
an oversized body, a huge URI, a malformed request, a flood on a rate-limited path, plain
HTTP on the TLS port, a revoked and a missing client certificate."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

NGINX = "/usr/sbin/nginx"
ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "webapi")

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx is not installed")


def render_site(**overrides):
    """The site file as the role writes it for ``overrides`` (role defaults and vars below)."""
    with open(os.path.join(ROLE, "templates", "nginx-site.conf.j2"), "r", encoding="utf-8") as handle:
        source = handle.read()
    return role_templar(ROLE, **overrides).template(trust_as_template(source))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


class Pki(object):
    """A CA, a server certificate for localhost and two client certificates (one revoked)."""

    def __init__(self, directory):
        self.dir = directory
        key, cert = pki.create_ca("HCP test clients CA")
        self.issuer = pki.Issuer(key, [cert])
        self.ca = _write(directory / "ca.pem", pki.certificate_pem(cert))
        self.server_cert, self.server_key = self._leaf("server", "https-server", ["localhost"])
        self.good_cert, self.good_key = self._leaf("good", "https-client")
        self.revoked_cert, self.revoked_key = self._leaf("revoked", "https-client")

    def _leaf(self, name, profile, dns=()):
        key = pki.new_private_key()
        cert = self.issuer.issue(key.public_key(), profile, name, dns_names=dns)
        self.__dict__[name + "_serial"] = cert.serial_number
        return _write(self.dir / (name + ".pem"), pki.certificate_pem(cert)), \
            _write(self.dir / (name + ".key"), pki.private_key_pem(key))


class Nginx(object):
    """nginx with a minimal main configuration including the rendered site (the role's
    validation wrapper, plus writable paths), on a loopback port."""

    def __init__(self, directory, site):
        self.dir = str(directory)
        self.port = _free_port()
        self.site = _write(directory / "site.conf", site.replace("@PORT@", str(self.port)).encode())
        main = (
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid %(d)s/nginx.pid;\n"
            "error_log %(d)s/error.log warn;\nevents { worker_connections 64; }\n"
            "http {\n  include /etc/nginx/mime.types;\n  client_body_temp_path %(d)s/body;\n"
            "  proxy_temp_path %(d)s/proxy;\n  fastcgi_temp_path %(d)s/fastcgi;\n  uwsgi_temp_path %(d)s/uwsgi;\n"
            "  scgi_temp_path %(d)s/scgi;\n  include %(site)s;\n}\n" % {"d": self.dir, "site": self.site})
        self.conf = _write(directory / "nginx.conf", main.encode())
        self.proc = None

    def _demote(self):
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

    def _give_to_nobody(self):
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for root, dirs, files in os.walk(os.path.dirname(self.dir)):
                for name in dirs + files + [""]:
                    os.chown(os.path.join(root, name), nobody.pw_uid, nobody.pw_gid)

    def check(self):
        self._give_to_nobody()
        return subprocess.run([NGINX, "-t", "-q", "-c", self.conf], capture_output=True, check=False,
                              preexec_fn=self._demote, timeout=30)

    def start(self):
        self._give_to_nobody()
        self.proc = subprocess.Popen([NGINX, "-c", self.conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=self._demote)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: %s" % self.log())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen: %s" % self.log())

    def log(self):
        """The tail of nginx's error logs (the main one and the site's)."""
        text = ""
        for path in (os.path.join(self.dir, "error.log"), os.path.join(self.dir, "logs", "hcp-webapi-t-site.error.log")):
            try:
                with open(path, "r", encoding="utf-8", errors="replace") as handle:
                    text += handle.read()[-4000:]
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def workdir():
    """A directory nginx (as nobody when the tests run as root) can reach: pytest's tmp_path
    is under a 0700 directory of the test user."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="hcp-nginx-test-"))
    yield path
    shutil.rmtree(str(path), ignore_errors=True)


@pytest.fixture
def tls(workdir):
    directory = workdir / "pki"
    directory.mkdir()
    return Pki(directory)


@pytest.fixture
def nginx_factory(workdir):
    started = []

    def start(site_vars):
        directory = workdir / ("nginx%d" % len(started))
        directory.mkdir()
        (directory / "logs").mkdir()
        site = render_site(webapi_name="t-site", webapi_port="@PORT@", webapi_listen_address="127.0.0.1",
                           __webapi_nginx_log_dir=str(directory / "logs"),
                           __webapi_socket=str(directory / "no-uwsgi.sock"), **site_vars)
        server = Nginx(directory, site)
        started.append(server)
        result = server.check()
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return server.start()

    yield start
    for server in started:
        server.stop()


def request(port, method, path, body=None, headers=None, cert=None, ca=None):
    """(status, content type, body bytes) of one HTTPS request to nginx."""
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def _json_error(answer, status, text):
    got_status, ctype, body = answer
    assert got_status == status, answer
    assert ctype == "application/json", answer
    assert body.decode() == '{"error":"%s"}' % text
    assert b"<html" not in body.lower() and b"nginx" not in body.lower()


def _server_vars(tls):
    return {"webapi_tls_cert_path": tls.server_cert, "webapi_tls_key_path": tls.server_key}


def test_nginx_own_errors_are_json(tls, nginx_factory):
    """Oversized body (413), huge URI (414), malformed request (400), unreachable app (502),
    plain HTTP on the TLS port (497 -> 400): JSON with application/json, no HTML page."""
    server = nginx_factory(dict(_server_vars(tls), webapi_max_body="1k"))
    port = server.port
    _json_error(request(port, "POST", "/v1/complete", body=b"x" * 4096, ca=tls.ca,
                        headers={"Content-Type": "application/json"}), 413, "request body too large")
    _json_error(request(port, "GET", "/" + "a" * 20000, ca=tls.ca), 414, "request URI too long")
    _json_error(request(port, "GET", "/index.html", ca=tls.ca), 502, "service unavailable")
    _json_error(request(port, "GET", "/healthcheck", ca=tls.ca), 502, "service unavailable")
    _json_error(request(port, "GET", "/.hcp-error/502", ca=tls.ca), 404, "not found")  # internal only
    # a malformed request line over TLS
    context = ssl.create_default_context(cafile=tls.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"GET /\x01\x02 nonsense\r\nHost: localhost\r\n\r\n")
            data = b""
            chunk = conn.recv(65536)
            while chunk:  # nginx closes the connection after a 400
                data += chunk
                chunk = conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400"), data
    assert b"Content-Type: application/json" in head and body == b'{"error":"bad request"}', data
    # plain HTTP to the TLS port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthcheck")
        response = conn.getresponse()
        _json_error((response.status, response.getheader("Content-Type"), response.read()), 400,
                    "plain HTTP sent to the HTTPS port")
    finally:
        conn.close()


def test_rate_limit_per_client_answers_429_json(tls, nginx_factory):
    """A flood on a limited path gets 429 JSON (with Retry-After) once the burst is spent;
    other paths are not limited."""
    server = nginx_factory(dict(_server_vars(tls), webapi_rate_limit_paths=["/v1/initiate", "/v1/complete"],
                                webapi_rate_limit="1r/m", webapi_rate_limit_burst=2))
    answers = [request(server.port, "POST", "/v1/complete", body=b"{}", ca=tls.ca) for _number in range(6)]
    assert [a[0] for a in answers] == [502, 502, 502, 429, 429, 429]
    _json_error(answers[-1], 429, "too many requests")
    # one budget per client address over the listed paths; a listed path spelled with doubled
    # slashes is still limited (nginx normalises $uri)
    _json_error(request(server.port, "POST", "//v1//initiate", body=b"{}", ca=tls.ca), 429, "too many requests")
    assert [request(server.port, "GET", "/healthcheck", ca=tls.ca)[0] for _number in range(5)] == [502] * 5


def test_revoked_client_certificate_is_refused(tls, nginx_factory, workdir):
    """ssl_crl: with a CRL made by pki.make_crl, the revoked client certificate is refused
    (JSON 400), the other one reaches the app (502: no app behind), none at all is refused."""
    crl = pki.make_crl(tls.issuer, [tls.revoked_serial])
    server = nginx_factory(dict(_server_vars(tls), webapi_auth="clientcert", webapi_client_ca_path=tls.ca,
                                webapi_client_crl_path=_write(workdir / "clients.crl", crl)))
    port = server.port
    _json_error(request(port, "GET", "/healthcheck", ca=tls.ca, cert=(tls.revoked_cert, tls.revoked_key)), 400,
                "client certificate refused (invalid, expired or revoked)")
    _json_error(request(port, "GET", "/healthcheck", ca=tls.ca, cert=(tls.good_cert, tls.good_key)), 502,
                "service unavailable")
    _json_error(request(port, "GET", "/healthcheck", ca=tls.ca), 400, "client certificate required")


def test_expired_crl_fails_closed(tls, nginx_factory, workdir):
    """A CRL past its nextUpdate refuses every client certificate (documented: renew it)."""
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    crl = pki.make_crl(tls.issuer, [tls.revoked_serial], days=1, now=old)
    server = nginx_factory(dict(_server_vars(tls), webapi_auth="clientcert", webapi_client_ca_path=tls.ca,
                                webapi_client_crl_path=_write(workdir / "old.crl", crl)))
    _json_error(request(server.port, "GET", "/healthcheck", ca=tls.ca, cert=(tls.good_cert, tls.good_key)), 400,
                "client certificate refused (invalid, expired or revoked)")


def test_rendered_site_without_options_is_unchanged_in_substance(tls):
    """No rate limit and no CRL unless asked; error pages always."""
    site = render_site(webapi_name="plain", webapi_port=8443, **_server_vars(tls))
    assert "limit_req" not in site and "ssl_crl" not in site and "map $uri" not in site
    assert "error_page 413 /.hcp-error/413;" in site and "default_type application/json;" in site
    site = render_site(webapi_name="crl", webapi_port=8443, webapi_auth="clientcert", webapi_client_ca="x",
                       webapi_client_crl="-----BEGIN X509 CRL-----", **_server_vars(tls))
    assert "ssl_crl /etc/hcp/webapi/crl/client.crl;" in site


def _log_lines(server, count, wait):
    """The entries of the site's access log once it holds ``count`` of them (or after ``wait`` s)."""
    path = os.path.join(server.dir, "logs", "hcp-webapi-t-site.access.log")
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path, "r", encoding="utf-8") as handle:
                lines = [line for line in handle.read().splitlines() if line]
        except FileNotFoundError:
            lines = []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_buffered_access_log_is_written_within_the_flush_period(tls, nginx_factory):
    """The site's access log is buffered (webapi_access_log_buffer, one write per buffer instead of
    per request) but no entry waits longer than webapi_access_log_flush: each request is logged, as
    JSON, without nginx stopping or reloading. With an empty buffer size every entry is written at once."""
    site = render_site(webapi_name="t-site", webapi_port=8443, **_server_vars(tls))
    assert " buffer=64k flush=1s;" in site
    server = nginx_factory(dict(_server_vars(tls), webapi_access_log_flush="1s"))
    for _number in range(3):
        assert request(server.port, "GET", "/healthcheck", ca=tls.ca)[0] == 502
    lines = _log_lines(server, 3, 15)
    assert len(lines) == 3, server.log()
    # (path and method logged are the error page's: nginx redirects internally to it with GET)
    assert [(json.loads(line)["method"], json.loads(line)["status"]) for line in lines] == [("GET", 502)] * 3

    unbuffered = nginx_factory(dict(_server_vars(tls), webapi_access_log_buffer=""))
    assert request(unbuffered.port, "POST", "/v1/complete", body=b"{}", ca=tls.ca)[0] == 502
    assert [json.loads(line)["status"] for line in _log_lines(unbuffered, 1, 10)] == [502]
