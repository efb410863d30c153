# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root installing into a user's home must not follow what the user planted there.

The installer runs as root (so do these tests). The user is the real account ``nobody``
(uid/gid 65534) with a real home directory under a temporary root, owned by it; the links
it plants belong to it. A temporary ``etc`` directory stands in for /etc (the real /etc is
never touched). The pkinit-user assets come from the real enrollment generator and go
through the real installer entry point (``asset_install.install``/``plan``/``apply``)."""
from __future__ import annotations

import datetime
import json
import os
import pwd
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils import fileutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import attester
from ansible_collections.hcp.core.plugins.module_utils.attestation import install as asset_install
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer's ownership changes need root")

USER = pwd.getpwnam("nobody")
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def pkinit_user():
    """(manifest, assets) of the real pkinit-user generator for user nobody, listed as the
    enrollment pipeline lists them in the manifest."""
    key, cert = pki.create_ca("Test Enrollment CA", kind="rsa-2048", now=NOW)
    profile = {"certificates": {"pkinit-user": {"users": [USER.pw_name]}}}
    ctx = asset_contract.GeneratorContext("ws1.example.test", "ab" * 32, b"\x00\x01ek", profile,
                                          {"ENROLL_REALM": "EXAMPLE.TEST"}, pki.Issuer(key, [cert]), {}, NOW)
    generated = asset_contract.get_generator("pkinit-user").generate(ctx)
    listing = [{"name": a.name, "file": a.name + (".sealed" if a.sensitive else ""), "sensitive": a.sensitive,
                "install": a.install, "generator": "pkinit-user"} for a in generated]
    assert [a["install"]["dest"] for a in listing] == ["~nobody/.hcp/pkinit/user-nobody.key",
                                                       "~nobody/.hcp/pkinit/user-nobody.pem"]
    return {"hostname": "ws1.example.test", "assets": listing}, dict((a.name, a.data) for a in generated)


@pytest.fixture()
def site(tmp_path):
    """root (the installer's root), home (nobody's, owned by nobody) and victim (stands in
    for /etc: root's 0755 directory with a file)."""
    root = tmp_path / "root"
    home = str(root) + USER.pw_dir
    os.makedirs(home)
    os.chown(home, USER.pw_uid, USER.pw_gid)
    os.chmod(home, 0o755)
    victim = tmp_path / "etc"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chmod(str(victim / "passwd"), 0o644)
    return str(root), home, str(victim)


def _as_user_symlink(target, link):
    """What the user does: a symbolic link of its own in its own home."""
    os.symlink(target, link)
    os.lchown(link, USER.pw_uid, USER.pw_gid)


def _as_user_mkdir(path, mode=0o755):
    os.mkdir(path)
    os.chown(path, USER.pw_uid, USER.pw_gid)
    os.chmod(path, mode)


def _snapshot(directory):
    """Owner, mode and content of a directory and everything in it (to prove nothing changed)."""
    out = {}
    for base, dirs, files in os.walk(directory):
        for name in [""] + dirs + files:
            path = os.path.join(base, name) if name else base
            info = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else None
            out[os.path.relpath(path, directory)] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), content)
    return out


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_normal_home_gets_the_user_files_with_owner_and_mode(site, pkinit_user):
    root, home, _victim = site
    manifest, assets = pkinit_user
    result = asset_install.install(manifest, assets, root=root)
    assert sorted(result["changed"]) == ["user-nobody.key", "user-nobody.pem"] and result["skipped"] == []
    key = home + "/.hcp/pkinit/user-nobody.key"
    pem = home + "/.hcp/pkinit/user-nobody.pem"
    assert open(key, "rb").read() == assets["user-nobody.key"] and open(pem, "rb").read() == assets["user-nobody.pem"]
    for path in (key, pem, home + "/.hcp/pkinit", home + "/.hcp"):
        info = os.lstat(path)
        assert (info.st_uid, info.st_gid) == (USER.pw_uid, USER.pw_gid), path
    assert _mode(key) == 0o600 and _mode(pem) == 0o644
    assert _mode(home + "/.hcp") == 0o700 and _mode(home + "/.hcp/pkinit") == 0o700
    assert sorted(os.listdir(home + "/.hcp/pkinit")) == ["user-nobody.key", "user-nobody.pem"]  # no temporary left
    assert asset_install.install(manifest, assets, root=root)["changed"] == []
    # attribute drift is repaired by a new file (the old inode is never chowned: it may be a hard link)
    os.chmod(pem, 0o666)
    inode = os.lstat(pem).st_ino
    assert asset_install.install(manifest, assets, root=root)["changed"] == ["user-nobody.pem"]
    assert _mode(pem) == 0o644 and os.lstat(pem).st_ino != inode and os.lstat(pem).st_uid == USER.pw_uid


