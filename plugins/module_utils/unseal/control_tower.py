# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control tower's store of site seal-key bundles (seed 004), plain Python.

One JSON document per site (``<store>/sites/<site>.json``, format
``hcp.core.control-tower-site`` version 1, written atomically with mode 0600) under an
exclusive ``flock`` on ``<store>/.lock``, so concurrent uwsgi workers serialise.

* ``register_site`` records the site's public key (PEM). The tower never sees a private
  key nor a plaintext seal key: bundles arrive already encrypted to the site key.
* ``issue_token`` returns a fresh random token once; only its SHA-256 is stored. The token's
  only rights are storing and fetching that site's bundle. Issuing again revokes the old one.
* ``store_bundle`` / ``unwrap`` (token-authenticated): a stored bundle unwraps **once**; after
  that the site is locked (``UnwrapLockedError``) until an operator calls ``reallow_unwrap``.
  The token stores the site's *first* bundle only (after ``register_site``; a re-initialisation
  re-registers with ``replace``, which drops the old bundle): replacing a stored bundle needs an
  operator as well (``OperatorRequiredError``), so only an operator ever re-arms the unwrap.
* ``status`` reports facts without secrets.

Every error is a ControlTowerError carrying the HTTP ``status`` the API answers with.
Layout and API: docs/site-unseal.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import fcntl
import hashlib
import hmac
import json
import os
import re

try:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
except ImportError:  # pragma: no cover - reported by _check_public_key
    X25519PublicKey = None

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

FORMAT = "hcp.core.control-tower-site"
VERSION = 1
TOKEN_PREFIX = "hcpct1."
TOKEN_BYTES = 32
MAX_BUNDLE_BYTES = 64 * 1024
# An X25519 SubjectPublicKeyInfo PEM is 113 bytes; anything near this bound is not a site key.
MAX_PUBLIC_KEY_BYTES = 4 * 1024
# Validators match the whole string (fullmatch; \A...\Z also for any caller using .match):
# a trailing "$" would accept "site-a\n" and create "site-a\n.json".
SITE_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,62}\Z")
MAX_SHOWN_NAME_CHARS = 80
COUNTERS = ("tokens_issued", "stores", "unwraps", "refused_unwraps", "reallows", "refused_stores")


class ControlTowerError(HcpError):
    """A control tower request failed; ``status`` is the HTTP status the API returns."""

    status = 500


class BadRequestError(ControlTowerError):
    """Malformed input (site name, public key, bundle)."""

    status = 400


class UnknownSiteError(ControlTowerError):
    """No such site is registered."""

    status = 404


class TokenInvalidError(ControlTowerError):
    """No token, or a token that is not (or no longer) valid for any site."""

    status = 401


class TokenForbiddenError(ControlTowerError):
    """A valid token of another site."""

    status = 403


class OperatorRequiredError(ControlTowerError):
    """The operation re-arms the unwrap (replacing a stored bundle): a site token alone may not."""

    status = 403


class SiteConflictError(ControlTowerError):
    """The site is registered with another public key, or has no bundle to unwrap."""

    status = 409


class UnwrapLockedError(ControlTowerError):
    """The bundle was already unwrapped once; an operator must re-allow it."""

    status = 423


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_site_name(site):
    if not isinstance(site, str) or not SITE_NAME_RE.fullmatch(site):
        # echo a bounded prefix of the caller's name only (repr: control characters stay visible)
        shown = site if isinstance(site, str) else type(site).__name__
        if len(shown) > MAX_SHOWN_NAME_CHARS:
            shown = shown[:MAX_SHOWN_NAME_CHARS] + "..."
        raise BadRequestError("site name must match %s, got %r" % (SITE_NAME_RE.pattern, shown))
    return site


