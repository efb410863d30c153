# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server app over real TLS on loopback with real client certificates, its store sealed to
a real swtpm: the client library end to end, every bad input of issue 18 (names, unknown items,
certificates without the purpose or from another CA, replayed and forged auth-challenge answers,
measurement-bound items asked by a host whose measurement changed, the server's own credentials)."""

from __future__ import annotations

import base64
import json
import os
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.keyserver import auth as ks_auth
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClientError, ensure_item, sign_challenge
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import StoreOpenError
from ansible_collections.hcp.core.plugins.module_utils.web import keyserver_app
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import M1, M2, KeyServerSite, tree_digest

NAME = "datica-test/storage-disk-key"


class Clock(object):
    def __init__(self):
        import time  # pylint: disable=import-outside-toplevel
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def site(swtpm, tmp_path, clock):
    value = KeyServerSite(swtpm, tmp_path).start(clock=clock)
    yield value
    value.close()


def raw_post(site, who, body, session=None):
    """One POST as ``who`` (a client name, or None for no certificate); the requests response."""
    http = session or requests.Session()
    return http.post(site.url + "/v1/request", json=body if not isinstance(body, bytes) else None,
                     data=body if isinstance(body, bytes) else None, verify=site.ca_file,
                     cert=site.cred(who) if who else None, timeout=30)


def proof(site, who, body, http=None):
    """Ask, get a challenge, answer it: (challenge, signature b64, the answered response)."""
    first = raw_post(site, who, body, http)
    assert first.status_code == 401 and first.json()["status"] == "auth-challenge", first.text
    challenge = first.json()["data"]["challenge"]
    with open(site.cred(who)[1], "rb") as handle:
        key = pki.load_private_key(handle.read())
    signature = base64.b64encode(sign_challenge(key, challenge)).decode()
    answered = raw_post(site, who, dict(body, credentials={"challenge": challenge, "signature": signature}), http)
    return challenge, signature, answered


def retrieve_body(name=NAME):
    return {"protocol": 1, "action": "retrieve", "name": name}


def test_store_retrieve_list_delete_through_the_client(site):
    deploy = site.client("deploy")
    assert deploy.store(NAME, b"disk-key-1")["changed"]
    assert not deploy.store(NAME, b"disk-key-1")["changed"]  # idempotent: the keyed content hash matches
    assert deploy.store(NAME, b"disk-key-2")["item_version"] == 2
    assert deploy.authentications == 1  # one proof of possession, then the session token
    node1 = site.client("node1")
    got = node1.retrieve(NAME)
    assert (got["data"], got["item_version"]) == (b"disk-key-2", 2)
    assert node1.retrieve(NAME, item_version=1)["data"] == b"disk-key-1"
    assert [i["name"] for i in node1.list("datica-test/")] == [NAME]
    assert ensure_item(deploy, NAME, data=b"disk-key-2") == {"changed": False, "name": NAME, "item_version": 2,
                                                             "exportable": True}
    assert ensure_item(deploy, NAME, data=b"disk-key-3", check_mode=True)["changed"]
    assert node1.retrieve(NAME)["item_version"] == 2  # check mode stored nothing
    assert ensure_item(deploy, NAME, state="absent") == {"changed": True, "name": NAME, "deleted": True}
    assert ensure_item(deploy, NAME, state="absent")["changed"] is False
    audit = site.audit()
    assert {"caller", "action", "name", "decision", "status"} <= set(audit[-1])
    text = open(site.audit_file, "rb").read()
    for secret in (b"disk-key-1", b"disk-key-2", base64.b64encode(b"disk-key-1"), base64.b64encode(b"disk-key-2")):
        assert secret not in text


def test_unknown_resource(site):
    with pytest.raises(KeyServerClientError, match="no item datica-test/nope") as exc:
        site.client("node1").retrieve("datica-test/nope")
    assert exc.value.status == 404


@pytest.mark.parametrize("name", ["datica-test/../x", "/datica-test/x", "datica-test/x/", "datica-test/x\0y",
                                  "datica-test/" + "x" * 300, "datica-test", 7, None])
def test_bad_names_are_400_and_change_nothing(site, name):
    before = tree_digest(site.store_path)
    for body in ({"protocol": 1, "action": "store", "name": name, "data": "eA=="}, retrieve_body(name)):
        response = raw_post(site, "deploy", body)
        assert response.status_code == 400, response.text
        assert response.json()["status"] == "fail" and "resource name" in response.json()["error"]
    assert tree_digest(site.store_path) == before


@pytest.mark.parametrize("who,message", [
    ("plain", "lacks the key-server client purpose"),  # the site's CA, no key-server purpose
    ("foreign", "is not a key-server client of this site"),  # same name and purpose, another CA
    (None, "a verified client certificate is required"),
])
def test_callers_without_a_key_server_certificate(site, who, message):
    site.client("deploy").store(NAME, b"disk-key")
    response = raw_post(site, who, retrieve_body())
    assert response.status_code == 403 and message in response.json()["error"]
    assert "disk-key" not in response.text and site.audit()[-1]["decision"] == "deny"


def test_acl_default_deny(site):
    site.client("deploy").store(NAME, b"disk-key")
    node1 = site.client("node1")
    with pytest.raises(KeyServerClientError, match="store of datica-test/x denied .* by the ACL") as exc:
        node1.store("datica-test/x", b"planted")
    assert exc.value.status == 403
    with pytest.raises(KeyServerClientError, match="no rule covers this name"):
        site.client("deploy").store("other-domain/x", b"x")
    site.client("deploy").store("datica-test/deploy-only/k", b"deploy-secret")
    with pytest.raises(KeyServerClientError, match="retrieve of datica-test/deploy-only/k denied"):
        node1.retrieve("datica-test/deploy-only/k")
    assert "datica-test/deploy-only/k" not in [i["name"] for i in node1.list("datica-test/")]
    with pytest.raises(KeyServerClientError, match="reserved for the key-server itself"):
        site.client("deploy").retrieve("keyserver/master")


def test_non_exportable_item_only_to_matching_measurement(site):
    deploy = site.client("deploy")
    deploy.store(NAME, b"bound-key", exportable=False, measurements=[M1])
    assert site.client("node1").retrieve(NAME)["data"] == b"bound-key"
    # node2: same profile, but its measurement changed (golden PCR mismatch)
    with pytest.raises(KeyServerClientError, match="not exportable.*does not") as exc:
        site.client("node2").retrieve(NAME)
    assert exc.value.status == 403
    assert site.client("node2").list("datica-test/") == []  # never listed to it either
    with pytest.raises(KeyServerClientError, match="not exportable"):
        deploy.retrieve(NAME)
    response = raw_post(site, "deploy", {"protocol": 1, "action": "store", "name": NAME, "data": "eA==", "exportable": False})
    assert response.status_code == 400 and "needs measurements" in response.json()["error"]


def test_the_server_never_stores_nor_releases_its_own_credentials(site):
    with open(site.server_key, "rb") as handle:
        server_key = handle.read()
    with pytest.raises(KeyServerClientError, match="never stores nor releases its own credentials"):
        site.client("deploy").store("datica-test/stolen", server_key)
    # planted in the store behind the API's back: still never released
    site.store.store("datica-test/planted", server_key)
    with pytest.raises(KeyServerClientError, match="never stores nor releases its own credentials"):
        site.client("node1").retrieve("datica-test/planted")


def test_replayed_and_forged_challenge_answers(site, clock):
    site.client("deploy").store(NAME, b"disk-key")
    body = retrieve_body()
    challenge, signature, answered = proof(site, "node1", body)
    assert answered.status_code == 200 and base64.b64decode(answered.json()["data"]["data"]) == b"disk-key"
    token = answered.json()["session"]["token"]
    # replay of the same answer
    replay = raw_post(site, "node1", dict(body, credentials={"challenge": challenge, "signature": signature}))
    assert replay.status_code == 403 and "already answered (replayed answer)" in replay.json()["error"]
    # a fresh challenge answered with another key (a copied certificate without its key)
    other_key = pki.new_private_key()
    fresh = raw_post(site, "node1", body).json()["data"]["challenge"]
    forged = raw_post(site, "node1", dict(body, credentials={
        "challenge": fresh, "signature": base64.b64encode(sign_challenge(other_key, fresh)).decode()}))
    assert forged.status_code == 403 and "not signed with the key of the client certificate" in forged.json()["error"]
    # an altered challenge (the signature made over it, by the right key)
    altered = fresh[:10] + ("A" if fresh[10] != "A" else "B") + fresh[11:]
    with open(site.cred("node1")[1], "rb") as handle:
        key1 = pki.load_private_key(handle.read())
    response = raw_post(site, "node1", dict(body, credentials={
        "challenge": altered, "signature": base64.b64encode(sign_challenge(key1, altered)).decode()}))
    assert response.status_code == 403 and "not issued by this key-server" in response.json()["error"]
    # node1's challenge and answer presented by node2
    stolen = raw_post(site, "node1", body).json()["data"]["challenge"]
    response = raw_post(site, "node2", dict(body, credentials={
        "challenge": stolen, "signature": base64.b64encode(sign_challenge(key1, stolen)).decode()}))
    assert response.status_code == 403 and "issued to another certificate" in response.json()["error"]
    # node1's session token presented by node2
    response = raw_post(site, "node2", dict(body, credentials={"session": token}))
    assert response.status_code == 403 and "issued to another certificate" in response.json()["error"]
    # malformed answers
    for credentials in ({"challenge": "x", "signature": "eA=="}, {"challenge": fresh, "signature": "%%%"},
                        {"challenge": fresh}, {"session": "y" * 5000}, {"token": "z"}):
        response = raw_post(site, "node1", dict(body, credentials=credentials))
        assert 400 <= response.status_code < 500 and response.json()["status"] in ("fail", "auth-challenge"), credentials
    # an expired challenge, an expired session
    late = raw_post(site, "node1", body).json()["data"]["challenge"]
    assert raw_post(site, "node1", dict(body, credentials={"session": token})).status_code == 200
    clock.now += ks_auth.DEFAULT_SESSION_TTL + 1
    response = raw_post(site, "node1", dict(body, credentials={
        "challenge": late, "signature": base64.b64encode(sign_challenge(key1, late)).decode()}))
    assert response.status_code == 403 and "challenge has expired" in response.json()["error"]
    response = raw_post(site, "node1", dict(body, credentials={"session": token}))
    assert response.status_code == 401 and response.json()["status"] == "auth-challenge"
    assert "session has expired" in response.json()["reason"]


def test_bad_bodies_are_clear_4xx(site):
    for body, status, message in [
        (b"not json", 400, "JSON"), (b"[1]", 400, "JSON object"), (b"[" * 5000, 400, "nested"),
        ({"action": "retrieve", "name": NAME}, 400, "protocol must be 1"),
        ({"protocol": 2, "action": "retrieve", "name": NAME}, 400, "protocol must be 1"),
        ({"protocol": 1, "action": "fetch", "name": NAME}, 400, "action must be one of"),
        ({"protocol": 1, "action": "retrieve", "name": NAME, "data": "eA=="}, 400, "unknown field"),
        ({"protocol": 1, "action": "store", "name": NAME}, 400, "needs data"),
        ({"protocol": 1, "action": "store", "name": NAME, "data": "!!"}, 400, "not base64"),
        ({"protocol": 1, "action": "store", "name": NAME, "data": "eA==", "exportable": "no"}, 400, "boolean"),
        ({"protocol": 1, "action": "store", "name": NAME, "data": "eA==", "measurements": ["sha256:00"]}, 400, "pcrs-sha256"),
        ({"protocol": 1, "action": "retrieve", "name": NAME, "item_version": True}, 400, "item_version"),
        ({"protocol": 1, "action": "retrieve", "name": NAME, "item_version": 10 ** 12}, 400, "item_version"),
        ({"protocol": 1, "action": "list", "prefix": "../"}, 400, "prefix"),
        ({"protocol": 1, "action": "retrieve", "name": NAME, "credentials": "x"}, 400, "credentials must be an object"),
        ({"protocol": 1, "action": "store", "name": NAME, "data": "A" * (3 * 1024 * 1024)}, 413, "too large"),
    ]:
        response = raw_post(site, "deploy", body if isinstance(body, bytes) else json.dumps(body).encode())
        assert response.status_code == status, (body if len(str(body)) < 200 else str(body)[:200], response.text[:300])
        assert message in response.json()["error"], response.text[:300]


def test_swapped_tpm_stops_the_service(site, other_swtpm):
    before = tree_digest(site.store_path)
    with pytest.raises(StoreOpenError, match="TPM was replaced"):
        keyserver_app.create_app(dict(site.config, tcti=other_swtpm.tcti))
    assert tree_digest(site.store_path) == before


def test_service_opens_its_store_with_its_tpm(site):
    site.client("deploy").store(NAME, b"disk-key")
    app = keyserver_app.create_app(site.config)  # the master key unsealed by the configured TPM
    assert app.extensions["hcp_keyserver"]["store"].retrieve(NAME)[0] == b"disk-key"


def test_client_refuses_a_key_that_is_not_the_certificate_s(site):
    cert, _key = site.cred("node1")
    with pytest.raises(KeyServerClientError, match="client_key is not the key of client_cert"):
        type(site.client("node1"))(site.url, ca_file=site.ca_file, client_cert=cert, client_key=site.cred("node2")[1])
    node1 = site.client("node1")
    assert node1.list("datica-test/") == []
    assert M2 != M1


_JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                     max_leaves=12)
_FIELDS = st.sampled_from(["protocol", "action", "name", "prefix", "data", "exportable", "measurements", "dry_run",
                           "item_version", "credentials", "x"])
