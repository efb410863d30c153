# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy service through Flask's test client: real engine, real policy and audit files."""

from __future__ import annotations

import datetime
import json
import os
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.hcp.core.plugins.module_utils.policy.engine import PolicyValidationError
from ansible_collections.hcp.core.plugins.module_utils.web import policy_app
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import ServiceConfigError

POLICY = {"start": "main", "filters": {"main": [
    {"if": {"not-equal": ".hookname", "value": "enrollsvc::add_request"}, "action": "reject"},
    {"name": "kdc-only", "if": [{"contains": ".assets", "value": "pkinit-kdc"},
                                {"not-elementof": ".hostname", "value": ["kdc1"]}], "action": "reject"},
    {"name": "ok", "action": "accept"}]}}


def write_policy(path, doc, bump=0):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(doc) if not isinstance(doc, str) else doc)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1000000000))


@pytest.fixture
def service(tmp_path):
    policy_file = str(tmp_path / "policy.json")
    audit = str(tmp_path / "audit.jsonl")
    write_policy(policy_file, POLICY)
    app = policy_app.create_app({"policy_file": policy_file, "audit_log": audit, "max_body": 4096, "require_client_cert": False})
    return app.test_client(), policy_file, audit


def audit_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def run(client, params, hookname="enrollsvc::add_request", **kwargs):
    return client.post("/run", json={"hookname": hookname, "request_uid": "u-1", "params": params}, **kwargs)


def test_accept_echoes_params_and_reject_names_rule(service):
    client, _policy_file, audit = service
    params = {"hostname": "kdc1", "assets": ["pkinit-kdc"], "secret": "TOPSECRET"}
    response = run(client, params)
    assert response.status_code == 200
    assert response.get_json() == {"decision": "accept", "rule": "ok", "params": params}
    response = run(client, {"hostname": "ws1", "assets": ["pkinit-kdc"], "secret": "TOPSECRET"})
    assert response.status_code == 403
    assert response.get_json()["decision"] == "reject" and response.get_json()["rule"] == "kdc-only"
    assert run(client, params, hookname="kdcsvc::add").status_code == 403
    lines = audit_lines(audit)
    assert [(line["decision"], line["rule"], line["hookname"], line["request_uid"]) for line in lines] == [
        ("accept", "ok", "enrollsvc::add_request", "u-1"), ("reject", "kdc-only", "enrollsvc::add_request", "u-1"),
        ("reject", "main", "kdcsvc::add", "u-1")]
    assert all(set(line) == {"time", "hookname", "request_uid", "decision", "rule", "reason", "caller", "policy_sha256"}
               for line in lines)
    with open(audit, encoding="utf-8") as handle:
        text = handle.read()
    assert "TOPSECRET" not in text and "kdc1" not in text


def test_reference_form_fields(service):
    client = service[0]
    response = client.post("/run", data={"hookname": "enrollsvc::add_request", "request_uid": "u",
                                         "params": json.dumps({"hostname": "x", "assets": []})})
    assert response.status_code == 200
    response = client.post("/run", data={"hookname": "enrollsvc::add_request", "request_uid": "u", "params": "{bad"})
    assert response.status_code == 401


@pytest.mark.parametrize("body,status", [
    (b"{not json", 401),
    (b"[1, 2]", 400),
    (json.dumps({"request_uid": "u", "params": {}}).encode(), 400),
    (json.dumps({"hookname": "h", "params": {}}).encode(), 400),
    (json.dumps({"hookname": "h", "request_uid": "u", "params": [1]}).encode(), 400),
    (json.dumps({"hookname": "h", "request_uid": "u", "params": "{bad"}).encode(), 401),
    (json.dumps({"hookname": "h", "request_uid": "u", "params": {"x": "y" * 5000}}).encode(), 413),
])
def test_bad_requests(service, body, status):
    client = service[0]
    response = client.post("/run", data=body, content_type="application/json")
    assert response.status_code == status
    assert "error" in response.get_json()


def test_deep_params_rejected_before_evaluation(service):
    client, _policy_file, audit = service
    deep = {}
    cursor = deep
    for _level in range(100):
        cursor["d"] = {}
        cursor = cursor["d"]
    response = run(client, deep)
    assert response.status_code == 400 and "nested deeper" in response.get_json()["error"]
    assert audit_lines(audit)[-1]["decision"] == "bad_request"


def test_engine_error_is_500_and_audited(tmp_path):
    policy_file = str(tmp_path / "p.json")
    write_policy(policy_file, {"start": "a", "filters": {"a": {"action": "call", "call": "b", "scope": [
        {"import": ".x", "source": ".missing"}], "on-return": "accept"}, "b": {"action": "return"}}})
    client = policy_app.create_app({"policy_file": policy_file, "audit_log": str(tmp_path / "a"), "require_client_cert": False}).test_client()
    response = run(client, {})
    assert response.status_code == 500 and response.get_json()["decision"] == "error"
    assert audit_lines(str(tmp_path / "a"))[0]["decision"] == "error"