def token_digest(token):
    """SHA-256 (hex) of a token string; tokens carry 256 random bits, so no slow hash is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_token_shape(token):
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        raise TokenInvalidError("a control tower site token is required (Authorization: Bearer %s...)" % TOKEN_PREFIX)


def _check_public_key(pem):
    """The site public key as canonical PEM: it must parse (cryptography) as an X25519 key,
    the only kind site_unseal generates and seals bundles to (``hcp.core.site-sealed`` v1), so
    no RSA, EC or other key is registered that no bundle could ever be sealed to."""
    if X25519PublicKey is None:
        raise MissingDependencyError("the Python library 'cryptography' is required to register a site key")
    if not isinstance(pem, str) or len(pem) > MAX_PUBLIC_KEY_BYTES:
        raise BadRequestError("public_key must be a PEM public key of at most %d characters" % MAX_PUBLIC_KEY_BYTES)
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm):
        raise BadRequestError("public_key is not a PEM public key (-----BEGIN PUBLIC KEY-----) that parses") from None
    if not isinstance(key, X25519PublicKey):
        raise BadRequestError("public_key must be an X25519 site key (hcp.core.site-sealed v1), not %s"
                              % type(key).__name__.lstrip("_"))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _check_bundle(bundle):
    """A bundle is a JSON object (the site-sealed seal key); the tower checks its shape and size only."""
    if not isinstance(bundle, dict):
        raise BadRequestError("bundle must be a JSON object")
    size = len(json.dumps(bundle, sort_keys=True))
    if size > MAX_BUNDLE_BYTES:
        raise BadRequestError("bundle too large (%d bytes, at most %d)" % (size, MAX_BUNDLE_BYTES))
    if not isinstance(bundle.get("format"), str) or not isinstance(bundle.get("version"), int):
        raise BadRequestError("bundle must carry a format name and an integer version")
    for key in ("epk", "nonce", "ct"):
        value = bundle.get(key)
        if not isinstance(value, str):
            raise BadRequestError("bundle member %s must be a base64 string" % key)
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError("bundle member %s is not valid base64" % key) from None
    return bundle


class ControlTower(object):
    """The tower's state in directory ``store`` (created 0700 when absent)."""

    def __init__(self, store):
        if not isinstance(store, str) or not store:
            raise ControlTowerError("the control tower needs a store directory")
        self.store = os.path.abspath(store)
        self.sites_dir = os.path.join(self.store, "sites")
        for path in (self.store, self.sites_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._lock_path = os.path.join(self.store, ".lock")

    def __repr__(self):
        return "ControlTower(store=%r)" % self.store

    @contextlib.contextmanager
    def _locked(self, shared=False):
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, site):
        return os.path.join(self.sites_dir, check_site_name(site) + ".json")

    def _load(self, site, required=True):
        path = self._path(site)
        try:
            with open(path, "rb") as handle:
                doc = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            if required:
                raise UnknownSiteError("site %s is not registered at this control tower" % site) from None
            return None
        except (ValueError, UnicodeDecodeError):
            raise ControlTowerError("site record %s is not JSON" % path) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ControlTowerError("site record %s is not an %s document" % (path, FORMAT))
        if doc.get("version") != VERSION:
            raise ControlTowerError("site record %s has unsupported version %r (this library reads %d)"
                                    % (path, doc.get("version"), VERSION))
        return doc

    def _save(self, doc):
        atomic_write(self._path(doc["site"]), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    @staticmethod
    def _status(doc):
        return {
            "site": doc["site"],
            "registered": True,
            "public_key": doc["public_key"],
            "public_key_sha256": hashlib.sha256(doc["public_key"].encode("ascii")).hexdigest(),
            "registered_at": doc["registered_at"],
            "has_token": doc["token_sha256"] is not None,
            "token_issued_at": doc["token_issued_at"],
            "has_bundle": doc["bundle"] is not None,
            "bundle_stored_at": doc["bundle_stored_at"],
            "unwrap_allowed": bool(doc["bundle"] is not None and doc["unwrap_allowed"]),
            "last_unwrap": doc["last_unwrap"],
            "counts": dict(dict((name, 0) for name in COUNTERS), **doc["counts"]),
        }

    # -- operator operations ------------------------------------------------------------
    def register_site(self, site, public_key, replace=False):
        """Register ``site`` with its public key (PEM). Returns (status, changed).

        The same key again changes nothing; another key is refused (SiteConflictError) unless
        ``replace`` (re-initialisation), which also drops the token and the bundle."""
        check_site_name(site)
        pem = _check_public_key(public_key)
        with self._locked():
            doc = self._load(site, required=False)
            if doc is not None and doc["public_key"] == pem:
                return self._status(doc), False
            if doc is not None and not replace:
                raise SiteConflictError("site %s is registered with another public key (re-initialise with replace)"
                                        % site)
            counts = doc["counts"] if doc is not None else dict((name, 0) for name in COUNTERS)
            doc = {"format": FORMAT, "version": VERSION, "site": site, "public_key": pem, "registered_at": _now(),
                   "token_sha256": None, "token_issued_at": None, "bundle": None, "bundle_stored_at": None,
                   "unwrap_allowed": False, "last_unwrap": None, "counts": counts}
            self._save(doc)
            return self._status(doc), True

    def delete_site(self, site):
        """Forget ``site`` (key, token, bundle); returns True when it existed."""
        path = self._path(site)
        with self._locked():
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            return True

    def issue_token(self, site):
        """A new site token (returned once, stored as its hash); the previous token stops working."""
        token = TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(TOKEN_BYTES)).decode("ascii").rstrip("=")
        with self._locked():
            doc = self._load(site)
            doc["token_sha256"] = token_digest(token)
            doc["token_issued_at"] = _now()
            doc["counts"]["tokens_issued"] += 1
            self._save(doc)
        return token

    def reallow_unwrap(self, site):
        """Re-arm the one-time unwrap of the stored bundle. Returns (status, changed)."""
        with self._locked():
            doc = self._load(site)
            if doc["bundle"] is None:
                raise SiteConflictError("site %s has no stored bundle to re-allow" % site)
            if doc["unwrap_allowed"]:
                return self._status(doc), False
            doc["unwrap_allowed"] = True
            doc["counts"]["reallows"] += 1
            self._save(doc)
            return self._status(doc), True

    def status(self, site):
        """Facts about ``site`` without secrets; {"site": .., "registered": False} when unknown."""
        with self._locked(shared=True):
            doc = self._load(site, required=False)
        if doc is None:
            return {"site": check_site_name(site), "registered": False}
        return self._status(doc)

    def _site_names(self):
        return sorted(name[:-5] for name in os.listdir(self.sites_dir)
                      if name.endswith(".json") and SITE_NAME_RE.fullmatch(name[:-5]))

    def sites(self):
        """Names of the registered sites."""
        with self._locked(shared=True):
            return self._site_names()

    # -- token-authenticated site operations --------------------------------------------
    def _authorise(self, doc, token):
        _check_token_shape(token)
        digest = token_digest(token)
        if doc["token_sha256"] is not None and hmac.compare_digest(doc["token_sha256"], digest):
            return
        for other in self._site_names():
            if other == doc["site"]:
                continue
            other_doc = self._load(other, required=False)
            if other_doc and other_doc["token_sha256"] and hmac.compare_digest(other_doc["token_sha256"], digest):
                raise TokenForbiddenError("this token belongs to another site; it gives no access to site %s"
                                          % doc["site"])
        raise TokenInvalidError("the token is not valid for site %s (unknown, revoked or replaced)" % doc["site"])

    def store_bundle(self, site, token, bundle, operator=None):
        """Store the site's seal key bundle (encrypted to the site key) and arm its one-time unwrap.

        The site token stores the first bundle after the site's (re-)registration; replacing a
        stored bundle re-arms the unwrap and needs ``operator`` (the verified operator's name)
        too: OperatorRequiredError (403, counted in ``refused_stores``) otherwise."""
        _check_token_shape(token)
        bundle = _check_bundle(bundle)
        with self._locked():
            doc = self._load(site)
            self._authorise(doc, token)
            if doc["bundle"] is not None and not operator:
                doc["counts"]["refused_stores"] = doc["counts"].get("refused_stores", 0) + 1
                self._save(doc)
                raise OperatorRequiredError("site %s already has a bundle: replacing it re-arms the unwrap, which needs "
                                            "a control tower operator (a client certificate listed in operators) besides "
                                            "the site token, or a re-registration with replace" % site)
            doc["bundle"] = bundle
            doc["bundle_stored_at"] = _now()
            doc["unwrap_allowed"] = True
            doc["counts"]["stores"] += 1
            self._save(doc)
            return self._status(doc)

    def unwrap(self, site, token):
        """Return the stored bundle, once; then the site is locked until reallow_unwrap."""
        _check_token_shape(token)
        with self._locked():
            doc = self._load(site)
            self._authorise(doc, token)
            if doc["bundle"] is None:
                raise SiteConflictError("site %s has no stored bundle" % site)
            if not doc["unwrap_allowed"]:
                doc["counts"]["refused_unwraps"] += 1
                self._save(doc)
                raise UnwrapLockedError("the bundle of site %s was already unwrapped (at %s); an operator must "
                                        "re-allow the unwrap (reallow_unwrap)" % (site, doc["last_unwrap"]))
            doc["unwrap_allowed"] = False
            doc["last_unwrap"] = _now()
            doc["counts"]["unwraps"] += 1
            self._save(doc)
            return doc["bundle"]
