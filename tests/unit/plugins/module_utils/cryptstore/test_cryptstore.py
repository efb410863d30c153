# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cryptstore library against real swtpm TPMs: A = swtpm, B = other_swtpm, C = new_swtpm.
Each test runs an attack or a fault for real: a swapped TPM, a bundle opened on the wrong TPM
or tampered with, kill -9 during a write, hostile names, symbolic links on the path."""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.hcp.core.plugins.module_utils.cryptstore import bundle as bundle_mod
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.errors import (
    BundleError,
    CryptStoreError,
    InvalidItemError,
    ItemNotFoundError,
    NotExportableError,
    StoreFormatError,
    StoreNotFoundError,
    StoreTpmMismatchError,
)
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.store import CryptStore, store_exists
from ansible_collections.hcp.core.plugins.module_utils.fileutil import UnsafePathError
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope as env_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_b64

SECRET = b"disk-key:" + bytes(range(256)) + b":end"
TEXT = b"hcp-cryptstore-text-secret-6c1d93e2"


def _forms(data):
    return [data, base64.b64encode(data), base64.b64encode(data)[4:40], data.hex().encode(), data[9:40]]


def _snapshot(root):
    """{relative path: (mode, bytes)} of every file and directory under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None
            out[os.path.relpath(path, root)] = (stat.S_IMODE(info.st_mode), content)
    return out


def _certificate():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "cryptstore-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _ekpub(tpm_fixture):
    with tpm_fixture.open() as tpm:
        return ek_public_b64(tpm.ek_public())


def _open(tpm_fixture, path, create=False):
    with tpm_fixture.open() as tpm:
        return CryptStore.open(str(path), tpm, create=create)


def test_put_get_round_trip_and_files(swtpm, tmp_path):
    path = tmp_path / "store"
    with pytest.raises(StoreNotFoundError):
        _open(swtpm, path)
    assert not path.exists() and not store_exists(str(path))
    store = _open(swtpm, path, create=True)
    cert = _certificate()
    assert store.put("disk-key", SECRET, "key", exportable=True) == "created"
    assert store.put("tls.crt", cert, "x509") == "created"
    assert store.put("blob", b"\0\1\2", "binary-blob") == "created"
    assert store.put("note", TEXT) == "created"
    assert store.put("disk-key", SECRET, "key", exportable=True) == "unchanged"
    assert store.put("note", TEXT + b"2") == "updated"
    with pytest.raises(InvalidItemError, match="not an X.509 certificate"):
        store.put("bad.crt", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "x509")
    with pytest.raises(InvalidItemError, match="unknown type"):
        store.put("x", b"1", "password")

    again = _open(swtpm, path)  # a new process would do the same: unseal the master key on the TPM
    assert again.get("disk-key").data == SECRET and again.get("disk-key").type == "key" and again.get("disk-key").exportable
    assert again.get("tls.crt").data == cert and again.get("note").data == TEXT + b"2"
    assert again.names() == ["blob", "disk-key", "note", "tls.crt"]
    assert [info["name"] for info in again.list()] == again.names() and "data" not in again.list()[0]
    with pytest.raises(ItemNotFoundError):
        again.get("missing")
    assert again.delete("blob") is True and again.delete("blob") is False and again.names() == ["disk-key", "note", "tls.crt"]

    # on disk: 0700 directories, 0600 files, no item data in any encoding
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700 and stat.S_IMODE(os.stat(path / "items").st_mode) == 0o700
    files = _snapshot(path)
    assert set(files) == {"cryptstore.json", ".lock", "items", "items/disk-key.item", "items/note.item", "items/tls.crt.item"}
    everything = b"".join(content for mode, content in files.values() if content is not None)
    assert all(mode == 0o600 for mode, content in files.values() if content is not None)
    assert not [form for secret in (SECRET, TEXT, cert) for form in _forms(secret) if form in everything]
    meta = json.loads(files["cryptstore.json"][1])
    assert meta["format"] == "hcp.core.cryptstore" and meta["version"] == 1
    assert meta["master_key"]["format"] == "hcp.core.envelope" and meta["master_key"]["ekpubhash"] == store.ekpubhash


def test_store_refuses_another_tpm_and_loses_nothing(swtpm, other_swtpm, tmp_path):
    path = tmp_path / "store"
    store = _open(swtpm, path, create=True)
    store.put("disk-key", SECRET, "key")
    before = _snapshot(path)
    with pytest.raises(StoreTpmMismatchError) as info:
        _open(other_swtpm, path)
    message = str(info.value)
    with swtpm.open() as a, other_swtpm.open() as b:
        assert a.ekpubhash()[:16] in message and b.ekpubhash()[:16] in message
    assert "refusing to open" in message and "nothing was changed" in message
    with pytest.raises(StoreTpmMismatchError):
        _open(other_swtpm, path, create=True)  # not "repaired" by making a new store over it
    assert _snapshot(path) == before
    assert _open(swtpm, path).get("disk-key").data == SECRET  # the original TPM still opens it


