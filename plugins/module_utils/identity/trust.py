# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust between a trusted and a trusting component, exactly as seed 001 states it
(docs/identity.md, "Trust").

* :class:`TrustedSide` (the orchestrator for the identity provider; the identity provider for
  the security service) holds a ROOT key pair (ECDSA P-256) and a current INTERMEDIATE, rotated
  every ``intermediate_period`` seconds (root-signed X.509, valid for two periods). Private keys
  live in process memory. The root private key may be persisted only sealed to this host's TPM
  (:class:`SealedFile`, tpm/envelope.py), because the trusting side accepts a root once: without
  it a restart would end the relationship. :class:`MemoryRootKey` keeps it in memory only (a
  restart then needs the operator's ``reset-trust`` on the trusting side). Intermediates are never
  persisted: a restart makes a new one and shares it again.
* :class:`TrustingSide` accepts the root ONCE (its SubjectPublicKeyInfo SHA-256 pinned in
  ``state_dir``, 0600, so a different root is refused with 409 even after a restart, until
  :func:`reset_trust`); the same root again is a no-op. An intermediate must be directly issued
  by the pinned root (else 400) and not older than the current one (else 409); sharing a new
  one invalidates the previous AT ONCE. The current intermediate certificate (public) is kept
  in ``state_dir`` so a restarted trusting side keeps verifying.
* Signed messages are JWS compact (PyJWT, ES256 only, header ``kid`` = SHA-256 of the
  intermediate certificate's DER, hex), with ``iat``, ``exp`` (short), ``jti``, ``aud``.
  A token whose ``kid`` is not the current intermediate is refused with 401
  ``unknown-intermediate``: the trusted side then shares its bundle again and retries once
  (:func:`signed_call`, :func:`share`), which makes the channel stateless.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import threading
import time
import uuid

from ansible_collections.hcp.core.plugins.module_utils import fileutil, jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError, TpmUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.identity import wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

try:
    import jwt
except ImportError:  # pragma: no cover - reported when used
    jwt = None

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover
    x509 = None

ALGORITHM = "ES256"
DEFAULT_INTERMEDIATE_PERIOD = 3600
ROOT_VALIDITY_DAYS = 3650
ROOT_FILE = "trust-root.json"
INTERMEDIATE_FILE = "trust-intermediate.pem"
ROOT_FORMAT = "hcp.core.identity-trust-root"
MAX_CERTIFICATES = 4
MAX_PEM = 16 * 1024
MAX_TOKEN = wire.MAX_AUTH
LEEWAY = 5


def require_libraries():
    if jwt is None:
        raise MissingDependencyError("the Python library 'PyJWT' is required by the identity components")
    if x509 is None:
        raise MissingDependencyError("the Python library 'cryptography' is required by the identity components")


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def spki_fingerprint(public_key):
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_key.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def cert_fingerprint(cert):
    """SHA-256 (hex) of a certificate's DER: the ``kid`` of tokens signed with its key."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# -- where a trusted side keeps its root private key --------------------------------------------
class MemoryRootKey(object):
    """The root private key in process memory only: each start makes a new root (seed 001 to the
    letter; the trusting side must then be reset by an operator after a restart)."""

    def load(self):
        return None

    def save(self, secret):
        pass


class SealedFile(object):
    """A small secret persisted only sealed to this host's TPM (tpm/envelope.py: AES-256-GCM
    under a key released by ActivateCredential on the EK), never in clear on disk. The file is
    0600, written atomically; unsealing needs the same TPM. ``tcti``: tpm/device.resolve_tcti."""

    def __init__(self, path, tcti=None, attempts=20):
        if not os.path.isabs(path):
            raise IdentityError(500, "bad-config", "a sealed key file path must be absolute: %r" % path)
        self.path = path
        self.tcti = tcti
        self.attempts = attempts

    def _tpm(self):
        from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm
        for attempt in range(self.attempts):  # a TPM simulator serves one client at a time: wait for our turn
            try:
                return Tpm(self.tcti)
            except TpmUnavailableError:
                if attempt == self.attempts - 1:
                    raise
                time.sleep(0.25)
        raise TpmUnavailableError("unreachable")  # pragma: no cover

    def load(self):
        from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
        data = _read_state(self.path, 1024 * 1024)
        if data is None:
            return None
        try:
            sealed = envelope.loads(data)
            with self._tpm() as tpm:
                return envelope.unseal(tpm, sealed)
        except HcpError as exc:
            raise IdentityError(500, "sealed-key", "the TPM-sealed key %s cannot be opened: %s" % (self.path, exc)) from None

    def save(self, secret):
        from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
        try:
            with self._tpm() as tpm:
                sealed = envelope.seal(tpm.ek_public(), secret, fingerprint=False)
        except HcpError as exc:
            raise IdentityError(500, "sealed-key", "cannot seal a key to the TPM: %s" % exc) from None
        fileutil.atomic_write(self.path, envelope.dumps(sealed), mode=0o600)


# -- trusted side ----------------------------------------------------------------------------------
class TrustedSide(object):
    """A trusted component's keys: ``TrustedSide(name, root_key_store)``. ``root_key_store``:
    :class:`SealedFile` (persisted sealed to the TPM) or :class:`MemoryRootKey` (default)."""

    def __init__(self, name, root_key_store=None, intermediate_period=DEFAULT_INTERMEDIATE_PERIOD, clock=time.time):
        require_libraries()
        self.name = str(name)
        self.period = int(intermediate_period)
        if self.period < 2:
            raise IdentityError(500, "bad-config", "intermediate_period must be at least 2 seconds")
        self.clock = clock
        self._lock = threading.Lock()
        store = root_key_store or MemoryRootKey()
        der = store.load()
        if der is None:
            self._root_key = ec.generate_private_key(ec.SECP256R1())
            store.save(self._root_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        else:
            key = serialization.load_der_private_key(der, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise IdentityError(500, "sealed-key", "the persisted root key is not an ECDSA P-256 key")
            self._root_key = key
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hcp.core identity"),
                             x509.NameAttribute(NameOID.COMMON_NAME, (self.name + " root")[:64])])
        self.root_cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                          .public_key(self._root_key.public_key()).serial_number(x509.random_serial_number())
                          .not_valid_before(now - datetime.timedelta(minutes=5))
                          .not_valid_after(now + datetime.timedelta(days=ROOT_VALIDITY_DAYS))
                          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                          .sign(self._root_key, hashes.SHA256()))
        self.root_fingerprint = spki_fingerprint(self._root_key.public_key())
        self._intermediate = None  # (key, cert, kid, created)
        self.rotate()

    def rotate(self):
        """Make a new intermediate now (the previous one is forgotten); returns its kid."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hcp.core identity"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, (self.name + " intermediate")[:64])]))
                .issuer_name(self.root_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(seconds=60))
                .not_valid_after(now + datetime.timedelta(seconds=2 * self.period))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(self._root_key, hashes.SHA256()))
        with self._lock:
            self._intermediate = (key, cert, cert_fingerprint(cert), self.clock())
        return self._intermediate[2]

    def due(self):
        """True when the current intermediate is ``intermediate_period`` old."""
        return self.clock() - self._intermediate[3] >= self.period

    def maybe_rotate(self):
        """Rotate when due; True when a new intermediate was made (the caller shares it)."""
        if self.due():
            self.rotate()
            return True
        return False

    @property
    def kid(self):
        return self._intermediate[2]

    @property
    def intermediate_cert(self):
        return self._intermediate[1]

    def bundle(self, root):
        """``{"root": bool, "certificates": [PEM...]}``: the root certificate, or the current
        intermediate followed by the root certificate."""
        if root:
            return {"root": True, "certificates": [_pem(self.root_cert)]}
        return {"root": False, "certificates": [_pem(self._intermediate[1]), _pem(self.root_cert)]}

    def sign(self, payload, audience=None, lifetime=60):
        """A JWS compact token (ES256, ``kid`` = current intermediate) of ``payload`` (a dict)
        plus ``iat``, ``exp`` = iat + ``lifetime``, ``jti`` and, when given, ``aud``."""
        key, _cert, kid, _created = self._intermediate
        now = int(self.clock())
        claims = dict(payload)
        claims.setdefault("iat", now)
        claims.setdefault("exp", now + int(lifetime))
        claims.setdefault("jti", uuid.uuid4().hex)
        if audience is not None:
            claims["aud"] = audience
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})


