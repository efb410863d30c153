# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment API through Flask's test client, with a real swtpm EK, real git, and the
privilege-separated writer running as a separate process."""
from __future__ import annotations

import json
import os
import sys
import time
from urllib.parse import quote

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.enrollment.service import (
    EnrollmentService,
    ServiceConfigError,
    handle,
    socket_exchange,
    writer_service,
)
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app

PROFILE = {"assets": ["hostname", "rootfs-key", "https-server"]}


@pytest.fixture
def site(tmp_path, swtpm, monkeypatch):
    cred = tmp_path / "cred"
    paths = pki.bootstrap_site_credentials(str(cred), "test", ["enroll.example.test"], ["orchestrator"])["paths"]
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": str(cred), "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}},
              "service_client_ca": paths["svc_ca_cert"]}
    config_path = tmp_path / "enroll.json"
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    config["writer"] = [sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.service", str(config_path)]
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
        h = tpm.ekpubhash()
    with open(paths["client_orchestrator_cert"]) as handle:
        client_pem = handle.read()
    env = {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(client_pem)}
    return {"app": create_app(config), "env": env, "ek": ek, "hash": h, "db": db}


def call(site, method, path, auth=True, **kwargs):
    client = site["app"].test_client()
    return getattr(client, method)(path, environ_base=site["env"] if auth else {}, **kwargs)


def test_add_query_find_reenroll_delete(site, swtpm):
    db = site["db"]
    start = len(db.log())
    r = call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "node1.example.test", "profile": json.dumps(PROFILE)})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["ekpubhash"] == site["hash"]
    assert len(db.log()) == start + 1
    assert "orchestrator" in db.log()[0]["message"]
    q = call(site, "get", "/v1/query", query_string={"ekpubhash": site["hash"][:6]}).get_json()
    assert q["entries"][0]["hostname"] == "node1.example.test"
    assert "rootfs.key.sealed" in q["entries"][0]["files"]
    assert call(site, "get", "/v1/find", query_string={"hostname_regex": "^node1"}).get_json()["entries"][0]["ekpubhash"] == site["hash"]
    old = db.get(site["hash"])["https-server.pem"]
    r = call(site, "post", "/v1/reenroll", data={"ekpubhash": site["hash"]})
    assert r.status_code == 201, r.get_json()
    entry = db.get(site["hash"])
    assert entry["https-server.pem"] != old
    with swtpm.open() as tpm:
        assert len(envelope.unseal(tpm, envelope.loads(entry["rootfs.key.sealed"]))) == 64
    signer = call(site, "get", "/v1/get-asset-signer")
    assert b"PUBLIC KEY" in signer.data
    r = call(site, "post", "/v1/delete", data={"ekpubhash": site["hash"]})
    assert r.status_code == 200 and r.get_json()["entries"][0]["hostname"] == "node1.example.test"
    assert db.get(site["hash"]) is None
    assert site["app"].test_client().get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()["db_head"] == db.head()
    assert call(site, "get", "/healthcheck").get_json() == {"status": "ok"}  # through nginx: the status only


@pytest.mark.parametrize(
    "data,status,match",
    [
        ({"hostname": "", "profile": "{}"}, 400, "hostname"),
        ({"hostname": "node1.example.test", "profile": "{nope"}, 400, "JSON"),
        ({"hostname": "node1.example.test", "profile": json.dumps({"assets": ["nope"]})}, 400, "unknown asset generator"),
        ({"hostname": "node1.example.test", "profile": "x" * 70000}, 400, "larger"),
        ({"hostname": "node1.example.test", "profile": json.dumps({"attest": {"pcrs": {"sha256": {"7": "00" * 31 + " 0"}}}})},
         400, "attest.pcrs: sha256 PCR 7 value must be 32 bytes"),
        ({"hostname": "node1.example.test", "profile": json.dumps({"attest": {"pcrs": {"sha256": {"07": "00" * 32}}}})},
         400, "bad PCR index '07'"),
    ],
)
def test_bad_add_writes_nothing(site, data, status, match):
    head = site["db"].head()
    r = call(site, "post", "/v1/add", data=dict(data, ekpub=site["ek"]))
    assert r.status_code == status
    assert match in r.get_json()["error"]
    assert site["db"].head() == head


def test_malformed_ek_duplicate_unknown_and_unauthenticated(site):
    head = site["db"].head()
    r = call(site, "post", "/v1/add", data={"ekpub": "bm90IGFuIEVL", "hostname": "a.example.test"})
    assert r.status_code == 400 and "EK" in r.get_json()["error"]
    assert call(site, "post", "/v1/add", auth=False, data={"ekpub": site["ek"], "hostname": "a.example.test"}).status_code == 403
    assert call(site, "get", "/v1/query", auth=False).status_code == 403
    assert site["db"].head() == head
    assert call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "a.example.test"}).status_code == 201
    r = call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "b.example.test"})
    assert r.status_code == 409
    assert call(site, "post", "/v1/reenroll", data={"ekpubhash": "0" * 64}).status_code == 404
    assert call(site, "post", "/v1/delete", data={"ekpubhash": "0" * 64}).status_code == 404
    assert call(site, "post", "/v1/reenroll", data={"ekpubhash": "xyz"}).status_code == 400


EXAMPLE_POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "..", "examples", "policy", "enrollment-policy.json")


def with_policy(site, policy):
    """The same site with a policy, for the web process and the writer alike."""
    config = dict(site["app"].config["HCP_CONFIG"], policy=policy)
    path = config["writer"][-1] + ".policy.json"
    with open(path, "w") as handle:
        json.dump(dict((k, v) for k, v in config.items() if k != "writer"), handle)
    config["writer"] = config["writer"][:-1] + [path]
    return dict(site, app=create_app(config))


@pytest.mark.parametrize("policy", [{"file": EXAMPLE_POLICY}, {"url": "https://127.0.0.1:9", "timeout": 2}])
def test_policy_rejected_enrollment_writes_nothing(site, policy):
    """The example policy refuses a pkinit-kdc certificate to a non-KDC host; an unreachable
    policy service refuses everything (fail closed). Neither writes to the DB."""
    guarded = with_policy(site, policy)
    head = site["db"].head()
    data = {"ekpub": site["ek"], "hostname": "ws9.example.test", "profile": json.dumps({"assets": ["hostname", "pkinit-kdc"]})}
    r = call(guarded, "post", "/v1/add", data=data)
    assert r.status_code == 403, r.get_json()
    assert "polic" in r.get_json()["error"]
    assert site["db"].head() == head
    assert site["db"].query("") == []


def test_policy_accepted_enrollment(site):
    guarded = with_policy(site, {"file": EXAMPLE_POLICY})
    data = {"ekpub": site["ek"], "hostname": "ws1.example.test", "profile": json.dumps({"assets": ["hostname"]})}
    r = call(guarded, "post", "/v1/add", data=data)
    assert r.status_code == 201, r.get_json()


@pytest.mark.parametrize("policy, problem", [
    ({"url": "http://127.0.0.1:9"}, "must start with https://"),
    ({"url": "ftp://policy.example.test"}, "must start with https://"),
    ({"url": "https://127.0.0.1:9", "timeout": "5"}, "timeout"),
    ({"url": None}, "needs file"),
    ("https://127.0.0.1:9", "JSON object"),
])
def test_unusable_policy_configuration_stops_the_service_at_start(tmp_path, policy, problem):
    """An http:// policy URL used to pass start-up and fail each enrollment with a 500; now
    neither the web app nor the writer starts with it."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": str(tmp_path / "cred"), "policy": policy}
    with pytest.raises(ServiceConfigError, match=problem):
        create_app(config)
    with pytest.raises(ServiceConfigError, match=problem):
        EnrollmentService(config)
    config_path = tmp_path / "enroll.json"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ServiceConfigError, match=problem):
        writer_service(str(config_path))
    code, body = handle(str(config_path), json.dumps({"op": "janitor"}).encode())
    assert code != 0 and problem in body["error"]
    assert db.query("") == []