def test_store_file_relabelled_for_another_tpm_is_refused(swtpm, other_swtpm, tmp_path):
    # the attacker edits the sealed master key's EK hash to the new TPM's: the TPM itself refuses
    path = tmp_path / "store"
    _open(swtpm, path, create=True).put("k", SECRET)
    meta = json.loads((path / "cryptstore.json").read_text())
    with other_swtpm.open() as b:
        meta["master_key"]["ekpubhash"] = b.ekpubhash()
    (path / "cryptstore.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="cannot unseal the master key"):
        _open(other_swtpm, path)


def test_export_from_a_to_b_import_on_b_and_not_on_c(swtpm, other_swtpm, new_swtpm, tmp_path):
    a = _open(swtpm, tmp_path / "a", create=True)
    a.put("disk-key", SECRET, "key", exportable=True)
    a.put("note", TEXT, "other", exportable=True)
    a.put("host-private", b"never leaves", "key")  # not exportable
    with pytest.raises(NotExportableError, match="host-private"):
        bundle_mod.export_bundle(a, _ekpub(other_swtpm), ["disk-key", "host-private"])
    bundle, names = bundle_mod.export_bundle(a, _ekpub(other_swtpm))
    assert names == ["disk-key", "note"]
    raw = bundle_mod.dumps(bundle)
    assert not [form for secret in (SECRET, TEXT) for form in _forms(secret) if form in raw]
    assert b"disk-key" not in raw and b"host-private" not in raw  # names travel encrypted too
    assert bundle_mod.current_export(a, raw, _ekpub(other_swtpm)) == names
    assert bundle_mod.current_export(a, raw, _ekpub(new_swtpm)) is None
    a.put("note", TEXT + b"!", "other", exportable=True)
    assert bundle_mod.current_export(a, raw, _ekpub(other_swtpm)) is None  # content changed: export again

    b = _open(other_swtpm, tmp_path / "b", create=True)
    with other_swtpm.open() as tpm:
        source, actions = bundle_mod.import_bundle(b, tpm, raw)
    assert actions == {"disk-key": "created", "note": "created"} and source["ekpubhash"] == a.ekpubhash
    b = _open(other_swtpm, tmp_path / "b")
    assert b.get("disk-key").data == SECRET and b.get("note").data == TEXT and b.get("disk-key").type == "key"
    assert b.get("disk-key").exportable is False  # imported items are not exportable unless asked
    with other_swtpm.open() as tpm:
        assert bundle_mod.import_bundle(b, tpm, raw)[1] == {"disk-key": "unchanged", "note": "unchanged"}

    c = _open(new_swtpm, tmp_path / "c", create=True)
    before = _snapshot(tmp_path / "c")
    with new_swtpm.open() as tpm:
        with pytest.raises(BundleError, match="exported for the TPM with EK .*not for this TPM"):
            bundle_mod.import_bundle(c, tpm, raw)
        # the attacker relabels the bundle (outer and envelope EK hash) for C: C's TPM cannot open it
        forged = json.loads(raw)
        forged["ekpubhash"] = forged["envelope"]["ekpubhash"] = tpm.ekpubhash()
        with pytest.raises(BundleError):
            bundle_mod.import_bundle(c, tpm, json.dumps(forged))
    assert _snapshot(tmp_path / "c") == before and c.names() == []


def test_import_conflict_needs_force(swtpm, other_swtpm, tmp_path):
    a = _open(swtpm, tmp_path / "a", create=True)
    a.put("k1", b"one", exportable=True)
    a.put("k2", b"two", exportable=True)
    raw = bundle_mod.dumps(bundle_mod.export_bundle(a, _ekpub(other_swtpm))[0])
    b = _open(other_swtpm, tmp_path / "b", create=True)
    b.put("k2", b"local")
    with other_swtpm.open() as tpm:
        with pytest.raises(InvalidItemError, match="k2"):
            bundle_mod.import_bundle(b, tpm, raw)
        assert b.names() == ["k2"] and b.get("k2").data == b"local"  # nothing written, not even k1
        assert bundle_mod.import_bundle(b, tpm, raw, dry_run=True, force=True)[1] == {"k1": "created", "k2": "updated"}
        assert b.names() == ["k2"]
        assert bundle_mod.import_bundle(b, tpm, raw, force=True)[1] == {"k1": "created", "k2": "updated"}
    assert b.get("k2").data == b"two"


def _flip(text):
    data = bytearray(base64.b64decode(text))
    data[len(data) // 2] ^= 1
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("tamper", ["ciphertext", "nonce", "credential", "secret", "version", "format", "policy", "truncated",
                                    "not-json", "huge"])
def test_tampered_bundle_refused(swtpm, other_swtpm, tmp_path, tamper):
    a = _open(swtpm, tmp_path / "a", create=True)
    a.put("disk-key", SECRET, "key", exportable=True)
    bundle = bundle_mod.export_bundle(a, _ekpub(other_swtpm))[0]
    env = bundle["envelope"]
    if tamper == "ciphertext":
        env["ciphertext"] = _flip(env["ciphertext"])
    elif tamper == "nonce":
        env["dem"]["nonce"] = _flip(env["dem"]["nonce"])
    elif tamper == "credential":
        env["kem"]["credential_blob"] = _flip(env["kem"]["credential_blob"])
    elif tamper == "secret":
        env["kem"]["encrypted_secret"] = _flip(env["kem"]["encrypted_secret"])
    elif tamper == "version":
        bundle["version"] = 2
    elif tamper == "format":
        bundle["format"] = "hcp.core.cryptstore.bundle2"
    elif tamper == "policy":
        env["policy"] = {"type": "one_time"}
    raw = bundle_mod.dumps(bundle)
    if tamper == "truncated":
        raw = raw[:len(raw) // 2]
    elif tamper == "not-json":
        raw = b"\xff" * 100
    elif tamper == "huge":
        raw = b" " * (bundle_mod.MAX_BUNDLE_BYTES + 1)
    b = _open(other_swtpm, tmp_path / "b", create=True)
    with other_swtpm.open() as tpm:
        with pytest.raises(BundleError):
            bundle_mod.import_bundle(b, tpm, raw)
    assert b.names() == []


KILLED_WRITER = r"""
import os, sys, time
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.store import CryptStore
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm
with Tpm(sys.argv[2]) as tpm:
    store = CryptStore.open(sys.argv[1], tpm)
real_fsync = os.fsync
def fsync_then_hang(fd):
    real_fsync(fd)  # the new value is on disk under its temporary name, not yet renamed
    sys.stdout.write("written\n")
    sys.stdout.flush()
    time.sleep(600)
os.fsync = fsync_then_hang
store.put("disk-key", b"NEW" * 100000, "key")
"""


def test_kill_9_during_put_keeps_the_previous_value(swtpm, tmp_path):
    path = tmp_path / "store"
    _open(swtpm, path, create=True).put("disk-key", SECRET, "key")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), swtpm.tcti], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"written\n"
        temps = [name for name in os.listdir(path / "items") if name.startswith(".disk-key.item.")]
        assert len(temps) == 1 and os.path.getsize(path / "items" / temps[0]) > 300000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = _open(swtpm, path)
    assert store.get("disk-key").data == SECRET and store.names() == ["disk-key"]
    # the killed writer's lock is gone with it; the next write clears its temporary file
    assert store.put("disk-key", b"next", "key") == "updated" and store.get("disk-key").data == b"next"
    assert sorted(os.listdir(path / "items")) == ["disk-key.item"]


FULL_WRITER = r"""
import errno, resource, signal, sys
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.store import CryptStore
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm
with Tpm(sys.argv[2]) as tpm:
    store = CryptStore.open(sys.argv[1], tpm)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))  # every write past 100 kB fails: the disk is full
try:
    store.put("disk-key", b"NEW" * 100000, "key")
except OSError as exc:
    print("refused", errno.errorcode[exc.errno])
"""


def test_full_disk_during_put_keeps_the_previous_value(swtpm, tmp_path):
    path = tmp_path / "store"
    _open(swtpm, path, create=True).put("disk-key", SECRET, "key")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", FULL_WRITER, str(path), swtpm.tcti], env=env, stdout=subprocess.PIPE, check=True, timeout=120)
    assert out.stdout == b"refused EFBIG\n"
    assert sorted(os.listdir(path / "items")) == ["disk-key.item"]  # the partial temporary file was removed
    assert _open(swtpm, path).get("disk-key").data == SECRET


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc", "x/", ".hidden", "a..b", "a\n", "a\0b", "a b",
                                  "é", "x" * 129, "-x", "a\\b", None, 7])
