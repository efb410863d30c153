# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Site init and unseal (seed 004) over Shamir shares and the control tower, plain Python.

Site key: X25519. A message is sealed to the site's public key ECIES-style: an ephemeral
X25519 key agreement, HKDF-SHA256 and AES-256-GCM (format ``hcp.core.site-sealed`` v1). Chosen
over RSA-OAEP for 32-byte keys (the private key fits in every Shamir share), cheap key
generation at each (re)initialisation and authenticated encryption of any length.

``init_site`` creates the site key and the 32-byte seal key, registers the site at the tower,
gets the site token, seals the token and the seal key to the site key, stores the sealed seal
key at the tower and Shamir-splits the *site secret* (``hcp.core.site-secret`` v1: the site
private key, the sealed token and, with ``allow_local_unseal``, the sealed seal key) into one
share per controller, a majority needed. The site private key therefore exists whole only in
memory during init and unseal: a copied controller yields neither the token nor the key.

``unseal`` combines gathered shares (naming excluded, corrupted or missing ones), opens the
token, unwraps the bundle at the tower once and opens the seal key (or, in local mode, opens
the locally split sealed seal key). Formats and threat notes: docs/site-unseal.md.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import os

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:  # pragma: no cover - reported by _require_cryptography
    X25519PrivateKey = None

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import (
    ControlTowerError,
    UnknownSiteError,
    check_site_name,
)
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import ShareUndecryptableError, read_share
from ansible_collections.hcp.core.plugins.module_utils.web.client import DEFAULT_TIMEOUT, HttpsJsonClient

SEALED_FORMAT = "hcp.core.site-sealed"
SEALED_VERSION = 1
SEALED_ALG = "X25519-HKDF-SHA256-A256GCM"
SECRET_FORMAT = "hcp.core.site-secret"
SECRET_VERSION = 1
SEAL_KEY_SIZE = 32
PURPOSE_TOKEN = "token"
PURPOSE_SEAL_KEY = "seal-key"
_HKDF_INFO = b"hcp.core site-sealed v1 "


class SiteUnsealError(HcpError):
    """Site init or unseal cannot proceed."""


class InsufficientSharesError(SiteUnsealError):
    """Fewer valid shares than the threshold; ``valid``, ``needed`` and ``excluded`` say which."""

    def __init__(self, message, valid, needed, excluded):
        SiteUnsealError.__init__(self, message)
        self.valid = valid
        self.needed = needed
        self.excluded = excluded


class SiteSecretError(SiteUnsealError):
    """The combined site secret is malformed, of an unknown version, or of another site."""


class WrongSiteKeyError(SiteUnsealError):
    """A sealed message does not open with this site key (another site, a stale bundle, tampering)."""


def _require_cryptography():
    if X25519PrivateKey is None:
        raise MissingDependencyError("the Python library 'cryptography' is required for site init and unseal")


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text, what):
    if not isinstance(text, str):
        raise SiteSecretError("%s must be a base64 string" % what)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SiteSecretError("%s is not valid base64" % what) from None


# -- the site key and sealed messages --------------------------------------------------------
def generate_site_key():
    """A new X25519 site private key."""
    _require_cryptography()
    return X25519PrivateKey.generate()