def test_reload_only_valid_policies(service):
    client, policy_file, _audit = service
    health = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()
    assert health["status"] == "ok" and len(health["policy_sha256"]) == 64
    assert run(client, {"hostname": "ws1", "assets": []}).status_code == 200
    write_policy(policy_file, {"start": "x", "filters": {"x": {"action": "reject"}}}, bump=1)
    assert run(client, {"hostname": "ws1", "assets": []}).status_code == 403
    new_sha = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()["policy_sha256"]
    assert new_sha != health["policy_sha256"]
    write_policy(policy_file, {"start": "x", "filters": {"x": {"action": "frob"}}}, bump=2)
    assert run(client, {"hostname": "ws1", "assets": []}).status_code == 403  # the last good policy stays
    health = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()
    assert health["status"] == "stale_policy_error" and health["policy_sha256"] == new_sha
    assert 'unknown action "frob"' in health["error"]
    assert client.get("/healthcheck").get_json() == {"status": "stale_policy_error"}  # anonymous
    os.rename(policy_file, policy_file + ".gone")
    anonymous = client.get("/healthcheck").get_data(as_text=True)
    assert policy_file not in anonymous and "No such file" not in anonymous and "stale_policy_error" in anonymous
    os.rename(policy_file + ".gone", policy_file)
    write_policy(policy_file, "{truncated", bump=3)
    assert run(client, {"hostname": "ws1", "assets": []}).status_code == 403
    write_policy(policy_file, POLICY, bump=4)
    assert run(client, {"hostname": "ws1", "assets": []}).status_code == 200
    assert client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()["status"] == "ok"


def test_invalid_policy_at_start_refuses_to_start(tmp_path):
    policy_file = str(tmp_path / "p.json")
    write_policy(policy_file, {"start": "a", "filters": {"a": {"action": "jump", "jump": "nowhere"}}})
    with pytest.raises(PolicyValidationError, match='no filter named "nowhere"'):
        policy_app.create_app({"policy_file": policy_file, "require_client_cert": False})


def test_no_caller_check_only_when_configured_so(tmp_path):
    """Fail closed: a policy service whose configuration names no service-client CA does not
    start (it used to answer anyone who got through nginx)."""
    policy_file = str(tmp_path / "p.json")
    write_policy(policy_file, {"start": "a", "filters": {"a": {"action": "accept"}}})
    for config in ({}, {"require_client_cert": True}, {"service_client_ca": ""}):
        with pytest.raises(ServiceConfigError, match="needs service_client_ca"):
            policy_app.create_app(dict(config, policy_file=policy_file))
    with pytest.raises(ServiceConfigError, match="must be a boolean"):
        policy_app.create_app({"policy_file": policy_file, "require_client_cert": "no"})
    client = policy_app.create_app({"policy_file": policy_file, "require_client_cert": False}).test_client()
    assert client.post("/run", json={"hookname": "h", "request_uid": "u", "params": {}}).status_code == 200


def test_caller_identity_in_audit(service):
    client, _policy_file, audit = service
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enrollsvc.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    run(client, {}, environ_base={"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(pem, safe="")})
    run(client, {}, environ_base={"SSL_CLIENT_VERIFY": "FAILED:x", "SSL_CLIENT_CERT": quote(pem, safe="")})
    lines = audit_lines(audit)
    assert lines[0]["caller"] == "CN=enrollsvc.example.test"
    assert lines[1]["caller"] is None


@pytest.mark.parametrize("body,status", [
    ("[" * 1000 + "]" * 1000, 400),
    (json.dumps({"hookname": "h", "request_uid": "u", "params": "[" * 1000 + "]" * 1000}), 400),
    ('{"hookname": "h", "request_uid": "u", "params": {"a": NaN}}', 401),
    ('{"hookname": "h", "request_uid": "u", "params": {"a": 1e400}}', 401),
    ('{"hookname": "\\ud800", "request_uid": "u", "params": {}}', 401),
])
def test_hostile_json_is_a_4xx_without_decision(service, body, status):
    """Nesting beyond the decoder's bound is a 400 (like data nested deeper than 64 levels);
    NaN, overflowing numbers and lone surrogates are not JSON data (401, as any bad JSON)."""
    client, _policy_file, audit = service
    response = client.post("/run", data=body, content_type="application/json")
    assert response.status_code == status and response.is_json and "decision" not in response.get_json()
    assert not os.path.exists(audit) or all(line["decision"] == "bad_request" for line in audit_lines(audit))
