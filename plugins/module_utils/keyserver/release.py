# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measurement-keyed release (issue 18 part 2, seed 002): the release policy file (format v1,
docs/keyserver.md) maps a measurement (``pcrs-sha256:<hex>``, the golden PCR digest the
host's quote proved) or an enrollment profile label to the secrets it may receive, and names
where each secret lives: a pluggable backend behind one interface (``fetch(ref)``):

* ``keyserver``: an item of the key-server's own store (versions, exportable flag, ACL for store);
* ``json``: a JSON file of base64 values (0600, read on every release: edits apply at once);
* ``pkcs11``: a KMS-like backend: a JSON file of blobs encrypted inside a PKCS#11 token
  (unseal/hsm.py: AES-256-GCM under a sensitive, non-extractable token key), decrypted in the
  token at release; the file alone is useless.

The key-server consults it on ``retrieve``: a name the policy manages is released only to a
caller whose certificate is a key-server credential of the attestation servers (minutes-long,
issued after the quote and the golden PCRs verified) and whose measurement or profile a rule
lists with that name. No Ansible imports.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import stat

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import AccessDenied, KeyServerError, NotFoundError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import (
    LABEL_RE,
    check_not_reserved,
    validate_measurement,
    validate_name,
)

POLICY_FORMAT = "hcp.core.keyserver-release-policy"
POLICY_VERSION = 1
SECRETS_FORMAT = "hcp.core.keyserver-release-secrets"
SECRETS_VERSION = 1
MAX_POLICY_BYTES = 4 * 1024 * 1024
MAX_SECRETS_BYTES = 64 * 1024 * 1024
MAX_RULES = 4096
MAX_SECRETS = 4096
MAX_REF_CHARS = 255
BACKEND_TYPES = ("keyserver", "json", "pkcs11")


class ReleasePolicyError(KeyServerError):
    """The release policy (or a backend's configuration) is malformed: the service does not start."""

    status = 500


class BackendError(KeyServerError):
    """A backend cannot produce a secret now (file unreadable, token refused): 503, nothing released."""

    status = 503


class NoVersions(KeyServerError):
    """A versionless backend was asked for a version."""

    status = 400


def _private_file(path, what, max_bytes):
    """The bytes of ``path``: a regular file (not a link) no group or other may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BackendError("cannot read the %s %s: %s" % (what, path, exc.strerror)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise BackendError("the %s %s must be a regular file readable by its owner only (0600)" % (what, path))
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BackendError("the %s %s is larger than %d bytes" % (what, path, max_bytes))
    return data, info


def read_secrets_file(path, what="release secrets file"):
    """{ref: bytes} of a secrets file ``{"format": SECRETS_FORMAT, "version": 1, "secrets":
    {ref: base64}}`` (the json backend's values, or the pkcs11 backend's token blobs)."""
    data, info = _private_file(path, what, MAX_SECRETS_BYTES)
    try:
        doc = jsonutil.loads(data, what="the %s" % what, max_bytes=MAX_SECRETS_BYTES)
        if not isinstance(doc, dict) or doc.get("format") != SECRETS_FORMAT or doc.get("version") != SECRETS_VERSION:
            raise ValueError("not a %s v%d document" % (SECRETS_FORMAT, SECRETS_VERSION))
        secrets = doc.get("secrets")
        if not isinstance(secrets, dict) or set(doc) != {"format", "version", "secrets"}:
            raise ValueError("it needs exactly format, version and secrets")
        return dict((ref, base64.b64decode(value, validate=True)) for ref, value in secrets.items()), info.st_mtime
    except (jsonutil.JsonInputError, ValueError, TypeError, binascii.Error) as exc:
        raise BackendError("the %s %s is malformed: %s" % (what, path, str(exc)[:200])) from None


def write_secrets_file(path, secrets):
    """Write ``{ref: bytes}`` as a secrets file (0600, atomic): the json backend's file, or, with
    values from ``Hsm.encrypt``, the pkcs11 backend's."""
    doc = {"format": SECRETS_FORMAT, "version": SECRETS_VERSION,
           "secrets": dict((ref, base64.b64encode(value).decode("ascii")) for ref, value in secrets.items())}
    atomic_write(path, json.dumps(doc, sort_keys=True).encode("utf-8"), 0o600)


def _iso(mtime):
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(timespec="seconds")


class KeyServerBackend(object):
    """Items of the key-server's own store: ``fetch(ref)`` is the latest version of item ``ref``."""

    kind = "keyserver"

    def __init__(self, store):
        self.store = store

    def fetch(self, ref, item_version=None):
        data, meta = self.store.retrieve(ref, item_version)
        return data, {"item_version": meta["item_version"], "created": meta["created"], "exportable": meta["exportable"],
                      "measurements": meta["measurements"], "name": meta["name"]}


class JsonFileBackend(object):
    """A JSON secrets file (read at every release; no versions: ``item_version`` is null)."""

    kind = "json"

    def __init__(self, path):
        self.path = path

    def fetch(self, ref, item_version=None):
        if item_version is not None:
            raise NoVersions("the json release backend keeps no versions: ask without item_version")
        secrets, mtime = read_secrets_file(self.path)
        if ref not in secrets:
            raise NotFoundError("the release backend has no secret %s" % ref)
        return secrets[ref], {"item_version": None, "created": _iso(mtime), "exportable": False}


class Pkcs11Backend(object):
    """A KMS over PKCS#11: the secrets file holds blobs encrypted by the token's AES key
    ``key_label`` (unseal/hsm.py format); each release opens a session with the PIN read at start
    from ``pin_file`` (0600) and decrypts inside the token."""

    kind = "pkcs11"

    def __init__(self, module, token_label, pin_file, key_label, path):
        self.module, self.token_label, self.key_label, self.path = module, token_label, key_label, path
        pin, _info = _private_file(pin_file, "PKCS#11 PIN file", 4096)
        try:
            self._pin = pin.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ReleasePolicyError("the PKCS#11 PIN file %s is not UTF-8 text" % pin_file) from None

    def __repr__(self):
        return "Pkcs11Backend(module=%r, token_label=%r, key_label=%r)" % (self.module, self.token_label, self.key_label)

    def fetch(self, ref, item_version=None):
        from ansible_collections.hcp.core.plugins.module_utils.unseal.hsm import Hsm, HsmError  # pylint: disable=import-outside-toplevel

        if item_version is not None:
            raise NoVersions("the pkcs11 release backend keeps no versions: ask without item_version")
        blobs, mtime = read_secrets_file(self.path, "KMS blob file")
        if ref not in blobs:
            raise NotFoundError("the release backend has no secret %s" % ref)
        try:
            with Hsm(self.module, self.token_label, self._pin) as hsm:
                if hsm.ensure_key(self.key_label):
                    raise BackendError("the KMS key %r was missing on the token %r (a new, empty key was made: the "
                                       "blobs need the original)" % (self.key_label, self.token_label))
                data = hsm.decrypt(blobs[ref])
        except HsmError as exc:
            raise BackendError("the KMS (PKCS#11 token %r) refused: %s" % (self.token_label, exc)) from None
        return data, {"item_version": None, "created": _iso(mtime), "exportable": False}


def _string(value, what):
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ReleasePolicyError("release policy: %s must be a non-empty string" % what)
    return value


def _backend(name, spec, store):
    if not isinstance(spec, dict) or spec.get("type") not in BACKEND_TYPES:
        raise ReleasePolicyError("release policy: backend %s needs a type among %s" % (ascii(name)[:64], ", ".join(BACKEND_TYPES)))
    keys = {"keyserver": {"type"}, "json": {"type", "path"},
            "pkcs11": {"type", "module", "token_label", "pin_file", "key_label", "path"}}[spec["type"]]
    if set(spec) != keys:
        raise ReleasePolicyError("release policy: backend %s of type %s takes exactly %s" % (
            ascii(name)[:64], spec["type"], ", ".join(sorted(keys))))
    where = "backend %s" % ascii(name)[:64]
    if spec["type"] == "keyserver":
        return KeyServerBackend(store)
    if spec["type"] == "json":
        return JsonFileBackend(_string(spec["path"], where + " path"))
    try:
        return Pkcs11Backend(*(_string(spec[k], "%s %s" % (where, k)) for k in ("module", "token_label", "pin_file", "key_label", "path")))
    except BackendError as exc:
        raise ReleasePolicyError(str(exc)) from None


class ReleasePolicy(object):
    """A parsed release policy: ``manages(name)`` and ``release(who, name, item_version)``."""

    def __init__(self, doc, store):
        if not isinstance(doc, dict) or doc.get("format") != POLICY_FORMAT or doc.get("version") != POLICY_VERSION:
            raise ReleasePolicyError("release policy: format must be %s and version %d" % (POLICY_FORMAT, POLICY_VERSION))
        if set(doc) != {"format", "version", "backends", "secrets", "rules"}:
            raise ReleasePolicyError("release policy: exactly format, version, backends, secrets and rules are expected")
        if not isinstance(doc["backends"], dict) or not doc["backends"]:
            raise ReleasePolicyError("release policy: backends must be a non-empty object")
        self.backends = dict((name, _backend(name, spec, store)) for name, spec in doc["backends"].items())
        if not isinstance(doc["secrets"], dict) or len(doc["secrets"]) > MAX_SECRETS:
            raise ReleasePolicyError("release policy: secrets must be an object of at most %d names" % MAX_SECRETS)
        self.secrets = {}
        for name, spec in doc["secrets"].items():
            try:
                validate_name(name, "release policy secret name")
                check_not_reserved(name)
            except HcpError as exc:
                raise ReleasePolicyError(str(exc)) from None
            if not isinstance(spec, dict) or not set(spec) <= {"backend", "ref"} or spec.get("backend") not in self.backends:
                raise ReleasePolicyError("release policy: secret %s needs a backend among those listed (and optional ref)" % name)
            ref = spec.get("ref", name)
            if not isinstance(ref, str) or not ref or len(ref) > MAX_REF_CHARS or "\0" in ref:
                raise ReleasePolicyError("release policy: secret %s has a bad ref" % name)
            if self.backends[spec["backend"]].kind == "keyserver":
                try:
                    validate_name(ref, "release policy ref")
                    check_not_reserved(ref)
                except HcpError as exc:
                    raise ReleasePolicyError(str(exc)) from None
            self.secrets[name] = (spec["backend"], ref)
        rules = doc["rules"]
        if not isinstance(rules, list) or len(rules) > MAX_RULES:
            raise ReleasePolicyError("release policy: rules must be a list of at most %d rules" % MAX_RULES)
        self.rules = []
        for number, rule in enumerate(rules, 1):
            if not isinstance(rule, dict) or not set(rule) <= {"measurement", "profile", "secrets"} \
                    or not ({"measurement", "profile"} & set(rule)):
                raise ReleasePolicyError("release policy rule %d: needs secrets and a measurement and/or a profile" % number)
            match = {}
            if "measurement" in rule:
                try:
                    match["measurement"] = validate_measurement(rule["measurement"], "release policy rule %d measurement" % number)
                except HcpError as exc:
                    raise ReleasePolicyError(str(exc)) from None
            if "profile" in rule:
                if not isinstance(rule["profile"], str) or not LABEL_RE.fullmatch(rule["profile"]):
                    raise ReleasePolicyError("release policy rule %d: profile must match [a-z0-9][a-z0-9_.-]{0,63}" % number)
                match["profile"] = rule["profile"]
            names = rule.get("secrets")
            if not isinstance(names, list) or not names or len(names) > MAX_SECRETS \
                    or not all(isinstance(n, str) and n in self.secrets for n in names):
                raise ReleasePolicyError("release policy rule %d: secrets must list names of the secrets section" % number)
            self.rules.append((match, frozenset(names)))

    def manages(self, name):
        """True when ``name`` is released by this policy (not by the ACL)."""
        return name in self.secrets

    def allowed(self, who, name):
        """True when a rule matching the caller's attested measurement/profile lists ``name``."""
        for match, names in self.rules:
            if name in names and all(who.get(key) == value for key, value in match.items()):
                return True
        return False

    def release(self, who, name, item_version=None):
        """(data, meta) of ``name`` for the caller ``who`` (pki.verify_keyserver_client's identity);
        AccessDenied unless ``who`` holds an attestation credential whose measurement or profile a
        rule lists with ``name``."""
        if not who.get("attested"):
            raise AccessDenied("%s is released by measurement only to hosts holding a key-server credential of the "
                               "attestation servers (issued after their quote matched); this certificate is not one" % name)
        if not self.allowed(who, name):
            raise AccessDenied("%s is not released to this host's measurement (%s) nor profile (%s)" % (
                name, who.get("measurement") or "none", who.get("profile") or "none"))
        backend, ref = self.secrets[name]
        data, meta = self.backends[backend].fetch(ref, item_version)
        return data, dict(meta, name=name)


def load_release_policy(path, store):
    """The ReleasePolicy of the file ``path`` (read at start: a malformed policy stops the service)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ReleasePolicyError("cannot read the release policy %s: %s" % (path, exc.strerror)) from None
    try:
        doc = jsonutil.loads(data, what="the release policy", max_bytes=MAX_POLICY_BYTES)
    except jsonutil.JsonInputError as exc:
        raise ReleasePolicyError(str(exc)) from None
    return ReleasePolicy(doc, store)
