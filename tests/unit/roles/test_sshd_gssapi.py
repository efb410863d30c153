# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role hcp.core.sshd's drop-in (roles/sshd/templates/sshd-gssapi.conf.j2) in a real sshd, with
real Kerberos: a scratch Heimdal realm and its KDC on loopback (krb_helpers), Debian's OpenSSH
(MIT GSSAPI libraries) as server and client, local test users made with useradd.

The drop-in is rendered by Ansible's templating with the role's defaults and vars and checked
with ``sshd -t -f``; sshd runs as root on 127.0.0.1 with the host keytab ``host/localhost``
exported by kadmin, the krb5.conf made by the real krb5-conf enrollment generator, and the
host name ``localhost`` (its own UTS namespace: GSSAPIStrictAcceptorCheck accepts tickets for
host/<gethostname()> only). Users get tickets with Heimdal's ``kinit -k -t``, from a client keytab
by the MIT library itself, or by PKINIT with a certificate of the real pkinit-user generator (the
workstation flow), then log in
with ``ssh -o GSSAPIAuthentication=yes`` and run ``id -un``.

The attacks: no ticket, a valid ticket of another principal for this account, a ticket from a
foreign realm that has its own host/localhost, the account's correct password (refused by the
default drop-in; the same attack succeeds against a drop-in with password logins on, so the
test can fail), PKINIT with another user's certificate and with a foreign CA's certificate."""

from __future__ import annotations

import contextlib
import datetime
import os
import pwd
import re
import secrets
import socket
import subprocess
import time

import pytest
import yaml
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation.install import merge_keytabs
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorContext
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, KINIT, REALM, Realm, free_port

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "sshd")
HOST = "localhost"
FOREIGN = "EVIL.TEST"
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
SERVICE_TICKET = "  host/localhost@\n"  # a klist line: MIT caches service tickets under the referral name

pytestmark = [
    pytest.mark.skipif(not os.access(SSHD, os.X_OK) or not os.access(SSH, os.X_OK), reason="openssh-server/-client not installed"),
    pytest.mark.skipif(not os.access(KDC_BINARY, os.X_OK) or not os.access(KINIT, os.X_OK), reason="Heimdal is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd, useradd and the UTS namespace need root"),
]


# -- the role's drop-in ----------------------------------------------------------------------

def _templar(**overrides):
    return role_templar(ROLE, **overrides)


def render_dropin(**overrides):
    """The drop-in as the role writes it for ``overrides`` (role defaults and vars below)."""
    with open(os.path.join(ROLE, "templates", "sshd-gssapi.conf.j2"), "r", encoding="utf-8") as handle:
        source = handle.read()
    return _templar(**overrides).template(trust_as_template(source))


def role_effective_check(effective, **overrides):
    """The conditions of the role's task "Check the effective sshd configuration", evaluated by
    Ansible's templating on ``effective`` (the output of ``sshd -T``): {condition: bool}."""
    with open(os.path.join(ROLE, "tasks", "main.yml"), "r", encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    task = [t for t in tasks if t.get("name") == "Check the effective sshd configuration"][0]
    templar = _templar(__sshd_effective={"stdout_lines": effective.splitlines()}, **overrides)
    return dict((cond, templar.template(trust_as_template("{{ %s }}" % cond))) for cond in task["ansible.builtin.assert"]["that"])


def _settings(text):
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(" ", 1)
            assert key not in out, "keyword %s twice" % key
            out[key] = value
    return out


# -- realm, krb5.conf, users -------------------------------------------------------------------

NOW = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)


def krb5_conf(realm):
    """krb5.conf for ``realm`` (a krb_helpers.Realm) made by the real krb5-conf enrollment
    generator, as the attestation client installs it. Host names are not canonicalised
    (rdns, dns_canonicalize_hostname off: the MIT library would otherwise turn localhost
    into whatever 127.0.0.1 resolves back to)."""
    sections = krbconf.krb5_conf_sections(realm.realm, ["127.0.0.1:%d" % realm.port])
    sections["libdefaults"].update(rdns=False, dns_canonicalize_hostname=False)
    return _generate("krb5-conf", {"krb5_conf": sections}, realm.realm)["krb5.conf"].data


