# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PolicyClient against the real policy app served over loopback TLS (plain HTTP is refused), and LocalPolicy."""

from __future__ import annotations

import json
import os
import socket

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.policy.client import (
    LocalPolicy,
    PolicyClient,
    PolicyUnavailableError,
)
from ansible_collections.hcp.core.plugins.module_utils.policy.engine import PolicyValidationError
from ansible_collections.hcp.core.plugins.module_utils.web import policy_app
from ansible_collections.hcp.core.tests.unit.helpers import serve_http, serve_wsgi

POLICY = {"start": "main", "filters": {"main": [
    {"name": "needs-host", "if": {"not-isinstance": ".hostname", "type": "string"}, "action": "reject"},
    {"name": "loop", "if": {"exist": ".loop"}, "action": "call", "call": "main", "on-return": "accept"},
    {"name": "ok", "action": "accept"}]}}


def write(path, doc, bump=0):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(doc))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1000000000))


def _app(tmp_path):
    policy_file = str(tmp_path / "policy.json")
    write(policy_file, POLICY)
    return policy_app.create_app({"policy_file": policy_file, "audit_log": str(tmp_path / "audit"), "require_client_cert": False})


@pytest.fixture
def tls(tmp_path):
    """Server credentials for localhost: (server_cert, server_key, ca_cert)."""
    paths = pki.bootstrap_site_credentials(str(tmp_path / "cred"), "t", ["localhost"], [])["paths"]
    return paths["server_cert"], paths["server_key"], paths["ca_cert"]


@pytest.fixture
def server(tmp_path, tls):
    """The policy app over TLS: (url, ca_file)."""
    with serve_wsgi(_app(tmp_path), tls[0], tls[1]) as url:
        yield url, tls[2]


def test_client_accept_reject_and_error(server):
    client = PolicyClient(server[0], server[1], timeout=5)
    result = client.check("enrollsvc::add_request", "u1", {"hostname": "h"})
    assert result.accepted and result.decision == "accept" and result.rule == "ok" and result.params == {"hostname": "h"}
    result = client.check("enrollsvc::add_request", "u2", {"hostname": 5})
    assert not result.accepted and result.rule == "needs-host" and result.params is None
    with pytest.raises(PolicyUnavailableError, match="HTTP 500"):
        client.check("enrollsvc::add_request", "u3", {"hostname": "h", "loop": 1})
    with pytest.raises(PolicyUnavailableError, match="params must be a JSON object"):
        client.check("h", "u", [1])


def test_client_unreachable_and_non_policy_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PolicyUnavailableError, match="cannot reach"):
        PolicyClient("https://127.0.0.1:%d" % port, timeout=2).check("h", "u", {})
    with pytest.raises(PolicyUnavailableError, match="must start with https://"):
        PolicyClient("ftp://x").check("h", "u", {})


def test_plain_http_policy_service_is_refused(tmp_path):
    """The attack: a policy "service" on plain HTTP (anyone on the path can answer accept). The
    client refuses the URL, loopback included, before sending anything."""
    from flask import Flask  # pylint: disable=import-outside-toplevel

    asked = []
    app = Flask("forger")

    def accept():
        asked.append(1)
        return {"decision": "accept", "rule": "forged"}
    app.add_url_rule("/run", "run", accept, methods=["POST"])
    with serve_http(app) as url:
        assert url.startswith("http://127.0.0.1:")
        for candidate in (url, url.replace("127.0.0.1", "localhost"), "HTTP://127.0.0.1:1", "  https://x"):
            with pytest.raises(PolicyUnavailableError, match="the policy service URL must start with https://") as info:
                PolicyClient(candidate).check("enrollsvc::add_request", "u", {"hostname": "h"})
            assert info.value.status == 0
    assert asked == []


def test_client_wrong_service_answering_200_is_not_an_accept(tls):
    from flask import Flask  # pylint: disable=import-outside-toplevel

    app = Flask("liar")
    app.add_url_rule("/run", "run", lambda: "OK", methods=["POST"])
    with serve_wsgi(app, tls[0], tls[1]) as url:
        with pytest.raises(PolicyUnavailableError, match="HTTP 200"):
            PolicyClient(url, tls[2]).check("h", "u", {})


def test_local_policy_same_api_and_reload(tmp_path):
    path = str(tmp_path / "p.json")
    write(path, POLICY)
    local = LocalPolicy(path)
    assert local.check("h", "u", {"hostname": "x"}).accepted
    assert local.check("h", "u", {}).rule == "needs-host"
    with pytest.raises(PolicyUnavailableError, match="call depth"):
        local.check("h", "u", {"hostname": "x", "loop": 1})
    write(path, {"start": "r", "filters": {"r": {"action": "reject"}}}, bump=1)
    assert not local.check("h", "u", {"hostname": "x"}).accepted
    write(path, {"start": "r"}, bump=2)
    assert not local.check("h", "u", {"hostname": "x"}).accepted
    assert "filters: required" in local.stale_error
    os.unlink(path)
    assert not local.check("h", "u", {"hostname": "x"}).accepted
    assert "cannot read" in local.stale_error


def test_local_policy_first_load_must_succeed(tmp_path):
    with pytest.raises(PolicyValidationError, match="cannot read"):
        LocalPolicy(str(tmp_path / "missing.json"))
    path = str(tmp_path / "bad.json")
    write(path, {"start": 1})
    with pytest.raises(PolicyValidationError, match="invalid"):
        LocalPolicy(path)


def test_local_policy_per_request_shares_the_loaded_policy_by_content(tmp_path):
    # the enrollment service builds a LocalPolicy per request: the same bytes (and limits) give
    # the same loaded Policy (and its {VAR} cache); new bytes are loaded and validated again
    path = str(tmp_path / "p.json")
    write(path, POLICY)
    first, second = LocalPolicy(path), LocalPolicy(path)
    assert first.policy is second.policy
    assert LocalPolicy(path, limits={"max_steps": 50}).policy is not first.policy
    write(path, {"start": "r", "filters": {"r": {"action": "reject"}}}, bump=1)
    changed = LocalPolicy(path)
    assert changed.policy is not first.policy
    assert not changed.check("h", "u", {"hostname": "x"}).accepted
    assert first.check("h", "u", {"hostname": "x"}).accepted is False  # the old instance reloads too
    write(path, {"start": "r"}, bump=2)
    with pytest.raises(PolicyValidationError, match="invalid"):
        LocalPolicy(path)
    write(path, POLICY, bump=3)
    assert LocalPolicy(path).check("h", "u", {"hostname": "x"}).accepted
