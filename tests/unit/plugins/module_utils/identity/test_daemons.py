# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The identity provider and the security service as real processes (python -m ...) on real Unix
sockets, root key and store key sealed to a real swtpm: two applications (this process as root,
a forked child as nobody) isolated; wrong peer uid; unsigned or foreign definitions; kill -9 of
each component mid-flow and recovery without losing a key; rotation while clients run; garbage
and fuzz at both daemons; SIGTERM; the CLIs."""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import provider as provider_mod
from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.client import Client
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.identity.idhelpers import (
    HOST, NOBODY, PKG, PROVIDER_NAME, Child, IdentityLab,
)


@pytest.fixture
def lab(swtpm, tmp_path):
    the_lab = IdentityLab(tmp_path, tcti=swtpm.tcti).up()
    yield the_lab
    the_lab.stop()


def _client(lab):
    return Client(provider_socket=lab.provider_socket(), secsvc_socket=lab.secsvc_socket())


def _status(exc_info):
    return exc_info.value.status, exc_info.value.error


def test_two_applications_each_with_its_own_keys(lab):
    beta_id = lab.enroll("beta", os.getpid(), 0)
    beta = _client(lab)
    signature = beta.sign(b"hello")  # the default key is made on first use
    assert beta.verify(b"hello", signature) and not beta.verify(b"hullo", signature)
    assert beta.whoami() == beta_id == "spiffe://site.test/node1/beta"
    beta.generate_key("beta-secret")
    assert beta.decrypt(beta.encrypt(b"data", aad=b"a"), aad=b"a") == b"data"

    def alpha_work():
        alpha = _client(lab)
        answers = {"whoami": alpha.whoami(), "signed": alpha.verify(b"m", alpha.sign(b"m"))}
        for name in ("beta-secret", "never-made"):  # another identity's key, and no key at all
            try:
                alpha.sign(b"m", key=name)
            except IdentityError as exc:
                answers[name] = [exc.status, exc.error, exc.detail.replace(name, "NAME")]
        answers["keys"] = [k["name"] for k in alpha.list_keys()]
        return answers

    child = Child(alpha_work)
    alpha_id = lab.enroll("alpha", child.pid, NOBODY, gid=NOBODY)
    result = child.go()["value"]
    assert result["whoami"] == alpha_id and result["signed"] is True
    assert result["beta-secret"] == result["never-made"] == [404, "no-such-key", "no key named NAME"]
    assert result["keys"] == ["default"]
    assert sorted(k["name"] for k in beta.list_keys()) == ["beta-secret", "default", "default-aead"]


def test_a_process_claiming_another_applications_identity_gets_403(lab):
    lab.enroll("beta", os.getpid(), 0)

    def fetch(app=None):
        return lambda: wire.call(lab.provider_socket(), "fetch_token", {"app": app} if app else {})

    # a descendant of beta's proven process that changed its uid: the peer uid does not match
    assert Child(fetch()).go()["raised"][:2] == [403, "not-proven"]
    # not even a ping answers an unproven process (root's health check does)
    assert Child(lambda: wire.call(lab.provider_socket(), "ping")).go()["raised"][:2] == [403, "not-proven"]
    assert wire.call(lab.provider_socket(), "ping") == {"component": "provider"}
    # alpha is proven for one nobody process; another nobody process (not its descendant) claims it
    holder = Child(lambda: "held")
    lab.enroll("alpha", holder.pid, NOBODY, gid=NOBODY)
    assert Child(fetch("alpha")).go()["raised"][:2] == [403, "not-proven"]
    holder.go()
    # the proven root process itself may not ask for another application's token
    with pytest.raises(IdentityError) as info:
        wire.call(lab.provider_socket(), "fetch_token", {"app": "alpha"})
    assert _status(info) == (403, "forbidden")
    # once alpha's process exited, its proof is gone
    with pytest.raises(IdentityError):
        lab.signed("prove_client", {"app": "alpha", "pid": holder.pid, "uid": NOBODY, "gid": NOBODY, "unit": "alpha.service",
                                    "host_attestation": {"result": "ok"}})


def test_definitions_and_proofs_not_signed_by_the_orchestrator_are_refused(lab):
    admin = lab.config["provider"]["admin_socket"]
    definition = {"app": "evil", "host": HOST, "selectors": {"uid": 0, "unit": "evil.service"}}
    intruder = trust.TrustedSide("intruder")
    cases = [
        (b"", wire.AUTH_NONE, (401, "unsigned")),
        (intruder.sign(dict(definition, op="add_client"), audience=PROVIDER_NAME), wire.AUTH_SIGNED, (401, "unknown-intermediate")),
        (lab.orchestrator.sign(dict(definition, op="add_client"), audience="spiffe://other"), wire.AUTH_SIGNED, (401, "wrong-audience")),
        (lab.orchestrator.sign(dict(definition, op="remove_client"), audience=PROVIDER_NAME), wire.AUTH_SIGNED, (401, "bad-token")),
    ]
    for auth, auth_type, expected in cases:
        with pytest.raises(IdentityError) as info:
            wire.call(admin, "add_client", definition, auth=auth, auth_type=auth_type)
        assert _status(info) == expected
    with pytest.raises(IdentityError) as info:  # the intruder's root is refused: the orchestrator's is pinned
        trust.share(intruder, admin)
    assert _status(info) == (409, "root-already-pinned")
    token = lab.orchestrator.sign(dict(definition, op="add_client"), audience=PROVIDER_NAME)
    wire.call(admin, "add_client", {}, auth=token, auth_type=wire.AUTH_SIGNED)
    with pytest.raises(IdentityError) as info:  # the same signed request again
        wire.call(admin, "add_client", {}, auth=token, auth_type=wire.AUTH_SIGNED)
    assert _status(info) == (401, "replayed")
    # a proof for another uid than the definition's, or whose process runs as another uid
    with pytest.raises(IdentityError) as info:
        lab.signed("prove_client", {"app": "evil", "pid": os.getpid(), "uid": 1000, "gid": 0, "unit": "evil.service",
                                    "host_attestation": {"result": "ok"}})
    assert _status(info) == (403, "selector-mismatch")
    for op in ("add_client", "share_trust_bundle"):  # admin operations on the client socket
        with pytest.raises(IdentityError) as info:
            wire.call(lab.provider_socket(), op, {}, auth=token, auth_type=wire.AUTH_SIGNED)
        assert _status(info) == (403, "forbidden")


def test_admin_operations_check_the_peer_uid(tmp_path):
    """The admin socket is 0600 root; behind that, the handler refuses a non-root peer (socket 0666 here)."""
    config = provider_mod.load_config(_write(tmp_path / "p.json", {
        "site": "site.test", "host": HOST, "state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "c.sock"),
        "admin_socket": str(tmp_path / "a.sock")}))
    prov = provider_mod.Provider(config)
    run = tempfile.mkdtemp(prefix="hcpi-", dir="/tmp")  # reachable by nobody
    os.chmod(run, 0o711)
    server = wire.serve(os.path.join(run, "admin.sock"), prov.handle_admin, mode=0o666)
    try:
        orchestrator = trust.TrustedSide("orchestrator")
        result = Child(lambda: wire.call(server.path, "share_trust_bundle", orchestrator.bundle(True))).go()
        assert result["raised"][:2] == [403, "forbidden"]
        assert prov.orchestrator.root_fingerprint is None
    finally:
        server.close()
        shutil.rmtree(run, ignore_errors=True)


def _write(path, data):
    import json
    path.write_text(json.dumps(data))
    return str(path)


def test_components_killed_mid_flow_recover_without_losing_a_key(lab):
    lab.enroll("beta", os.getpid(), 0)
    client = _client(lab)
    public = client.export_public_key()
    errors, done, count = [], threading.Event(), [0]

    def loop():
        mine = _client(lab)
        while not done.is_set():
            try:
                assert mine.verify(b"x", mine.sign(b"x"))
                count[0] += 1
            except IdentityError as exc:
                errors.append(exc.status)
                time.sleep(0.05)
        mine.close()

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(0.3)
        for which in ("secsvc", "provider"):
            lab.kill(which)  # kill -9 mid-flow
            time.sleep(0.3)
            lab.start(which)
            lab.wait_shared()
            before = count[0]
            deadline = time.monotonic() + 20
            while count[0] < before + 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert count[0] >= before + 5, "no recovery after %s restart:\n%s" % (which, lab.log(which))
    finally:
        done.set()
        worker.join(timeout=30)
    assert set(errors) <= {0, 503}  # only "unreachable" while a component was down, never a wrong answer
    assert client.export_public_key() == public  # no key lost: the store key and the records survived
    # the orchestrator restarts: same root from the TPM, new intermediate; its next call recovers
    sealed = trust.SealedFile(str(lab.base) + "/orch-root.envelope.json", tcti=lab.tcti)
    lab.orchestrator = trust.TrustedSide("orchestrator", root_key_store=sealed)
    # (its first root: the pinned one is the in-memory orchestrator's: reset, as an operator would)
    subprocess.run([sys.executable, "-s", "-m", PKG + ".provider", "reset-trust", lab.conf_path("provider")], check=True,
                   stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    lab.restart("provider")
    lab.enroll("gamma", os.getpid(), 0)  # signed_call shares the new root after the reset
    lab.orchestrator = trust.TrustedSide("orchestrator", root_key_store=sealed)  # restart: same root, new intermediate
    assert lab.signed("remove_client", {"app": "gamma"}) == {"removed": True}


def test_rotation_while_clients_run(swtpm, tmp_path):
    lab = IdentityLab(tmp_path, tcti=swtpm.tcti, period=2).up()
    try:
        lab.enroll("beta", os.getpid(), 0)
        client = _client(lab)
        kids = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(kids) < 3:
            assert client.verify(b"r", client.sign(b"r"))
            kids.add(wire.call(lab.config["secsvc"]["admin_socket"], "ping")["idp_intermediate"])
            time.sleep(0.1)
        assert len(kids) >= 3  # rotated at least twice while signing, never failing
    finally:
        lab.stop()


def test_garbage_and_fuzz_never_kill_the_daemons(lab):
    rng = random.Random(1919)
    sockets = [lab.provider_socket(), lab.secsvc_socket()]
    big = struct.pack(">4sHHBBHII4s", b"HCPI", 1, 37, 1, 0, 0, 0, 0xFFFFFFFF, b"\0" * 4)
    for path in sockets:
        for frame in (big, b"\0" * 24, os.urandom(5000), b"HCPI" + b"\xff" * 20):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(frame)
                assert sock.recv(24)[:4] == b"HCPI"  # an error answer, then closed
    for _round in range(300):
        path = rng.choice(sockets)
        body = rng.choice([os.urandom(rng.randrange(64)), b'{"name": "default", "data": 5}', b'{"size": -1}', b"{}",
                           b'{"name": "' + b"a" * 70 + b'"}', b'{"refresh": true, "app": ["x"]}'])
        auth = rng.choice([b"", os.urandom(40), b"a.b.c", b"eyJhbGciOiJub25lIn0.e30."])
        frame = struct.pack(">4sHHBBHII4s", b"HCPI", 1, rng.choice(list(wire.OPCODE_NAMES) + [0, 65535]), rng.randrange(3), 0, 0,
                            len(auth), len(body), b"\0" * 4) + auth + body
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(frame)
            head = sock.recv(24)
            assert head[:4] == b"HCPI"
            status = struct.unpack(">H", head[10:12])[0]
            assert status in (0, 400, 401, 403, 404, 409, 413)  # never a 500
    for which in ("provider", "secsvc"):
        assert lab.procs[which].poll() is None
        assert lab.wait_ready(which)
    lab.enroll("beta", os.getpid(), 0)
    assert _client(lab).random(16)


def test_sigterm_is_a_clean_exit_and_sockets_are_private(lab):
    for key, mode in (("admin_socket", 0o600), ("socket", 0o666)):
        for which in ("provider", "secsvc"):
            assert stat.S_IMODE(os.lstat(lab.config[which][key]).st_mode) == mode
    assert stat.S_IMODE(os.stat(lab.config["provider"]["state_dir"]).st_mode) == 0o700
    assert lab.stop() == {"secsvc": 0, "provider": 0}
    for which in ("provider", "secsvc"):
        assert not os.path.exists(lab.config[which]["socket"])


def test_check_config_and_bad_configs(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

    def run(which, *args):
        return subprocess.run([sys.executable, "-s", "-m", "%s.%s" % (PKG, which)] + list(args), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    good = _write(tmp_path / "good.json", {"site": "site.test", "host": "node1", "state_dir": str(tmp_path / "s")})
    assert run("provider", "--check-config", good).returncode == 0
    for bad in ({"site": "site.test"}, {"site": "site.test\n", "host": "node1"}, {"site": "s", "host": "h", "state_dir": "rel"},
                {"site": "s", "host": "h", "colour": "red"}, {"site": "s", "host": "h", "token_lifetime": 3600},
                {"site": "s", "host": "h", "root_key": {"backend": "file"}}, [1]):
        result = run("provider", "--check-config", _write(tmp_path / "bad.json", bad))
        assert result.returncode == 1 and "bad-config" in result.stderr, bad
    result = run("secsvc", "--check-config", _write(tmp_path / "bad.json", {"site": "s", "host": "h", "store_key": {"backend": "x"}}))
    assert result.returncode == 1 and "store_key" in result.stderr
    assert run("secsvc").returncode == 2
