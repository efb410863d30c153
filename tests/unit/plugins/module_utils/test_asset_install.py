# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The asset installer on a temporary root: real files, real users, keytabs made by ktutil."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import install as asset_install

KTUTIL = shutil.which("ktutil")
ME = pwd.getpwuid(os.getuid())
OTHER = "nobody"


def _manifest(*assets):
    return {"hostname": "node1.example.test", "assets": [dict(a) for a in assets]}


def _asset(name, sensitive=False, **install):
    return {"name": name, "file": name + (".sealed" if sensitive else ""), "sensitive": sensitive, "install": install}


MANIFEST = _manifest(
    _asset("etc-hostname", category="hostname", dest="/etc/hostname", mode="0644", owner="root"),
    _asset("rootfs.key", True, category="rootfs", dest="/etc/hcp/rootfs.key", mode="0600", owner="root"),
    _asset("https-server.key", True, category="https-server", dest="/etc/hcp/https-server/https-server.key",
           mode="0600", owner="root"),
    _asset("https-server.pem", category="https-server", dest="/etc/hcp/https-server/https-server.pem", mode="0644",
           owner="root"),
    _asset("ca.pem", category="trust-anchor", dest="/usr/local/share/ca-certificates/hcp-enrollment-ca.crt",
           mode="0644", owner="root"),
    _asset("reenroll-hint", category="reenroll"),
    _asset("secret-db", True, category="secrets", dest="/etc/hcp/secrets/db", mode="0600", owner="root"),
)
ASSETS = {"etc-hostname": b"node1.example.test\n", "rootfs.key": os.urandom(64), "https-server.key": b"KEY",
          "https-server.pem": b"CERT", "ca.pem": b"CA", "reenroll-hint": b"{}",
          "secret-db": b"pw"}


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_install_modes_second_run_changes_nothing_and_attribute_drift(tmp_path):
    root = str(tmp_path)
    result = asset_install.install(MANIFEST, ASSETS, root=root)
    assert sorted(result["changed"]) == sorted(["etc-hostname", "rootfs.key", "https-server.key", "https-server.pem",
                                                "ca.pem", "secret-db"])
    assert _mode(root + "/etc/hcp/rootfs.key") == 0o600 and _mode(root + "/etc/hostname") == 0o644
    # a directory of secrets only is 0700; one with a public file (and its parents) 0755
    assert _mode(root + "/etc/hcp/secrets") == 0o700 and _mode(root + "/etc/hcp/secrets/db") == 0o600
    assert _mode(root + "/etc/hcp/https-server") == 0o755 and _mode(root + "/etc/hcp") == 0o755
    trust = root + "/usr/local/share/ca-certificates/hcp-node1.example.test.crt"
    assert open(trust, "rb").read() == b"CA" and _mode(trust) == 0o644
    assert not os.path.exists(root + "/reenroll-hint") and result["skipped"] == []
    assert result["trust_store_updated"] is False  # only with root "/"
    assert ASSETS["rootfs.key"].hex() not in repr(result)
    again = asset_install.install(MANIFEST, ASSETS, root=root)
    assert again["changed"] == [] and all(not f["changed"] for f in again["files"])
    # content, mode and ownership drift are each repaired, and only that file changes
    os.chmod(root + "/etc/hostname", 0o666)
    os.chown(root + "/etc/hcp/rootfs.key", 65534, 65534)
    open(root + "/etc/hcp/https-server/https-server.pem", "wb").write(b"OLD")
    fixed = asset_install.install(MANIFEST, ASSETS, root=root)
    assert sorted(fixed["changed"]) == ["etc-hostname", "https-server.pem", "rootfs.key"]
    assert _mode(root + "/etc/hostname") == 0o644 and os.stat(root + "/etc/hcp/rootfs.key").st_uid == 0
    assert open(root + "/etc/hcp/https-server/https-server.pem", "rb").read() == b"CERT"


def test_secret_is_0600_whatever_the_rule_and_rules_override(tmp_path):
    root = str(tmp_path)
    rules = {"rootfs.key": {"mode": "0644", "dest": "/srv/keys/rootfs.key"}, "etc-hostname": False,
             "https-server.pem": {"mode": "0640", "group": "nogroup"}}
    result = asset_install.install(MANIFEST, ASSETS, root=root, rules=rules)
    assert "etc-hostname" not in result["changed"] and not os.path.exists(root + "/etc/hostname")
    assert _mode(root + "/srv/keys/rootfs.key") == 0o600 and _mode(root + "/srv/keys") == 0o700
    pem = root + "/etc/hcp/https-server/https-server.pem"
    assert _mode(pem) == 0o640 and os.stat(pem).st_gid == grp.getgrnam("nogroup").gr_gid
    with pytest.raises(asset_install.AssetInstallError, match="unknown asset nope"):
        asset_install.plan(MANIFEST, ASSETS, root=root, rules={"nope": False})
    with pytest.raises(asset_install.AssetInstallError, match="not octal"):
        asset_install.plan(MANIFEST, ASSETS, root=root, rules={"ca.pem": {"mode": "rw"}})