def public_key_pem(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _raw_public(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_public(public_key):
    _require_cryptography()
    if isinstance(public_key, X25519PublicKey):
        return public_key
    try:
        key = serialization.load_pem_public_key(public_key.encode("ascii") if isinstance(public_key, str) else public_key)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SiteUnsealError("the site public key is not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise SiteUnsealError("the site public key must be an X25519 key")
    return key


def _aead_key(shared, epk, recipient, purpose):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient,
                info=_HKDF_INFO + purpose.encode("ascii")).derive(shared)


def _aad(site, purpose, epk_b64):
    return json.dumps({"format": SEALED_FORMAT, "version": SEALED_VERSION, "alg": SEALED_ALG, "site": site,
                       "purpose": purpose, "epk": epk_b64}, sort_keys=True, separators=(",", ":")).encode("utf-8")


def seal_to_site(public_key, plaintext, site, purpose):
    """Encrypt ``plaintext`` to the site public key (PEM or key); returns the sealed JSON object.
    ``site`` and ``purpose`` are authenticated, so a sealed token never opens as a seal key."""
    recipient = _load_public(public_key)
    ephemeral = X25519PrivateKey.generate()
    epk = _raw_public(ephemeral.public_key())
    key = _aead_key(ephemeral.exchange(recipient), epk, _raw_public(recipient), purpose)
    nonce = os.urandom(12)
    epk_b64 = _b64(epk)
    ct = AESGCM(key).encrypt(nonce, bytes(plaintext), _aad(site, purpose, epk_b64))
    return {"format": SEALED_FORMAT, "version": SEALED_VERSION, "alg": SEALED_ALG, "site": site,
            "purpose": purpose, "epk": epk_b64, "nonce": _b64(nonce), "ct": _b64(ct)}


def open_sealed(private_key, sealed, site, purpose):
    """Decrypt a sealed object with the site private key; WrongSiteKeyError when it does not open."""
    _require_cryptography()
    if not isinstance(sealed, dict) or sealed.get("format") != SEALED_FORMAT:
        raise SiteSecretError("not an %s object" % SEALED_FORMAT)
    if sealed.get("version") != SEALED_VERSION or sealed.get("alg") != SEALED_ALG:
        raise SiteSecretError("unsupported sealed object (version %r, alg %r)" % (sealed.get("version"), sealed.get("alg")))
    if sealed.get("site") != site or sealed.get("purpose") != purpose:
        raise WrongSiteKeyError("the sealed object is the %r of site %r, expected the %r of site %r"
                                % (sealed.get("purpose"), sealed.get("site"), purpose, site))
    epk = _unb64(sealed.get("epk"), "epk")
    nonce = _unb64(sealed.get("nonce"), "nonce")
    ct = _unb64(sealed.get("ct"), "ct")
    if len(epk) != 32 or len(nonce) != 12:
        raise SiteSecretError("sealed object has a malformed epk or nonce")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(epk))
        key = _aead_key(shared, epk, _raw_public(private_key.public_key()), purpose)
        return AESGCM(key).decrypt(nonce, ct, _aad(site, purpose, sealed["epk"]))
    except (InvalidTag, ValueError):
        raise WrongSiteKeyError("the %s of site %s does not open with this site key (another key, a stale "
                                "bundle or tampering)" % (purpose, site)) from None


# -- control tower clients ---------------------------------------------------------------------
class LocalTower(object):
    """The client interface over an in-process control_tower.ControlTower (tests, benchmarks,
    a tower on the same host)."""

    def __init__(self, tower):
        self.tower = tower

    def register_site(self, site, public_key, replace=False):
        return self.tower.register_site(site, public_key, replace)

    def delete_site(self, site):
        return self.tower.delete_site(site)

    def issue_token(self, site):
        return self.tower.issue_token(site)

    def reallow_unwrap(self, site):
        return self.tower.reallow_unwrap(site)

    def status(self, site):
        return self.tower.status(site)

    def store_bundle(self, site, token, bundle, as_operator=False):
        self.tower.store_bundle(site, token, bundle, operator="local operator" if as_operator else None)

    def unwrap(self, site, token):
        return self.tower.unwrap(site, token)


class ControlTowerClient(object):
    """HTTPS client of the control tower API (docs/site-unseal.md). ``ca_file`` verifies the
    server; ``client_cert``/``client_key`` authenticate an operator (site routes use the token)."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT):
        self.http = HttpsJsonClient(url, ca_file, client_cert, client_key, timeout,
                                    what="control tower", error_class=ControlTowerError)
        self.url = self.http.url

    def __repr__(self):
        return "ControlTowerClient(url=%r)" % self.url

    def _call(self, method, path, token=None, body=None, send_cert=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        send_cert = not token if send_cert is None else send_cert
        response = self.http.request(method, path, json_body=body, headers=headers, send_cert=send_cert)
        if response.status not in (200, 201) or not isinstance(response.body, dict):
            raise ControlTowerError("control tower %s %s: HTTP %d: %s" % (method, path, response.status, response.error_detail()),
                                    response.status)
        return response.body

    def register_site(self, site, public_key, replace=False):
        data = self._call("POST", "/v1/sites", body={"site": site, "public_key": public_key, "replace": replace})
        return data["status"], data["changed"]

    def delete_site(self, site):
        return self._call("DELETE", "/v1/sites/%s" % check_site_name(site))["deleted"]

    def issue_token(self, site):
        return self._call("POST", "/v1/sites/%s/token" % check_site_name(site))["token"]

    def reallow_unwrap(self, site):
        data = self._call("POST", "/v1/sites/%s/reallow-unwrap" % check_site_name(site))
        return data["status"], data["changed"]

    def status(self, site):
        try:
            return self._call("GET", "/v1/sites/%s" % check_site_name(site))
        except ControlTowerError as exc:
            if exc.status == 404:
                return {"site": site, "registered": False}
            raise

    def store_bundle(self, site, token, bundle, as_operator=False):
        """Store the site's bundle with its token; replacing a stored one needs ``as_operator``
        (this client's operator certificate is sent along with the token)."""
        self._call("PUT", "/v1/sites/%s/bundle" % check_site_name(site), token=token, body={"bundle": bundle},
                   send_cert=as_operator)

    def unwrap(self, site, token):
        return self._call("POST", "/v1/sites/%s/unwrap" % check_site_name(site), token=token)["bundle"]


# -- flows -------------------------------------------------------------------------------------
# repr=False: __repr__ below leaves out the shares and the seal key; eq=False: compare by identity.
@dataclasses.dataclass(repr=False, eq=False, slots=True)
class SiteInit(object):
    """Result of init_site: ``shares`` {controller: share text} (secret: give each controller
    only its own), ``seal_key`` (bytes, secret), threshold, set_id, public_key (PEM),
    tower (bool: bundle stored at the tower), local (bool: allow_local_unseal)."""

    site: str
    shares: dict
    seal_key: bytes
    threshold: int
    set_id: str
    public_key: str
    tower: bool
    local: bool

    def __repr__(self):
        return "SiteInit(site=%r, controllers=%r, threshold=%d, set_id=%s, tower=%r, local=%r)" % (
            self.site, sorted(self.shares), self.threshold, self.set_id, self.tower, self.local)

    def facts(self):
        """Everything but the secrets."""
        return {"site": self.site, "controllers": sorted(self.shares), "threshold": self.threshold,
                "set_id": self.set_id, "public_key": self.public_key, "tower": self.tower,
                "allow_local_unseal": self.local}


class UnsealResult(object):
    """Result of unseal: ``seal_key`` (bytes, secret), site, used (share indexes), excluded
    ([{share, index, reason}]), via ('tower'|'local')."""

    __slots__ = ("seal_key", "site", "used", "excluded", "via")

    def __init__(self, seal_key, site, used, excluded, via):
        self.seal_key = seal_key
        self.site = site
        self.used = used
        self.excluded = excluded
        self.via = via

    def __repr__(self):
        return "UnsealResult(site=%r, used=%r, excluded=%r, via=%r)" % (self.site, self.used, self.excluded, self.via)


def _check_controllers(controllers):
    if not isinstance(controllers, (list, tuple)) or not controllers:
        raise SiteUnsealError("controllers must be a non-empty list of controller names")
    names = [str(c) for c in controllers]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise SiteUnsealError("controller names must be unique and non-empty")
    if len(names) > shamir.MAX_SHARES:
        raise SiteUnsealError("at most %d controllers" % shamir.MAX_SHARES)
    return names


def init_site(site, controllers, tower=None, threshold=None, allow_local_unseal=False, seal_key=None,
              replace=False):
    """Initialise ``site`` for ``controllers`` (names); returns a SiteInit.

    ``tower`` (ControlTowerClient or LocalTower, operator credentials) registers the site
    public key (``replace`` for a re-initialisation), issues the site token and stores the
    seal key sealed to the site key. Without a tower, ``allow_local_unseal`` is required.
    ``seal_key`` (32 bytes) keeps an existing seal key (re-initialisation)."""
    _require_cryptography()
    check_site_name(site)
    names = _check_controllers(controllers)
    if tower is None and not allow_local_unseal:
        raise SiteUnsealError("site %s: a control tower is needed unless allow_local_unseal is true" % site)
    if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool)
                                  or not 1 <= threshold <= len(names)):
        raise SiteUnsealError("threshold must be an integer in 1..%d (the controller count), got %r"
                              % (len(names), threshold))
    if seal_key is None:
        seal_key = os.urandom(SEAL_KEY_SIZE)
    if not isinstance(seal_key, bytes) or len(seal_key) != SEAL_KEY_SIZE:
        raise SiteUnsealError("the seal key must be %d bytes" % SEAL_KEY_SIZE)
    private_key = generate_site_key()
    public_pem = public_key_pem(private_key)
    secret = {"format": SECRET_FORMAT, "version": SECRET_VERSION, "site": site,
              "site_key": _b64(private_key.private_bytes(serialization.Encoding.Raw,
                                                         serialization.PrivateFormat.Raw,
                                                         serialization.NoEncryption())),
              "token": None, "seal_key": None}
    if tower is not None:
        tower.register_site(site, public_pem, replace)
        token = tower.issue_token(site)
        secret["token"] = seal_to_site(public_pem, token.encode("ascii"), site, PURPOSE_TOKEN)
        tower.store_bundle(site, token, seal_to_site(public_pem, seal_key, site, PURPOSE_SEAL_KEY))
    if allow_local_unseal:
        secret["seal_key"] = seal_to_site(public_pem, seal_key, site, PURPOSE_SEAL_KEY)
    blob = json.dumps(secret, sort_keys=True, separators=(",", ":")).encode("utf-8")
    shares = shamir.split(blob, len(names), threshold)
    return SiteInit(site, dict((name, share.to_text()) for name, share in zip(names, shares)), seal_key,
                    shares[0].threshold, shares[0].set_id.hex(), public_pem, tower is not None, bool(allow_local_unseal))