def test_existing_user_directories_are_kept_as_the_user_made_them(site, pkinit_user):
    root, home, _victim = site
    manifest, assets = pkinit_user
    _as_user_mkdir(home + "/.hcp", 0o750)
    result = asset_install.install(manifest, assets, root=root)
    assert sorted(result["changed"]) == ["user-nobody.key", "user-nobody.pem"]
    assert _mode(home + "/.hcp") == 0o750 and _mode(home + "/.hcp/pkinit") == 0o700


def test_attack_pkinit_directory_symlink_to_etc(site, pkinit_user):
    """Attack 1: ~/.hcp/pkinit -> /etc. The old installer wrote user-nobody.key/.pem into
    the victim directory and chowned them to the user."""
    root, home, victim = site
    manifest, assets = pkinit_user
    _as_user_mkdir(home + "/.hcp", 0o700)
    _as_user_symlink(victim, home + "/.hcp/pkinit")
    before = _snapshot(victim)
    with pytest.raises(asset_install.AssetInstallError,
                       match=r"asset user-nobody\.key: destination refused: .*/\.hcp/pkinit is a symbolic link: refused"):
        asset_install.install(manifest, assets, root=root)
    assert _snapshot(victim) == before
    with pytest.raises(asset_install.AssetInstallError, match="symbolic link"):  # check mode refuses too
        asset_install.apply(asset_install.plan(manifest, assets, root=root), dry_run=True, root=root)


def test_attack_hcp_directory_symlink_to_etc(site, pkinit_user):
    """Attack 2: ~/.hcp -> /etc. The old installer made /etc/pkinit (owned by the user) and
    wrote the key and certificate into it."""
    root, home, victim = site
    manifest, assets = pkinit_user
    _as_user_symlink(victim, home + "/.hcp")
    before = _snapshot(victim)
    with pytest.raises(asset_install.AssetInstallError, match=r"/\.hcp is a symbolic link: refused, nothing followed"):
        asset_install.install(manifest, assets, root=root)
    assert _snapshot(victim) == before


def test_attack_symlink_planted_between_plan_and_apply(site, pkinit_user):
    """The home is clean while planning; the user plants ~/.hcp -> /etc before the write."""
    root, home, victim = site
    manifest, assets = pkinit_user
    actions = asset_install.plan(manifest, assets, root=root)
    assert [a.name for a in actions if a.changed] == ["user-nobody.key", "user-nobody.pem"]
    _as_user_symlink(victim, home + "/.hcp")
    before = _snapshot(victim)
    with pytest.raises(asset_install.AssetInstallError, match=r"/\.hcp is a symbolic link"):
        asset_install.apply(actions, root=root)
    assert _snapshot(victim) == before


def test_attack_race_fresh_hcp_swapped_for_symlink_after_mkdir(site, pkinit_user, monkeypatch):
    """Attack 3, the race: the user replaces the ~/.hcp root has just created by a link to
    /etc before root sets its owner and mode. The swap is injected deterministically by
    wrapping os.mkdir (the only hook: the real mkdir runs, then the user's move). The old
    installer chowned and chmodded by name, i.e. handed the victim directory to the user."""
    root, home, victim = site
    manifest, assets = pkinit_user
    target = home + "/.hcp"
    real_mkdir = os.mkdir
    swapped = []

    def mkdir_then_user_swaps(path, mode=0o777, *, dir_fd=None):
        real_mkdir(path, mode, dir_fd=dir_fd)
        full = path if dir_fd is None else os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), path)
        if full == target and not swapped:
            os.rmdir(full)
            _as_user_symlink(victim, full)
            swapped.append(full)

    before = _snapshot(victim)
    monkeypatch.setattr(os, "mkdir", mkdir_then_user_swaps)
    try:
        with pytest.raises(asset_install.AssetInstallError, match=r"/\.hcp is a symbolic link: refused"):
            asset_install.install(manifest, assets, root=root)
    finally:
        monkeypatch.undo()
    assert swapped == [target]  # the swap really happened
    info = os.lstat(victim)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o755)
    assert _snapshot(victim) == before


def test_directory_of_another_user_under_the_home_is_refused(site, pkinit_user):
    """~/.hcp belonging to a third account (not the file's owner, not root) is refused."""
    root, home, _victim = site
    manifest, assets = pkinit_user
    os.mkdir(home + "/.hcp", 0o755)
    os.chown(home + "/.hcp", 12345, 12345)
    with pytest.raises(asset_install.AssetInstallError, match=r"/\.hcp belongs to uid 12345, neither root nor"):
        asset_install.install(manifest, assets, root=root)
    assert os.listdir(home + "/.hcp") == []