_VALUES = st.one_of(_JSON, st.sampled_from([1, "store", "retrieve", "delete", "list", NAME, "datica-test/", "eA==",
                                            {"session": "A" * 120}, {"challenge": "A" * 120, "signature": "eA=="}]))


# as test_fuzz_apis.py: the same examples every run; HCP_FUZZ_EXAMPLES=N (random examples) for a longer hunt
_FUZZ_EXAMPLES = int(os.environ.get("HCP_FUZZ_EXAMPLES", "0"))


@settings(max_examples=_FUZZ_EXAMPLES or 150, deadline=None, derandomize=not _FUZZ_EXAMPLES, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.dictionaries(_FIELDS, _VALUES, max_size=8) | _JSON)
def test_fuzzed_bodies_never_5xx_nor_change_the_store(site, body):
    """Random bodies from a verified key-server client, through the app (WSGI environ as nginx
    sets it): always a 4xx JSON answer (401 challenge at best, no credentials are valid), never a
    5xx, never a change on disk."""
    with open(site.cred("deploy")[0], "r", encoding="ascii") as handle:
        environ = {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(handle.read())}
    before = tree_digest(os.path.join(site.store_path, "items"))
    response = site.app.test_client().post("/v1/request", data=json.dumps(body), environ_base=environ)
    assert 400 <= response.status_code < 500, (body, response.status_code, response.get_data()[:300])
    assert response.get_json()["error" if response.status_code != 401 else "status"]
    assert tree_digest(os.path.join(site.store_path, "items")) == before


def test_verified_certificates_are_cached_but_never_past_their_validity(site, clock):
    """The app keeps a verified identity for a minute: a certificate that expired meanwhile is
    refused at the next check (the app's clock moved past its notAfter), whatever the cache held."""
    site.client("deploy").store(NAME, b"disk-key")
    node1 = site.client("node1")
    assert node1.retrieve(NAME)["data"] == b"disk-key"
    clock.now += 31 * 24 * 3600  # the test certificates are valid 30 days
    response = raw_post(site, "node1", retrieve_body())
    assert response.status_code == 403 and "is not a key-server client of this site" in response.json()["error"]
    assert "expired" in response.json()["error"] or "validity" in response.json()["error"] or "not valid" in response.json()["error"]