def _parse_one(item, label):
    if isinstance(item, shamir.Share):
        return item
    if isinstance(item, str):
        return shamir.Share.from_text(item, label)
    if isinstance(item, (bytes, bytearray)):
        return shamir.Share.from_bytes(item, label)
    raise shamir.ShareFormatError("%s: expected share text, got %s" % (label, type(item).__name__))


def combine_shares(shares, site=None):
    """Combine gathered shares; returns (site secret dict, CombineResult).

    InsufficientSharesError names how many valid shares there are, how many are needed and
    why the others were excluded; foreign (ShareSetMismatchError) and duplicated
    (DuplicateShareError) shares are refused by shamir."""
    shares = list(shares or [])
    valid, excluded = [], []
    for position, item in enumerate(shares, 1):
        label = "share #%d" % position
        try:
            valid.append(_parse_one(item, label))
        except shamir.ShareFormatError as exc:
            excluded.append({"share": label, "index": None, "reason": str(exc)})
    where = " for site %s" % site if site else ""
    if not valid:
        raise InsufficientSharesError("no valid share%s (%d given)%s" % (
            where, len(shares), "".join("; " + e["reason"] for e in excluded)), 0, None, excluded)
    needed = valid[0].threshold
    distinct = len(valid)
    if distinct < needed and len(set(s.set_id for s in valid)) == 1:
        raise InsufficientSharesError("%d valid share(s)%s, %d needed%s" % (
            distinct, where, needed, "".join("; excluded %s" % e["reason"] for e in excluded)), distinct, needed,
            excluded)
    try:
        result = shamir.combine_detailed(shares)
    except shamir.NotEnoughSharesError as exc:
        raise InsufficientSharesError("%s%s" % (exc, where), distinct, needed, excluded) from None
    try:
        secret = json.loads(result.secret.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise SiteSecretError("the combined shares are not a site secret") from None
    if not isinstance(secret, dict) or secret.get("format") != SECRET_FORMAT:
        raise SiteSecretError("the combined shares are not an %s document" % SECRET_FORMAT)
    if secret.get("version") != SECRET_VERSION:
        raise SiteSecretError("unsupported site secret version %r (this library reads %d)"
                              % (secret.get("version"), SECRET_VERSION))
    if site is not None and secret.get("site") != site:
        raise SiteSecretError("the shares belong to site %r, not %r" % (secret.get("site"), site))
    return secret, result


def unseal(shares, tower=None, site=None, mode="auto"):
    """Recover the seal key from gathered shares; returns an UnsealResult.

    ``mode``: ``tower`` (open the token, unwrap the bundle at ``tower`` once, open the seal
    key), ``local`` (open the locally split sealed seal key) or ``auto`` (tower when the
    site secret holds a token and a tower is given, else local)."""
    _require_cryptography()
    if mode not in ("auto", "tower", "local"):
        raise SiteUnsealError("mode must be auto, tower or local, got %r" % (mode,))
    secret, result = combine_shares(shares, site)
    site = secret.get("site")
    check_site_name(site)
    try:
        private_key = X25519PrivateKey.from_private_bytes(_unb64(secret.get("site_key"), "site_key"))
    except ValueError:
        raise SiteSecretError("the site secret holds a malformed site key") from None
    if mode == "auto":
        mode = "tower" if secret.get("token") and tower is not None else "local"
    if mode == "tower":
        if tower is None:
            raise SiteUnsealError("site %s: tower mode needs a control tower" % site)
        if not secret.get("token"):
            raise SiteUnsealError("site %s was initialised without a control tower token" % site)
        token = open_sealed(private_key, secret["token"], site, PURPOSE_TOKEN).decode("ascii")
        bundle = tower.unwrap(site, token)
    else:
        if not secret.get("seal_key"):
            raise SiteUnsealError("site %s was initialised without allow_local_unseal: unseal through the control "
                                  "tower" % site)
        bundle = secret["seal_key"]
    seal_key = open_sealed(private_key, bundle, site, PURPOSE_SEAL_KEY)
    if len(seal_key) != SEAL_KEY_SIZE:
        raise SiteSecretError("site %s: the opened seal key has %d bytes, expected %d"
                              % (site, len(seal_key), SEAL_KEY_SIZE))
    return UnsealResult(seal_key, site, result.used, result.excluded, mode)


def load_host_share(path, tpm_factory=None, hsm=None):
    """This controller's share: {"status": "ok", "share": text} or, when the TPM/HSM that
    protected it cannot decrypt it (TPM swapped or cleared), {"status": "reinit_needed",
    "reason": ...}. An unreachable TPM raises TpmUnavailableError (retry, not reinit)."""
    try:
        share = read_share(path, tpm_factory=tpm_factory, hsm=hsm)
    except ShareUndecryptableError as exc:
        return {"status": "reinit_needed", "reason": str(exc)}
    return {"status": "ok", "share": share.to_text()}


def reinit_due(first_failure, reset_timeout, now=None):
    """True when ``reset_timeout`` seconds have passed since ``first_failure`` (epoch seconds)."""
    now = datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now
    return now - first_failure >= reset_timeout


def reinit_site(site, shares, controllers, tower=None, threshold=None, allow_local_unseal=False, mode="auto"):
    """Re-initialise after a controller lost its share (TPM swapped): unseal with the remaining
    shares (through the tower this needs the operator's reallow_unwrap, as the bundle unwraps
    once), then init_site again with the same seal key and a new site key (``replace``).
    Returns (SiteInit, UnsealResult)."""
    result = unseal(shares, tower=tower, site=site, mode=mode)
    fresh = init_site(site, controllers, tower=tower, threshold=threshold, allow_local_unseal=allow_local_unseal,
                      seal_key=result.seal_key, replace=True)
    return fresh, result


__all__ = [
    "ControlTowerClient", "InsufficientSharesError", "LocalTower", "SiteInit", "SiteSecretError", "SiteUnsealError",
    "UnknownSiteError", "UnsealResult", "WrongSiteKeyError", "combine_shares", "generate_site_key", "init_site",
    "load_host_share", "open_sealed", "public_key_pem", "reinit_due", "reinit_site", "seal_to_site", "unseal",
]


class SiteStateError(HcpError):
    """The wanted site state needs an operator's choice (``status``: the site's status at the tower)."""

    def __init__(self, message, site_status):
        super(SiteStateError, self).__init__(message)
        self.site_status = site_status


def _same_key(a, b):
    return (a or "").strip() == (b or "").strip()


def ensure_site(client, site, state="present", public_key=None, replace_key=False, reallow_unwrap=False,
                check_mode=False):
    """Bring ``site`` at the control tower to ``state`` (idempotent; what module hcp.core.control_tower_site does).

    Returns (status, actions, warnings): the site's status afterwards (as it would be in check
    mode), the actions done among ``registered``, ``replaced_key``, ``reallowed``, ``deleted``, and
    warnings for the operator. SiteStateError when the request needs a choice the caller did not make
    (a new site without ``public_key``, another key without ``replace_key``)."""
    actions, warnings = [], []
    status = client.status(site)
    if state == "absent":
        if status["registered"]:
            actions.append("deleted")
            if not check_mode:
                client.delete_site(site)
                status = {"site": site, "registered": False}
        return status, actions, warnings
    if not status["registered"]:
        if not public_key:
            raise SiteStateError("site %s is not registered: public_key is required to register it" % site, status)
        actions.append("registered")
    elif public_key and not _same_key(public_key, status["public_key"]):
        if not replace_key:
            raise SiteStateError("site %s is registered with another public key (set replace_key to replace it)" % site,
                                 status)
        actions.append("replaced_key")
    if actions and not check_mode:
        status = client.register_site(site, public_key, replace=replace_key)[0]
    if reallow_unwrap:
        if not status.get("has_bundle"):
            warnings.append("site %s has no stored bundle: nothing to re-allow" % site)
        elif not status["unwrap_allowed"]:
            actions.append("reallowed")
            if not check_mode:
                status = client.reallow_unwrap(site)[0]
    return status, actions, warnings
