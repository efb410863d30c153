# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.kerberos_realm with the real kadmin -l on scratch realms: initialisation once (check
mode, idempotence), infrastructure principals, keytab and master key export, kadmin run as the
database owner (``nobody`` here), and the attack that run_as stops: the database owner swaps its
directory for a link to a root-only realm, whose master key root would otherwise copy out. And the
exports at work: a secondary replicating the realm by iprop and issuing tickets."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin
from ansible_collections.hcp.core.plugins.module_utils.kerberos.realm import kdc_conf_text, run_as
from ansible_collections.hcp.core.plugins.modules import kerberos_realm
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, REALM, free_port

OWNER = "nobody"
IPROP = ["iprop/kdc1.example.test", "iprop/kdc2.example.test"]


@pytest.fixture
def world():
    """A directory the unprivileged owner can traverse (tmp_path's parents are root's 0700):
    ``conf`` (kdc.conf, root's, naming ``db`` = state/db), ``state`` (the owner's), ``export``
    (root's, 0700)."""
    if os.geteuid() != 0:
        pytest.fail("these tests run kadmin as another user: run them as root (ansible-test units does here)")
    top = tempfile.mkdtemp(prefix="hcp-krb-realm-", dir="/tmp")
    os.chmod(top, 0o755)
    owner = pwd.getpwnam(OWNER)
    paths = {"top": top, "state": os.path.join(top, "state"), "export": os.path.join(top, "export"), "conf": os.path.join(top, "kdc.conf")}
    os.mkdir(paths["state"], 0o755)
    os.chown(paths["state"], owner.pw_uid, owner.pw_gid)
    os.mkdir(paths["export"], 0o700)
    paths["db"] = os.path.join(paths["state"], "db")
    with open(paths["conf"], "w", encoding="utf-8") as handle:
        handle.write(krbconf.render(krbconf.kdc_conf_sections(REALM, paths["db"], ports=[8800], addresses=["127.0.0.1"])))
    os.chmod(paths["conf"], 0o644)
    yield paths
    shutil.rmtree(top, ignore_errors=True)


def args(world, **extra):
    value = {"realm": REALM, "kdc_conf": world["conf"], "run_as": OWNER}
    value.update(extra)
    return value


def test_initialise_once_as_the_owner_with_check_mode(world, run_module):
    out = run_module(kerberos_realm, args(world, principals=IPROP, _ansible_check_mode=True))
    assert out["rc"] == 0 and out["changed"] and out["initialised"] and out["krbtgt_kvno"] is None
    assert out["created"] == [p + "@" + REALM for p in IPROP]
    assert not os.path.exists(world["db"])
    out = run_module(kerberos_realm, args(world, principals=IPROP))
    assert out["rc"] == 0 and out["changed"] and out["initialised"] and out["krbtgt_kvno"] == 1
    assert out["created"] == [p + "@" + REALM for p in IPROP]
    owner = pwd.getpwnam(OWNER)
    for name in ("heimdal.db", "m-key"):
        info = os.stat(os.path.join(world["db"], name))
        assert info.st_uid == owner.pw_uid and info.st_mode & 0o077 == 0, name
    assert os.stat(world["db"]).st_uid == owner.pw_uid
    names = Kadmin(world["conf"], REALM).list("*")
    assert all(p + "@" + REALM in names for p in IPROP)
    again = run_module(kerberos_realm, args(world, principals=IPROP))
    assert not again["changed"] and not again["initialised"] and again["created"] == [] and again["krbtgt_kvno"] == 1
    out = run_module(kerberos_realm, args(world, principals=IPROP + ["host/kdc2.example.test"], _ansible_check_mode=True))
    assert out["changed"] and out["created"] == ["host/kdc2.example.test@" + REALM]
    assert "host/kdc2.example.test@" + REALM not in Kadmin(world["conf"], REALM).list("*")


