# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kadmin against the real Heimdal ``kadmin -l`` on a scratch realm per test."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import (
    KadminUnavailableError,
    PrincipalExistsError,
    PrincipalNameError,
    PrincipalNotFoundError,
    ReservedPrincipalError,
)
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin, find_kadmin
from ansible_collections.hcp.core.tests.unit.krb_helpers import REALM, Realm, recording_kadmin, runs

HOST = "host/node1.example.test"


@pytest.fixture
def realm(tmp_path):
    return Realm(tmp_path / "realm")


def ktutil_list(path):
    out = subprocess.run(["ktutil", "--keytab=FILE:%s" % path, "list"], capture_output=True, text=True, check=True)
    return [line.split()[:3] for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]


def ktutil_keys(path):
    """Every entry's kvno, type, principal and key value (`ktutil list --keys`), sorted."""
    out = subprocess.run(["ktutil", "--keytab=FILE:%s" % path, "list", "--keys"], capture_output=True, text=True, check=True)
    return sorted(line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit())


def test_init_realm_creates_an_encrypted_database(realm):
    db = os.path.join(realm.directory, "db")
    assert sorted(os.listdir(db)) == ["heimdal.db", "iprop.log", "m-key"]
    for name in os.listdir(db):
        assert stat.S_IMODE(os.stat(os.path.join(db, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o700
    names = realm.names()
    assert "krbtgt/%s@%s" % (REALM, REALM) in names and "kadmin/admin@%s" % REALM in names
    # keys are stored under the master key: dump shows an mkvno (1) on each key, empty without m-key
    dump = subprocess.run([find_kadmin(), "-l", "-c", realm.conf, "-r", REALM, "dump"], capture_output=True, text=True,
                          env={"KRB5_CONFIG": realm.conf}, check=True).stdout
    line = [entry for entry in dump.splitlines() if entry.startswith("krbtgt/")][0]
    assert line.split()[1].startswith("1:1:")
    with pytest.raises(PrincipalExistsError, match="already initialised"):
        realm.kadmin.init_realm()


def test_add_get_rotate_delete(realm):
    info = realm.kadmin.add(HOST, attributes=["requires-pre-auth"], expiration="2099-01-01", max_ticket_life=3600)
    assert info["principal"] == HOST + "@" + REALM
    assert info["kvno"] == 1 and info["kvnos"] == [1]
    assert sorted(k["enctype"] for k in info["keys"]) == ["aes128-cts-hmac-sha1-96", "aes256-cts-hmac-sha1-96"]
    assert info["attributes"] == ["requires-pre-auth"]
    assert info["expires"] == "2099-01-01T23:59:59Z"
    assert info["max_ticket_life"] == "1 hour"
    assert realm.kadmin.get(HOST + "@" + REALM) == info
    with pytest.raises(PrincipalExistsError) as exc:
        realm.kadmin.add(HOST)
    assert exc.value.status == 409

    rotated = realm.kadmin.rotate(HOST)
    assert rotated["kvno"] == 2 and rotated["kvnos"] == [1, 2]   # old keys kept (grace period)
    rotated = realm.kadmin.rotate(HOST, keep_old=False)
    assert rotated["kvno"] == 3 and rotated["kvnos"] == [3]       # every old key dropped

    realm.kadmin.delete(HOST)
    assert not realm.kadmin.exists(HOST)
    for operation in (realm.kadmin.get, realm.kadmin.delete, realm.kadmin.rotate, realm.kadmin.ext_keytab):
        with pytest.raises(PrincipalNotFoundError) as exc:
            operation(HOST)
        assert exc.value.status == 404


def test_prune_key_history_ends_the_grace_period(realm):
    """With the rendered prune-key-history, kept keys replaced longer than the max ticket life ago
    are dropped by a later rotation (the newest of them stays)."""
    import time  # pylint: disable=import-outside-toplevel
    realm.kadmin.add(HOST, max_ticket_life=1)
    realm.kadmin.rotate(HOST)
    assert realm.kadmin.get(HOST)["kvnos"] == [1, 2]
    time.sleep(2.2)
    realm.kadmin.rotate(HOST)
    time.sleep(2.2)
    info = realm.kadmin.rotate(HOST)
    assert info["kvno"] == 4 and 1 not in info["kvnos"] and 3 in info["kvnos"]


def test_ext_keytab_returns_the_keys_and_leaves_nothing(realm, tmp_path):
    realm.kadmin.add(HOST)
    realm.kadmin.rotate(HOST)
    before = set(os.listdir("/tmp"))
    data = realm.kadmin.ext_keytab(HOST)
    assert not [name for name in set(os.listdir("/tmp")) - before if name.startswith("hcp-keytab-")]
    assert realm.kadmin.get(HOST)["kvno"] == 2   # extracting never changes the keys
    path = str(tmp_path / "out.keytab")
    first = str(tmp_path / "first.keytab")
    with open(first, "wb") as handle:
        handle.write(data)
    # the same keys both times (a keytab entry also carries the time of extraction, so the bytes
    # differ whenever the two calls fall in different seconds)
    assert realm.kadmin.ext_keytab(HOST, path=path) and ktutil_keys(path) == ktutil_keys(first)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entries = ktutil_list(path)
    assert sorted((e[0], e[2]) for e in entries) == sorted(
        [(kvno, HOST + "@" + REALM) for kvno in ("1", "2") for _e in range(2)])


def test_list(realm):
    realm.kadmin.add(HOST)
    realm.kadmin.add("host/node2.example.test")
    assert sorted(realm.kadmin.list("host/*")) == ["host/node1.example.test@HCP.TEST", "host/node2.example.test@HCP.TEST"]
    for pattern in ("-l", "a b", "*" * 5, "a\n", ""):
        with pytest.raises(PrincipalNameError):
            realm.kadmin.list(pattern)


@pytest.mark.parametrize("name", ["*", "host/*", "-r", "--random-key", "a b", "a\nb", "x@OTHER.TEST", "a@b@HCP.TEST",
                                  "h?st/node1.example.test", "a\0"])
def test_bad_names_never_reach_kadmin(realm, name):
    before = realm.names()
    for operation in (realm.kadmin.add, realm.kadmin.get, realm.kadmin.delete, realm.kadmin.rotate, realm.kadmin.ext_keytab):
        with pytest.raises(PrincipalNameError) as exc:
            operation(name)
        assert exc.value.status == 400
    assert runs(realm.log) == []
    assert realm.names() == before


def test_glob_attack_is_real_and_refused(realm, tmp_path):
    """The attack: ``ext_keytab *`` (or del *). kadmin expands the glob over the whole database: run
    directly it extracts krbtgt's keys (anyone holding them forges any ticket). Through Kadmin it
    is refused before kadmin runs, and reserved names are refused too."""
    stolen = str(tmp_path / "stolen.keytab")
    subprocess.run([find_kadmin(), "-l", "-c", realm.conf, "-r", REALM, "ext_keytab", "--keytab=FILE:%s" % stolen, "*"],
                   env={"KRB5_CONFIG": realm.conf}, capture_output=True, check=True)
    assert any(entry[2] == "krbtgt/%s@%s" % (REALM, REALM) for entry in ktutil_list(stolen))
    with pytest.raises(PrincipalNameError):
        realm.kadmin.ext_keytab("*")
    with pytest.raises(PrincipalNameError):
        realm.kadmin.delete("*")
    for name in ("krbtgt/%s" % REALM, "kadmin/admin", "iprop/kdc2.example.test"):
        with pytest.raises(ReservedPrincipalError):
            realm.kadmin.ext_keytab(name)
        with pytest.raises(ReservedPrincipalError):
            realm.kadmin.add(name)
    assert runs(realm.log) == []
    assert "krbtgt/%s@%s" % (REALM, REALM) in realm.names()


@pytest.mark.parametrize("attributes, expiration, life", [
    (["trusted-for-delegation"], None, None), (["bogus"], None, None), ("requires-pre-auth", None, None),
    ([], "2099-13-01", None), ([], "tomorrow", None), ([], "2099-01-01\n", None), ([], None, -1), ([], None, "1d"),
])
def test_bad_options_never_reach_kadmin(realm, attributes, expiration, life):
    with pytest.raises(PrincipalNameError):
        realm.kadmin.add(HOST, attributes=attributes, expiration=expiration, max_ticket_life=life)
    assert runs(realm.log) == []


def test_configuration_without_the_realms_database_is_refused(realm, tmp_path):
    """kadmin -l with a configuration that does not name the realm's database opens the system HDB
    (/var/lib/heimdal-kdc): Kadmin refuses to run at all."""
    binary, log = recording_kadmin(tmp_path)
    other = str(tmp_path / "other.conf")
    with open(other, "w", encoding="utf-8") as handle:
        handle.write(krbconf.render({"libdefaults": {"default_realm": REALM}, "kadmin": {"default_keys": "aes256-cts-hmac-sha1-96:pw-salt"}}))
    wrong_realm = str(tmp_path / "wrong.conf")
    with open(wrong_realm, "w", encoding="utf-8") as handle:
        handle.write(krbconf.render(krbconf.kdc_conf_sections("OTHER.TEST", str(tmp_path / "db"))))
    for conf in (other, wrong_realm, str(tmp_path / "missing.conf")):
        with pytest.raises(KadminUnavailableError) as exc:
            Kadmin(conf, REALM, kadmin=binary).get(HOST)
        assert exc.value.status == 503
    with pytest.raises(KadminUnavailableError):
        Kadmin("relative.conf", REALM)
    assert runs(log) == []


def test_missing_database_and_binary_are_unavailable(tmp_path):
    conf = str(tmp_path / "kdc.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(krbconf.render(krbconf.kdc_conf_sections(REALM, str(tmp_path / "db"))))
    with pytest.raises(KadminUnavailableError):
        Kadmin(conf, REALM).get(HOST)
    with pytest.raises(KadminUnavailableError, match="cannot run"):
        Kadmin(conf, REALM, kadmin=str(tmp_path / "no-such-kadmin")).get(HOST)
