# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The orchestrator adapter with the REAL identity provider (identity/provider.py on its real
sockets): the process of a running unit gets a token for its application only after the adapter
proved it, another process of the same user never does, and none does after the unit stopped.
Attack: a process that is not the unit's main process asks for the application's token (403)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import appdef, orchestrator, provider, trust

SITE, HOST = "site.test", "node1"
ASK = r"""
import json, sys
from ansible_collections.hcp.core.plugins.module_utils.identity import wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError
for line in sys.stdin:
    try:
        answer = wire.call(sys.argv[1], "fetch_token", {})
        print(json.dumps({"spiffe_id": answer["spiffe_id"], "token": bool(answer["token"])}), flush=True)
    except IdentityError as exc:
        print(json.dumps({"status": exc.status, "error": exc.error}), flush=True)
"""


class Asker(object):
    """A real process asking the provider for its token whenever told to."""

    def __init__(self, socket_path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen([sys.executable, "-s", "-c", ASK, socket_path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        self.pid = self.proc.pid

    def ask(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lab(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    apps = tmp_path / "apps"
    apps.mkdir()
    pconf = {"site": SITE, "host": HOST, "state_dir": str(tmp_path / "provider"), "socket": str(run / "provider.sock"),
             "admin_socket": str(run / "provider-admin.sock"), "secsvc_admin_socket": str(run / "secsvc-admin.sock"),
             "socket_mode": 0o666, "root_key": {"backend": "memory"}}
    (tmp_path / "provider.json").write_text(json.dumps(pconf))
    config = provider.load_config(str(tmp_path / "provider.json"))
    _prov, servers = provider.serve(config)
    oconf = orchestrator.parse_config(json.dumps({
        "format": orchestrator.CONFIG_FORMAT, "version": 1, "provider_admin_socket": pconf["admin_socket"],
        "provider_audience": config["name"], "apps_dir": str(apps), "host": HOST, "state_dir": str(tmp_path / "orch")}).encode())
    states = {}
    adapter = orchestrator.Adapter(oconf, trust.TrustedSide("test orchestrator"),
                                   states=lambda units: dict((u, states.get(u, ("inactive", 0))) for u in units))
    adapter.check_cgroup = False  # no systemd here: the cgroup check is test_orchestrator's
    askers = []

    def asker():
        askers.append(Asker(pconf["socket"]))
        return askers[-1]

    yield adapter, states, apps, asker
    for one in askers:
        one.close()
    for server in servers:
        server.close()


def test_only_the_proven_main_process_gets_the_token(lab):
    adapter, states, apps, asker = lab
    (apps / "billing.json").write_bytes(appdef.encode(appdef.make("billing", "billing.service", "root")))
    main, intruder = asker(), asker()
    assert main.ask() == {"status": 403, "error": "not-proven"}  # not proven yet
    states["billing.service"] = ("active", main.pid)
    adapter.poll()
    assert main.ask() == {"spiffe_id": "spiffe://site.test/node1/billing", "token": True}
    # another process of the same user, not the unit's main process (nor its child)
    assert intruder.ask() == {"status": 403, "error": "not-proven"}
    # the unit stops: the adapter removes the instance, the process gets nothing any more
    states["billing.service"] = ("inactive", 0)
    adapter.poll()
    assert main.ask() == {"status": 403, "error": "not-proven"}
    # started again with another main process: that one is proven
    states["billing.service"] = ("active", intruder.pid)
    adapter.poll()
    assert intruder.ask()["spiffe_id"] == "spiffe://site.test/node1/billing"
    assert main.ask()["status"] == 403


def test_definition_removed_removes_the_client(lab):
    adapter, states, apps, asker = lab
    (apps / "billing.json").write_bytes(appdef.encode(appdef.make("billing", "billing.service", "root")))
    main = asker()
    states["billing.service"] = ("active", main.pid)
    adapter.poll()
    assert main.ask()["spiffe_id"] == "spiffe://site.test/node1/billing"
    os.unlink(str(apps / "billing.json"))
    adapter.poll()
    assert main.ask() == {"status": 403, "error": "not-proven"}
    assert adapter.proven == {}
