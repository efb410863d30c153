# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server store with its master key sealed to a real swtpm: versions, names, the swapped
TPM, a writer killed with SIGKILL mid-store (a real child process), a full file system (a real
tmpfs in a user+mount namespace), tampered files; the key-server client certificate from the
https-client generator."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorContext, GeneratorError, get_generator
from ansible_collections.hcp.core.plugins.module_utils.keyserver import store as ks_store
from ansible_collections.hcp.core.plugins.module_utils.keyserver.acl import parse_acl
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import (
    AclError,
    NotFoundError,
    ResourceNameError,
    StoreCorruptError,
    StoreOpenError,
)
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of, validate_name
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import ACL, tree_digest

BAD_NAMES = [
    ("datica-test/../etc", "'..'"), ("datica-test/a..b", "'..'"), ("/datica-test/key", "starts or ends"),
    ("datica-test/key/", "starts or ends"), ("datica-test/ke\0y", "NUL"), ("datica-test/" + "k" * 250, "longer than"),
    ("datica-test", "not <domain>/<name>"), ("datica-test//key", "segment"), ("Datica/key", "domain"),
    ("datica-test/key\n", "segment"), ("datica-test/a b", "segment"), ("datica-test/.hidden", "segment"),
    (None, "must be a string"), (["datica-test/key"], "must be a string"),
]


@pytest.fixture
def store_path(swtpm, tmp_path):
    path = str(tmp_path / "store")
    with swtpm.open() as tpm:
        ks_store.init_store(path, tpm.ek_public())
    return path


def _open(tpm_fixture, path, **options):
    with tpm_fixture.open() as tpm:
        return ks_store.open_store(path, tpm, **options)


def test_versions_and_flags(swtpm, store_path):
    store = _open(swtpm, store_path, keep_versions=3)
    first = store.store("datica-test/disk-key", b"one")
    assert first["changed"] and first["item_version"] == 1
    assert not store.store("datica-test/disk-key", b"one")["changed"]  # same content: idempotent
    assert store.store("datica-test/disk-key", b"two")["item_version"] == 2
    assert store.store("datica-test/disk-key", b"two", exportable=False, measurements=[measurement_of({"sha256": {}})])["item_version"] == 3
    dry = store.store("datica-test/disk-key", b"three", dry_run=True)
    assert dry["changed"] and dry["item_version"] == 4
    assert store.retrieve("datica-test/disk-key")[0] == b"two"  # a dry run stores nothing
    assert store.retrieve("datica-test/disk-key", 1)[0] == b"one"
    store.store("datica-test/disk-key", b"four")
    with pytest.raises(NotFoundError):  # keep_versions=3: version 1 pruned
        store.retrieve("datica-test/disk-key", 1)
    assert [r["name"] for r in store.names("datica-test/")] == ["datica-test/disk-key"]
    raw = b"".join(tree_digest(store_path).values())
    for secret in (b"one", b"two", b"four"):
        assert b'"' + base64.b64encode(secret) + b'"' not in raw
    assert store.delete("datica-test/disk-key") and not store.delete("datica-test/disk-key")
    with pytest.raises(NotFoundError, match="no item datica-test/disk-key"):
        store.retrieve("datica-test/disk-key")
    # the files are private
    for root, dirs, files in os.walk(store_path):
        for entry in dirs:
            assert os.stat(os.path.join(root, entry)).st_mode & 0o077 == 0
        for entry in files:
            assert os.stat(os.path.join(root, entry)).st_mode & 0o077 == 0


@pytest.mark.parametrize("name,message", BAD_NAMES)
def test_bad_names(name, message):
    with pytest.raises(ResourceNameError, match=message.replace("(", r"\(")):
        validate_name(name)


def test_bad_name_changes_nothing(swtpm, store_path):
    store = _open(swtpm, store_path)
    before = tree_digest(store_path)
    for name, _message in BAD_NAMES:
        with pytest.raises(ResourceNameError):
            store.store(name, b"x")
    assert tree_digest(store_path) == before


