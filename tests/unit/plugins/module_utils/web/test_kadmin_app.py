# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kadmin web API over loopback TLS with real client certificates, in front of the real
kadmin -l on a scratch realm, gated by the real policy app (also over TLS)."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminApiError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin
from ansible_collections.hcp.core.plugins.module_utils.web import kadmin_app
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import ServiceConfigError
from ansible_collections.hcp.core.tests.unit.krb_helpers import ADMIN, POLICY, REALM, KadminService, free_port, runs

HOST = "host/node1.example.test"
FULL = HOST + "@" + REALM


@pytest.fixture
def service(tmp_path):
    value = KadminService(tmp_path)
    yield value
    value.close()


@pytest.fixture
def fuzz_service(tmp_path):
    """The kadmin app through Flask's test client as a verified service caller (the environ nginx
    sets), the policy from a file: (app, environ, realm_names, kdc_conf)."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    service = KadminService(tmp_path / "svc", policy={"file": str(policy_file)})
    with open(service.admin[0], "r", encoding="ascii") as handle:
        environ = {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(handle.read())}
    yield service.app, environ, service.realm.names, service.realm.conf
    service.close()


def exists(service, name=FULL):
    """Read straight from the database with kadmin (not through the app)."""
    return Kadmin(service.realm.conf, REALM).exists(name)


def post(service, path, body, creds=None, raw=None):
    creds = service.admin if creds is None else creds
    return requests.post(service.url + path, json=body if raw is None else None, data=raw, verify=service.ca_file,
                         cert=creds or None, timeout=30)


def test_lifecycle_through_the_client(service, tmp_path):
    client = service.client()
    added = client.add(HOST, attributes=["requires-pre-auth"])
    assert added["principal"] == FULL and added["kvno"] == 1 and added["attributes"] == ["requires-pre-auth"]
    assert client.get(FULL)["kvnos"] == [1]
    keytab, kvno = client.ext_keytab(HOST)
    assert kvno == 1 and keytab.startswith(b"\x05\x02")
    path = tmp_path / "api.keytab"
    path.write_bytes(keytab)
    listing = subprocess.run(["ktutil", "--keytab=FILE:%s" % path, "list"], capture_output=True, text=True, check=True).stdout
    assert FULL in listing
    rotated = client.rotate(HOST)
    assert rotated["kvno"] == 2 and rotated["kvnos"] == [1, 2]
    assert client.rotate(HOST, keep_old=False)["kvnos"] == [3]
    deleted = client.delete(HOST)
    assert deleted["principal"] == FULL and deleted["deleted"] is True and deleted["request_uid"] == service.audit_lines()[-1]["request_uid"]
    with pytest.raises(KadminApiError) as exc:
        client.get(HOST)
    assert exc.value.status == 404
    with pytest.raises(KadminApiError) as exc:
        client.add(HOST) and client.add(HOST)
    assert exc.value.status == 409
    # one audit line per call, with the caller and no key material
    lines = service.audit_lines()
    assert [line["cmd"] for line in lines] == ["add", "get", "ext_keytab", "rotate", "rotate", "del", "get", "add", "add"]
    assert [line["status"] for line in lines] == [201, 200, 200, 200, 200, 200, 404, 201, 409]
    assert all(line["caller"] == ADMIN and line["principal"] == FULL for line in lines)
    text = open(service.audit, encoding="utf-8").read()
    assert base64.b64encode(keytab).decode() not in text
    assert keytab.hex() not in text and '"keytab"' not in text


def test_ext_keytab_answer_is_marked_secret_and_not_cached(service):
    service.client().add(HOST)
    answer = post(service, "/v1/ext_keytab", {"principal": HOST})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["secret"] is True and set(body) == {"principal", "kvno", "kvnos", "secret", "keytab", "request_uid"}


@pytest.mark.parametrize("who", ["enrolled_admin", "foreign_admin", "intruder", None])
def test_callers_other_than_service_clients_are_refused(service, who):
    """The attack: an enrolled host's certificate (enrollment CA) or one from another CA nginx
    trusts, carrying the authorised CN, or a service certificate with another CN, or none at all:
    each gets 403 for every command and nothing changes (the policy is never asked)."""
    service.client().add("host/existing.example.test")
    before = service.realm.names()
    runs_before = len(runs(service.realm.log))
    creds = getattr(service, who) if who else False
    for cmd in ("add", "get", "del", "ext_keytab", "rotate"):
        answer = post(service, "/v1/" + cmd, {"principal": "host/existing.example.test" if cmd != "add" else HOST}, creds=creds)
        assert answer.status_code == 403, cmd
        assert "keytab" not in answer.json()
    assert service.realm.names() == before and not exists(service)
    assert len(runs(service.realm.log)) == runs_before
    refused = service.audit_lines()[1:]
    assert len(refused) == 5 and all(line["result"] == "refused" and line["status"] == 403 for line in refused)


def test_expired_service_certificate_is_refused(service):
    """The attack: the authorised CN on a certificate of the right (service-client) CA that has
    expired. The TLS front end refuses it, and the app refuses it by itself too when a front end
    passes it on as verified (a misconfigured nginx): 403, the realm unchanged, no policy call."""
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    expired = service.credentials("expired-admin", "service", ADMIN, now=past, days=2)
    before = service.realm.names()
    try:
        answer = post(service, "/v1/add", {"principal": HOST}, creds=expired)
    except requests.exceptions.SSLError:
        pass  # refused in the handshake
    else:
        assert answer.status_code == 403

    def verified(creds):  # what a front end that let the certificate through would pass on
        with open(creds[0], "r", encoding="ascii") as handle:
            return {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(handle.read())}

    for creds, status in ((expired, 403), (service.admin, 404)):  # the same call by the valid admin: 404, no such principal
        answer = service.app.test_client().post("/v1/get", json={"principal": HOST}, environ_base=verified(creds))
        assert answer.status_code == status, answer.get_data(as_text=True)
    answer = service.app.test_client().post("/v1/add", json={"principal": HOST}, environ_base=verified(expired))
    assert answer.status_code == 403 and "not authorized" in answer.get_json()["error"]
    assert service.realm.names() == before and not exists(service)


def test_policy_reject_is_403_and_changes_nothing(service):
    answer = post(service, "/v1/add", {"principal": "host/denied.example.test"})
    assert answer.status_code == 403 and "no-denied-host" in answer.json()["error"]
    assert not exists(service, "host/denied.example.test@" + REALM)
    assert runs(service.realm.log) == []


def test_policy_down_is_503_and_changes_nothing(tmp_path):
    dead = {"url": "https://127.0.0.1:%d" % free_port(), "timeout": 2}
    service = KadminService(tmp_path, policy=dead)
    try:
        Kadmin(service.realm.conf, REALM).add(HOST)
        for cmd, body in (("add", {"principal": "host/new.example.test"}), ("del", {"principal": HOST}),
                          ("rotate", {"principal": HOST}), ("ext_keytab", {"principal": HOST}), ("get", {"principal": HOST})):
            answer = post(service, "/v1/" + cmd, body)
            assert answer.status_code == 503, cmd
            assert answer.json()["error"] == "policy service unavailable: request refused"
        assert not exists(service, "host/new.example.test@" + REALM)
        assert Kadmin(service.realm.conf, REALM).get(HOST)["kvno"] == 1   # not deleted, not rotated
        assert runs(service.realm.log) == []
    finally:
        service.close()


@pytest.mark.parametrize("principal, status", [
    ("*", 400), ("host/*", 400), ("-x", 400), ("--random-key", 400), ("a b", 400), ("a\nb", 400), (HOST + "\n", 400),
    ("x@OTHER.TEST", 400), ("a@b@" + REALM, 400), (5, 400), (None, 400), (["a"], 400), ("a" * 600, 400),
    ("krbtgt/" + REALM, 403), ("kadmin/admin", 403), ("iprop/kdc2.example.test", 403),
])
def test_bad_principals_never_reach_kadmin(service, principal, status):
    for cmd in ("add", "get", "del", "ext_keytab", "rotate"):
        answer = post(service, "/v1/" + cmd, {"principal": principal})
        assert answer.status_code == status, cmd
        assert "error" in answer.json()
    assert runs(service.realm.log) == []


@pytest.mark.parametrize("raw, status", [
    (b"not json", 400), (b"[1]", 400), (b'{"principal": "a", "extra": 1}', 400), (b'{"principal": "a", "attributes": "x"}', 400),
    (b'{"principal": "a", "attributes": ["trusted-for-delegation"]}', 400), (b'{"principal": "a", "expiration": "2099-02-30"}', 400),
    (b"[" * 100 + b"]" * 100, 400), (b'{"principal": "' + b"a" * 70000 + b'"}', 413), (b"\xff\xfe", 400),
])
def test_malformed_bodies_are_clear_4xx(service, raw, status):
    answer = post(service, "/v1/add", None, raw=raw)
    assert answer.status_code == status
    assert isinstance(answer.json()["error"], str)
    assert runs(service.realm.log) == []


def test_rotate_keep_old_must_be_boolean(service):
    service.client().add(HOST)
    answer = post(service, "/v1/rotate", {"principal": HOST, "keep_old": "no"})
    assert answer.status_code == 400
    assert Kadmin(service.realm.conf, REALM).get(HOST)["kvno"] == 1


def test_get_is_not_allowed_and_unknown_paths_are_404(service):
    assert requests.get(service.url + "/v1/get", verify=service.ca_file, cert=service.admin, timeout=10).status_code == 405
    assert post(service, "/v1/list", {"principal": "*"}).status_code == 404


def test_healthcheck_tells_anonymous_callers_nothing(service, tmp_path):
    anonymous = requests.get(service.url + "/healthcheck", verify=service.ca_file, timeout=10)
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    admin = requests.get(service.url + "/healthcheck", verify=service.ca_file, cert=service.admin, timeout=10)
    assert admin.json() == {"status": "ok", "realm": REALM}
    broken = kadmin_app.create_app(dict(service.config, kdc_conf=str(tmp_path / "missing.conf")))
    client = broken.test_client()
    answer = client.get("/healthcheck")
    assert answer.status_code == 503 and answer.get_json() == {"status": "unavailable"}


@pytest.mark.parametrize("change", [
    {"policy": None}, {"policy": {}}, {"policy": {"url": "http://127.0.0.1:1"}}, {"service_client_ca": None},
    {"authorized_clients": []}, {"authorized_clients": "orchestrator"}, {"kdc_conf": "relative.conf"},
    {"max_content_length": True},
])
def test_incomplete_configuration_refuses_to_start(service, change, tmp_path):
    config = dict(service.config, **change)
    with pytest.raises(ServiceConfigError):
        kadmin_app.create_app(config)
    (tmp_path / "not-pem").write_text("nothing")
    with pytest.raises(ServiceConfigError):
        kadmin_app.create_app(dict(service.config, service_client_ca=str(tmp_path / "not-pem")))


def test_policy_receives_principal_and_caller(service, tmp_path):
    service.client().add(HOST)
    lines = [json.loads(line) for line in open(tmp_path / "policy-audit.log", encoding="utf-8")]
    assert [(line["hookname"], line["decision"]) for line in lines] == [("kdcsvc::add", "accept")]
    assert lines[0]["request_uid"] == service.audit_lines()[0]["request_uid"]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
PRINCIPALS = st.one_of(JSON_VALUES, st.text(alphabet="abH/@.*?[]\\-_ \n\t\0é", max_size=30),
                       st.sampled_from(["krbtgt/" + REALM, "*", "-x", HOST + "@OTHER.TEST", "a@b@" + REALM]))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmd=st.sampled_from(["get", "del", "ext_keytab", "rotate", "add"]),
       body=st.one_of(st.builds(lambda p: {"principal": p}, PRINCIPALS), JSON_VALUES,
                      st.dictionaries(st.sampled_from(["principal", "attributes", "expiration", "keep_old", "x"]), JSON_VALUES,
                                      max_size=4)))
def test_fuzz_never_5xx_and_never_changes_the_realm(fuzz_service, cmd, body):
    app, environ, realm_names, kdc_conf = fuzz_service
    before = realm_names()
    answer = app.test_client().post("/v1/" + cmd, data=json.dumps(body), content_type="application/json", environ_base=environ)
    assert answer.status_code < 500
    payload = answer.get_json()
    if answer.status_code >= 400:
        assert isinstance(payload["error"], str) and len(payload["error"]) < 500
    else:  # only a valid add can succeed: undo it so the realm stays as it was
        assert cmd == "add" and answer.status_code == 201
        Kadmin(kdc_conf, REALM).delete(payload["principal"])
    assert realm_names() == before
