# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install attested assets on the host (no Ansible imports).

``plan(manifest, assets, root, rules)`` decides, from the install hints the enrollment
pipeline recorded in the signed manifest (or operator ``rules``), one action per asset and
whether it would change anything (content, mode or ownership); ``apply(actions)`` performs
them. Files are written atomically, secret files are always 0600, users' files go under
their home and belong to them, the issuer CA goes into the system trust store and keytabs
are merged. The installer runs as root and writes into users' homes, so every path is walked
with ``fileutil.safe_install``/``read_nofollow`` (openat + O_NOFOLLOW from "/", fchown and
fchmod on descriptors only): a symbolic link anywhere on a destination, or a directory on it
owned by a user other than root and the file's owner, is refused and nothing is written.
See docs/attestation-client.md.
"""

from __future__ import annotations

import hmac
import os
import pwd
import grp
import re
import struct
import subprocess

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import UnsafePathError, read_nofollow, safe_install

TRUST_ANCHOR = "trust-anchor"
KEYTAB = "keytab"
TRUST_ANCHOR_DIR = "/usr/local/share/ca-certificates"
UPDATE_CA_CERTIFICATES = "update-ca-certificates"
RULE_KEYS = frozenset(["dest", "mode", "owner", "group"])
_SAFE_RE = re.compile(r"[^A-Za-z0-9.-]+")
MAX_KEYTAB_SIZE = 16 * 1024 * 1024  # an existing keytab larger than this is refused, not read


class AssetInstallError(HcpError):
    """An asset cannot be installed (bad rule, refused destination, failing trust-store update)."""


class KeytabFormatError(AssetInstallError):
    """A keytab is not in the MIT/Heimdal v0x502 format."""


class Action(object):
    """One planned installation. ``content`` may be secret: never log or return it."""

    __slots__ = ("name", "path", "content", "mode", "uid", "gid", "category", "sensitive", "user",
                 "content_changed", "attrs_changed", "exists", "home", "private_dirs")

    def __init__(self, **kwargs):
        for key in self.__slots__:
            setattr(self, key, kwargs.get(key))

    @property
    def changed(self):
        return bool(self.content_changed or self.attrs_changed)

    def __repr__(self):
        return "Action(%r, %r, changed=%r)" % (self.name, self.path, self.changed)


class Plan(list):
    """The actions of a plan, plus ``skipped`` ([{name, reason}]) for assets not installed."""

    def __init__(self, actions=(), skipped=()):
        super(Plan, self).__init__(actions)
        self.skipped = list(skipped)


# --- keytabs -----------------------------------------------------------------------------
# No maintained Python library reads or writes keytabs (python-gssapi/krb5 bindings only
# expose them through a ccache/keytab handle and need the C libraries and a realm config),
# so this is a small parser/writer of the documented MIT/Heimdal file format 0x502:
# 2 bytes 0x05 0x02, then records "int32 size (big endian; negative = hole) || entry".
# An entry is kept as raw bytes (extensions such as Heimdal's trailing flags survive); only
# the principal, key version and enctype are parsed, to decide what replaces what.

KEYTAB_MAGIC = b"\x05\x02"


def _counted(data, offset):
    (length,) = struct.unpack_from(">H", data, offset)
    end = offset + 2 + length
    if end > len(data):
        raise KeytabFormatError("keytab entry is truncated")
    return data[offset + 2:end], end


def _keytab_entry_key(raw):
    """(realm, components, name_type, enctype, kvno) of one raw entry."""
    try:
        (count,) = struct.unpack_from(">H", raw, 0)
        realm, offset = _counted(raw, 2)
        components = []
        for _index in range(count):
            comp, offset = _counted(raw, offset)
            components.append(comp)
        name_type, _timestamp, vno8, enctype = struct.unpack_from(">IIBH", raw, offset)
        offset += 11
        _key, offset = _counted(raw, offset)
        kvno = vno8
        if len(raw) - offset >= 4:
            (vno32,) = struct.unpack_from(">I", raw, offset)
            if vno32:
                kvno = vno32
    except struct.error:
        raise KeytabFormatError("keytab entry is truncated")
    return realm, tuple(components), name_type, enctype, kvno


def parse_keytab(data):
    """The raw entries of a v0x502 keytab (holes dropped); KeytabFormatError otherwise."""
    if data[:2] != KEYTAB_MAGIC:
        raise KeytabFormatError("not a keytab of format 0x502")
    entries = []
    offset = 2
    while offset < len(data):
        if len(data) - offset < 4:
            raise KeytabFormatError("keytab record size is truncated")
        (size,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if size == 0:
            break  # MIT: end of the used part of the file
        if offset + abs(size) > len(data):
            raise KeytabFormatError("keytab record is truncated")
        if size > 0:
            raw = data[offset:offset + size]
            _keytab_entry_key(raw)
            entries.append(raw)
        offset += abs(size)
    return entries


def keytab_principals(data):
    """[(principal string, kvno, enctype)] of a keytab, for reports and tests (no key material)."""
    out = []
    for raw in parse_keytab(data):
        realm, components, _type, enctype, kvno = _keytab_entry_key(raw)
        name = "/".join(c.decode("utf-8", "replace") for c in components)
        out.append(("%s@%s" % (name, realm.decode("utf-8", "replace")), kvno, enctype))
    return out


def merge_keytabs(existing, incoming, authoritative=False):
    """Keytab bytes holding every entry of ``incoming`` and the entries of ``existing`` that
    ``incoming`` does not replace (same principal, kvno and enctype). ``authoritative``: the
    incoming keytab carries every key its principals still have (the enrollment ``keytab``
    generator's, exported by the realm after a rotation), so every existing entry of those
    principals is replaced (old kvnos the realm pruned or voided go); entries of other
    principals are kept."""
    new = parse_keytab(incoming)
    new_keys = set(_keytab_entry_key(raw)[:2] + _keytab_entry_key(raw)[3:] for raw in new)
    new_principals = set(_keytab_entry_key(raw)[:2] for raw in new) if authoritative else set()
    kept = []
    if existing:
        for raw in parse_keytab(existing):
            key = _keytab_entry_key(raw)
            if key[:2] + key[3:] not in new_keys and key[:2] not in new_principals:
                kept.append(raw)
    out = [KEYTAB_MAGIC]
    for raw in kept + new:
        out.append(struct.pack(">i", len(raw)) + raw)
    return b"".join(out)


# --- planning ------------------------------------------------------------------------------

def _mode(value, name):
    if value is None:
        return None
    if isinstance(value, int):
        return value & 0o7777
    try:
        return int(str(value), 8) & 0o7777
    except ValueError:
        raise AssetInstallError("asset %s: mode %r is not octal" % (name, value))


def _safe(label):
    return _SAFE_RE.sub("-", label or "").strip("-.") or "site"


def _under_root(root, path):
    if not os.path.isabs(path):
        raise AssetInstallError("destination %r is not absolute" % (path,))
    return os.path.normpath(os.path.join(root, path.lstrip("/"))) if root not in ("", "/") else os.path.normpath(path)


def _read_current(path, name, uid, max_size):
    """(stat, bytes) of the installed file, (None, None) when absent, bytes None when larger
    than ``max_size``; read without following any link (fileutil.read_nofollow)."""
    try:
        return read_nofollow(path, max_size, uid)
    except UnsafePathError as exc:
        raise AssetInstallError("asset %s: destination refused: %s" % (name, exc))
    except OSError as exc:
        raise AssetInstallError("asset %s: cannot read %s: %s" % (name, path, exc.strerror or exc))


def plan(manifest, assets, root="/", rules=None, unavailable=None, site=None):
    """The installation plan (a list of Action with ``.skipped``) for a verified manifest.

    ``assets``: {name: plaintext bytes}. ``rules``: {name: {dest, mode, owner, group} | False}
    overriding the manifest's install hints. ``root``: prefix of every destination.
    ``unavailable``: {name: reason} for assets whose content was deliberately not obtained
    (reported as skipped). ``site``: label of the trust-anchor file (default: the hostname)."""
    rules = rules or {}
    unavailable = unavailable or {}
    if not isinstance(rules, dict):
        raise AssetInstallError("rules must be a mapping of asset name to a rule or false")
    root = root or "/"
    known = set(a["name"] for a in manifest.get("assets", []))
    for name, rule in rules.items():
        if name not in known:
            raise AssetInstallError("rule for unknown asset %s" % name)
        if rule is not False and (not isinstance(rule, dict) or set(rule) - RULE_KEYS):
            raise AssetInstallError("asset %s: a rule is false or a mapping with keys %s"
                                    % (name, ", ".join(sorted(RULE_KEYS))))
    actions, skipped, leaf_private = [], [], {}
    for asset in manifest.get("assets", []):
        name = asset["name"]
        rule = rules.get(name)
        if rule is False:
            continue
        spec = dict(asset.get("install") or {})
        spec.update(rule or {})
        category = spec.get("category")
        dest = spec.get("dest")
        if category == TRUST_ANCHOR and not (rule or {}).get("dest"):
            dest = "%s/hcp-%s.crt" % (TRUST_ANCHOR_DIR, _safe(site or manifest.get("hostname")))
        if not dest:
            continue
        if name not in assets:
            skipped.append({"name": name, "reason": unavailable.get(name, "content not available")})
            continue
        owner = spec.get("owner") or "root"
        user = home = None
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            skipped.append({"name": name, "reason": "user %s does not exist" % owner})
            continue
        if dest.startswith("~"):
            head, _sep, rest = dest[1:].partition("/")
            user = head or owner
            try:
                home = pwd.getpwnam(user).pw_dir
            except KeyError:
                skipped.append({"name": name, "reason": "user %s does not exist" % user})
                continue
            home = _under_root(root, home)
            if not os.path.isdir(home):
                skipped.append({"name": name, "reason": "home directory of %s does not exist" % user})
                continue
            dest = os.path.join(home, rest)
        gid = pw.pw_gid
        if spec.get("group"):
            try:
                gid = grp.getgrnam(spec["group"]).gr_gid
            except KeyError:
                raise AssetInstallError("asset %s: group %s does not exist" % (name, spec["group"]))
        path = os.path.normpath(dest) if user is not None else _under_root(root, dest)
        if user is not None and not path.startswith(home + os.sep):
            raise AssetInstallError("asset %s: destination %s is not under the home of %s" % (name, path, user))
        sensitive = bool(asset.get("sensitive"))
        mode = 0o600 if sensitive else (_mode(spec.get("mode"), name) or 0o644)
        content = assets[name]
        info, current = _read_current(path, name, pw.pw_uid, MAX_KEYTAB_SIZE if category == KEYTAB else len(content))
        if category == KEYTAB:
            if info is not None and current is None:
                raise AssetInstallError("asset %s: the installed keytab %s is larger than %d bytes"
                                        % (name, path, MAX_KEYTAB_SIZE))
            # the hint's "authoritative" comes from the signed manifest (rules cannot set it)
            content = merge_keytabs(current, content, authoritative=spec.get("authoritative") is True)
        content_changed = current is None or not hmac.compare_digest(current, content)
        attrs_changed = info is not None and ((info.st_mode & 0o7777) != mode or info.st_uid != pw.pw_uid
                                              or info.st_gid != gid)
        parent = os.path.dirname(path)
        if sensitive:
            leaf_private.setdefault(parent, True)
        else:  # a public file needs its directory and every ancestor traversable
            while parent not in ("/", ""):
                leaf_private[parent] = False
                parent = os.path.dirname(parent)
        actions.append(Action(name=name, path=path, content=content, mode=mode, uid=pw.pw_uid, gid=gid,
                              category=category, sensitive=sensitive, user=user, content_changed=content_changed,
                              attrs_changed=attrs_changed, exists=info is not None,
                              home=home, private_dirs=leaf_private))
    return Plan(actions, skipped)


def _dir_maker(action):
    """``make_dir`` of fileutil.safe_install for one action: (mode, uid, gid) of a missing
    directory. Under a user's home: 0700, owned by the user; the home itself and anything
    above it are never created. Elsewhere: 0700 for a directory holding only secrets (no
    public file in or below it), 0755 else, owned by root."""
    def make_dir(path):
        if action.home is not None:
            if not path.startswith(action.home + os.sep):
                return None
            return 0o700, action.uid, action.gid
        return (0o700 if action.private_dirs.get(path, False) else 0o755), 0, 0
    return make_dir


# --- applying --------------------------------------------------------------------------------

def _update_trust_store():
    try:
        proc = subprocess.run([UPDATE_CA_CERTIFICATES], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                              check=False)
    except OSError as exc:
        raise AssetInstallError("cannot run %s: %s" % (UPDATE_CA_CERTIFICATES, exc.strerror or exc))
    if proc.returncode != 0:
        raise AssetInstallError("%s failed (exit %d): %s" % (UPDATE_CA_CERTIFICATES, proc.returncode,
                                                             proc.stderr.decode("utf-8", "replace").strip()))


def apply(actions, dry_run=False, root="/"):
    """Perform a plan. Returns {"changed": [names], "skipped": [...], "files": [{name, path, changed}],
    "trust_store_updated": bool}; never content. ``dry_run``: report only, write nothing."""
    result = {"changed": [], "skipped": list(getattr(actions, "skipped", [])), "files": [],
              "trust_store_updated": False}
    trust_changed = False
    for action in actions:
        result["files"].append({"name": action.name, "path": action.path, "changed": action.changed})
        if not action.changed:
            continue
        result["changed"].append(action.name)
        if action.category == TRUST_ANCHOR and action.content_changed:
            trust_changed = True
        if dry_run:
            continue
        # A changed file (content, mode or owner) is always rewritten whole: a new inode with
        # the final owner and mode renamed over the old one, so a hard link planted at the
        # destination never gets its target chowned. Every path component is re-checked here:
        # a link planted since planning is refused too.
        try:
            safe_install(action.path, action.content, action.mode, action.uid, action.gid, make_dir=_dir_maker(action))
        except UnsafePathError as exc:
            raise AssetInstallError("asset %s: destination refused: %s" % (action.name, exc))
        except OSError as exc:
            raise AssetInstallError("asset %s: cannot install %s: %s" % (action.name, action.path, exc.strerror or exc))
    if trust_changed and not dry_run and os.path.normpath(root or "/") == "/":
        _update_trust_store()
        result["trust_store_updated"] = True
    return result


def install(manifest, assets, root="/", rules=None, unavailable=None, dry_run=False, site=None):
    """plan() then apply()."""
    return apply(plan(manifest, assets, root, rules, unavailable, site), dry_run=dry_run, root=root)