def test_policy_file_failing_after_start_refuses_with_403(site, tmp_path):
    """A policy file that went away after start-up refuses the enrollment (fail closed, 403)."""
    path = tmp_path / "policy.json"
    with open(EXAMPLE_POLICY) as handle:
        path.write_text(handle.read())
    guarded = with_policy(site, {"file": str(path)})
    path.unlink()
    head = site["db"].head()
    data = {"ekpub": site["ek"], "hostname": "ws1.example.test", "profile": json.dumps({"assets": ["hostname"]})}
    r = call(guarded, "post", "/v1/add", data=data)
    assert r.status_code == 403, r.get_json()
    assert "policy service unavailable" in r.get_json()["error"]
    assert site["db"].head() == head


def test_only_authorized_client_names_may_call(site):
    """A certificate from the same CA (e.g. an enrolled host's) but with a name outside
    authorized_clients is refused; the orchestrator's name passes."""
    head = site["db"].head()
    denied = dict(site, app=create_app(dict(site["app"].config["HCP_CONFIG"], authorized_clients=["attest-*"])))
    r = call(denied, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "a.example.test"})
    assert r.status_code == 403 and "orchestrator" in r.get_json()["error"]
    assert call(denied, "get", "/v1/query").status_code == 403
    assert site["db"].head() == head
    allowed = dict(site, app=create_app(dict(site["app"].config["HCP_CONFIG"], authorized_clients=["orch*"])))
    assert call(allowed, "get", "/v1/query").status_code == 200