def test_bad_names_refused(swtpm, tmp_path, name):
    store = _open(swtpm, tmp_path / "store", create=True)
    before = _snapshot(tmp_path)
    with pytest.raises(InvalidItemError, match="invalid item name"):
        store.put(name, b"x")
    with pytest.raises(InvalidItemError):
        store.get(name)
    with pytest.raises(InvalidItemError):
        store.delete(name)
    assert _snapshot(tmp_path) == before
    assert store.put("x" * 128, b"x") == "created"  # the bound itself is accepted


def test_symlinks_and_open_modes_refused(swtpm, tmp_path):
    real = tmp_path / "real"
    store = _open(swtpm, real, create=True)
    store.put("k", SECRET)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _open(swtpm, tmp_path / "link")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _open(swtpm, tmp_path / "link", create=True)
    (tmp_path / "parent-link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        _open(swtpm, tmp_path / "parent-link" / "real")

    # an item file replaced by a link to a file elsewhere: neither read nor written through
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    os.rename(real / "items" / "k.item", tmp_path / "k.saved")
    (real / "items" / "k.item").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.get("k")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.put("k", b"overwrite")
    assert outside.read_bytes() == b"not yours"
    os.unlink(real / "items" / "k.item")
    os.rename(tmp_path / "k.saved", real / "items" / "k.item")

    # the lock file as a link: refused, the target not created
    os.unlink(real / ".lock")
    (real / ".lock").symlink_to(tmp_path / "planted")
    with pytest.raises(CryptStoreError, match="lock file"):
        store.put("k2", b"x")
    assert not (tmp_path / "planted").exists()
    os.unlink(real / ".lock")

    # the items directory as a link to another directory
    os.rename(real / "items", tmp_path / "items.saved")
    (real / "items").symlink_to(tmp_path / "items.saved")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        store.get("k")
    os.unlink(real / "items")
    os.rename(tmp_path / "items.saved", real / "items")

    # a store directory open to others
    os.chmod(real, 0o755)
    with pytest.raises(CryptStoreError, match="must be 0700"):
        _open(swtpm, real)
    os.chmod(real, 0o700)
    assert _open(swtpm, real).get("k").data == SECRET


def test_tampered_item_files_refused(swtpm, tmp_path):
    path = tmp_path / "store"
    store = _open(swtpm, path, create=True)
    store.put("a", b"value a")
    store.put("b", b"value b")
    doc = json.loads((path / "items" / "a.item").read_text())
    doc["ciphertext"] = _flip(doc["ciphertext"])
    (path / "items" / "a.item").write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="failed authentication"):
        store.get("a")
    doc = json.loads((path / "items" / "b.item").read_text())
    doc["exportable"] = True  # the header is authenticated too
    (path / "items" / "b.item").write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="failed authentication"):
        store.get("b")
    os.replace(path / "items" / "b.item", path / "items" / "c.item")  # one item's file under another name
    with pytest.raises(StoreFormatError, match="another item"):
        store.get("c")
    # a store file without its item directory content: not silently re-created over existing items
    os.unlink(path / "cryptstore.json")
    with pytest.raises(StoreFormatError, match="refusing to make a new store"):
        _open(swtpm, path, create=True)