def test_export_keytab_and_master_key(world, run_module):
    keytab = os.path.join(world["export"], "iprop-kdc2.keytab")
    mkey = os.path.join(world["export"], "m-key")
    task = args(world, principals=IPROP, keytabs={IPROP[1]: keytab}, master_key_path=mkey)
    out = run_module(kerberos_realm, dict(task, _ansible_check_mode=True), raw=True)
    assert out["changed"] and sorted(out["written"]) == sorted([keytab, mkey]) and not os.path.exists(keytab)
    out = run_module(kerberos_realm, task, raw=True)
    assert out["rc"] == 0 and out["changed"] and sorted(out["written"]) == sorted([keytab, mkey])
    for path in (keytab, mkey):
        info = os.stat(path)
        assert info.st_uid == 0 and info.st_mode & 0o777 == 0o600
    with open(mkey, "rb") as handle, open(os.path.join(world["db"], "m-key"), "rb") as original:
        key = handle.read()
        assert key == original.read()
    with open(keytab, "rb") as handle:
        assert handle.read(2) == b"\x05\x02"
    # never in the result
    listing = subprocess.run(["ktutil", "-k", keytab, "list", "--keys"], capture_output=True, text=True, check=True).stdout
    secret_key = [line.split()[3] for line in listing.splitlines() if "aes256" in line][0]
    assert secret_key not in out["raw"] and key.hex() not in out["raw"]
    again = run_module(kerberos_realm, task)
    assert again["rc"] == 0 and not again["changed"] and again["written"] == []
    # a copy that differs is replaced; a keytab that exists is kept
    with open(mkey, "wb") as handle:
        handle.write(b"stale")
    out = run_module(kerberos_realm, dict(task, _ansible_check_mode=True))
    assert out["changed"] and out["written"] == [mkey]
    out = run_module(kerberos_realm, task)
    assert out["written"] == [mkey]
    with open(mkey, "rb") as handle:
        assert handle.read() == key


def test_refusals(world, run_module):
    out = run_module(kerberos_realm, args(world, principals=["iprop/*"]))
    assert out["failed"] and out["status_code"] == 400 and not os.path.exists(world["db"])
    out = run_module(kerberos_realm, args(world, principals=IPROP, keytabs={"host/x.example.test": os.path.join(world["export"], "k")}))
    assert out["failed"] and out["status_code"] == 400
    out = run_module(kerberos_realm, args(world, run_as="no-such-user-hcp"))
    assert out["failed"] and out["status_code"] == 400 and not os.path.exists(world["db"])
    out = run_module(kerberos_realm, args(world, master_key_path="relative/m-key"))
    assert out["failed"] and out["status_code"] == 400
    # a configuration that does not name the realm's database (kadmin -l would open the system HDB)
    with open(world["conf"], "w", encoding="utf-8") as handle:
        handle.write("[libdefaults]\n    default_realm = %s\n" % REALM)
    out = run_module(kerberos_realm, args(world))
    assert out["failed"] and out["status_code"] == 503 and "database" in out["msg"]


