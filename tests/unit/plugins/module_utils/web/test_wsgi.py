# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of services.common and services.hello_app with Flask's test client and real certificates."""

from __future__ import annotations

import datetime
import json
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.hcp.core.plugins.module_utils.web import wsgi as common, hello_app


def _cert(cn=None, emails=(), dns=()):
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HCP test")]
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    sans = [x509.RFC822Name(e) for e in emails] + [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def _environ(cert, verify="SUCCESS"):
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    # nginx $ssl_client_escaped_cert: URL-encoded PEM
    return {"SSL_CLIENT_VERIFY": verify, "SSL_CLIENT_CERT": quote(pem, safe="")}, pem


def test_client_identity_full():
    cert = _cert("node1.example", emails=["ops@example.org"], dns=["node1.example", "n1.example"])
    environ, pem = _environ(cert)
    ident = common.client_identity(environ)
    assert ident["cn"] == "node1.example"
    assert ident["subject"] == "CN=node1.example,O=HCP test"
    assert ident["emails"] == ["ops@example.org"]
    assert ident["dns"] == ["node1.example", "n1.example"]
    assert ident["pem"] == pem
    assert ident["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()


def test_client_identity_without_cn_or_san():
    ident = common.client_identity(_environ(_cert())[0])
    assert ident["cn"] is None
    assert ident["emails"] == [] and ident["dns"] == []


@pytest.mark.parametrize("verify", ["", "NONE", "FAILED:unable to verify the first certificate", "success"])
def test_client_identity_requires_success(verify):
    environ = _environ(_cert("x"), verify=verify)[0]
    assert common.client_identity(environ) is None


@pytest.mark.parametrize("value", ["", "garbage", quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")])
def test_client_identity_bad_or_missing_cert(value):
    assert common.client_identity({"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": value}) is None
    assert common.client_identity({}) is None


def test_load_config(tmp_path, monkeypatch):
    monkeypatch.delenv("HCP_TEST_CONFIG", raising=False)
    assert common.load_config("HCP_TEST_CONFIG") == {}
    with pytest.raises(common.ServiceConfigError, match="HCP_TEST_CONFIG"):
        common.load_config("HCP_TEST_CONFIG", required=True)
    path = tmp_path / "c.json"
    monkeypatch.setenv("HCP_TEST_CONFIG", str(path))
    with pytest.raises(common.ServiceConfigError, match="cannot read"):
        common.load_config("HCP_TEST_CONFIG")
    path.write_text("[1]")
    with pytest.raises(common.ServiceConfigError, match="JSON object"):
        common.load_config("HCP_TEST_CONFIG")
    path.write_text("{not json")
    with pytest.raises(common.ServiceConfigError, match="not valid JSON"):
        common.load_config("HCP_TEST_CONFIG")
    path.write_text('{"a": 1}')
    assert common.load_config("HCP_TEST_CONFIG") == {"a": 1}


def test_app_base_json_errors():
    app = common.create_app_base("t", {"max_content_length": 10})

    @app.post("/echo")
    def _echo():
        return {"n": len(common.flask.request.get_data())}

    @app.get("/boom")
    def _boom():
        raise RuntimeError("secret detail")

    client = app.test_client()
    resp = client.get("/healthcheck")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.get_json() == {"error": "not found"}
    resp = client.post("/healthcheck")
    assert resp.status_code == 405 and resp.get_json() == {"error": "method not allowed"}
    resp = client.post("/echo", data=b"x" * 11)
    assert resp.status_code == 413 and resp.get_json() == {"error": "request body too large"}
    assert client.post("/echo", data=b"x" * 10).get_json() == {"n": 10}
    resp = client.get("/boom")
    assert resp.status_code == 500 and resp.get_json() == {"error": "internal error"}
    assert b"secret detail" not in resp.data


def test_json_error_extra():
    app = common.create_app_base("t")
    with app.app_context():
        resp = common.json_error(409, "conflict", key="k1")
    assert resp.status_code == 409
    assert json.loads(resp.data) == {"error": "conflict", "key": "k1"}


def test_hello_whoami():
    client = hello_app.create_app({}).test_client()
    assert client.get("/whoami").get_json() == {"authenticated": False, "subject": None}
    environ = _environ(_cert("client1"))[0]
    assert client.get("/whoami", environ_base=environ).get_json() == {"authenticated": True, "subject": "client1"}
    environ["SSL_CLIENT_VERIFY"] = "FAILED:certificate has expired"
    assert client.get("/whoami", environ_base=environ).get_json() == {"authenticated": False, "subject": None}
    assert client.get("/healthcheck").get_json() == {"status": "ok"}


def test_hello_config_from_env(tmp_path, monkeypatch):
    path = tmp_path / "hello.json"
    path.write_text(json.dumps({"max_content_length": 5}))
    monkeypatch.setenv(hello_app.CONFIG_ENV, str(path))
    app = hello_app.create_app()
    assert app.config["MAX_CONTENT_LENGTH"] == 5
    # the module-level WSGI callable serves requests
    client = app.test_client()
    assert client.get("/healthcheck").status_code == 200
    assert callable(hello_app.application)