def _generate(name, profile, realm, issuer=None, hostname="ws1.hcp.test"):
    ctx = GeneratorContext(hostname, "ab" * 32, b"\x00\x01ek", profile, {"ENROLL_REALM": realm}, issuer, {}, NOW)
    return dict((asset.name, asset) for asset in asset_contract.get_generator(name).generate(ctx))


def _write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)
    return str(path)


class LocalUser(object):
    """A local account (useradd -m, removed with its home by remove()); ``run`` runs a
    command as the user with HOME, KRB5_CONFIG=~/krb5.conf and KRB5CCNAME=FILE:~/ccache."""

    def __init__(self):
        self.name = "hcpsso" + secrets.token_hex(3)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-p", "*", self.name], check=True, capture_output=True, timeout=60)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, entry.pw_dir
        self.ccache = os.path.join(self.home, "ccache")

    def principal(self, realm=REALM):
        return "%s@%s" % (self.name, realm)

    def put(self, name, data, mode=0o600):
        """Write ``~/name`` owned by the user; returns its path."""
        path = os.path.join(self.home, name)
        _write(path, data, mode)
        os.chown(path, self.uid, self.gid)
        return path

    def run(self, argv, **env):
        environ = {"PATH": PATH, "HOME": self.home, "USER": self.name, "LOGNAME": self.name, "LC_ALL": "C",
                   "KRB5_CONFIG": os.path.join(self.home, "krb5.conf"), "KRB5CCNAME": "FILE:" + self.ccache}
        environ.update(env)
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[], env=environ, cwd=self.home,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)

    def set_password(self, password):
        subprocess.run(["chpasswd"], input="%s:%s\n" % (self.name, password), text=True, check=True, capture_output=True, timeout=60)

    def remove(self):
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True, timeout=60, check=False)


