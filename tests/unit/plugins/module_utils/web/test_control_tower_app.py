# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control tower app: through Flask's test client (nginx-style SSL_CLIENT_* environ) and
served over real TLS on loopback with client certificates (control_tower), driven by
ControlTowerClient and the site init/unseal flows."""
from __future__ import annotations

import base64
import os
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import ControlTower, ControlTowerError
from ansible_collections.hcp.core.plugins.module_utils.web import wsgi as common, control_tower_app
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import (
    ControlTowerClient,
    combine_shares,
    generate_site_key,
    init_site,
    open_sealed,
    public_key_pem,
    seal_to_site,
    unseal,
)


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ct-cred"))
    return pki.bootstrap_site_credentials(directory, "t", ["localhost"], ["operator", "intruder"])["paths"]


def cert_environ(path):
    with open(path) as handle:
        pem = handle.read()
    first = pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
    return {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(first)}


@pytest.fixture
def client(tmp_path, creds):
    app = control_tower_app.create_app({"store": str(tmp_path / "store"), "operators": ["operator"]})
    return app.test_client(), cert_environ(creds["client_operator_cert"]), cert_environ(creds["client_intruder_cert"])


def test_operator_and_site_routes(client):
    http, op, intruder = client
    pem = public_key_pem(generate_site_key())
    assert http.post("/v1/sites", json={"site": "site-a", "public_key": pem}).status_code == 401
    assert http.post("/v1/sites", json={"site": "site-a", "public_key": pem},
                     environ_base=dict(op, SSL_CLIENT_VERIFY="FAILED:x")).status_code == 401
    response = http.post("/v1/sites", json={"site": "site-a", "public_key": pem}, environ_base=intruder)
    assert response.status_code == 403 and "not a control tower operator" in response.get_json()["error"]
    response = http.post("/v1/sites", json={"site": "site-a", "public_key": pem}, environ_base=op)
    assert response.status_code == 201 and response.get_json()["changed"] is True
    assert http.post("/v1/sites", json={"site": "site-a", "public_key": pem}, environ_base=op).status_code == 200
    response = http.post("/v1/sites/site-a/token", environ_base=op)
    assert response.status_code == 201 and response.headers["Cache-Control"] == "no-store"
    token = response.get_json()["token"]
    auth = {"Authorization": "Bearer " + token}
    # the token has no operator rights; the operator certificate has no site rights
    assert http.post("/v1/sites/site-a/token", headers=auth).status_code == 401
    assert http.post("/v1/sites/site-a/reallow-unwrap", headers=auth).status_code == 401
    assert http.post("/v1/sites/site-a/unwrap", environ_base=op).status_code == 401
    bundle = seal_to_site(pem, b"s" * 32, "site-a", "seal-key")
    assert http.put("/v1/sites/site-a/bundle", json={"bundle": bundle}, headers=auth).get_json() == {"stored": True}
    response = http.post("/v1/sites/site-a/unwrap", headers=auth)
    assert response.status_code == 200 and response.get_json()["bundle"] == bundle
    response = http.post("/v1/sites/site-a/unwrap", headers=auth)
    assert response.status_code == 423 and "re-allow" in response.get_json()["error"]
    response = http.post("/v1/sites/site-a/reallow-unwrap", environ_base=op)
    assert response.get_json()["changed"] is True and response.get_json()["status"]["unwrap_allowed"] is True
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 200
    status = http.get("/v1/sites/site-a", environ_base=op).get_json()
    assert status["counts"]["unwraps"] == 2 and token not in str(status)
    assert http.get("/v1/sites/site-z", environ_base=op).status_code == 404
    assert http.delete("/v1/sites/site-a", environ_base=op).get_json() == {"deleted": True}


def _site_with_bundle(http, op, site="site-a"):
    pem = public_key_pem(generate_site_key())
    assert http.post("/v1/sites", json={"site": site, "public_key": pem}, environ_base=op).status_code == 201
    auth = {"Authorization": "Bearer " + http.post("/v1/sites/%s/token" % site, environ_base=op).get_json()["token"]}
    first = seal_to_site(pem, b"s" * 32, site, "seal-key")
    assert http.put("/v1/sites/%s/bundle" % site, json={"bundle": first}, headers=auth).status_code == 200
    return pem, auth, first


def test_site_token_cannot_rearm_the_unwrap(client):
    http, op, intruder = client
    pem, auth, first = _site_with_bundle(http, op)
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 200
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 423
    # the attack: the token holder stores a bundle again (its own, or the same) to re-arm the unwrap
    forged = seal_to_site(pem, b"f" * 32, "site-a", "seal-key")
    for bundle in (forged, first):
        response = http.put("/v1/sites/site-a/bundle", json={"bundle": bundle}, headers=auth)
        assert response.status_code == 403 and "needs a control tower operator" in response.get_json()["error"]
    # a certificate that is not an operator's adds nothing
    response = http.put("/v1/sites/site-a/bundle", json={"bundle": forged}, headers=auth, environ_base=intruder)
    assert response.status_code == 403
    assert http.post("/v1/sites/site-a/reallow-unwrap", headers=auth).status_code == 401
    assert http.post("/v1/sites/site-a/reallow-unwrap", headers=auth, environ_base=intruder).status_code == 403
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 423  # still locked
    status = http.get("/v1/sites/site-a", environ_base=op).get_json()
    assert status["unwrap_allowed"] is False and status["counts"]["refused_stores"] == 3 and status["counts"]["stores"] == 1
    # an operator (certificate and token) may replace the bundle, which re-arms the unwrap
    assert http.put("/v1/sites/site-a/bundle", json={"bundle": forged}, headers=auth, environ_base=op).status_code == 200
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).get_json()["bundle"] == forged
    # a re-initialisation re-registers with replace (operator): the new token stores the new first bundle
    other = public_key_pem(generate_site_key())
    assert http.post("/v1/sites", json={"site": "site-a", "public_key": other, "replace": True},
                     environ_base=op).status_code == 201
    fresh = {"Authorization": "Bearer " + http.post("/v1/sites/site-a/token", environ_base=op).get_json()["token"]}
    bundle = seal_to_site(other, b"s" * 32, "site-a", "seal-key")
    assert http.put("/v1/sites/site-a/bundle", json={"bundle": bundle}, headers=fresh).status_code == 200
    assert http.put("/v1/sites/site-a/bundle", json={"bundle": bundle}, headers=fresh).status_code == 403


@pytest.mark.parametrize("operators", [[], None])
def test_no_operator_list_means_no_operator(tmp_path, creds, operators):
    config = {"store": str(tmp_path / "store")}
    if operators is not None:
        config["operators"] = operators
    http = control_tower_app.create_app(config).test_client()
    op = cert_environ(creds["client_operator_cert"])
    pem = public_key_pem(generate_site_key())
    response = http.post("/v1/sites", json={"site": "site-a", "public_key": pem}, environ_base=op)
    assert response.status_code == 403 and "no operator is configured" in response.get_json()["error"]
    # a site registered beforehand (same store) cannot be re-armed by any client-CA certificate either
    tower = ControlTower(str(tmp_path / "store"))
    tower.register_site("site-a", pem)
    auth = {"Authorization": "Bearer " + tower.issue_token("site-a")}
    tower.store_bundle("site-a", auth["Authorization"][7:], seal_to_site(pem, b"s" * 32, "site-a", "seal-key"))
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 200
    for path in ("/v1/sites/site-a/reallow-unwrap", "/v1/sites/site-a/token"):
        assert http.post(path, environ_base=op).status_code == 403
    assert http.get("/v1/sites/site-a", environ_base=op).status_code == 403
    bundle = seal_to_site(pem, b"f" * 32, "site-a", "seal-key")
    assert http.put("/v1/sites/site-a/bundle", json={"bundle": bundle}, headers=auth, environ_base=op).status_code == 403
    assert http.post("/v1/sites/site-a/unwrap", headers=auth).status_code == 423


def test_bad_input_is_400_and_json(client):
    http, op, dummy = client
    assert http.post("/v1/sites", data="x", environ_base=op).status_code == 400
    response = http.post("/v1/sites", json={"site": "BAD/..", "public_key": "x"}, environ_base=op)
    assert response.status_code in (400, 404)
    assert http.post("/v1/sites", json={"site": "a", "public_key": "nope"}, environ_base=op).status_code == 400
    assert http.post("/v1/sites", json={"site": "a", "public_key": "x", "replace": "yes"},
                     environ_base=op).status_code == 400
    assert http.post("/v1/sites/nope/token", environ_base=op).status_code == 404
    assert http.put("/v1/sites/nope/bundle", json={"bundle": {}}, headers={"Authorization": "Basic x"}).status_code == 401
    bearer = {"Authorization": "Bearer hcpct1.x"}
    assert http.put("/v1/sites/nope/bundle", json={"bundle": {}}, headers=bearer).status_code == 400
    bundle = seal_to_site(public_key_pem(generate_site_key()), b"s" * 32, "nope", "seal-key")
    assert http.put("/v1/sites/nope/bundle", json={"bundle": bundle}, headers=bearer).status_code == 404
    assert http.post("/v1/sites/nope/unwrap", headers=bearer).status_code == 404
    assert http.get("/v1/nothing").get_json() == {"error": "not found"}
    assert http.post("/v1/sites", data="x" * 200000, environ_base=op).status_code == 413


def test_site_name_with_trailing_newline_is_400_and_creates_nothing(client, tmp_path):
    """A trailing "$" let "site-a\\n" through: registering it created sites/site-a\\n.json."""
    http, op, dummy = client
    pem = public_key_pem(generate_site_key())
    for name in ("site-a\n", "site-a\r\n", "\nsite-a"):
        response = http.post("/v1/sites", json={"site": name, "public_key": pem}, environ_base=op)
        assert response.status_code == 400, response.get_json()
        assert "site name must match" in response.get_json()["error"]
    assert http.get("/v1/sites/site-a%0A", environ_base=op).status_code == 400
    assert http.delete("/v1/sites/site-a%0A", environ_base=op).status_code == 400
    sites_dir = tmp_path / "store" / "sites"
    assert os.listdir(str(sites_dir)) == []
    response = http.post("/v1/sites", json={"site": "s" + "x" * 5000 + "\n", "public_key": pem}, environ_base=op)
    assert response.status_code == 400 and len(response.get_json()["error"]) < 300


def _pem_around(der):
    body = base64.encodebytes(der).decode("ascii")
    return "-----BEGIN PUBLIC KEY-----\n%s-----END PUBLIC KEY-----\n" % body


def test_public_key_must_parse_as_an_x25519_key(client, tmp_path):
    """Only BEGIN/END markers were checked: garbage between them was registered as the site key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    http, op, dummy = client
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    rsa_pem = rsa.generate_private_key(65537, 2048).public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
    good = public_key_pem(generate_site_key())
    bad_keys = [
        "-----BEGIN PUBLIC KEY-----\nthis is not a key\n-----END PUBLIC KEY-----\n",
        _pem_around(os.urandom(44)),
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----",
        good.replace("-----BEGIN PUBLIC KEY-----\n", "-----BEGIN PUBLIC KEY-----\n" + "QUFB" * 2000 + "\n"),
        rsa_pem, ec_pem,
    ]
    for key in bad_keys:
        response = http.post("/v1/sites", json={"site": "site-a", "public_key": key}, environ_base=op)
        assert response.status_code == 400, (key[:80], response.get_json())
        assert "public_key" in response.get_json()["error"]
    assert os.listdir(str(tmp_path / "store" / "sites")) == []
    # a site key with text around it is stored as its canonical PEM
    response = http.post("/v1/sites", json={"site": "site-a", "public_key": "comment\n" + good + "\n\n"}, environ_base=op)
    assert response.status_code == 201 and response.get_json()["status"]["public_key"] == good
    assert http.post("/v1/sites", json={"site": "site-a", "public_key": good}, environ_base=op).status_code == 200


