# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The systemd orchestrator adapter (identity/orchestrator.py) against a real admin socket (wire.serve)
whose handler is a real trusting side (trust.TrustingSide + verify_signed_request), with real
processes and their real /proc entries. systemd itself is the molecule scenario's: here the unit
states come from a function (what `systemctl show` would answer), the processes behind them are real.

Attacks: a unit whose main process runs as another user than its definition says (not proven); a
recycled pid that is not the unit's process (its cgroup does not name the unit: not proven); a
definition file that is a link or names another application (skipped); an unknown config key."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import appdef, orchestrator, trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

AUDIENCE = "hcp-identity-provider"


class Provider(object):
    """A stand-in provider admin socket: verifies every signed call with a real TrustingSide and
    records the claims."""

    def __init__(self, path, state_dir):
        self.path = path
        self.trusting = trust.TrustingSide(str(state_dir))
        self.calls = []
        self.server = wire.serve(path, self.handle, mode=0o600)

    def handle(self, request):
        if request.name == "share_trust_bundle":
            if request.peer.uid != 0:
                raise IdentityError(403, "forbidden", "root only")
            self.trusting.share_trust_bundle(request.body)
            return {}
        if request.name == "ping":
            return {}
        claims = trust.verify_signed_request(self.trusting, request, AUDIENCE)
        self.calls.append((request.name, claims))
        return {}

    def names(self):
        return [name for name, _claims in self.calls]

    def close(self):
        self.server.close()


