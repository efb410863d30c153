# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A realm's database on its primary KDC, as the module hcp.core.kerberos_realm keeps it
(docs/kerberos.md, "The KDC role"): initialised once, the realm's own infrastructure principals
(``iprop/<host>``: reserved names, which the kadmin API refuses) present, and the secrets a
secondary KDC needs (its iprop keytab, the master key) exported.

The HDB directory belongs to an unprivileged service user (the KDC and the kadmin API run as
it). A root process must not work in a directory that user can change (a planted symbolic link
would make root write or read where the user chooses), so :func:`run_as` forks and does all the
kadmin work in a child that has dropped to that user; only the results (JSON over a pipe,
bounded) come back, and root writes the exported secrets into its own directories.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import pwd
import tempfile

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos import errors as krberrors
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import KadminError, PrincipalNotFoundError

MAX_RESULT_BYTES = 8 * 1024 * 1024
MAX_MASTER_KEY_BYTES = 64 * 1024
_ERRORS = dict((name, getattr(krberrors, name)) for name in (
    "KadminError", "KadminUnavailableError", "PrincipalNameError", "ReservedPrincipalError",
    "PrincipalNotFoundError", "PrincipalExistsError"))


class RealmSetupError(KadminError):
    """The realm cannot be set up as asked (bad option, unknown user, child failure)."""


def _conf_path(value, what):
    if not isinstance(value, str) or not krbconf.PATH_RE.fullmatch(value) or "/../" in value + "/":
        raise krbconf.KerberosConfigError("%s must be an absolute path of letters, digits and _ . / + -" % what)
    return value


def kdc_conf_text(realm, db_dir, ports=(88,), addresses=(), pkinit=None, iprop=False, log_file=None, mkey_file=None, kdcs=(),
                  pkinit_anchors=None, domains=(), iprop_acl=None):
    """A KDC host's one configuration (the filter hcp.core.kdc_conf, the role hcp.core.kdc):
    config.kdc_conf_sections, plus
    - ``mkey_file`` elsewhere than ``<db_dir>/m-key`` (a secondary keeps the primary's copy in root's
      directory) and ``iprop_acl`` elsewhere than ``<db_dir>/slaves``;
    - ``[kdc] signal_socket`` and ``[hdb] db-dir`` in ``db_dir``: kadmin signals ipropd-master over
      the socket and ipropd-master writes its dump for a full resend into db-dir; both default to
      the system HDB's directory /var/lib/heimdal-kdc;
    - logging to standard error (the journal) unless ``log_file``;
    - with ``kdcs``, the realm's client settings (config.krb5_conf_sections: [realms] with the
      KDCs, AES default_etypes, PKINIT anchors) and [domain_realm] for each KDC's host name and
      ``domains``: ipropd names its iprop/<host> principal from the host name, which would
      otherwise fall in the realm of the host's DNS domain.
    KerberosConfigError (or PrincipalNameError) on a value that cannot be rendered."""
    sections = krbconf.kdc_conf_sections(realm, db_dir, ports=[int(p) for p in ports], addresses=list(addresses) or None,
                                         pkinit=dict(pkinit) if pkinit else None, iprop=bool(iprop), log_file=log_file or None)
    if mkey_file:
        sections["kdc"]["database"]["mkey_file"] = _conf_path(mkey_file, "mkey_file")
    if iprop and iprop_acl:
        sections["kdc"]["iprop-acl"] = _conf_path(iprop_acl, "iprop_acl")
    sections["kdc"]["signal_socket"] = _conf_path(os.path.join(db_dir, "signal"), "db_dir")
    sections["hdb"] = {"db-dir": db_dir}
    if not log_file:
        sections["logging"] = {"kdc": "STDERR", "default": "STDERR"}
    if kdcs:
        client = krbconf.krb5_conf_sections(realm, list(kdcs), pkinit_anchors=pkinit_anchors or None, domains=list(domains))
        libdefaults = dict(client["libdefaults"])
        libdefaults.update(sections["libdefaults"])
        hosts = {}
        for kdc in kdcs:
            host = kdc.rpartition(":")[0] if ":" in kdc else kdc
            hosts[host] = realm
        hosts.update(client.get("domain_realm", {}))
        sections = dict([("libdefaults", libdefaults), ("realms", client["realms"]), ("domain_realm", hosts)]
                        + [(name, body) for name, body in sections.items() if name != "libdefaults"])
    return krbconf.render(sections)


def krbtgt(realm):
    return "krbtgt/%s@%s" % (realm, realm)


