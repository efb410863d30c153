# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driving Heimdal's ``kadmin -l`` on a realm's own database (docs/kerberos.md).

Every call runs ``kadmin.heimdal -l -c CONF -r REALM <command> [options] -- <principal>`` as an
argv list (never a shell), with KRB5_CONFIG=CONF (the system /etc/krb5.conf is not read), stdin
closed, a minimal environment, umask 077 and a timeout, one call at a time per Kadmin object.
Before each call CONF must name exactly one database, for REALM (config.database_of): kadmin -l
with a configuration that does not name the realm's database silently opens the system HDB
under /var/lib/heimdal-kdc. Principal names are validated (principal.validate_principal) before
any process runs; kadmin would expand glob characters over the whole database.

Output is read bounded (MAX_OUTPUT_BYTES) and parsed by fixed patterns; stderr is mapped to the
KadminError hierarchy (kerberos/errors.py). Keys are always random; a keytab is written into a
private temporary directory, read and removed; key material is never logged nor put in a message.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import threading

from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import (
    KadminError,
    KadminUnavailableError,
    PrincipalExistsError,
    PrincipalNameError,
    PrincipalNotFoundError,
)
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import validate_principal, validate_realm

# The Heimdal binary: Debian's heimdal-clients installs kadmin.heimdal (plain "kadmin" is an
# alternative that may point to MIT's kadmin, which has other options).
KADMIN_CANDIDATES = ("/usr/bin/kadmin.heimdal",)
DEFAULT_TIMEOUT = 30
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 300
MAX_KEYTAB_BYTES = 1024 * 1024
ENV_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Principal attributes a caller may set (Heimdal's names). Left out on purpose: the delegation
# and legacy ones (trusted-for-delegation, allow-kerberos4, allow-digest, support-desmd5) and
# kadmin's internal ones (new-princ, pwchange-service).
ATTRIBUTES = frozenset([
    "requires-pre-auth", "requires-hw-auth", "requires-pw-change", "disallow-postdated", "disallow-forwardable",
    "disallow-tgt-based", "disallow-renewable", "disallow-proxiable", "disallow-dup-skey", "disallow-all-tix",
    "disallow-svr", "ok-as-delegate",
])
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
LIFETIME_RE = re.compile(r"[1-9][0-9]{0,8}")  # seconds
# get's long format: "<label>: <value>" lines, labels right-aligned.
_GET_LINE = re.compile(r" *([A-Za-z][A-Za-z -]{0,40}): ?(.{0,4096})")
_KEY_ITEM = re.compile(r"([a-z0-9-]{1,64})\(([a-z0-9-]{0,64})\)\[([0-9]{1,10})\]")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_LIST_PATTERN = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._/*-]{0,255}")
MAX_LIST_STARS = 4


def find_kadmin():
    """The Heimdal kadmin binary; KadminUnavailableError when it is not installed."""
    for path in KADMIN_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("kadmin.heimdal", path=ENV_PATH)
    if found:
        return found
    raise KadminUnavailableError("Heimdal kadmin (kadmin.heimdal, package heimdal-clients) is not installed")


def _time(value):
    """ISO 8601 UTC text of a kadmin time, None for "never"; the text as printed otherwise."""
    if value in ("never", "", "unknown"):
        return None
    try:
        parsed = datetime.datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return value[:64]
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_get(text, principal):
    """The documented fields of ``get``'s long output for one principal (docs/kerberos.md):
    principal, kvno, kvnos (every kvno that has keys), keys [{enctype, salt, kvno}], attributes,
    expires, password_expires, last_password_change, modified (ISO 8601 UTC or None for never),
    modifier, max_ticket_life, max_renewable_life (as kadmin prints them)."""
    fields = {}
    for line in text.splitlines()[:64]:
        match = _GET_LINE.fullmatch(line)
        if match and match.group(1) not in fields:
            fields[match.group(1)] = match.group(2).strip()
    if fields.get("Principal") != principal:
        raise KadminError("kadmin get printed an unexpected answer for %s" % principal)
    try:
        kvno = int(fields.get("Kvno", ""))
    except ValueError:
        raise KadminError("kadmin get printed no kvno for %s" % principal) from None
    keys = []
    for item in filter(None, (part.strip() for part in fields.get("Keytypes", "").split(","))):
        match = _KEY_ITEM.fullmatch(item)
        if match is None:
            raise KadminError("kadmin get printed an unexpected key type for %s" % principal)
        keys.append({"enctype": match.group(1), "salt": match.group(2), "kvno": int(match.group(3))})
    attributes = sorted(a.strip() for a in fields.get("Attributes", "").split(",") if a.strip())
    return {
        "principal": principal,
        "kvno": kvno,
        "kvnos": sorted(set(key["kvno"] for key in keys)),
        "keys": keys,
        "attributes": attributes,
        "expires": _time(fields.get("Principal expires", "never")),
        "password_expires": _time(fields.get("Password expires", "never")),
        "last_password_change": _time(fields.get("Last password change", "never")),
        "modified": _time(fields.get("Last modified", "never")),
        "modifier": fields.get("Modifier", "")[:512] or None,
        "max_ticket_life": fields.get("Max ticket life", "")[:64] or None,
        "max_renewable_life": fields.get("Max renewable life", "")[:64] or None,
    }


def _check_attributes(attributes):
    if isinstance(attributes, str) or not isinstance(attributes, (list, tuple, set, frozenset)):
        raise PrincipalNameError("attributes must be a list of attribute names")
    bad = [a for a in attributes if not isinstance(a, str) or a not in ATTRIBUTES]
    if bad:
        raise PrincipalNameError("unknown or refused principal attribute %s (allowed: %s)"
                                 % (ascii(str(bad[0])[:64]), ", ".join(sorted(ATTRIBUTES))))
    return sorted(set(attributes))


def _check_date(value, what):
    if not isinstance(value, str) or not DATE_RE.fullmatch(value):
        raise PrincipalNameError("%s must be a date YYYY-MM-DD" % what)
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise PrincipalNameError("%s must be a valid date YYYY-MM-DD" % what) from None
    return value


def _check_lifetime(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not LIFETIME_RE.fullmatch(str(value)):
        raise PrincipalNameError("%s must be a positive number of seconds" % what)
    return "%ds" % value


class Kadmin(object):
    """kadmin -l on the database ``config_path`` (a kdc.conf, see config.kdc_conf_sections)
    names for ``realm``. ``kadmin``: the binary (default: find_kadmin()); ``timeout``: seconds
    per kadmin run."""

    def __init__(self, config_path, realm, kadmin=None, timeout=DEFAULT_TIMEOUT):
        self.realm = validate_realm(realm)
        if not isinstance(config_path, str) or not os.path.isabs(config_path):
            raise KadminUnavailableError("the kadmin configuration must be an absolute path")
        self.config_path = config_path
        self.kadmin = kadmin
        self.timeout = timeout
        self._lock = threading.Lock()

    def __repr__(self):
        return "Kadmin(%r, %r)" % (self.config_path, self.realm)

    def database(self):
        """The realm's database settings from the configuration (config.database_of); raises
        KadminUnavailableError when the file is missing or does not name the realm's database."""
        try:
            with open(self.config_path, "rb") as handle:
                text = handle.read(krbconf.MAX_CONF_BYTES + 1)
        except OSError as exc:
            raise KadminUnavailableError("cannot read the kadmin configuration %s: %s" % (self.config_path, exc.strerror)) from None
        try:
            return krbconf.database_of(text, self.realm)
        except krbconf.KerberosConfigError as exc:
            raise KadminUnavailableError("kadmin configuration %s refused: %s" % (self.config_path, exc)) from None

    def principal(self, name, allow_reserved=False):
        """The canonical name of ``name`` in this realm (principal.validate_principal)."""
        return validate_principal(name, self.realm, allow_reserved=allow_reserved)

    # -- running kadmin -------------------------------------------------------------------

    def _run(self, command, what, stdout_to_null=False):
        """Run ``command`` (argv after the global options); its stdout (text, bounded)."""
        self.database()
        binary = self.kadmin or find_kadmin()
        argv = [binary, "-l", "-c", self.config_path, "-r", self.realm] + list(command)
        env = {"PATH": ENV_PATH, "KRB5_CONFIG": self.config_path, "LC_ALL": "C", "TZ": "UTC"}
        with self._lock, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if stdout_to_null else out,
                                      stderr=err, env=env, timeout=self.timeout, check=False, umask=0o077, close_fds=True)
            except subprocess.TimeoutExpired:
                raise KadminUnavailableError("kadmin %s timed out after %s s" % (what, self.timeout)) from None
            except OSError as exc:
                raise KadminUnavailableError("cannot run %s: %s" % (binary, exc.strerror)) from None
            out.seek(0)
            data = out.read(MAX_OUTPUT_BYTES + 1)
            err.seek(0)
            errors = err.read(64 * 1024).decode("utf-8", "replace")
        if proc.returncode != 0:
            raise self._error(what, errors)
        if len(data) > MAX_OUTPUT_BYTES:
            raise KadminError("kadmin %s printed more than %d bytes" % (what, MAX_OUTPUT_BYTES))
        return data.decode("utf-8", "replace")

    @staticmethod
    def _error(what, stderr):
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "no message"
        for prefix in ("kadmin.heimdal:", "kadmin:"):
            if last.startswith(prefix):
                last = last[len(prefix):].strip()
        last = "".join(c if c.isprintable() else "?" for c in last[:MAX_ERROR_CHARS])
        text = "kadmin %s failed: %s" % (what, last)
        if "Principal does not exist" in stderr:
            return PrincipalNotFoundError("principal not found (%s)" % what)
        if "already exists" in stderr:
            return PrincipalExistsError("principal already exists (%s)" % what)
        if "opening database" in stderr or "No such file or directory" in stderr or "Permission denied" in stderr:
            return KadminUnavailableError(text)
        return KadminError(text)

    # -- operations ---------------------------------------------------------------------

    def init_realm(self, max_ticket_life=86400, max_renewable_life=7 * 86400):
        """Create the realm's database: a random master key in the configured ``mkey_file`` (when
        absent; the database keys are then stored encrypted) and ``init REALM`` (krbtgt, kadmin
        and changepw principals). PrincipalExistsError when the realm already exists."""
        settings = self.database()
        krbtgt = "krbtgt/%s@%s" % (self.realm, self.realm)
        if self.exists(krbtgt, allow_reserved=True, missing_db_ok=True):
            raise PrincipalExistsError("realm %s is already initialised" % self.realm)
        for key in ("dbname", "mkey_file", "log_file"):
            if settings.get(key):
                os.makedirs(os.path.dirname(settings[key]), mode=0o700, exist_ok=True)
        if settings.get("mkey_file") and not os.path.exists(settings["mkey_file"]):
            # stash prints the random password it made on stdout: it goes to /dev/null, the key file is what counts
            self._run(["stash", "--random-password", "--key-file=%s" % settings["mkey_file"]], "stash", stdout_to_null=True)
        self._run(["init", "--realm-max-ticket-life=%s" % _check_lifetime(max_ticket_life, "max_ticket_life"),
                   "--realm-max-renewable-life=%s" % _check_lifetime(max_renewable_life, "max_renewable_life"),
                   "--", self.realm], "init")
        return self.get(krbtgt, allow_reserved=True)

    def exists(self, principal, allow_reserved=False, missing_db_ok=False):
        """True when ``principal`` exists."""
        try:
            self.get(principal, allow_reserved=allow_reserved)
        except PrincipalNotFoundError:
            return False
        except KadminUnavailableError:
            if not missing_db_ok:
                raise
            return False
        return True

    def get(self, principal, allow_reserved=False):
        """parse_get's dict for ``principal``; PrincipalNotFoundError when absent."""
        name = self.principal(principal, allow_reserved)
        return parse_get(self._run(["get", "--", name], "get"), name)

    def add(self, principal, attributes=(), expiration=None, max_ticket_life=None, allow_reserved=False):
        """Create ``principal`` with random AES keys (the configuration's default_keys);
        ``attributes`` from ATTRIBUTES, ``expiration`` a date YYYY-MM-DD, ``max_ticket_life``
        seconds. PrincipalExistsError when it exists. Returns get()."""
        name = self.principal(principal, allow_reserved)
        command = ["add", "--random-key", "--use-defaults"]
        attributes = _check_attributes(attributes)
        if attributes:
            command.append("--attributes=%s" % ",".join(attributes))
        if expiration is not None:
            command.append("--expiration-time=%s" % _check_date(expiration, "expiration"))
        if max_ticket_life is not None:
            command.append("--max-ticket-life=%s" % _check_lifetime(max_ticket_life, "max_ticket_life"))
        self._run(command + ["--", name], "add")
        return self.get(name, allow_reserved=allow_reserved)

    def delete(self, principal, allow_reserved=False):
        """Delete ``principal``; PrincipalNotFoundError when absent."""
        name = self.principal(principal, allow_reserved)
        self._run(["delete", "--", name], "delete")

    def rotate(self, principal, keep_old=True, allow_reserved=False):
        """New random keys (kvno + 1) for ``principal``. ``keep_old`` (cpw --keepold) keeps the
        previous kvnos so tickets and keytabs already issued keep working for a grace period:
        with the configuration's ``prune-key-history`` a later rotation drops the historic keys
        replaced more than the principal's max ticket life ago. ``keep_old=False`` drops every
        old key at once. Returns get()."""
        name = self.principal(principal, allow_reserved)
        command = ["cpw", "--random-key"] + (["--keepold"] if keep_old else [])
        self._run(command + ["--", name], "rotate")
        return self.get(name, allow_reserved=allow_reserved)

    def ext_keytab(self, principal, path=None, allow_reserved=False):
        """The keytab (bytes) of ``principal``'s current and kept keys, without changing them.
        It is written by kadmin into a private (0700) temporary directory, read and removed; with
        ``path`` it is also written there atomically, mode 0600. The bytes are a secret."""
        name = self.principal(principal, allow_reserved)
        directory = tempfile.mkdtemp(prefix="hcp-keytab-")
        try:
            keytab = os.path.join(directory, "keytab")
            self._run(["ext_keytab", "--keytab=FILE:%s" % keytab, "--", name], "ext_keytab")
            fd = os.open(keytab, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_KEYTAB_BYTES + 1)
        except FileNotFoundError:
            raise KadminError("kadmin ext_keytab wrote no keytab for %s" % name) from None
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if len(data) > MAX_KEYTAB_BYTES or not data.startswith(b"\x05\x02"):
            raise KadminError("kadmin ext_keytab wrote an unexpected keytab for %s" % name)
        if path is not None:
            atomic_write(path, data, 0o600)
        return data

    def list(self, pattern="*"):
        """Names (with realm) matching the glob ``pattern`` (letters, digits, ``. _ / - *``, at most
        MAX_LIST_STARS stars: kadmin matches with fnmatch, which backtracks on stars)."""
        if not isinstance(pattern, str) or not _LIST_PATTERN.fullmatch(pattern) or pattern.count("*") > MAX_LIST_STARS:
            raise PrincipalNameError("invalid principal pattern (letters, digits, '.', '_', '/', '-', at most %d '*')" % MAX_LIST_STARS)
        names = []
        for line in self._run(["list", "--", pattern], "list").splitlines():
            line = line.strip()
            if line:
                names.append(line if "@" in line else "%s@%s" % (line, self.realm))
        return names
