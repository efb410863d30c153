# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The identity provider's decisions on its real sockets (in process): definition and proof
validation, host attestation requirement, an exited process loses its proof, state across a
restart, a damaged state file fails closed."""

from __future__ import annotations

import json
import os
import stat
import time

import jwt
import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import provider as provider_mod
from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.identity.idhelpers import NOBODY, PROVIDER_NAME, SECSVC_NAME, Child


class Site(object):
    def __init__(self, tmp_path, **extra):
        self.tmp_path = tmp_path
        data = dict({"site": "site.test", "host": "node1", "state_dir": str(tmp_path / "state"),
                     "socket": str(tmp_path / "p.sock"), "admin_socket": str(tmp_path / "pa.sock"),
                     "secsvc_admin_socket": str(tmp_path / "absent.sock")}, **extra)
        path = tmp_path / "provider.json"
        path.write_text(json.dumps(data))
        self.config = provider_mod.load_config(str(path))
        self.orchestrator = trust.TrustedSide("orchestrator")
        self.start()
        trust.share(self.orchestrator, self.config["admin_socket"])

    def start(self):
        self.provider, self.servers = provider_mod.serve(self.config)

    def stop(self):
        for server in self.servers:
            server.close()

    def signed(self, op, payload):
        return trust.signed_call(self.orchestrator, self.config["admin_socket"], op, payload, PROVIDER_NAME)

    def define(self, app="app1", uid=0, **selectors):
        chosen = dict({"uid": uid, "unit": "%s.service" % app}, **selectors)
        return self.signed("add_client", {"app": app, "host": "node1", "selectors": chosen})

    def prove(self, app="app1", pid=None, uid=0, result="ok", **extra):
        return self.signed("prove_client", dict({"app": app, "pid": pid or os.getpid(), "uid": uid, "gid": 0,
                                                 "unit": app + ".service", "host_attestation": {"result": result}}, **extra))


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.stop()


def _error(func, *args, **kwargs):
    with pytest.raises(IdentityError) as info:
        func(*args, **kwargs)
    return info.value.status, info.value.error


def test_definitions_are_validated_whole(site):
    assert site.define()["spiffe_id"] == "spiffe://site.test/node1/app1"
    assert site.define()["changed"] is False
    for app in ("App", "a\n", "../x", "", "a" * 64, "a/b", 5):
        assert _error(site.define, app=app) == (400, "bad-definition"), app
    bad_selectors = [{"unit": "x.service\n"}, {"unit": "x.socket"}, {"image": "sha256:" + "0" * 64}, {"uid": -1}, {"uid": "0"},
                     {"uid": True}, {"extra": 1}]
    for selectors in bad_selectors:
        assert _error(site.define, **selectors)[0] == 400, selectors
    assert _error(site.signed, "add_client", {"app": "x", "host": "node2", "selectors": {"uid": 0, "unit": "x.service"}}) == \
        (403, "wrong-host")
    assert _error(site.prove, app="nothere") == (404, "no-such-client")


def test_token_claims_and_the_state_file(site):
    site.define()
    site.prove()
    answer = wire.call(site.config["socket"], "fetch_token")
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["sub"] == "spiffe://site.test/node1/app1" and claims["aud"] == SECSVC_NAME and claims["iss"] == PROVIDER_NAME
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert jwt.get_unverified_header(answer["token"]) == {"alg": "ES256", "kid": site.provider.trusted.kid, "typ": "JWT"}
    assert stat.S_IMODE(os.stat(site.provider.clients_path).st_mode) == 0o600
    # a restarted provider serves the same proven instance
    site.stop()
    site.start()
    assert wire.call(site.config["socket"], "fetch_token")["spiffe_id"] == "spiffe://site.test/node1/app1"
    # a changed definition must be proven again
    site.define(unit="other.service")
    assert _error(wire.call, site.config["socket"], "fetch_token") == (403, "not-proven")
    # removal
    site.define()
    site.prove()
    assert site.signed("remove_client", {"app": "app1"}) == {"removed": True}
    assert _error(wire.call, site.config["socket"], "fetch_token") == (403, "not-proven")


def test_damaged_state_fails_closed(site):
    site.define()
    site.stop()
    with open(site.provider.clients_path, "w") as handle:
        handle.write('{"format": "x"}')
    with pytest.raises(IdentityError) as info:
        provider_mod.Provider(site.config)
    assert (info.value.status, info.value.error) == (500, "bad-state")


def test_host_attestation_required(tmp_path):
    site = Site(tmp_path, require_host_attestation=True)
    try:
        site.define()
        assert _error(site.prove, result="none") == (403, "host-not-attested")
        assert _error(site.prove, result="failed") == (403, "host-not-attested")
        assert site.prove(result="success")["pid"] == os.getpid()
        assert _error(site.prove, host_attestation="ok") == (400, "bad-proof")
    finally:
        site.stop()


def test_an_exited_process_loses_its_proof(site):
    site.define(app="worker", uid=NOBODY)
    child = Child(lambda: "done")
    site.prove(app="worker", pid=child.pid, uid=NOBODY, unit="worker.service")
    assert any(inst["app"] == "worker" for inst in site.provider.instances.values())
    child.go()  # exits
    time.sleep(0.1)
    site.provider.prune()
    assert not site.provider.instances
    assert _error(site.prove, app="worker", pid=child.pid, uid=NOBODY) == (400, "no-such-process")
    # a proof for a process that runs as another uid than the proof says
    assert _error(site.prove, app="worker", pid=os.getpid(), uid=NOBODY) == (403, "selector-mismatch")
