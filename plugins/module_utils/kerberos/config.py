# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kdc.conf and krb5.conf for a Heimdal realm (docs/kerberos.md, "Realm layout").

:func:`kdc_conf_sections` and :func:`krb5_conf_sections` build the settings as data
(``{section: {key: value | [values] | {subkey: ...}}}``), the same data the KDC role templates
from; :func:`render` writes it as krb5.conf syntax with every name and value checked, so no value
can open a section or a block or start a new line. :func:`parse` reads that syntax back (bounded)
and :func:`database_of` finds a realm's database in a kdc.conf: the kadmin driver refuses a
configuration that does not name the realm's own database, because kadmin -l then silently
falls back to the system HDB (/var/lib/heimdal-kdc).

Heimdal's profile syntax has no library in Python, hence the few lines here.
"""

from __future__ import annotations

import os
import re

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import validate_principal, validate_realm

# AES only: without [kadmin] default_keys Heimdal 7.8 also creates des3 and arcfour keys.
DEFAULT_KEYS = ("aes256-cts-hmac-sha1-96:pw-salt", "aes128-cts-hmac-sha1-96:pw-salt")
ENCTYPES = ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96")
# Heimdal 7.8 offers a 1024-bit DH group by default; 1536 selects the 2048-bit group (>= 1760 fails).
PKINIT_DH_MIN_BITS = 1536
IPROP_PORT = 2121
MAX_CONF_BYTES = 64 * 1024
MAX_CONF_DEPTH = 3

NAME_RE = re.compile(r"[A-Za-z0-9_.:/+-]{1,255}")
SECTION_RE = re.compile(r"[a-z_]{1,64}")
# Absolute paths without characters that the profile syntax or a PKINIT identity list
# (FILE:cert,key) would read as syntax.
PATH_RE = re.compile(r"/[A-Za-z0-9_./+-]{0,4095}")
HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
FORBIDDEN = frozenset("\r\n{}[]\x00")


class KerberosConfigError(HcpError):
    """Settings that cannot be rendered, or a configuration file that cannot be used."""

    status = 500


def _path(value, what):
    if not isinstance(value, str) or not PATH_RE.fullmatch(value) or "/../" in value + "/":
        raise KerberosConfigError("%s must be an absolute path of letters, digits and _ . / + - (got %r)" % (what, value))
    return value


def _port(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise KerberosConfigError("%s must be a port number (got %r)" % (what, value))
    return value


def _host(value, what):
    if not isinstance(value, str) or not HOST_RE.fullmatch(value):
        raise KerberosConfigError("%s must be a host name or IP address (got %r)" % (what, value))
    return value


def _endpoint(value, what):
    """"host" or "host:port" (a KDC or admin server)."""
    host, sep, port = value.rpartition(":") if isinstance(value, str) and ":" in value else (value, "", "")
    _host(host, what)
    if sep:
        if not port.isdigit() or len(port) > 5:
            raise KerberosConfigError("%s has an invalid port (got %r)" % (what, value))
        _port(int(port), what)
    return value


def kdc_conf_sections(realm, db_dir, ports=(88,), addresses=None, pkinit=None, iprop=False, log_file=None,
                      require_preauth=True):
    """The KDC's settings (kdc.conf) for ``realm`` with its database in ``db_dir``.

    Database ``<db_dir>/heimdal`` (Heimdal adds ``.db``), master key ``<db_dir>/m-key``, iprop log
    ``<db_dir>/iprop.log``. ``ports``: the KDC's ports; ``addresses``: listen addresses (all when
    None). ``pkinit``: {"identity_cert", "identity_key", "anchors", "pool" (optional)} paths turns
    PKINIT on (RSA certificates only with Heimdal 7.8). ``iprop``: true on a primary that
    replicates (ACL file ``<db_dir>/slaves``, stats ``<db_dir>/slaves-stats``). ``log_file``:
    the KDC log (FILE:), else syslog."""
    validate_realm(realm)
    db_dir = _path(db_dir, "db_dir").rstrip("/") or "/"
    if not ports:
        raise KerberosConfigError("the KDC needs at least one port")
    kdc = {
        "database": {
            "dbname": os.path.join(db_dir, "heimdal"),
            "realm": realm,
            "mkey_file": os.path.join(db_dir, "m-key"),
            "log_file": os.path.join(db_dir, "iprop.log"),
        },
        "ports": " ".join(str(_port(p, "ports")) for p in ports),
        "require-preauth": bool(require_preauth),
    }
    if addresses:
        kdc["addresses"] = " ".join(_host(a, "addresses") for a in addresses)
    if pkinit:
        if not isinstance(pkinit, dict):
            raise KerberosConfigError("pkinit must be a mapping of paths")
        unknown = set(pkinit) - {"identity_cert", "identity_key", "anchors", "pool"}
        if unknown:
            raise KerberosConfigError("pkinit has unknown keys: %s" % ", ".join(sorted(unknown)))
        kdc.update({
            "enable-pkinit": True,
            "pkinit_identity": "FILE:%s,%s" % (_path(pkinit.get("identity_cert"), "pkinit.identity_cert"),
                                               _path(pkinit.get("identity_key"), "pkinit.identity_key")),
            "pkinit_anchors": "FILE:%s" % _path(pkinit.get("anchors"), "pkinit.anchors"),
            "pkinit_principal_in_certificate": True,
            "pkinit_allow_proxy_certificate": False,
            "pkinit_win2k_require_binding": True,
            "pkinit_dh_min_bits": PKINIT_DH_MIN_BITS,
        })
        if pkinit.get("pool"):
            kdc["pkinit_pool"] = "FILE:%s" % _path(pkinit["pool"], "pkinit.pool")
    if iprop:
        kdc["iprop-acl"] = os.path.join(db_dir, "slaves")
        kdc["iprop-stats"] = os.path.join(db_dir, "slaves-stats")
    sections = {
        "libdefaults": {"default_realm": realm, "dns_lookup_kdc": False, "dns_lookup_realm": False,
                        "allow_weak_crypto": False},
        "kdc": kdc,
        # prune-key-history: a rotation keeping old keys (cpw --keepold) drops the historic keys
        # replaced longer than the principal's max ticket life ago (the newest of them stays).
        "kadmin": {"default_keys": " ".join(DEFAULT_KEYS), "prune-key-history": True},
        "logging": {"kdc": "FILE:%s" % _path(log_file, "log_file") if log_file else "SYSLOG:INFO:AUTH"},
    }
    return sections


def krb5_conf_sections(realm, kdcs, admin_server=None, pkinit_anchors=None, domains=()):
    """A client's settings (krb5.conf): ``kdcs`` ("host" or "host:port"; "tcp/host:port" is
    not needed, Heimdal tries UDP then TCP), ``admin_server``, ``pkinit_anchors`` (a CA file
    path: turns on PKINIT with the KDC certificate's EKU and krbtgt name required) and DNS
    ``domains`` mapped to the realm."""
    validate_realm(realm)
    if not kdcs:
        raise KerberosConfigError("krb5.conf needs at least one KDC")
    block = {"kdc": [_endpoint(k, "kdcs") for k in kdcs]}
    if admin_server:
        block["admin_server"] = _endpoint(admin_server, "admin_server")
    libdefaults = {"default_realm": realm, "dns_lookup_kdc": False, "dns_lookup_realm": False,
                   "allow_weak_crypto": False, "default_etypes": " ".join(ENCTYPES),
                   "pkinit_dh_min_bits": PKINIT_DH_MIN_BITS}
    if pkinit_anchors:
        block.update({"pkinit_anchors": "FILE:%s" % _path(pkinit_anchors, "pkinit_anchors"),
                      "pkinit_require_eku": True, "pkinit_require_krbtgt_otherName": True, "pkinit_win2k": False})
    sections = {"libdefaults": libdefaults, "realms": {realm: block}}
    if domains:
        sections["domain_realm"] = dict((("." + _host(d, "domains").lstrip(".")), realm) for d in domains)
    return sections


def iprop_acl(secondaries, realm):
    """The primary's iprop ACL file (one ``iprop/<host>@REALM`` a line) for secondary hosts."""
    lines = [validate_principal("iprop/%s" % _host(host, "secondaries"), realm, allow_reserved=True) for host in secondaries]
    return "".join(line + "\n" for line in lines)


# -- the profile syntax ---------------------------------------------------------------------

def _scalar(path, value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not value.strip() or set(value) & FORBIDDEN or value != value.strip():
        raise KerberosConfigError("%s must be a non-empty single-line string without braces or brackets, a number or a boolean"
                                  % path)
    return value


def _block(path, mapping, depth, lines):
    if not isinstance(mapping, dict):
        raise KerberosConfigError("%s must be a mapping" % path)
    indent = "    " * depth
    for key in mapping:
        sub = "%s.%s" % (path, key)
        if not isinstance(key, str) or not NAME_RE.fullmatch(key):
            raise KerberosConfigError("%s: invalid name" % sub)
        value = mapping[key]
        if isinstance(value, dict):
            if depth >= MAX_CONF_DEPTH:
                raise KerberosConfigError("%s: nested too deeply" % sub)
            lines.append("%s%s = {" % (indent, key))
            _block(sub, value, depth + 1, lines)
            lines.append("%s}" % indent)
        elif isinstance(value, list):
            if not value:
                raise KerberosConfigError("%s: empty list" % sub)
            lines.extend("%s%s = %s" % (indent, key, _scalar(sub, item)) for item in value)
        else:
            lines.append("%s%s = %s" % (indent, key, _scalar(sub, value)))


def render(sections, header="Generated by hcp.core; local edits are replaced."):
    """krb5.conf syntax for ``sections`` (insertion order kept)."""
    if not isinstance(sections, dict) or not sections:
        raise KerberosConfigError("a configuration needs at least one section")
    lines = ["# " + _scalar("header", header)]
    for name, body in sections.items():
        if not isinstance(name, str) or not SECTION_RE.fullmatch(name):
            raise KerberosConfigError("invalid section name %r" % (name,))
        lines.extend(["", "[%s]" % name])
        _block(name, body, 1, lines)
    return "\n".join(lines) + "\n"


_LINE_SECTION = re.compile(r"\[([a-z_]{1,64})\]")
_LINE_OPEN = re.compile(r"([A-Za-z0-9_.:/+-]{1,255})\s*=\s*\{")
_LINE_VALUE = re.compile(r"([A-Za-z0-9_.:/+-]{1,255})\s*=\s*(.*)")


def parse(text):
    """{section: {key: [values] | [blocks]}} of krb5.conf ``text``: every key maps to a list
    (keys repeat), a block is a dict of the same shape. Bounded (MAX_CONF_BYTES, MAX_CONF_DEPTH);
    KerberosConfigError on anything it does not understand (comments and blank lines aside)."""
    if isinstance(text, bytes):
        if len(text) > MAX_CONF_BYTES:
            raise KerberosConfigError("configuration larger than %d bytes" % MAX_CONF_BYTES)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KerberosConfigError("configuration is not UTF-8") from None
    if len(text) > MAX_CONF_BYTES:
        raise KerberosConfigError("configuration larger than %d bytes" % MAX_CONF_BYTES)
    result, stack = {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        section = _LINE_SECTION.fullmatch(line)
        if section:
            if stack[1:]:
                raise KerberosConfigError("line %d: section inside an open block" % number)
            stack = [result.setdefault(section.group(1), {})]
            continue
        if not stack:
            raise KerberosConfigError("line %d: setting outside a section" % number)
        if line == "}":
            if len(stack) < 2:
                raise KerberosConfigError("line %d: '}' without a block" % number)
            stack.pop()
            continue
        opened = _LINE_OPEN.fullmatch(line)
        if opened:
            if len(stack) > MAX_CONF_DEPTH:
                raise KerberosConfigError("line %d: nested deeper than %d" % (number, MAX_CONF_DEPTH))
            block = {}
            stack[-1].setdefault(opened.group(1), []).append(block)
            stack.append(block)
            continue
        value = _LINE_VALUE.fullmatch(line)
        if not value:
            raise KerberosConfigError("line %d: not a setting" % number)
        stack[-1].setdefault(value.group(1), []).append(value.group(2).strip())
    if stack[1:]:
        raise KerberosConfigError("configuration ends inside a block")
    return result


def database_of(text, realm):
    """{"dbname", "mkey_file", "log_file"} (absolute paths; the last two None when absent) of
    ``realm``'s database in kdc.conf ``text``; KerberosConfigError unless [kdc] has exactly one
    ``database`` block, for ``realm``, with an absolute dbname."""
    validate_realm(realm)
    blocks = parse(text).get("kdc", {}).get("database", [])
    if len(blocks) != 1 or not isinstance(blocks[0], dict):
        raise KerberosConfigError("the configuration must have exactly one [kdc] database block (found %d)" % len(blocks))
    block = blocks[0]
    if block.get("realm") != [realm]:
        raise KerberosConfigError("the [kdc] database block is not for realm %s" % realm)
    result = {}
    for key in ("dbname", "mkey_file", "log_file"):
        values = block.get(key, [])
        if len(values) > 1 or (values and (not isinstance(values[0], str) or not PATH_RE.fullmatch(values[0]))):
            raise KerberosConfigError("the [kdc] database block's %s must be one absolute path" % key)
        result[key] = values[0] if values else None
    if result["dbname"] is None:
        raise KerberosConfigError("the [kdc] database block needs a dbname")
    return result