class Sshd(object):
    """Debian's sshd as root on 127.0.0.1:<port> with the role's drop-in ``dropin`` plus the
    test's own lines (port, host key, no PAM), host name ``localhost`` in its own UTS namespace,
    the acceptor keytab ``keytab`` and ``krb5_conf`` through KRB5_KTNAME and KRB5_CONFIG (what
    the role's systemd drop-in sets)."""

    def __init__(self, directory, dropin, keytab, krb5_conf_path):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory (sshd -t, sshd)
        self.port = free_port()
        hostkey = os.path.join(self.dir, "ssh_host_ed25519_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey], check=True, capture_output=True, timeout=60)
        self.config = _write(os.path.join(self.dir, "sshd_config"), dropin.rstrip("\n") + "\n" + (
            "# test-only settings (no keyword of the drop-in repeated)\n"
            "Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\nUsePAM no\nAuthorizedKeysFile none\n"
            "LogLevel VERBOSE\n" % (self.port, hostkey)), 0o644)
        self.log = os.path.join(self.dir, "sshd.log")
        self.env = {"PATH": PATH, "KRB5_KTNAME": "FILE:%s" % keytab, "KRB5_CONFIG": krb5_conf_path}
        self.proc = None

    def check(self):
        """``sshd -t -f`` of the configuration (the role's validation, here with the test's lines)."""
        return subprocess.run([SSHD, "-t", "-f", self.config], capture_output=True, text=True, timeout=60, check=False)

    def __enter__(self):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--uts", "--", "/bin/sh", "-c", 'hostname "$1" && exec "$2" -D -e -f "$3"', "sh", HOST, SSHD, self.config],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError("sshd did not start: %s" % self.read_log())
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def read_log(self):
        with open(self.log, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def ssh(self, user, login=None, methods="gssapi-with-mic", env=None, **options):
        """``ssh login@localhost id -un`` as the local ``user`` (extra environment ``env``):
        (returncode, stdout, stderr)."""
        argv = [SSH, "-F", "/dev/null", "-p", str(self.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GSSAPIAuthentication=yes", "-o", "GSSAPIDelegateCredentials=no", "-o", "PreferredAuthentications=%s" % methods,
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
        for key, value in options.items():
            argv += ["-o", "%s=%s" % (key, value)]
        if "BatchMode" not in options:
            argv += ["-o", "BatchMode=yes"]
        result = user.run(argv + ["-l", login or user.name, HOST, "id", "-un"], **(env or {}))
        return result.returncode, result.stdout.strip(), result.stderr


class Lab(object):
    """The realm HCP.TEST (its KDC running) with host/localhost, its keytab and krb5.conf, a
    local user with a principal of the same name, and the sshd (not started: ``sshd()``)."""

    def __init__(self, tmp_path, pkinit=None, pkinit_anchors=None):
        self.tmp = str(tmp_path)
        self._stack = contextlib.ExitStack()
        self.realm = self.user = self.host_principal = self.keytab = self.krb5_conf = self.server_krb5_conf = None
        try:
            self._setup(pkinit, pkinit_anchors)
        except BaseException:
            self._stack.close()
            raise

    def _setup(self, pkinit, pkinit_anchors):
        self.realm = Realm(os.path.join(self.tmp, "realm"), pkinit=pkinit, pkinit_anchors=pkinit_anchors)
        self.user = LocalUser()
        self._stack.callback(self.user.remove)
        self._stack.enter_context(self.realm.kdc())
        self.host_principal = "host/%s" % HOST
        self.realm.kadmin.add(self.host_principal)
        self.keytab = os.path.join(self.tmp, "krb5.keytab")
        self.realm.kadmin.ext_keytab(self.host_principal, path=self.keytab)
        self.krb5_conf = krb5_conf(self.realm)
        self.server_krb5_conf = _write(os.path.join(self.tmp, "krb5.conf"), self.krb5_conf, 0o644)
        self.user.put("krb5.conf", self.krb5_conf, 0o644)
        self.realm.kadmin.add(self.user.name)

    def sshd(self, **overrides):
        return Sshd(os.path.join(self.tmp, "sshd-%d" % time.monotonic_ns()), render_dropin(**overrides), self.keytab,
                    self.server_krb5_conf)

    def user_keytab(self, principal=None, realm=None):
        """~/user.keytab of ``principal`` (default: the user's) exported from ``realm``."""
        realm = realm or self.realm
        data = realm.kadmin.ext_keytab(principal or self.user.name)
        return self.user.put("user.keytab", data)

    def close(self):
        self._stack.close()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _has_tgt(user, realm=REALM):
    listing = user.run(["heimtools", "klist"])
    return listing.returncode == 0 and ("krbtgt/%s@%s" % (realm, realm)) in listing.stdout


# -- the tests --------------------------------------------------------------------------------

def test_dropin_defaults_are_gssapi_only_and_pass_sshd_t(tmp_path):
    settings = _settings(render_dropin())
    assert settings["GSSAPIAuthentication"] == "yes"
    assert settings["GSSAPIStrictAcceptorCheck"] == "yes"
    assert settings["AuthenticationMethods"] == "gssapi-with-mic"
    for key in ("PasswordAuthentication", "KbdInteractiveAuthentication", "PubkeyAuthentication", "KerberosAuthentication",
                "HostbasedAuthentication", "PermitEmptyPasswords", "PermitRootLogin"):
        assert settings[key] == "no", key
    # the role's validation command (here with the test's port and host key lines)
    server = Sshd(tmp_path, render_dropin(), "/nonexistent.keytab", "/nonexistent.conf")
    check = server.check()
    assert check.returncode == 0, check.stderr
    # the variables that open other ways in
    opened = _settings(render_dropin(sshd_password_authentication=True, sshd_authentication_methods=["gssapi-with-mic", "publickey"],
                                     sshd_gssapi_strict_acceptor_check=False, sshd_permit_root_login="prohibit-password"))
    assert opened["AuthenticationMethods"] == "gssapi-with-mic publickey password"
    assert opened["PasswordAuthentication"] == opened["PubkeyAuthentication"] == "yes"
    assert opened["GSSAPIStrictAcceptorCheck"] == "no" and opened["PermitRootLogin"] == "prohibit-password"


@pytest.mark.parametrize("overrides", [
    {},
    {"sshd_password_authentication": True, "sshd_permit_root_login": "prohibit-password"},
    {"sshd_authentication_methods": ["publickey,gssapi-with-mic", "gssapi-with-mic"], "sshd_gssapi_strict_acceptor_check": False},
])
def test_role_check_of_the_effective_configuration(tmp_path, overrides):
    """The role reads `sshd -T` after installing the drop-in: its check passes on the drop-in as
    sshd reads it, and fails when another file read first (a drop-in sorted before ours, or
    settings above the Include) overrides the values."""
    server = Sshd(tmp_path / "ours", render_dropin(**overrides), "/nonexistent.keytab", "/nonexistent.conf")
    effective = subprocess.run([SSHD, "-T", "-f", server.config], capture_output=True, text=True, timeout=60, check=False)
    assert effective.returncode == 0, effective.stderr
    checks = role_effective_check(effective.stdout, **overrides)
    assert all(checks.values()), checks
    # the attack: an earlier file turns password logins on and accepts any method
    first = "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nAuthenticationMethods any\nGSSAPIAuthentication no\n"
    server = Sshd(tmp_path / "overridden", first + render_dropin(**overrides), "/nonexistent.keytab", "/nonexistent.conf")
    effective = subprocess.run([SSHD, "-T", "-f", server.config], capture_output=True, text=True, timeout=60, check=False)
    assert effective.returncode == 0, effective.stderr
    checks = role_effective_check(effective.stdout, **overrides)
    assert not all(checks.values()), checks


def test_gssapi_login_with_keytab_ticket(lab):
    keytab = lab.user_keytab()
    kinit = lab.user.run([KINIT, "-k", "-t", "FILE:" + keytab, lab.user.principal()])
    assert kinit.returncode == 0, kinit.stderr
    with lab.sshd() as server:
        status, out, err = server.ssh(lab.user)
        assert (status, out) == (0, lab.user.name), (err, server.read_log())
        # the service ticket sshd accepted is in the user's cache (MIT keeps it under the
        # referral name host/localhost@, realm empty)
        assert SERVICE_TICKET in lab.user.run(["heimtools", "klist"]).stdout


def test_no_ticket_is_refused(lab):
    with lab.sshd() as server:
        status, out, err = server.ssh(lab.user)
        assert status == 255 and out == ""
        assert "Permission denied (gssapi-with-mic)" in err


def test_ticket_of_another_principal_is_refused(lab):
    """A valid HCP.TEST ticket of principal "intruder" asks to log in as the user: sshd checks
    that the principal maps to the account (krb5_kuserok) and refuses."""
    lab.realm.kadmin.add("intruder")
    keytab = lab.user_keytab("intruder")
    assert lab.user.run([KINIT, "-k", "-t", "FILE:" + keytab, "intruder@" + REALM]).returncode == 0
    assert _has_tgt(lab.user)
    with lab.sshd() as server:
        status, out, err = server.ssh(lab.user)
        assert status == 255 and out == "", err
        assert "Permission denied (gssapi-with-mic)" in err
        # the ticket itself was good: the refusal is the authorisation
        assert SERVICE_TICKET in lab.user.run(["heimtools", "klist"]).stdout


def test_foreign_realm_ticket_is_refused(lab, tmp_path):
    """EVIL.TEST has its own host/localhost and a principal of the user's name; the user's
    tickets come from it. sshd holds only HCP.TEST's key and refuses."""
    evil = Realm(os.path.join(str(tmp_path), "evil"), realm=FOREIGN)
    evil.kadmin.add("host/%s" % HOST)
    evil.kadmin.add(lab.user.name)
    with evil.kdc(), lab.sshd() as server:
        lab.user.put("krb5.conf", krb5_conf(evil), 0o644)
        keytab = lab.user_keytab(realm=evil)
        assert lab.user.run([KINIT, "-k", "-t", "FILE:" + keytab, lab.user.principal(FOREIGN)]).returncode == 0
        assert _has_tgt(lab.user, FOREIGN)
        status, out, err = server.ssh(lab.user)
        assert status == 255 and out == "", err
        assert "Permission denied (gssapi-with-mic)" in err
        # the client did get a service ticket from the foreign realm's KDC and presented it
        listing = lab.user.run(["heimtools", "klist"]).stdout
        assert "Principal: %s" % lab.user.principal(FOREIGN) in listing and SERVICE_TICKET in listing


def test_password_login_is_refused(lab):
    """The attack: the account's correct password. Refused by the default drop-in; the same
    attack against a drop-in with sshd_password_authentication true logs in (the test can fail)."""
    password = "Pw-" + secrets.token_hex(8)
    lab.user.set_password(password)
    askpass = lab.user.put("askpass", "#!/bin/sh\necho '%s'\n" % password, 0o700)
    attack = {"BatchMode": "no", "PubkeyAuthentication": "no", "GSSAPIAuthentication": "no", "NumberOfPasswordPrompts": "1"}
    env = {"SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}

    def attempt(server):
        result = lab.user.run([SSH, "-F", "/dev/null", "-p", str(server.port), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "PreferredAuthentications=password,keyboard-interactive",
                               "-o", "LogLevel=ERROR"] + sum((["-o", "%s=%s" % kv] for kv in attack.items()), [])
                              + ["-l", lab.user.name, HOST, "id", "-un"], **env)
        return result.returncode, result.stdout.strip(), result.stderr

    with lab.sshd() as server:
        status, out, err = attempt(server)
        assert status == 255 and out == "", err
        assert "Permission denied (gssapi-with-mic)" in err
    with lab.sshd(sshd_password_authentication=True) as server:
        assert attempt(server)[:2] == (0, lab.user.name), server.read_log()


def test_rotated_host_key_reaches_the_running_sshd(lab):
    """Re-enrollment rotates host/localhost (new kvno, old kept); the attestation client merges
    the new keytab into the installed one (install.merge_keytabs). sshd reads the keytab per
    connection: a ticket for the new kvno logs in without a restart."""
    keytab = lab.user_keytab()
    assert lab.user.run([KINIT, "-k", "-t", "FILE:" + keytab, lab.user.principal()]).returncode == 0
    with lab.sshd() as server:
        assert server.ssh(lab.user)[:2] == (0, lab.user.name)
        rotated = lab.realm.kadmin.rotate(lab.host_principal, keep_old=True)
        assert rotated["kvno"] == 2
        with open(lab.keytab, "rb") as handle:
            merged = merge_keytabs(handle.read(), lab.realm.kadmin.ext_keytab(lab.host_principal))
        _write(lab.keytab, merged)
        # a fresh TGT and so a fresh service ticket, under kvno 2
        os.unlink(lab.user.ccache)
        assert lab.user.run([KINIT, "-k", "-t", "FILE:" + keytab, lab.user.principal()]).returncode == 0
        status, out, err = server.ssh(lab.user)
        assert (status, out) == (0, lab.user.name), (err, server.read_log())
        # the ticket sshd accepted is under kvno 2: without the merge sshd could not have read it
        listing = lab.user.run(["heimtools", "klist", "-v"]).stdout
        service = listing[listing.index("Server: host/localhost@"):]
        assert re.search(r"Ticket etype: [a-z0-9-]+, kvno 2\b", service.split("\n\n")[0]), listing


def test_mit_gssapi_gets_its_own_tgt_from_heimdal_then_sso(lab):
    """The MIT side against the Heimdal KDC without any Heimdal client: the ssh client's MIT
    GSSAPI library finds no ticket, takes the user's key from the client keytab
    (KRB5_CLIENT_KTNAME), does the AS exchange with the Heimdal KDC itself, then the TGS exchange
    for host/localhost, and logs in. (MIT's kinit is not used: Debian's krb5-user Conflicts with
    heimdal-clients.)"""
    keytab = lab.user_keytab()
    assert not os.path.exists(lab.user.ccache)
    with lab.sshd() as server:
        status, out, err = server.ssh(lab.user, env={"KRB5_CLIENT_KTNAME": "FILE:" + keytab})
        assert (status, out) == (0, lab.user.name), (err, server.read_log())
    # the cache MIT filled holds the TGT it obtained and the service ticket (read by Heimdal)
    listing = lab.user.run(["heimtools", "klist"]).stdout
    assert "krbtgt/%s@%s" % (REALM, REALM) in listing and SERVICE_TICKET in listing


# -- the workstation flow: PKINIT with the enrollment generator's certificates, then SSO ----------

def _pkinit_pair(user, assets, stem, label):
    """Install ``stem``.key/.pem (generator assets) as ~/.hcp/pkinit/<label>.key/.pem (the
    attestation client's destination layout); returns the FILE:cert,key identity."""
    directory = os.path.join(user.home, ".hcp", "pkinit")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path in (os.path.join(user.home, ".hcp"), directory):
        os.chown(path, user.uid, user.gid)
    cert = user.put(os.path.join(".hcp", "pkinit", label + ".pem"), assets[stem + ".pem"].data, 0o644)
    key = user.put(os.path.join(".hcp", "pkinit", label + ".key"), assets[stem + ".key"].data, 0o600)
    return "FILE:%s,%s" % (cert, key)


def test_pkinit_workstation_flow(tmp_path):
    tmp = str(tmp_path)
    key, cert = pki.create_ca("HCP test enrollment CA", kind="rsa-2048")
    issuer = pki.Issuer(key, [cert])
    ca_file = _write(os.path.join(tmp, "ca.pem"), pki.certificate_pem(cert), 0o644)
    kdc_assets = _generate("pkinit-kdc", {}, REALM, issuer, hostname="kdc1.hcp.test")
    kdc_cert = _write(os.path.join(tmp, "pkinit-kdc.pem"), kdc_assets["pkinit-kdc.pem"].data, 0o644)
    kdc_key = _write(os.path.join(tmp, "pkinit-kdc.key"), kdc_assets["pkinit-kdc.key"].data)
    lab = Lab(os.path.join(tmp, "lab"), pkinit={"identity_cert": kdc_cert, "identity_key": kdc_key, "anchors": ca_file},
              pkinit_anchors=ca_file)
    try:
        user = lab.user
        # the workstation's krb5.conf (krb5-conf generator) with the site CA as PKINIT anchor
        user.put("ca.pem", pki.certificate_pem(cert), 0o644)
        sections = krbconf.krb5_conf_sections(REALM, ["127.0.0.1:%d" % lab.realm.port], pkinit_anchors=os.path.join(user.home, "ca.pem"))
        sections["libdefaults"].update(rdns=False, dns_canonicalize_hostname=False)
        user.put("krb5.conf", _generate("krb5-conf", {"krb5_conf": sections}, REALM)["krb5.conf"].data, 0o644)
        # the user's certificate and another user's, from the real pkinit-user generator
        lab.realm.kadmin.add("mallory")
        users = _generate("pkinit-user", {"certificates": {"pkinit-user": {"users": [user.name, "mallory"]}}}, REALM, issuer)
        own = _pkinit_pair(user, users, "user-" + user.name, "user-" + user.name)
        others = _pkinit_pair(user, users, "user-mallory", "user-mallory")
        fkey, fcert = pki.create_ca("foreign CA", kind="rsa-2048")
        foreign = _pkinit_pair(user, _generate("pkinit-user", {"certificates": {"pkinit-user": {"users": [user.name]}}}, REALM,
                                               pki.Issuer(fkey, [fcert])), "user-" + user.name, "foreign")
        with lab.sshd() as server:
            # attacks first: mallory's certificate, a foreign CA's certificate for the user's name
            for identity in (others, foreign):
                kinit = user.run([KINIT, "-C", identity, user.principal()])
                assert kinit.returncode != 0, identity
                assert not _has_tgt(user)
                assert server.ssh(user)[0] == 255
            kinit = user.run([KINIT, "-C", own, user.principal()])
            assert kinit.returncode == 0, kinit.stderr
            assert _has_tgt(user)
            status, out, err = server.ssh(user)
            assert (status, out) == (0, user.name), (err, server.read_log())
    finally:
        lab.close()