def test_swapped_tpm_refuses_and_loses_nothing(swtpm, other_swtpm, store_path):
    store = _open(swtpm, store_path)
    store.store("datica-test/disk-key", b"secret-1")
    before = tree_digest(store_path)
    with pytest.raises(StoreOpenError, match="TPM was replaced or the store was copied from another host. Nothing was changed"):
        _open(other_swtpm, store_path)
    assert tree_digest(store_path) == before
    # the original TPM still opens it
    assert _open(swtpm, store_path).retrieve("datica-test/disk-key")[0] == b"secret-1"
    # an attacker re-seals a key of their own to the right TPM: the key check refuses it
    with swtpm.open() as tpm:
        from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope  # pylint: disable=import-outside-toplevel
        forged = envelope.dumps(envelope.seal(tpm.ek_public(), os.urandom(32), fingerprint=False))
    with open(os.path.join(store_path, ks_store.MASTER_FILE), "wb") as handle:
        handle.write(forged)
    with pytest.raises(StoreOpenError, match="key check failed"):
        _open(swtpm, store_path)


def test_tampered_items_refused(swtpm, store_path):
    store = _open(swtpm, store_path)
    store.store("datica-test/a", b"secret-a")
    store.store("datica-test/b", b"secret-b")
    dir_a, dir_b = store._item_dir("datica-test/a"), store._item_dir("datica-test/b")  # pylint: disable=protected-access
    path = os.path.join(dir_a, "v00000001.json")
    with open(path, "rb") as handle:
        header, body = handle.read().splitlines()
    record = json.loads(header)
    record["exportable"] = False  # flip a flag: the AEAD header no longer matches
    record["measurements"] = [measurement_of({})]
    with open(path, "wb") as handle:
        handle.write(json.dumps(record).encode() + b"\n" + body + b"\n")
    with pytest.raises(StoreCorruptError, match="failed authentication"):
        store.retrieve("datica-test/a")
    shutil.copy(os.path.join(dir_b, "v00000001.json"), os.path.join(dir_a, "v00000002.json"))  # b's file moved under a
    with pytest.raises(StoreCorruptError, match="does not belong there"):
        store.retrieve("datica-test/a")
    with open(os.path.join(dir_a, "v00000002.json"), "wb") as handle:
        handle.write(b"{}\n")  # truncated
    with pytest.raises(StoreCorruptError, match="not a v1 item file"):
        store.retrieve("datica-test/a")
    assert [r["name"] for r in store.names("datica-test/")] == ["datica-test/b"]  # a damaged item is not listed
    assert store.retrieve("datica-test/b")[0] == b"secret-b"


CHILD = r"""
import hashlib, json, os, sys
sys.path[:0] = json.loads(os.environ["KS_SYS_PATH"])
from ansible_collections.hcp.core.plugins.module_utils.keyserver import store as ks_store
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm
mode, path, tcti = sys.argv[1:4]

def payload(k, size):
    return hashlib.sha256(str(k).encode()).digest() * (size // 32)

if mode == "writer":
    with Tpm(tcti) as tpm:
        store = ks_store.open_store(path, tpm, max_item_bytes=1 << 20, keep_versions=1000)
    print("ready", flush=True)
    k = int(sys.argv[4])
    while True:
        store.store("datica-test/big", payload(k, 256 * 1024))
        print(k, flush=True)
        k += 1
elif mode == "half":  # SIGKILL itself after writing half of the next version's bytes
    import signal
    with Tpm(tcti) as tpm:
        store = ks_store.open_store(path, tpm, max_item_bytes=1 << 20, keep_versions=1000)
    real_write = os.write

    def half_then_die(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)
    os.write = half_then_die
    store.store("datica-test/big", payload(int(sys.argv[4]), 256 * 1024))
else:  # full: the store copied onto a 256 KiB tmpfs mounted at argv[4]
    import shutil
    copy = os.path.join(sys.argv[4], "store")
    shutil.copytree(path, copy)
    with Tpm(tcti) as tpm:
        store = ks_store.open_store(copy, tpm, max_item_bytes=1 << 20)
    result = {}
    try:
        store.store("datica-test/big", payload(99, 300 * 1024))
    except ks_store.StoreFullError as exc:
        result["error"] = str(exc)
    result["latest"] = store.retrieve("datica-test/big")[1]["item_version"]
    result["data_ok"] = store.retrieve("datica-test/big")[0] == payload(1, 1024)
    result["files"] = sorted(os.listdir(store._item_dir("datica-test/big")))
    print(json.dumps(result))
"""