def inspect(kadmin, principals=(), export_principals=(), master_key=False, apply=False,
            max_ticket_life=86400, max_renewable_life=7 * 86400):
    """Bring the realm of ``kadmin`` (a kadmin.Kadmin) to the asked state, or only say what that
    takes when ``apply`` is false. Returns a JSON-able dict: ``initialised`` (the realm was, or
    would be, created now), ``created`` (principals created now), ``krbtgt_kvno``, ``keytabs``
    ({principal: base64 keytab}, for ``export_principals``; with apply only) and
    ``master_key`` (base64 of the configured master key file, with ``master_key``, when the realm
    exists or ``apply``).
    Keytabs and the master key are secrets: the caller writes them and never shows them."""
    names = [kadmin.principal(p, allow_reserved=True) for p in principals]
    exports = [kadmin.principal(p, allow_reserved=True) for p in export_principals]
    missing = sorted(set(exports) - set(names))
    if missing:
        raise RealmSetupError("keytabs can only be exported for the principals the task manages (%s is not in principals)" % missing[0],
                              400)
    result = {"initialised": False, "created": [], "krbtgt_kvno": None, "keytabs": {}, "master_key": None}
    exists = kadmin.exists(krbtgt(kadmin.realm), allow_reserved=True, missing_db_ok=True)
    if not exists:
        result["initialised"] = True
        if apply:
            result["krbtgt_kvno"] = kadmin.init_realm(max_ticket_life=max_ticket_life, max_renewable_life=max_renewable_life)["kvno"]
    else:
        result["krbtgt_kvno"] = kadmin.get(krbtgt(kadmin.realm), allow_reserved=True)["kvno"]
    for name in names:
        present = exists and _exists(kadmin, name)
        if not present:
            result["created"].append(name)
            if apply:
                kadmin.add(name, allow_reserved=True)
    if apply:
        for name in exports:
            result["keytabs"][name] = base64.b64encode(kadmin.ext_keytab(name, allow_reserved=True)).decode("ascii")
    if master_key and (apply or exists):
        # also in check mode, so a copy that differs shows as a change
        result["master_key"] = base64.b64encode(_read_master_key(kadmin)).decode("ascii")
    return result


def _exists(kadmin, name):
    try:
        kadmin.get(name, allow_reserved=True)
    except PrincipalNotFoundError:
        return False
    return True


def _read_master_key(kadmin):
    path = kadmin.database().get("mkey_file")
    if not path:
        raise RealmSetupError("the configuration names no mkey_file: there is no master key to export", 400)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_MASTER_KEY_BYTES + 1)
    if not data or len(data) > MAX_MASTER_KEY_BYTES:
        raise RealmSetupError("the master key file %s is empty or too large" % path)
    return data


def run_as(user, func):
    """``func()`` (returning a JSON-able value) run as ``user`` (a login name; None: in this
    process): a forked child drops its groups, group and user, moves to / with umask 077 and a
    private temporary directory, and sends the result (or the HcpError it raised) back over a
    pipe. Raises the child's error again here."""
    if user is None:
        return func()
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RealmSetupError("user %s does not exist" % ascii(user)[:64], 400) from None
    # The child cannot import what it has not yet: after dropping to the user it can no longer read
    # root's module payload (Ansible's temporary directory) nor a root-only Python. Load now what
    # runs there lazily (strptime's module, the JSON encoder).
    datetime.datetime.strptime("2000-01-01", "%Y-%m-%d")
    json.dumps({"warm": [1, "up"]})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        status = 0
        try:
            os.close(read_end)
            payload = _child(entry, func)
            data = json.dumps(payload).encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]
        except BaseException:  # pylint: disable=broad-except
            status = 1
        finally:
            os._exit(status)  # pylint: disable=protected-access
    os.close(write_end)
    chunks, size = [], 0
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESULT_BYTES:
                break
            chunks.append(chunk)
    try:
        wait_status = os.waitpid(pid, 0)[1]
    except ChildProcessError:  # reaped by a host process's own handler (e.g. an Ansible connection plugin's)
        wait_status = -1
    if size > MAX_RESULT_BYTES:
        raise RealmSetupError("the kadmin child answered more than %d bytes" % MAX_RESULT_BYTES)
    try:
        payload = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        raise RealmSetupError("the kadmin child (as %s) failed (wait status %d)" % (user, wait_status)) from None
    if "error" in payload:
        cls = _ERRORS.get(payload["error"], RealmSetupError)
        raise cls(payload.get("message", "kadmin failed"), payload.get("status"))
    return payload["result"]


def _child(entry, func):  # pragma: no cover - runs in the forked child
    """Drop to ``entry`` (a pwd entry) and run ``func``: {"result": ...} or {"error", "status", "message"}."""
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
            raise RealmSetupError("could not become user %s" % entry.pw_name)
        os.umask(0o077)
        os.chdir("/")
        os.environ["TMPDIR"] = "/tmp"
        os.environ["HOME"] = entry.pw_dir or "/"
        tempfile.tempdir = None
        return {"result": func()}
    except HcpError as exc:
        name = type(exc).__name__
        return {"error": name if name in _ERRORS else "RealmSetupError", "status": exc.status, "message": str(exc)}
    except OSError as exc:
        return {"error": "RealmSetupError", "status": 500, "message": "as %s: %s" % (entry.pw_name, exc.strerror or exc)}
    except Exception as exc:  # pylint: disable=broad-except
        # never the message: it could quote data the child read
        return {"error": "RealmSetupError", "status": 500, "message": "as %s: unexpected %s" % (entry.pw_name, type(exc).__name__)}