@pytest.mark.parametrize("entry", [
    {"name": "../../../etc/cron.d/evil", "type": "other", "data": "eA=="},
    {"name": "ok", "type": "x509", "data": "bm90IGEgY2VydA=="},
    {"name": "ok", "type": "password", "data": "eA=="},
    {"name": "ok", "type": "other", "data": "not base64!"},
    {"name": "ok", "type": "other", "data": "eA==", "path": "/etc/shadow"},
])
def test_forged_bundle_with_hostile_items_refused(other_swtpm, tmp_path, entry):
    # a bundle is not origin-authenticated: anyone with B's EK public key can seal one for B
    payload = {"format": bundle_mod.PAYLOAD_FORMAT, "version": 1, "created": 0, "source": {"store_id": "x", "ekpubhash": "y"},
               "items": [{"name": "fine", "type": "other", "data": "eA=="}, entry]}
    with other_swtpm.open() as tpm:
        envelope = env_mod.seal(tpm.ek_public(), json.dumps(payload).encode(), None, fingerprint=False)
    raw = bundle_mod.dumps({"format": bundle_mod.FORMAT, "version": 1, "ekpubhash": envelope["ekpubhash"], "envelope": envelope})
    b = _open(other_swtpm, tmp_path / "b", create=True)
    before = _snapshot(tmp_path)
    with other_swtpm.open() as tpm:
        with pytest.raises((BundleError, InvalidItemError)):
            bundle_mod.import_bundle(b, tpm, raw)
    assert _snapshot(tmp_path) == before and b.names() == []