@pytest.fixture
def socket_site(site, tmp_path):
    """The same site with the writer daemon behind a real socket-activated listener
    (systemd's systemd-socket-activate passes the listening socket as fd 3, as the
    hcp-enroll-writer.socket unit does)."""
    import shutil  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel

    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("systemd-socket-activate is not installed")
    config = dict(site["app"].config["HCP_CONFIG"])
    config_path = config["writer"][-1]
    sock = str(tmp_path / "writer.sock")
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [activate, "-l", sock, "-E", "PYTHONPATH=" + os.pathsep.join(sys.path),
         sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.service", "--serve", config_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _attempt in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    config.pop("writer")
    config["writer_socket"] = sock
    yield dict(site, app=create_app(config), sock=sock)
    proc.terminate()
    proc.wait()


def test_socket_activated_writer(socket_site):
    site = socket_site
    head = site["db"].head()
    r = call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "node1.example.test", "profile": json.dumps(PROFILE)})
    assert r.status_code == 201, r.get_json()
    assert site["db"].head() != head
    assert call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "node2.example.test"}).status_code == 409
    assert call(site, "post", "/v1/delete", data={"ekpubhash": "0" * 64}).status_code == 404
    assert call(site, "post", "/v1/reenroll", data={"ekpubhash": site["hash"]}).status_code == 201
    os.unlink(site["sock"])
    r = call(site, "post", "/v1/delete", data={"ekpubhash": site["hash"]})
    assert r.status_code == 500 and r.get_json()["error"] == "internal error"
    assert site["db"].get(site["hash"]) is not None


# -- attacks: each runs against the real app and checks that nothing was written ---------------

def deep_json(levels, leaf="1"):
    return "[" * levels + leaf + "]" * levels


def test_find_runs_callers_regex_in_linear_time(site):
    """ReDoS: a nested quantifier that fails after a long run of 'a' takes Python's backtracking
    re exponential time per enrolled hostname (about 2**n steps); RE2 answers at once."""
    host = "a" * 26 + ".example.test"
    assert call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": host}).status_code == 201
    head = site["db"].head()
    started = time.monotonic()
    r = call(site, "get", "/v1/find", query_string={"hostname_regex": "^(a+)+$"})
    assert r.status_code == 200 and r.get_json() == {"entries": []}
    assert time.monotonic() - started < 2
    r = call(site, "get", "/v1/find", query_string={"hostname_regex": r"^a+\.example\.test$"})
    assert [e["hostname"] for e in r.get_json()["entries"]] == [host]
    assert site["db"].head() == head


@pytest.mark.parametrize("pattern,match", [
    ("a{4294967296}", "repeats more than 1000"),  # Python's re: OverflowError (500)
    ("a{1,99999999999999999999}", "repeats more than 1000"),
    ("a" * 257, "longer than 256"),
    ("(?=a)b", "invalid hostname regex"),  # look-ahead: not in RE2
    (r"(a)\1", "invalid hostname regex"),  # back-reference: not in RE2
    ("[", "invalid hostname regex"),
    ("(.*){300}", "too complex"),
])
def test_find_refuses_bad_or_costly_patterns(site, pattern, match):
    head = site["db"].head()
    r = call(site, "get", "/v1/find", query_string={"hostname_regex": pattern})
    assert r.status_code == 400 and match in r.get_json()["error"], r.get_json()
    assert len(r.data) < 600
    assert site["db"].head() == head


def test_find_fails_closed_without_re2(site, monkeypatch):
    """Without google-re2 the search is refused (503 naming the library), never run by re."""
    from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(enroll_db, "re2", None)
    r = call(site, "get", "/v1/find", query_string={"hostname_regex": "^node"})
    assert r.status_code == 503 and "google-re2" in r.get_json()["error"]