# -- trusting side ---------------------------------------------------------------------------------
def _load_cert(pem):
    if not isinstance(pem, str) or not pem or len(pem) > MAX_PEM:
        raise IdentityError(400, "bad-bundle", "each certificate must be a PEM string of at most %d bytes" % MAX_PEM)
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeError):
        raise IdentityError(400, "bad-certificate", "a certificate of the bundle is not a PEM X.509 certificate") from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise IdentityError(400, "bad-certificate", "trust bundle keys must be ECDSA P-256")
    return cert


def _issued_by(cert, issuer):
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _basic_ca(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _within_validity(cert, slack=LEEWAY):
    now = _now()
    return (cert.not_valid_before_utc - datetime.timedelta(seconds=slack) <= now
            <= cert.not_valid_after_utc + datetime.timedelta(seconds=slack))


def _read_state(path, limit=64 * 1024):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)


def prepare_state_dir(state_dir):
    """Create ``state_dir`` 0700 when missing; refuse a relative path or a symbolic link."""
    if not os.path.isabs(state_dir):
        raise IdentityError(500, "bad-config", "state_dir must be an absolute path: %r" % state_dir)
    try:
        os.mkdir(state_dir, 0o700)
    except FileExistsError:
        pass
    if os.path.islink(state_dir) or not os.path.isdir(state_dir):
        raise IdentityError(500, "bad-config", "state_dir %s is not a directory" % state_dir)
    os.chmod(state_dir, 0o700)