def test_symlink_at_destination_is_refused(tmp_path):
    root = str(tmp_path)
    os.makedirs(root + "/etc")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    os.symlink(str(target), root + "/etc/hostname")
    with pytest.raises(asset_install.AssetInstallError, match="symbolic link"):
        asset_install.install(MANIFEST, ASSETS, root=root)
    assert target.read_bytes() == b"precious" and os.path.islink(root + "/etc/hostname")


def test_user_assets_owned_by_the_user_and_missing_user_skipped(tmp_path):
    root = str(tmp_path)
    other = pwd.getpwnam(OTHER)
    os.makedirs(root + other.pw_dir)
    manifest = _manifest(
        _asset("user-nobody.key", True, category="pkinit-user", dest="~nobody/.hcp/pkinit/user-nobody.key",
               mode="0600", owner=OTHER),
        _asset("user-nobody.pem", category="pkinit-user", dest="~nobody/.hcp/pkinit/user-nobody.pem", mode="0644",
               owner=OTHER),
        _asset("user-ghost.pem", category="pkinit-user", dest="~hcpghost/.hcp/pkinit/user-ghost.pem", owner="hcpghost"),
    )
    assets = {"user-nobody.key": b"K", "user-nobody.pem": b"P", "user-ghost.pem": b"G"}
    result = asset_install.install(manifest, assets, root=root)
    assert result["skipped"] == [{"name": "user-ghost.pem", "reason": "user hcpghost does not exist"}]
    key = root + other.pw_dir + "/.hcp/pkinit/user-nobody.key"
    for path in (key, os.path.dirname(key), os.path.dirname(os.path.dirname(key))):
        assert os.stat(path).st_uid == other.pw_uid
    assert _mode(key) == 0o600 and _mode(os.path.dirname(key)) == 0o700 and _mode(root + other.pw_dir + "/.hcp") == 0o700
    assert _mode(key[:-3] + "pem") == 0o644
    assert asset_install.install(manifest, assets, root=root)["changed"] == []


def test_dry_run_writes_nothing_but_reports(tmp_path):
    root = str(tmp_path / "r")
    os.makedirs(root)
    actions = asset_install.plan(MANIFEST, ASSETS, root=root)
    result = asset_install.apply(actions, dry_run=True, root=root)
    assert len(result["changed"]) == 6 and os.listdir(root) == []
    unavailable = {"rootfs.key": "one-time asset already unsealed"}
    partial = dict((k, v) for k, v in ASSETS.items() if k != "rootfs.key")
    skipped = asset_install.plan(MANIFEST, partial, root=root, unavailable=unavailable).skipped
    assert skipped == [{"name": "rootfs.key", "reason": "one-time asset already unsealed"}]