def test_config_is_checked(tmp_path, monkeypatch):
    with pytest.raises(common.ServiceConfigError):
        control_tower_app.create_app({})
    for operators in ("admin", [""], [None]):
        with pytest.raises(common.ServiceConfigError):
            control_tower_app.create_app({"store": str(tmp_path), "operators": operators})
    monkeypatch.delenv(control_tower_app.CONFIG_ENV, raising=False)
    with pytest.raises(common.ServiceConfigError):
        control_tower_app.create_app()


def test_init_and_unseal_over_tls(control_tower):
    url, ca_file = control_tower["url"], control_tower["ca_file"]
    operator = ControlTowerClient(url, ca_file, control_tower["client_cert"], control_tower["client_key"], timeout=30)
    init = init_site("site-a", ["c1", "c2", "c3"], tower=operator)
    site_side = ControlTowerClient(url, ca_file, timeout=30)  # no certificate: token only
    result = unseal([init.shares["c3"], init.shares["c1"]], tower=site_side, site="site-a")
    assert result.seal_key == init.seal_key and result.used == [1, 3]
    with pytest.raises(ControlTowerError) as info:
        unseal([init.shares["c3"], init.shares["c1"]], tower=site_side)
    assert info.value.status == 423
    with pytest.raises(ControlTowerError) as info:
        site_side.reallow_unwrap("site-a")
    assert info.value.status == 401
    facts, changed = operator.reallow_unwrap("site-a")
    assert changed and facts["unwrap_allowed"]
    assert unseal([init.shares["c2"], init.shares["c1"]], tower=site_side).seal_key == init.seal_key
    # replacing the stored bundle: refused with the token alone, done with the operator certificate too
    secret, dummy = combine_shares([init.shares["c1"], init.shares["c2"]])
    site_key = X25519PrivateKey.from_private_bytes(base64.b64decode(secret["site_key"]))
    token = open_sealed(site_key, secret["token"], "site-a", "token").decode()
    bundle = seal_to_site(init.public_key, init.seal_key, "site-a", "seal-key")
    with pytest.raises(ControlTowerError) as info:
        site_side.store_bundle("site-a", token, bundle)
    assert info.value.status == 403
    with pytest.raises(ControlTowerError) as info:
        site_side.store_bundle("site-a", token, bundle, as_operator=True)  # no certificate to send
    assert info.value.status == 403
    operator.store_bundle("site-a", token, bundle, as_operator=True)
    assert operator.status("site-a")["unwrap_allowed"] is True
    assert operator.status("site-b") == {"site": "site-b", "registered": False}
    unverified = ControlTowerClient(url, None, timeout=10)
    with pytest.raises(ControlTowerError, match="cannot reach") as info:
        unverified.status("site-a")
    assert info.value.status == 0


@pytest.mark.parametrize("body", [
    "[" * 20000 + "]" * 20000,
    '{"site": "site-a", "public_key": %s}' % ("[" * 20000 + "]" * 20000),
    '{"site": "site-a", "public_key": NaN, "replace": Infinity}',
    '{"site": "site-a", "replace": %s}' % ("9" * 5000),
    '{"site": "\\ud800", "public_key": "x"}',
])
def test_hostile_json_bodies_are_400(client, tmp_path, body):
    """Deep documents made get_json raise RecursionError (a 500); now every operator and site
    route answers 400 JSON through the bounded decoder and stores nothing."""
    http, op, _intruder = client
    store = tmp_path / "store"
    before = sorted(os.walk(str(store)))
    response = http.post("/v1/sites", data=body, content_type="application/json", environ_base=op)
    assert response.status_code == 400 and response.is_json, (response.status_code, response.data[:200])
    response = http.put("/v1/sites/site-a/bundle", data=body, content_type="text/plain",
                        headers={"Authorization": "Bearer hcpct1." + "A" * 43})
    assert response.status_code == 400 and response.is_json, (response.status_code, response.data[:200])
    assert sorted(os.walk(str(store))) == before