def _child_env():
    return dict(os.environ, KS_SYS_PATH=json.dumps(sys.path), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _payload(k, size):
    return hashlib.sha256(str(k).encode()).digest() * (size // 32)


def test_kill_9_mid_store_keeps_previous_versions(swtpm, store_path, tmp_path):
    """A writer killed with SIGKILL at a random point of a store: the store opens, the latest
    complete version is readable, every earlier one too; the next store works."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    stored = 0
    for round_index, delay in enumerate((0.003, 0.011, 0.027, 0.05)):
        proc = subprocess.Popen([sys.executable, str(script), "writer", store_path, swtpm.tcti, str(stored + 1)],
                                stdout=subprocess.PIPE, env=_child_env())
        assert proc.stdout.readline() == b"ready\n"
        acknowledged = [int(proc.stdout.readline())]  # at least one store acknowledged
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
        acknowledged.extend(int(x) for x in rest)
        store = _open(swtpm, store_path, keep_versions=1000)
        data, meta = store.retrieve("datica-test/big")
        # what was acknowledged is there; a store in flight either completed or left nothing
        assert meta["item_version"] in (acknowledged[-1], acknowledged[-1] + 1), (round_index, meta, acknowledged[-1])
        assert data == _payload(meta["item_version"], 256 * 1024)
        for version in range(1, meta["item_version"] + 1):
            assert store.retrieve("datica-test/big", version)[0] == _payload(version, 256 * 1024)
        stored = meta["item_version"]
    store.store("datica-test/big", b"after")  # the next writer cleans what a killed one left
    assert not [f for f in os.listdir(store._item_dir("datica-test/big")) if f.startswith(".tmp-")]  # pylint: disable=protected-access


def test_kill_9_half_way_through_a_version(swtpm, store_path, tmp_path):
    """The writer is killed (SIGKILL, a real child) with half of the new version's bytes on disk:
    the previous version stays the latest and readable; the next store works and cleans up."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store = _open(swtpm, store_path, keep_versions=1000)
    store.store("datica-test/big", _payload(1, 256 * 1024))
    proc = subprocess.run([sys.executable, str(script), "half", store_path, swtpm.tcti, "2"], env=_child_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    directory = store._item_dir("datica-test/big")  # pylint: disable=protected-access
    assert [f for f in os.listdir(directory) if f.startswith(".tmp-")]  # the half-written file the kill left
    data, meta = _open(swtpm, store_path).retrieve("datica-test/big")
    assert meta["item_version"] == 1 and data == _payload(1, 256 * 1024)
    assert store.store("datica-test/big", b"next")["item_version"] == 2
    assert sorted(os.listdir(directory)) == ["v00000001.json", "v00000002.json"]


def test_disk_full_is_a_clear_error_and_changes_nothing(swtpm, store_path, tmp_path):
    """ENOSPC on a real (tiny) tmpfs, mounted in a user+mount namespace of a child process."""
    store = _open(swtpm, store_path)
    store.store("datica-test/big", _payload(1, 1024))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    mount = tmp_path / "small"
    mount.mkdir()
    command = ["unshare", "-rm", "sh", "-ec", 'mount -t tmpfs -o size=256k tmpfs "$1"; shift; exec "$@"', "sh", str(mount),
               sys.executable, str(script), "full", store_path, swtpm.tcti, str(mount)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    result = json.loads(proc.stdout)
    assert "file system is full (No space left on device)" in result["error"]
    assert "nothing was stored, earlier versions are unchanged" in result["error"]
    assert result["latest"] == 1 and result["data_ok"]
    assert result["files"] == ["v00000001.json"]  # no temporary file left behind


def test_acl_format():
    acl = parse_acl(ACL)
    deploy = {"cn": "deploy.example.test", "profile": "deployer", "measurement": None}
    vm = {"cn": "node9.example.test", "profile": "vm", "measurement": None}
    assert acl.allowed(deploy, "store", "datica-test/x") and not acl.allowed(vm, "store", "datica-test/x")
    assert acl.allowed(vm, "retrieve", "datica-test/x")
    assert not acl.allowed(vm, "retrieve", "datica-test/deploy-only/x")  # the longest prefix decides
    assert not acl.allowed(deploy, "retrieve", "other/x")  # no rule: default deny
    assert not acl.allowed({"cn": None, "profile": None, "measurement": None}, "retrieve", "datica-test/x")
    for bad, message in [
        ({"format": "x"}, "format"), (dict(ACL, rules=[{"prefix": "../x"}]), "prefix"),
        (dict(ACL, rules=[{"prefix": "keyserver/"}]), "reserved"),
        (dict(ACL, rules=[{"prefix": "a/", "retrieve": [{}]}]), "non-empty"),
        (dict(ACL, rules=[{"prefix": "a/", "retrieve": [{"cn": "x", "uid": 0}]}]), "unknown key"),
        (dict(ACL, rules=[{"prefix": "a/", "retrieve": [{"measurement": "sha256:00"}]}]), "measurement"),
        (dict(ACL, rules=[{"prefix": "a/"}, {"prefix": "a/"}]), "twice"),
        (dict(ACL, rules=[{"prefix": "a/", "fetch": []}]), "unknown key"),
        (b"[" * 100000, "nested"), (b"\xff", "UTF-8"),
    ]:
        with pytest.raises(AclError, match=message):
            parse_acl(bad)


def _context(profile, issuer):
    return GeneratorContext(hostname="node1.example.test", ekpubhash="ab" * 32, ek_public=b"", profile=profile, env={},
                            issuer=issuer, secrets={}, now=None)


def test_https_client_generator_adds_the_keyserver_purpose():
    ca_key, ca_cert = pki.create_ca("test enrollment CA")
    issuer = pki.Issuer(ca_key, [ca_cert])
    golden = {"sha256": {"7": "11" * 32}}
    profile = {"attest": {"pcrs": golden},
               "certificates": {"https-client": {"keyserver_client": True, "keyserver_profile": "vm"}}}
    assets = get_generator("https-client").generate(_context(profile, issuer))
    pem = [a for a in assets if a.name == "https-client.pem"][0].data
    who = pki.verify_keyserver_client(pem, [ca_cert])
    assert (who["cn"], who["profile"], who["measurement"]) == ("node1.example.test", "vm", measurement_of(golden))
    plain = get_generator("https-client").generate(_context({}, issuer))
    with pytest.raises(pki.CertificateVerifyError, match="lacks the key-server client purpose"):
        pki.verify_keyserver_client([a for a in plain if a.name == "https-client.pem"][0].data, [ca_cert])
    for options, message in [({"keyserver_client": "yes"}, "boolean"), ({"keyserver_profile": "vm"}, "needs keyserver_client"),
                             ({"keyserver_client": True, "keyserver_profile": "../x"}, "must match")]:
        with pytest.raises(GeneratorError, match=message):
            get_generator("https-client").generate(_context({"certificates": {"https-client": options}}, issuer))


def test_command_line_init_and_check(swtpm, other_swtpm, tmp_path):
    """The operator's path: init from the TPM (or its EK public key, off the host), check, refusals."""
    command = [sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.keyserver.store"]
    path = str(tmp_path / "ks")
    proc = subprocess.run(command + ["init", path, "--tcti", swtpm.tcti], env=_child_env(), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with swtpm.open() as tpm:
        assert json.loads(proc.stdout) == {"path": path, "ekpubhash": tpm.ekpubhash()}
    proc = subprocess.run(command + ["init", path, "--tcti", swtpm.tcti], env=_child_env(), capture_output=True, check=False)
    assert proc.returncode == 1 and b"is not empty" in proc.stderr
    assert subprocess.run(command + ["check", path, "--tcti", swtpm.tcti], env=_child_env(), capture_output=True,
                          check=False).returncode == 0
    proc = subprocess.run(command + ["check", path, "--tcti", other_swtpm.tcti], env=_child_env(), capture_output=True, check=False)
    assert proc.returncode == 1 and b"TPM was replaced" in proc.stderr
    with other_swtpm.open() as tpm:
        from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem  # pylint: disable=import-outside-toplevel
        (tmp_path / "ek.pem").write_text(ek_public_pem(tpm.ek_public()))
    proc = subprocess.run(command + ["init", str(tmp_path / "ks2"), "--ek-public", str(tmp_path / "ek.pem")], env=_child_env(),
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _open(other_swtpm, str(tmp_path / "ks2")).names("a/") == []


def test_concurrent_writers_lose_no_version(swtpm, store_path):
    """Writers racing on one item (threads: each store takes the item's flock on its own descriptor,
    as uwsgi's worker processes do): every store gets its own version, none is lost or torn."""
    import threading  # pylint: disable=import-outside-toplevel

    store = _open(swtpm, store_path, keep_versions=1000)
    errors = []

    def writer(index):
        try:
            for round_index in range(10):
                store.store("datica-test/shared", b"writer %d round %d" % (index, round_index))
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.retrieve("datica-test/shared")[1]["item_version"] == 40
    seen = set(store.retrieve("datica-test/shared", v)[0] for v in range(1, 41))
    assert seen == set(b"writer %d round %d" % (i, r) for i in range(4) for r in range(10))