class TrustingSide(object):
    """The trusting component's view of one trusted component (``state_dir``: 0700, holds the
    pinned root and the current intermediate, both public)."""

    def __init__(self, state_dir, name="trusting side"):
        require_libraries()
        prepare_state_dir(state_dir)
        self.state_dir = state_dir
        self.name = name
        self._lock = threading.Lock()
        self._root = None          # (spki fingerprint, certificate)
        self._intermediate = None  # (kid, certificate, public key)
        self._load()

    @property
    def root_path(self):
        return os.path.join(self.state_dir, ROOT_FILE)

    @property
    def intermediate_path(self):
        return os.path.join(self.state_dir, INTERMEDIATE_FILE)

    def _load(self):
        raw = _read_state(self.root_path)
        if raw is None:
            return
        try:
            record = jsonutil.loads(raw, ROOT_FILE)
            cert = _load_cert(record["certificate"])
            if record.get("format") != ROOT_FORMAT or record.get("version") != 1 or \
                    spki_fingerprint(cert.public_key()) != record.get("spki_sha256"):
                raise ValueError("mismatch")
        except (HcpError, ValueError, KeyError, TypeError):
            # fail closed: a damaged pin is not "no pin" (that would accept any root)
            raise IdentityError(500, "bad-trust-state", "%s is damaged: refusing to start; an operator runs reset-trust" %
                                self.root_path) from None
        self._root = (record["spki_sha256"], cert)
        raw = _read_state(self.intermediate_path)
        if raw:
            try:
                cert = _load_cert(raw.decode("ascii"))
            except (IdentityError, UnicodeError):
                return
            if _issued_by(cert, self._root[1]) and _within_validity(cert):
                self._intermediate = (cert_fingerprint(cert), cert, cert.public_key())

    @property
    def root_fingerprint(self):
        return self._root[0] if self._root else None

    @property
    def kid(self):
        return self._intermediate[0] if self._intermediate else None

    def share_trust_bundle(self, bundle):
        """Apply a ShareTrustBundle body; ``{"root": bool, "fingerprint": ..., "changed": bool}``."""
        if not isinstance(bundle, dict) or not isinstance(bundle.get("root"), bool) or \
                not isinstance(bundle.get("certificates"), list) or set(bundle) - {"root", "certificates"}:
            raise IdentityError(400, "bad-bundle", 'a trust bundle is {"root": true|false, "certificates": [PEM, ...]}')
        pems = bundle["certificates"]
        if not 1 <= len(pems) <= MAX_CERTIFICATES:
            raise IdentityError(400, "bad-bundle", "a trust bundle holds 1 to %d certificates" % MAX_CERTIFICATES)
        certs = [_load_cert(pem) for pem in pems]
        with self._lock:
            if bundle["root"]:
                return self._share_root(certs)
            return self._share_intermediate(certs[0])

    def _share_root(self, certs):
        if len(certs) != 1:
            raise IdentityError(400, "bad-bundle", "a root bundle holds exactly one certificate")
        cert = certs[0]
        if not _issued_by(cert, cert) or not _basic_ca(cert) or not _within_validity(cert):
            raise IdentityError(400, "bad-root", "the root certificate must be a valid self-signed CA certificate")
        fingerprint = spki_fingerprint(cert.public_key())
        if self._root is not None:
            if hmac.compare_digest(self._root[0], fingerprint):
                return {"root": True, "fingerprint": fingerprint, "changed": False}
            raise IdentityError(409, "root-already-pinned", "a different root is already trusted: a root is accepted once; "
                                "an operator resets it with reset-trust (docs/identity.md)")
        record = {"format": ROOT_FORMAT, "version": 1, "spki_sha256": fingerprint, "certificate": _pem(cert)}
        try:
            fileutil.create_new(self.root_path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("ascii"))
        except FileExistsError:  # another process pinned meanwhile: that pin wins
            raise IdentityError(409, "root-already-pinned", "a root was pinned concurrently") from None
        self._root = (fingerprint, cert)
        return {"root": True, "fingerprint": fingerprint, "changed": True}

    def _share_intermediate(self, cert):
        if self._root is None:
            raise IdentityError(401, "no-root-pinned", "no root is trusted yet: share the root bundle first")
        if not _issued_by(cert, self._root[1]):
            raise IdentityError(400, "not-chaining", "the intermediate certificate is not issued by the trusted root")
        if _basic_ca(cert) or not _within_validity(cert):
            raise IdentityError(400, "bad-intermediate", "the intermediate certificate is a CA or outside its validity")
        kid = cert_fingerprint(cert)
        if self._intermediate is not None:
            if self._intermediate[0] == kid:
                return {"root": False, "fingerprint": kid, "changed": False}
            if cert.not_valid_before_utc < self._intermediate[1].not_valid_before_utc:
                raise IdentityError(409, "stale-intermediate", "the intermediate is older than the current one (replayed)")
        fileutil.atomic_write(self.intermediate_path, _pem(cert).encode("ascii"), mode=0o600)
        self._intermediate = (kid, cert, cert.public_key())  # the previous one is invalid from here on
        return {"root": False, "fingerprint": kid, "changed": True}

    def verify(self, token, audience, max_lifetime=300):
        """The claims of ``token`` (str/bytes) when signed ES256 by the CURRENT intermediate,
        ``aud`` == ``audience``, unexpired, with iat/exp/jti and exp - iat <= ``max_lifetime``;
        else IdentityError 401 (``bad-token``, ``unknown-intermediate``, ``token-expired``,
        ``wrong-audience``)."""
        if isinstance(token, (bytes, bytearray)):
            try:
                token = bytes(token).decode("ascii")
            except UnicodeError:
                raise IdentityError(401, "bad-token", "the token is not a JWS compact string") from None
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise IdentityError(401, "bad-token", "the token is missing or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise IdentityError(401, "bad-token", "the token is not a JWS compact string") from None
        if header.get("alg") != ALGORITHM:  # alg pinned: none, HS*, RS* never
            raise IdentityError(401, "bad-token", "the token's algorithm must be ES256")
        current = self._intermediate
        if current is None or not isinstance(header.get("kid"), str) or header["kid"] != current[0]:
            raise IdentityError(401, "unknown-intermediate", "the token is not signed by the current intermediate")
        if not _within_validity(current[1]):
            raise IdentityError(401, "unknown-intermediate", "the current intermediate has expired: a new one must be shared")
        try:
            claims = jwt.decode(token, current[2], algorithms=[ALGORITHM], audience=audience, leeway=LEEWAY,
                                options={"require": ["exp", "iat", "jti", "aud"], "verify_signature": True})
        except jwt.ExpiredSignatureError:
            raise IdentityError(401, "token-expired", "the token has expired") from None
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            word = "wrong-audience" if isinstance(exc, jwt.InvalidAudienceError) else "bad-token"
            raise IdentityError(401, word, "the token is not for this service" if word == "wrong-audience"
                                else "the token lacks a required claim") from None
        except jwt.PyJWTError:
            raise IdentityError(401, "bad-token", "the token's signature or claims are not valid") from None
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > max_lifetime or exp <= iat:
            raise IdentityError(401, "bad-token", "the token's lifetime is beyond %d seconds" % max_lifetime)
        return claims

    def reset(self):
        """Forget the pinned root and the intermediate (the operator's reset-trust)."""
        with self._lock:
            for path in (self.root_path, self.intermediate_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            self._root = None
            self._intermediate = None


def reset_trust(state_dir):
    """The operator's ``reset-trust``: remove the pinned root and the intermediate of ``state_dir``
    (the component must be restarted afterwards: a running one keeps its pin in memory).
    Returns the removed root fingerprint or None."""
    path = os.path.join(state_dir, ROOT_FILE)
    raw = _read_state(path)
    fingerprint = None
    if raw:
        try:
            fingerprint = jsonutil.loads(raw, ROOT_FILE).get("spki_sha256")
        except (HcpError, AttributeError):
            fingerprint = "(damaged)"
    for name in (ROOT_FILE, INTERMEDIATE_FILE):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
    return fingerprint


# -- the trusted side's calls -------------------------------------------------------------------
def share(trusted, admin_path, timeout=5.0):
    """Share ``trusted``'s root (a no-op when the same root is pinned; IdentityError 409 when
    another is) and its current intermediate on the trusting side's admin socket."""
    wire.call(admin_path, "share_trust_bundle", trusted.bundle(root=True), timeout=timeout)
    return wire.call(admin_path, "share_trust_bundle", trusted.bundle(root=False), timeout=timeout)


def signed_call(trusted, admin_path, opcode, payload, audience, lifetime=60, timeout=5.0):
    """Call ``opcode`` on ``admin_path`` with ``payload`` signed by ``trusted`` (auth_type 2, claims
    = payload + ``op`` + ``aud`` + iat/exp/jti). On 401 ``unknown-intermediate`` / ``no-root-pinned``
    (the trusting side restarted or was reset), share the bundle again and retry once."""
    def once():
        token = trusted.sign(dict(payload, op=opcode), audience=audience, lifetime=lifetime)
        return wire.call(admin_path, opcode, {}, auth=token, auth_type=wire.AUTH_SIGNED, timeout=timeout)
    try:
        return once()
    except IdentityError as exc:
        if exc.status != 401 or exc.error not in ("unknown-intermediate", "no-root-pinned"):
            raise
    share(trusted, admin_path, timeout=timeout)
    return once()


def verify_signed_request(trusting, request, audience, max_lifetime=300):
    """The claims of a signed admin request: auth_type 2, peer uid 0, token verified by
    ``trusting`` for ``audience`` and bound to this opcode (claim ``op``); else 401/403."""
    if request.peer.uid != 0:
        raise IdentityError(403, "forbidden", "admin operations are for root only")
    if request.auth_type != wire.AUTH_SIGNED:
        raise IdentityError(401, "unsigned", "this operation needs a signed request (auth type 2)")
    claims = trusting.verify(request.auth, audience, max_lifetime=max_lifetime)
    if claims.get("op") != request.name:
        raise IdentityError(401, "bad-token", "the signed request is for another operation")
    return claims
