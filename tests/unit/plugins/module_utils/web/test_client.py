# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one HTTPS JSON client, and the four service clients built on it, against a real TLS
server on loopback (werkzeug): no redirect is followed, answers are capped, bad JSON is "no
JSON", transport failures are the caller's error class with status 0."""
from __future__ import annotations

import json
import socket

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation.client import AttestClientError, http_transport
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentApiError, EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.policy.client import PolicyClient, PolicyUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import ControlTowerError
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import ControlTowerClient
from ansible_collections.hcp.core.plugins.module_utils.web.client import HttpError, HttpsJsonClient, decode_json
from ansible_collections.hcp.core.tests.unit.helpers import serve_wsgi

DEEP = ("[" * 100000 + "]" * 100000).encode()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/elsewhere"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"followed": true}']
    if path.startswith("/rbig"):
        start_response("302 Found", [("Location", "/elsewhere"), ("Content-Type", "application/json")])
        return [b"[" + b"1," * 40000 + b"1]"]
    if path.startswith("/r/"):
        start_response("302 Found", [("Location", "/elsewhere"), ("Content-Type", "application/json")])
        return [b'{"error": "moved"}']
    if path.startswith("/big"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"[" + b"1," * 40000 + b"1]"]
    if path.startswith("/deep"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [DEEP]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"path": path, "method": environ["REQUEST_METHOD"]}).encode()]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The app above over TLS on https://localhost:<port>: a dict with "url" and "ca" (its CA file)."""
    cred = tmp_path_factory.mktemp("cred")
    paths = pki.bootstrap_site_credentials(str(cred), "t", ["localhost"], ["orchestrator"])["paths"]
    with serve_wsgi(app, paths["server_cert"], paths["server_key"]) as url:
        yield {"url": url, "ca": paths["ca_cert"]}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_json_answer(tls_server):
    client = HttpsJsonClient(tls_server["url"], tls_server["ca"])
    response = client.request("POST", "/v1/x", json_body={"a": 1})
    assert response.status == 200 and response.body == {"path": "/v1/x", "method": "POST"}


def test_redirect_is_not_followed(tls_server):
    response = HttpsJsonClient(tls_server["url"], tls_server["ca"]).request("GET", "/r/x")
    assert response.status == 302 and response.body == {"error": "moved"} and response.error_detail() == "moved"


def test_answer_over_the_cap_is_refused(tls_server):
    client = HttpsJsonClient(tls_server["url"], tls_server["ca"], max_response_bytes=1000)
    with pytest.raises(HttpError, match="more than 1000 bytes") as info:
        client.request("GET", "/big")
    assert info.value.status == 0
    assert len(HttpsJsonClient(tls_server["url"], tls_server["ca"]).request("GET", "/big").body) == 40001
    # a redirect's body too (requests alone would read it whole to release the connection)
    with pytest.raises(HttpError, match="more than 1000 bytes"):
        client.request("GET", "/rbig")


def test_deep_or_bad_json_is_no_json(tls_server):
    response = HttpsJsonClient(tls_server["url"], tls_server["ca"]).request("GET", "/deep")
    assert response.status == 200 and response.body is None and response.error_detail() == "no details"
    assert decode_json(b"1" * 5000) is None  # beyond Python's integer-string limit
    assert decode_json(b"\xff") is None and decode_json(b"{") is None


def test_untrusted_server_and_unreachable_are_status_0(tls_server, tmp_path):
    other = pki.bootstrap_site_credentials(str(tmp_path / "other"), "o", ["localhost"], ["x"])["paths"]
    with pytest.raises(HttpError, match="cannot reach the service") as info:
        HttpsJsonClient(tls_server["url"], other["ca_cert"]).request("GET", "/")
    assert info.value.status == 0
    with pytest.raises(HttpError, match="cannot reach") as info:
        HttpsJsonClient("https://127.0.0.1:%d" % free_port(), timeout=2).request("GET", "/")
    assert info.value.status == 0


def test_plain_http_only_when_allowed():
    with pytest.raises(HttpError, match="must start with https://") as info:
        HttpsJsonClient("http://127.0.0.1:1")
    assert info.value.status == 0
    assert HttpsJsonClient("http://127.0.0.1:1", allow_http=True).url == "http://127.0.0.1:1"


def test_the_four_service_clients_share_it(tls_server):
    url, ca = tls_server["url"], tls_server["ca"]
    enrollment = EnrollmentClient(url, ca)
    tower = ControlTowerClient(url, ca)
    policy = PolicyClient(url, ca)
    for client in (enrollment, tower, policy):
        assert isinstance(client.http, HttpsJsonClient)
    # a redirect is an error of the caller's class with the status, never followed
    with pytest.raises(EnrollmentApiError, match="HTTP 302: moved") as info:
        EnrollmentClient(url + "/r", ca).query("")
    assert info.value.status == 302
    with pytest.raises(ControlTowerError, match="HTTP 302: moved") as info:
        ControlTowerClient(url + "/r", ca).status("site-a")
    assert info.value.status == 302
    with pytest.raises(PolicyUnavailableError, match="HTTP 302: moved"):
        PolicyClient(url + "/r", ca).check("h", "u", {})
    assert http_transport(url + "/r", ca)("/v1/initiate", {}) == (302, {"error": "moved"})
    # an answer that is not a JSON object is refused, not indexed
    with pytest.raises(EnrollmentApiError, match="HTTP 200"):
        EnrollmentClient(url + "/deep", ca).query("")
    # transport failures keep each caller's error class
    dead = "https://127.0.0.1:%d" % free_port()
    with pytest.raises(AttestClientError, match="cannot reach the attestation server"):
        http_transport(dead, ca, timeout=2)("/v1/initiate", {})
    with pytest.raises(ControlTowerError, match="cannot reach the control tower") as info:
        ControlTowerClient(dead, ca, timeout=2).status("site-a")
    assert info.value.status == 0