def test_owner_cannot_redirect_root_to_a_root_only_realm(world, run_module):
    """THE ATTACK: the database owner (the KDC/kadmin API account) replaces its database directory
    with a link to a root-only realm; the task that exports the master key must not read it."""
    private = os.path.join(world["top"], "root-only")
    os.mkdir(private, 0o700)
    conf = os.path.join(private, "kdc.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(krbconf.render(krbconf.kdc_conf_sections(REALM, os.path.join(private, "db"), ports=[8801])))
    Kadmin(conf, REALM).init_realm()
    with open(os.path.join(private, "db", "m-key"), "rb") as handle:
        secret = handle.read()
    # the owner's move (it owns state/, so it can do this)
    os.symlink(os.path.join(private, "db"), world["db"])
    os.lchown(world["db"], pwd.getpwnam(OWNER).pw_uid, -1)
    mkey = os.path.join(world["export"], "m-key")
    out = run_module(kerberos_realm, args(world, master_key_path=mkey))
    assert out["failed"] and not os.path.exists(mkey)
    # the attack is real: the same task without run_as (kadmin as root) copies root's master key out
    out = run_module(kerberos_realm, args(world, master_key_path=mkey, run_as=None))
    assert out["rc"] == 0 and out["written"] == [mkey]
    with open(mkey, "rb") as handle:
        assert handle.read() == secret


def test_exports_make_a_working_secondary(world, run_module):
    """What playbooks/kdc.yml does, on loopback and as the unprivileged database owner: the primary's
    exports (the secondary's iprop keytab, the master key) let ipropd-slave replicate the realm and the
    secondary's KDC issue tickets; a principal added on the primary reaches it. Configurations from
    the kdc_conf filter (the role's template)."""
    top, owner = world["top"], pwd.getpwnam(OWNER)
    kdc_ports, iprop_port = [free_port(), free_port()], free_port()
    kdcs = ["localhost:%d" % port for port in kdc_ports]
    acl = os.path.join(top, "iprop-acl")
    with open(acl, "w", encoding="utf-8") as handle:
        handle.write("iprop/kdc2.example.test@%s\n" % REALM)
    confs = {"primary": os.path.join(top, "primary.conf"), "secondary": os.path.join(top, "secondary.conf")}
    secondary_db = os.path.join(world["state"], "replica")
    mkey = os.path.join(top, "replica-m-key")
    texts = {
        "primary": kdc_conf_text(REALM, world["db"], ports=[kdc_ports[0]], addresses=["127.0.0.1"], iprop=True, iprop_acl=acl,
                                 kdcs=kdcs, domains=["example.test"]),
        "secondary": kdc_conf_text(REALM, secondary_db, ports=[kdc_ports[1]], addresses=["127.0.0.1"], mkey_file=mkey,
                                   kdcs=kdcs, domains=["example.test"]),
    }
    for name, text in texts.items():
        with open(confs[name], "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(confs[name], 0o644)
    keytab = os.path.join(world["export"], "iprop-kdc2.keytab")
    out = run_module(kerberos_realm, {"realm": REALM, "kdc_conf": confs["primary"], "run_as": OWNER,
                                      "principals": ["iprop/localhost", "iprop/kdc2.example.test"],
                                      "keytabs": {"iprop/kdc2.example.test": keytab}, "master_key_path": mkey})
    assert out["rc"] == 0 and out["initialised"]
    # the secondary's copies, readable by the owner's group (the role: 0640 root:hcp-kdc)
    replica_keytab = os.path.join(top, "replica.keytab")
    shutil.copy(keytab, replica_keytab)
    for path in (replica_keytab, mkey):
        os.chown(path, 0, owner.pw_gid)
        os.chmod(path, 0o640)
    as_owner = ["setpriv", "--reuid=%d" % owner.pw_uid, "--regid=%d" % owner.pw_gid, "--clear-groups"]
    procs = []

    def start(conf, argv):
        env = {"PATH": "/usr/bin:/bin:/usr/sbin", "KRB5_CONFIG": conf}
        procs.append(subprocess.Popen(as_owner + argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))

    def replica_names():
        return run_as(OWNER, lambda: Kadmin(confs["secondary"], REALM).list("*"))

    try:
        start(confs["primary"], ["/usr/sbin/ipropd-master", "--config-file=" + confs["primary"], "--realm=" + REALM, "--keytab=HDB:",
                                 "--database=" + os.path.join(world["db"], "heimdal"), "--hostname=localhost",
                                 "--port=%d" % iprop_port])
        start(confs["primary"], [KDC_BINARY, "--config-file=" + confs["primary"]])
        # ipropd-slave backs off 20-45 s at random when its first connection is refused: start it
        # once ipropd-master listens (on a loaded machine the master may take seconds to start)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", iprop_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "ipropd-master never listened"
                time.sleep(0.1)
        os.mkdir(secondary_db, 0o700)
        os.chown(secondary_db, owner.pw_uid, owner.pw_gid)
        start(confs["secondary"], ["/usr/sbin/ipropd-slave", "--config-file=" + confs["secondary"], "--realm=" + REALM,
                                   "--keytab=FILE:" + replica_keytab, "--hostname=kdc2.example.test", "--port=%d" % iprop_port,
                                   "--status-file=" + os.path.join(secondary_db, "status"), "localhost"])
        deadline = time.monotonic() + 90
        while not os.path.exists(os.path.join(secondary_db, "heimdal.db")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "iprop/kdc2.example.test@" + REALM in replica_names()
        start(confs["secondary"], [KDC_BINARY, "--config-file=" + confs["secondary"]])
        # the secondary's KDC (the primary's master key) issues a ticket to the replicated principal
        probe = os.path.join(top, "probe.conf")
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write(krbconf.render(krbconf.krb5_conf_sections(REALM, [kdcs[1]])))
        for attempt in range(50):  # pylint: disable=unused-variable
            result = subprocess.run(as_owner + ["/usr/bin/kinit.heimdal", "--keytab=FILE:" + replica_keytab, "--use-keytab",
                                                "iprop/kdc2.example.test@" + REALM],
                                    env={"PATH": "/usr/bin:/bin", "KRB5_CONFIG": probe, "KRB5CCNAME": "MEMORY:p"},
                                    capture_output=True, text=True, timeout=30, check=False)
            if result.returncode == 0:
                break
            time.sleep(0.1)
        assert result.returncode == 0, result.stderr
        run_as(OWNER, lambda: Kadmin(confs["primary"], REALM).add("host/new.example.test") and None)
        deadline = time.monotonic() + 30
        while "host/new.example.test@" + REALM not in replica_names():
            assert time.monotonic() < deadline, "the change never reached the secondary"
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
