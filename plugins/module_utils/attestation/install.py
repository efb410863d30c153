# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install attested assets on the host (no Ansible imports).

``plan(manifest, assets, root, rules)`` decides, from the install hints the enrollment
pipeline recorded in the signed manifest (or operator ``rules``), one action per asset and
whether it would change anything (content, mode or ownership); ``apply(actions)`` performs
them. Files are written atomically, secret files are always 0600, a symlink at a
destination is refused, users' files go under their home and belong to them, the issuer CA
goes into the system trust store and keytabs are merged. See docs/attestation-client.md.
"""

from __future__ import annotations

import hmac
import os
import pwd
import grp
import re
import stat
import struct
import subprocess

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

TRUST_ANCHOR = "trust-anchor"
KEYTAB = "keytab"
TRUST_ANCHOR_DIR = "/usr/local/share/ca-certificates"
UPDATE_CA_CERTIFICATES = "update-ca-certificates"
RULE_KEYS = frozenset(["dest", "mode", "owner", "group"])
_SAFE_RE = re.compile(r"[^A-Za-z0-9.-]+")


class AssetInstallError(HcpError):
    """An asset cannot be installed (bad rule, refused destination, failing trust-store update)."""


class KeytabFormatError(AssetInstallError):
    """A keytab is not in the MIT/Heimdal v0x502 format."""


class Action(object):
    """One planned installation. ``content`` may be secret: never log or return it."""

    __slots__ = ("name", "path", "content", "mode", "uid", "gid", "category", "sensitive", "user",
                 "content_changed", "attrs_changed", "exists", "dir_modes")

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


def merge_keytabs(existing, incoming):
    """Keytab bytes holding every entry of ``incoming`` and the entries of ``existing`` that
    ``incoming`` does not replace (same principal, kvno and enctype)."""
    new = parse_keytab(incoming)
    new_keys = set(_keytab_entry_key(raw)[:2] + _keytab_entry_key(raw)[3:] for raw in new)
    kept = []
    if existing:
        for raw in parse_keytab(existing):
            key = _keytab_entry_key(raw)
            if key[:2] + key[3:] not in new_keys:
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


def _read_nofollow(path, name):
    """(bytes, lstat) of an existing regular file, (None, None) when absent; refuses symlinks."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if stat.S_ISLNK(info.st_mode):
        raise AssetInstallError("asset %s: destination %s is a symbolic link: refused" % (name, path))
    if not stat.S_ISREG(info.st_mode):
        raise AssetInstallError("asset %s: destination %s is not a regular file" % (name, path))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read(), info


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
        user = None
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
            if not os.path.isdir(_under_root(root, home)):
                skipped.append({"name": name, "reason": "home directory of %s does not exist" % user})
                continue
            dest = os.path.join(home, rest)
        gid = pw.pw_gid
        if spec.get("group"):
            try:
                gid = grp.getgrnam(spec["group"]).gr_gid
            except KeyError:
                raise AssetInstallError("asset %s: group %s does not exist" % (name, spec["group"]))
        path = _under_root(root, dest)
        sensitive = bool(asset.get("sensitive"))
        mode = 0o600 if sensitive else (_mode(spec.get("mode"), name) or 0o644)
        current, info = _read_nofollow(path, name)
        content = assets[name]
        if category == KEYTAB:
            content = merge_keytabs(current, content)
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
                              attrs_changed=attrs_changed, exists=info is not None))
    for action in actions:
        action.dir_modes = _missing_dirs(action, root, leaf_private)
    return Plan(actions, skipped)


def _missing_dirs(action, root, leaf_private):
    """[(dir, mode, uid, gid)] to create, outermost first: 0700 for a directory holding only
    secrets (no public file in or below it) and for every directory created under a user's
    home (owned by the user), 0755 else."""
    missing = []
    directory = os.path.dirname(action.path)
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    home = None
    if action.user is not None:
        home = _under_root(root, pwd.getpwnam(action.user).pw_dir)
    out = []
    for path in reversed(missing):
        owned = home is not None and path.startswith(home + os.sep)
        private = leaf_private.get(path, False) or owned
        out.append((path, 0o700 if private else 0o755, action.uid if owned else 0, action.gid if owned else 0))
    return out


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
        for path, mode, uid, gid in action.dir_modes or ():
            if not os.path.lexists(path):
                os.mkdir(path, mode)
                os.chmod(path, mode)
                os.chown(path, uid, gid)
        # re-check at write time: a symlink planted since planning is refused too
        _read_nofollow(action.path, action.name)
        try:
            if action.content_changed:
                atomic_write(action.path, action.content, action.mode)
            fd = os.open(action.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fchown(fd, action.uid, action.gid)
                os.fchmod(fd, action.mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AssetInstallError("asset %s: cannot install %s: %s" % (action.name, action.path, exc.strerror or exc))
    if trust_changed and not dry_run and os.path.normpath(root or "/") == "/":
        _update_trust_store()
        result["trust_store_updated"] = True
    return result


def install(manifest, assets, root="/", rules=None, unavailable=None, dry_run=False, site=None):
    """plan() then apply()."""
    return apply(plan(manifest, assets, root, rules, unavailable, site), dry_run=dry_run, root=root)