def test_deep_profile_never_kills_the_writer_daemon(socket_site):
    """A profile nested 30,000 deep made the writer's json.loads raise RecursionError, which
    nothing caught: the daemon died and every later write failed. Now: a 400, and the daemon
    answers the next request (also after hostile raw requests on its socket)."""
    site = socket_site
    head = site["db"].head()
    deep = '{"a": %s}' % deep_json(30000)
    r = call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "deep.example.test", "profile": deep})
    assert r.status_code == 400 and "nested deeper than 16" in r.get_json()["error"], r.get_json()
    for payload in (json.dumps({"op": "add", "ekpub": site["ek"], "hostname": "deep.example.test", "profile": deep}).encode(),
                    deep_json(100000).encode(), b'{"op": "delete", "prefix": ["00"]}', b'{"op": "reenroll", "ekpubhash": 7}',
                    b'{"op": "add", "ekpub": "\\ud800", "hostname": "x.example.test"}', b'{"op": NaN}', b"\xff" * 1000,
                    b'{"op": "add", "ekpub": "x", "caller": "me"}'):
        code, result = socket_exchange(site["sock"], payload)
        assert code in (2, 4, 5) and isinstance(result["error"], str), (payload[:60], code, result)
    assert site["db"].head() == head
    r = call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "node1.example.test", "profile": json.dumps(PROFILE)})
    assert r.status_code == 201, r.get_json()


@pytest.mark.parametrize("path", ["/v1/add", "/v1/delete", "/v1/reenroll"])
@pytest.mark.parametrize("body", [
    deep_json(20000),
    '{"ekpub": "x", "hostname": "h.example.test", "profile": {"a": %s}}' % deep_json(20000),
    '{"ekpubhash": NaN}',
    '{"ekpubhash": 1e400}',
    '{"ekpubhash": %s}' % ("1" * 5000),
    '{"ekpubhash": "\\ud800"}',
    "[1, 2]",
])
def test_hostile_json_bodies_are_400(site, path, body):
    head = site["db"].head()
    r = call(site, "post", path, data=body, content_type="application/json")
    assert r.status_code == 400 and r.is_json and r.get_json()["error"], (r.status_code, r.data[:200])
    assert len(r.data) < 600
    assert site["db"].head() == head


@pytest.mark.parametrize("method,path,body", [
    ("get", "/v1/query", {"ekpubhash": 12}),
    ("get", "/v1/find", {"hostname_regex": ["a"]}),
    ("post", "/v1/delete", {"ekpubhash": ["00"]}),
    ("post", "/v1/reenroll", {"ekpubhash": {"a": 1}}),
    ("post", "/v1/add", {"ekpub": 5, "hostname": "h.example.test"}),
    ("post", "/v1/add", {"ekpub": "x", "hostname": ["h"]}),
    ("post", "/v1/add", {"ekpub": "x", "hostname": "h.example.test", "profile": [1]}),
])
def test_wrong_typed_json_fields_are_400(site, method, path, body):
    head = site["db"].head()
    r = call(site, method, path, json=body)
    assert r.status_code == 400 and r.is_json, (r.status_code, r.data[:200])
    assert site["db"].head() == head


def test_hash_validators_match_the_whole_string(site):
    """A trailing $ also matches before a final newline: '12ab\\n' passed as a prefix."""
    assert call(site, "post", "/v1/add", data={"ekpub": site["ek"], "hostname": "node1.example.test"}).status_code == 201
    head = site["db"].head()
    for prefix in ("12ab\n", site["hash"][:6] + "\n", site["hash"] + "\n"):
        r = call(site, "get", "/v1/query", query_string={"ekpubhash": prefix})
        assert r.status_code == 400 and "prefix" in r.get_json()["error"], r.get_json()
    r = call(site, "post", "/v1/reenroll", data={"ekpubhash": site["hash"] + "\n"})
    assert r.status_code == 400, r.get_json()
    r = call(site, "post", "/v1/delete", data={"ekpubhash": site["hash"] + "\n"})
    assert r.status_code == 400, r.get_json()
    assert site["db"].head() == head
    assert call(site, "get", "/v1/query", query_string={"ekpubhash": site["hash"]}).get_json()["entries"][0]["ekpubhash"] == site["hash"]


def test_asset_signer_checks_the_caller(site):
    """Every other endpoint refuses a same-CA certificate outside authorized_clients (403);
    /v1/get-asset-signer answered it 200."""
    denied = dict(site, app=create_app(dict(site["app"].config["HCP_CONFIG"], authorized_clients=["attest-*"])))
    r = call(denied, "get", "/v1/get-asset-signer")
    assert r.status_code == 403 and r.is_json and "not authorized" in r.get_json()["error"]
    r = call(site, "get", "/v1/get-asset-signer", auth=False)
    assert r.status_code == 403 and r.is_json
    r = call(site, "get", "/v1/get-asset-signer", auth=False, headers={"SSL-Client-Verify": "SUCCESS", "SSL-Client-Cert": site["env"]["SSL_CLIENT_CERT"]})
    assert r.status_code == 403  # headers are not nginx's environ
    assert b"PUBLIC KEY" in call(site, "get", "/v1/get-asset-signer").data