def test_hard_link_at_a_destination_is_refused_and_never_chowned(site, pkinit_user):
    """~/.hcp/pkinit/user-nobody.pem hard-linked to a root file whose content matches: the
    old installer would only have fixed its attributes, i.e. chowned the root file."""
    root, home, victim = site
    manifest, assets = pkinit_user
    asset_install.install(manifest, assets, root=root)
    pem = home + "/.hcp/pkinit/user-nobody.pem"
    shadow = os.path.join(victim, "copy.pem")
    with open(shadow, "wb") as handle:
        handle.write(assets["user-nobody.pem"])
    os.chmod(shadow, 0o640)
    os.unlink(pem)
    os.link(shadow, pem)
    before = _snapshot(victim)
    with pytest.raises(asset_install.AssetInstallError, match="has 2 hard links: refused"):
        asset_install.install(manifest, assets, root=root)
    assert _snapshot(victim) == before


# --- fileutil directly ---------------------------------------------------------------------

def test_safe_install_refuses_a_link_anywhere_on_the_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "link"))
    with pytest.raises(fileutil.UnsafePathError, match="link is a symbolic link"):
        fileutil.safe_install(str(tmp_path / "link" / "f"), b"x")
    with pytest.raises(fileutil.UnsafePathError, match="link is a symbolic link"):
        fileutil.read_nofollow(str(tmp_path / "link" / "f"), 10)
    os.symlink(str(tmp_path / "elsewhere"), str(real / "f"))
    with pytest.raises(fileutil.UnsafePathError, match="f is a symbolic link"):
        fileutil.safe_install(str(real / "f"), b"x")
    assert os.listdir(str(real)) == ["f"] and not os.path.lexists(str(tmp_path / "elsewhere"))
    with pytest.raises(fileutil.UnsafePathError, match="'..' is not allowed"):
        fileutil.safe_install(str(real) + "/../real/g", b"x")


def test_safe_install_writes_atomically_with_owner_and_mode_and_makes_directories(tmp_path):
    made = []

    def make_dir(path):
        made.append(path)
        return 0o710, USER.pw_uid, 0

    path = str(tmp_path / "a" / "b" / "file")
    fileutil.safe_install(path, b"data", 0o640, USER.pw_uid, USER.pw_gid, make_dir=make_dir)
    assert made == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, _mode(path)) == (USER.pw_uid, USER.pw_gid, 0o640)
    assert open(path, "rb").read() == b"data" and _mode(str(tmp_path / "a")) == 0o710
    assert os.stat(str(tmp_path / "a")).st_uid == USER.pw_uid
    # without make_dir a missing directory is an error, nothing is created
    with pytest.raises(FileNotFoundError):
        fileutil.safe_install(str(tmp_path / "missing" / "file"), b"x")
    assert not os.path.exists(str(tmp_path / "missing"))
    # a hard-linked destination is replaced: the other link keeps its content, owner and mode
    other = str(tmp_path / "other")
    os.link(path, other)
    fileutil.safe_install(path, b"new", 0o600, USER.pw_uid, 0)
    assert open(other, "rb").read() == b"data" and (os.stat(other).st_gid, _mode(other)) == (USER.pw_gid, 0o640)
    assert open(path, "rb").read() == b"new" and (os.stat(path).st_gid, _mode(path)) == (0, 0o600)


def test_world_writable_directory_and_foreign_owner_are_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(fileutil.UnsafePathError, match="shared is writable by everyone"):
        fileutil.safe_install(str(shared / "f"), b"x")
    shared.chmod(0o1777)  # sticky, like /tmp: accepted
    fileutil.safe_install(str(shared / "f"), b"x")
    os.chown(str(shared), USER.pw_uid, USER.pw_gid)
    with pytest.raises(fileutil.UnsafePathError, match="belongs to uid %d" % USER.pw_uid):
        fileutil.safe_install(str(shared / "f"), b"y")
    fileutil.safe_install(str(shared / "f"), b"y", uid=USER.pw_uid)  # the file's owner may own it
    assert open(str(shared / "f"), "rb").read() == b"y"


def test_read_nofollow_fifo_size_limit_and_absent(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(fileutil.UnsafePathError, match="not a regular file"):  # and does not block
        fileutil.read_nofollow(fifo, 10)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    info, data = fileutil.read_nofollow(str(big), 10)
    assert info.st_size == 11 and data is None
    assert fileutil.read_nofollow(str(big), 11)[1] == b"x" * 11
    assert fileutil.read_nofollow(str(tmp_path / "no" / "file"), 10) == (None, None)


def test_attester_status_file_is_not_written_through_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "state"))
    out = {"hostname": "h", "ekpubhash": "e", "server": "s", "snapshot": "x", "changed_assets": [], "skipped": [],
           "pcr_extended": False}
    with pytest.raises(fileutil.UnsafePathError, match="state is a symbolic link"):
        attester._write_status(str(tmp_path / "state" / "last-success.json"), out)
    assert os.listdir(str(real)) == []
    attester._write_status(str(real / "last-success.json"), out)
    assert json.loads((real / "last-success.json").read_text())["hostname"] == "h"
    assert _mode(str(real / "last-success.json")) == 0o644