@pytest.fixture
def setup(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    apps = tmp_path / "apps"
    apps.mkdir()
    config = orchestrator.parse_config(json.dumps({
        "format": orchestrator.CONFIG_FORMAT, "version": 1, "provider_admin_socket": str(run / "provider-admin.sock"),
        "apps_dir": str(apps), "host": "node1", "state_dir": str(tmp_path / "state"), "poll_interval": 0.1,
        "attestation_result_file": str(tmp_path / "last-success.json")}).encode())
    provider = Provider(config["provider_admin_socket"], tmp_path / "provider-state")
    children = []

    def spawn(user=None):
        child = subprocess.Popen(["/bin/sleep", "60"], user=user, group=user)
        children.append(child)
        return child

    yield config, provider, apps, spawn, tmp_path
    provider.close()
    for child in children:
        child.kill()
        child.wait()


def _define(apps, app, unit, user):
    (apps / (app + ".json")).write_bytes(appdef.encode(appdef.make(app, unit, user)))


def _adapter(config, states, period=3600):
    side = trust.TrustedSide("test orchestrator", intermediate_period=period)
    # the unit tests' processes are not in systemd units: their cgroup is checked in test_process_identity
    adapter = orchestrator.Adapter(config, side, states=lambda units: dict((u, states.get(u, ("inactive", 0))) for u in units))
    adapter.check_cgroup = False
    return adapter


def test_proves_a_running_unit_once_and_removes_it_when_it_stops(setup):
    config, provider, apps, spawn, tmp_path = setup
    (tmp_path / "last-success.json").write_text(json.dumps({"time": "2026-12-02T10:00:00Z", "generation": 7}))
    child = spawn()
    _define(apps, "billing", "billing.service", "root")
    states = {"billing.service": ("active", child.pid)}
    adapter = _adapter(config, states)
    adapter.poll()
    assert provider.names() == ["add_client", "prove_client"]
    add, prove = provider.calls[0][1], provider.calls[1][1]
    assert dict((k, add[k]) for k in ("app", "host", "selectors")) == {
        "app": "billing", "host": "node1", "selectors": {"uid": 0, "unit": "billing.service"}}
    assert prove["pid"] == child.pid and prove["uid"] == os.getuid() and prove["gid"] == os.getgid()
    assert prove["unit"] == "billing.service"
    assert prove["host_attestation"] == {"result": "success", "time": "2026-12-02T10:00:00Z", "generation": 7}
    assert add["aud"] == AUDIENCE and add["op"] == "add_client"
    adapter.poll()
    assert provider.names() == ["add_client", "prove_client"]  # once per main process
    # a restart of the unit (new main process): removed, then the new one proven
    new = spawn()
    states["billing.service"] = ("active", new.pid)
    adapter.poll()
    assert provider.names()[2:] == ["remove_client", "add_client", "prove_client"]
    assert provider.calls[2][1]["pid"] == child.pid and provider.calls[4][1]["pid"] == new.pid
    # stopped: removed once
    states["billing.service"] = ("inactive", 0)
    adapter.poll()
    adapter.poll()
    assert provider.names()[5:] == ["remove_client"]
    # the definition goes while it runs: removed
    states["billing.service"] = ("active", new.pid)
    adapter.poll()
    os.unlink(str(apps / "billing.json"))
    adapter.poll()
    assert provider.names()[6:] == ["add_client", "prove_client", "remove_client"]
    assert "pid" not in provider.calls[-1][1]  # the whole client goes with its definition


def test_process_of_another_user_is_not_proven(setup):
    # Attack: the unit's main process runs as nobody while the definition says the app is root's
    # (or the reverse): the uid comes from /proc, never from the definition, and must match.
    config, provider, apps, spawn, _tmp = setup
    child = spawn(user=65534)
    _define(apps, "billing", "billing.service", "root")
    adapter = _adapter(config, {"billing.service": ("active", child.pid)})
    adapter.poll()
    assert provider.names() == []
    _define(apps, "billing", "billing.service", "nobody")
    adapter.poll()
    assert provider.names() == ["add_client", "prove_client"]
    assert provider.calls[1][1]["uid"] == 65534


def test_provider_restart_and_rotation(setup):
    config, provider, apps, spawn, tmp_path = setup
    child = spawn()
    _define(apps, "billing", "billing.service", "root")
    adapter = _adapter(config, {"billing.service": ("active", child.pid)}, period=2)
    adapter.poll()
    old_kid = provider.trusting.kid
    # rotation: a new intermediate is shared at the next poll; the provider drops the old one at once
    old_token = adapter.side.sign({"op": "add_client"}, audience=AUDIENCE)
    threading.Event().wait(2.1)
    adapter.poll()
    assert provider.trusting.kid == adapter.side.kid != old_kid
    with pytest.raises(IdentityError) as refused:
        provider.trusting.verify(old_token, AUDIENCE)
    assert refused.value.error == "unknown-intermediate"
    # the provider restarts (new socket, proofs lost, trust kept in its state dir): all proven again
    provider.close()
    restarted = Provider(config["provider_admin_socket"], tmp_path / "provider-state")
    try:
        adapter.poll()
        assert restarted.names() == ["add_client", "prove_client"]
    finally:
        restarted.close()


def test_provider_reset_is_recovered_by_sharing_again(setup):
    # The provider's operator ran reset-trust and it restarted: the signed call fails with 401
    # no-root-pinned, the adapter shares its bundle again and the call goes through.
    config, provider, apps, spawn, tmp_path = setup
    child = spawn()
    adapter = _adapter(config, {"billing.service": ("active", child.pid)})
    adapter.poll()  # trust shared, nothing defined yet
    provider.close()
    trust.reset_trust(str(tmp_path / "provider-state"))
    fresh = Provider(config["provider_admin_socket"], tmp_path / "provider-state")
    try:
        info = os.stat(config["provider_admin_socket"])
        adapter.provider_inode = (info.st_dev, info.st_ino, info.st_ctime_ns)  # as if it had not noticed the restart
        _define(apps, "billing", "billing.service", "root")
        adapter.poll()
        assert fresh.names() == ["add_client", "prove_client"]
    finally:
        fresh.close()


def test_bad_definitions_are_skipped_and_reported_once(setup, capsys):
    config, provider, apps, spawn, tmp_path = setup
    child = spawn()
    _define(apps, "billing", "billing.service", "root")
    (apps / "other.json").write_bytes(appdef.encode(appdef.make("billing", "evil.service", "root")))
    secret = tmp_path / "secret.json"
    secret.write_bytes(appdef.encode(appdef.make("linked", "billing.service", "root")))
    os.symlink(str(secret), str(apps / "linked.json"))
    adapter = _adapter(config, {"billing.service": ("active", child.pid), "evil.service": ("active", child.pid)})
    adapter.poll()
    adapter.poll()
    assert provider.names() == ["add_client", "prove_client"]
    assert provider.calls[0][1]["app"] == "billing"
    err = capsys.readouterr().err
    assert err.count("definition refused") == 2


def test_process_identity_checks_the_unit_cgroup(setup):
    # Attack: a recycled pid (the unit's main process died, another process got its pid): its
    # cgroup does not name the unit, so it is not the unit's process.
    _config, _provider, _apps, spawn, _tmp = setup
    child = spawn(user=65534)
    with open("/proc/%d/cgroup" % child.pid) as handle:
        own = [line.rstrip("\n").split(":", 2)[2] for line in handle if line.count(":") >= 2]
    leaf = [path.rsplit("/", 1)[1] for path in own if path.rsplit("/", 1)[1]]
    if leaf:
        assert orchestrator.process_identity(child.pid, leaf[0]) == (65534, 65534)
    assert orchestrator.process_identity(child.pid, "billing.service") is None
    assert orchestrator.process_identity(child.pid) == (65534, 65534)
    child.kill()
    child.wait()
    assert orchestrator.process_identity(child.pid) is None
    for bad in (0, -1, True, "1"):
        assert orchestrator.process_identity(bad) is None


def test_systemctl_show_parsing():
    text = "Id=a.service\nActiveState=active\nMainPID=42\n\nId=b.service\nActiveState=inactive\nMainPID=0\n"
    assert orchestrator.parse_systemctl_show(text, ["a.service", "b.service"]) == {
        "a.service": ("active", 42), "b.service": ("inactive", 0)}
    with pytest.raises(orchestrator.HcpError):
        orchestrator.parse_systemctl_show(text, ["a.service"])
    assert orchestrator.parse_systemctl_show("ActiveState=active\nMainPID=x\n", ["a.service"]) == {"a.service": ("active", 0)}


def test_attestation_result_fails_to_none(tmp_path):
    none = {"result": "none", "time": None, "generation": None}
    assert orchestrator.attestation_result(None) == none
    assert orchestrator.attestation_result(str(tmp_path / "missing")) == none
    (tmp_path / "bad.json").write_text("[1, 2")
    assert orchestrator.attestation_result(str(tmp_path / "bad.json")) == none
    (tmp_path / "real.json").write_text(json.dumps({"time": "t", "generation": True}))
    os.symlink(str(tmp_path / "real.json"), str(tmp_path / "link.json"))
    assert orchestrator.attestation_result(str(tmp_path / "link.json")) == none
    assert orchestrator.attestation_result(str(tmp_path / "real.json")) == {"result": "success", "time": "t", "generation": None}


def test_config_is_checked(tmp_path):
    good = {"format": orchestrator.CONFIG_FORMAT, "version": 1, "provider_admin_socket": "/run/x/a.sock",
            "apps_dir": "/etc/hcp/identity/apps", "host": "node1", "state_dir": "/var/lib/x"}
    assert orchestrator.parse_config(json.dumps(good).encode())["poll_interval"] == 2.0
    for bad in (dict(good, extra=1), dict(good, host="node1\n"), dict(good, apps_dir="relative"), dict(good, version=True),
                dict(good, poll_interval=0), dict(good, intermediate_period=1), {k: v for k, v in good.items() if k != "host"}):
        with pytest.raises(orchestrator.ConfigError):
            orchestrator.parse_config(json.dumps(bad).encode())
    path = tmp_path / "config.json"
    path.write_text(json.dumps(good))
    assert orchestrator.main(["--check-config", str(path)]) == 0
    path.write_text(json.dumps(dict(good, extra=1)))
    assert orchestrator.main(["--check-config", str(path)]) == 2
    assert orchestrator.main(["frobnicate", str(path)]) == 2


def test_serve_stops_on_request_and_leaves_the_proofs(setup):
    config, provider, apps, spawn, _tmp = setup
    child = spawn()
    _define(apps, "billing", "billing.service", "root")
    stop = threading.Event()
    side = trust.TrustedSide("test orchestrator")
    done = []
    thread = threading.Thread(target=lambda: done.append(orchestrator.serve(
        config, stop, side=side, states=lambda units: {"billing.service": ("active", child.pid)}, check_cgroup=False)))
    thread.start()
    for _attempt in range(100):
        if "prove_client" in provider.names():
            break
        threading.Event().wait(0.05)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    # the application keeps running: still proven (no RemoveClient when the adapter stops)
    assert provider.names() == ["add_client", "prove_client"]