def test_trust_anchor_runs_update_ca_certificates_only_for_the_real_root(tmp_path, monkeypatch):
    """With root "/" a failing update-ca-certificates fails with its stderr (a fake one on PATH,
    the file written under a temporary rule destination)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "update-ca-certificates"
    fake.write_text("#!/bin/sh\necho 'trust store broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))
    dest = str(tmp_path / "anchor" / "hcp-test.crt")
    manifest = _manifest(MANIFEST["assets"][4])
    with pytest.raises(asset_install.AssetInstallError, match="trust store broken"):
        asset_install.install(manifest, {"ca.pem": b"CA"}, root="/", rules={"ca.pem": {"dest": dest}})
    assert open(dest, "rb").read() == b"CA"
    fake.write_text("#!/bin/sh\nexit 0\n")
    os.unlink(dest)
    assert asset_install.install(manifest, {"ca.pem": b"CA"}, root="/",
                                 rules={"ca.pem": {"dest": dest}})["trust_store_updated"] is True
    assert asset_install.install(manifest, {"ca.pem": b"CA"}, root="/",
                                 rules={"ca.pem": {"dest": dest}})["trust_store_updated"] is False


def _ktutil(path, principal, kvno, enctype="aes256-cts-hmac-sha1-96"):
    subprocess.run([KTUTIL, "-k", path, "add", "-p", principal, "-V", str(kvno), "-e", enctype, "-r"], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ktlist(path):
    out = subprocess.run([KTUTIL, "-k", path, "list"], check=True, stdout=subprocess.PIPE).stdout.decode()
    return sorted(tuple(line.split()[:3]) for line in out.splitlines()[3:] if line.strip())


@pytest.mark.skipif(KTUTIL is None, reason="ktutil (Heimdal) is not installed")
def test_keytab_merge_with_ktutil_keytabs(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root + "/etc")
    existing = root + "/etc/krb5.keytab"
    _ktutil(existing, "host/node1.example.test@EXAMPLE.TEST", 1)
    _ktutil(existing, "host/node1.example.test@EXAMPLE.TEST", 2)
    _ktutil(existing, "HTTP/node1.example.test@EXAMPLE.TEST", 1)
    old = open(existing, "rb").read()
    incoming_path = str(tmp_path / "incoming.keytab")
    _ktutil(incoming_path, "host/node1.example.test@EXAMPLE.TEST", 2)  # replaces kvno 2
    _ktutil(incoming_path, "host/node1.example.test@EXAMPLE.TEST", 3)
    incoming = open(incoming_path, "rb").read()
    manifest = _manifest(_asset("krb5.keytab", True, category="keytab", dest="/etc/krb5.keytab", owner="root"))
    result = asset_install.install(manifest, {"krb5.keytab": incoming}, root=root)
    assert result["changed"] == ["krb5.keytab"] and _mode(existing) == 0o600
    listing = _ktlist(existing)
    assert listing == sorted([("1", "aes256-cts-hmac-sha1-96", "HTTP/node1.example.test@EXAMPLE.TEST"),
                              ("1", "aes256-cts-hmac-sha1-96", "host/node1.example.test@EXAMPLE.TEST"),
                              ("2", "aes256-cts-hmac-sha1-96", "host/node1.example.test@EXAMPLE.TEST"),
                              ("3", "aes256-cts-hmac-sha1-96", "host/node1.example.test@EXAMPLE.TEST")])
    merged = open(existing, "rb").read()
    new_kvno2 = [e for e in asset_install.parse_keytab(incoming) if asset_install._keytab_entry_key(e)[4] == 2][0]
    assert new_kvno2 in merged and merged != old
    assert asset_install.install(manifest, {"krb5.keytab": incoming}, root=root)["changed"] == []
    assert ("HTTP/node1.example.test@EXAMPLE.TEST", 1, 18) in asset_install.keytab_principals(merged)
    with pytest.raises(asset_install.KeytabFormatError):
        asset_install.merge_keytabs(old, b"\x05\x01junk")
    with pytest.raises(asset_install.KeytabFormatError, match="truncated"):
        asset_install.parse_keytab(old[:-3])


@pytest.mark.skipif(KTUTIL is None, reason="ktutil (Heimdal) is not installed")
def test_authoritative_keytab_replaces_its_principals_entries(tmp_path):
    """The enrollment keytab generator's hint ("authoritative": the asset has every key the realm
    still holds for its principals): old kvnos of those principals leave /etc/krb5.keytab, other
    principals' entries stay. An operator rule cannot set it; without it the merge keeps them."""
    root = str(tmp_path / "root")
    os.makedirs(root + "/etc")
    existing = root + "/etc/krb5.keytab"
    host = "host/node1.example.test@EXAMPLE.TEST"
    _ktutil(existing, host, 1)
    _ktutil(existing, host, 2)
    _ktutil(existing, "nfs/node1.example.test@EXAMPLE.TEST", 7)
    old = open(existing, "rb").read()
    incoming_path = str(tmp_path / "incoming.keytab")
    _ktutil(incoming_path, host, 2)
    _ktutil(incoming_path, host, 3)
    incoming = open(incoming_path, "rb").read()
    hint = dict(category="keytab", dest="/etc/krb5.keytab", mode="0600", owner="root")
    with pytest.raises(asset_install.AssetInstallError, match="a rule is false or a mapping"):
        asset_install.plan(_manifest(_asset("krb5.keytab", True, **hint)), {"krb5.keytab": incoming}, root=root,
                           rules={"krb5.keytab": {"authoritative": True}})
    asset_install.install(_manifest(_asset("krb5.keytab", True, authoritative=True, **hint)), {"krb5.keytab": incoming}, root=root)
    assert _ktlist(existing) == sorted([("2", "aes256-cts-hmac-sha1-96", host), ("3", "aes256-cts-hmac-sha1-96", host),
                                        ("7", "aes256-cts-hmac-sha1-96", "nfs/node1.example.test@EXAMPLE.TEST")])
    assert asset_install.merge_keytabs(old, incoming, authoritative=True) == open(existing, "rb").read()
    assert ("host/node1.example.test@EXAMPLE.TEST", 1, 18) in asset_install.keytab_principals(asset_install.merge_keytabs(old, incoming))
