# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seal data to a TPM's EK without that TPM, and unseal it on the TPM (envelope format v1).

KEM/DEM: a random 32-byte key encrypts the payload with AES-256-GCM; the key is wrapped
with TPM2_MakeCredential to the EK public, where the credential's object name is the name
of a *well-known key* (fixed, public sensitive part) whose authPolicy is the unseal policy
digest. The TPM only releases the key through ActivateCredential after that policy is
satisfied, so the TPM itself enforces the policy. Layout: docs/envelope-format.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import struct
import warnings

from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import (
    EnvelopeFormatError,
    EnvelopeIntegrityError,
    EnvelopeVersionError,
    PolicyNotSatisfiedError,
    TpmError,
    WrongTpmError,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash, rc_is, require_tpm2_pytss, tss_rc

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
except ImportError:  # pragma: no cover
    AESGCM = None

try:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPM2B_NAME,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE,
        TPMS_KEYEDHASH_PARMS,
        TPMT_KEYEDHASH_SCHEME,
        TPMT_PUBLIC,
        TPMT_SENSITIVE,
        TPMU_PUBLIC_ID,
        TPMU_PUBLIC_PARMS,
        TPMU_SENSITIVE_COMPOSITE,
    )
    from tpm2_pytss.utils import make_credential
except ImportError:  # pragma: no cover
    TSS2_Exception = None

FORMAT = "hcp.core.envelope"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
KEM_ALG = "tpm2-makecredential-wk"
DEM_ALG = "AES-256-GCM"
# The well-known key's sensitive part is public by design: knowing it grants nothing,
# because ActivateCredential also needs the EK and the policy bound into the key's name.
WK_SEED = b"\0" * 32
WK_BITS = b"hcp.core/well-known-key/v1"
# Idempotence fingerprint: scrypt makes offline guessing of low-entropy plaintexts costly.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
MAX_PAYLOAD = 64 * 1024 * 1024
# ActivateCredential answers a modified credential blob or encrypted seed with these;
# libtpms (swtpm) reports an RSA-OAEP seed that does not decrypt as TPM_RC_FAILURE.
_TAMPER_RCS = ("INTEGRITY", "SIZE", "VALUE", "ECC_POINT", "KEY", "SCHEME", "FAILURE")


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(envelope, *path):
    node = envelope
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise EnvelopeFormatError("envelope lacks %s" % ".".join(path))
        node = node[key]
    try:
        return base64.b64decode(node, validate=True)
    except (TypeError, ValueError):
        raise EnvelopeFormatError("envelope field %s is not base64" % ".".join(path))


def well_known_key(digest):
    """(TPM2B_PUBLIC, TPM2B_SENSITIVE) of the well-known key bound to policy ``digest``."""
    unique = hashlib.sha256(WK_SEED + WK_BITS).digest()
    public = TPM2B_PUBLIC(
        publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.KEYEDHASH,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=TPMA_OBJECT.ADMINWITHPOLICY | TPMA_OBJECT.NODA,
            authPolicy=digest,
            parameters=TPMU_PUBLIC_PARMS(
                keyedHashDetail=TPMS_KEYEDHASH_PARMS(scheme=TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.NULL))
            ),
            unique=TPMU_PUBLIC_ID(keyedHash=unique),
        )
    )
    sensitive = TPM2B_SENSITIVE(
        sensitiveArea=TPMT_SENSITIVE(
            sensitiveType=TPM2_ALG.KEYEDHASH, seedValue=WK_SEED, sensitive=TPMU_SENSITIVE_COMPOSITE(bits=WK_BITS)
        )
    )
    return public, sensitive


@functools.lru_cache(maxsize=256)
def well_known_name(digest):
    """TPM name (nameAlg || H(TPMT_PUBLIC)) of the well-known key bound to ``digest``.

    Cached: building the tpm2-pytss structures was a third of a seal's cost, and a server
    seals many assets under the same few policies."""
    public, _sensitive = well_known_key(digest)
    return b"\x00\x0b" + hashlib.sha256(public.publicArea.marshal()).digest()


# -- TPM2_MakeCredential over cryptography (TPM 2.0 Part 1 §24, Part 2 §12.2.4) ------------------
#
# Written by hand over cryptography (RSA-OAEP, ECDH, AES-CFB) and hashlib/hmac (KDFa, KDFe, the
# outer HMAC) because tpm2-pytss has no fast path: its utils.make_credential() goes through the
# Python type layer (TPM2B_PUBLIC attribute access, _convert_to_python_native, marshalling of
# TPM2B_DIGEST/TPM2B_ID_OBJECT) and cost about half of the attestation server's ``complete``;
# this costs a quarter of it. The EK is parsed once from its marshalled TPM2B_PUBLIC with
# ``struct`` (``credential_target``, cached per EK). Equivalence with the TPM is proven by tests
# where a real swtpm's ActivateCredential accepts the blobs for RSA and ECC EKs
# (tests/unit/plugins/module_utils/test_envelope.py); tpm2-pytss' make_credential remains
# the reference in that test.

_ALG_RSA, _ALG_ECC, _ALG_NULL, _ALG_AES, _ALG_CFB = 0x0001, 0x0023, 0x0010, 0x0006, 0x0043
_HASHES = {0x000B: ("sha256", 32), 0x000C: ("sha384", 48)}
_CURVES = {0x0003: (32, "SECP256R1"), 0x0004: (48, "SECP384R1")}
IDENTITY_LABEL = b"IDENTITY\0"


class CredentialTarget(object):
    """An EK public area parsed for software MakeCredential: the cryptography key, the name
    algorithm and the EK's symmetric key size. Immutable, derived only from the marshalled
    TPM2B_PUBLIC (hence safe to cache by those bytes)."""

    __slots__ = ("kind", "key", "hash_name", "digest_size", "sym_bytes", "ecc_x", "curve_bytes", "marshalled")

    def __init__(self, kind, key, hash_name, digest_size, sym_bytes, ecc_x=None, curve_bytes=0, marshalled=b""):
        self.kind, self.key, self.hash_name, self.digest_size = kind, key, hash_name, digest_size
        self.sym_bytes, self.ecc_x, self.curve_bytes, self.marshalled = sym_bytes, ecc_x, curve_bytes, marshalled


def _parse_credential_target(raw):
    """CredentialTarget of a marshalled TPM2B_PUBLIC (or TPMT_PUBLIC) storage key; ValueError
    when it is not an RSA/ECC key with AES-CFB symmetric parameters and a SHA-256/384 name."""
    view = memoryview(raw)
    pos = 0
    if len(raw) >= 2 and struct.unpack_from(">H", view, 0)[0] == len(raw) - 2:
        pos = 2
    kind, name_alg, _attrs, policy_len = struct.unpack_from(">HHIH", view, pos)
    pos += 10 + policy_len
    sym_alg, = struct.unpack_from(">H", view, pos)
    pos += 2
    if sym_alg != _ALG_AES:
        raise ValueError("the EK's symmetric algorithm is not AES")
    key_bits, mode = struct.unpack_from(">HH", view, pos)
    pos += 4
    if mode != _ALG_CFB or key_bits not in (128, 192, 256) or name_alg not in _HASHES:
        raise ValueError("unsupported EK symmetric mode or name algorithm")
    scheme, = struct.unpack_from(">H", view, pos)
    pos += 2 if scheme == _ALG_NULL else 4
    hash_name, digest_size = _HASHES[name_alg]
    if kind == _ALG_RSA:
        bits, exponent, n_len = struct.unpack_from(">HIH", view, pos)
        pos += 8
        modulus = bytes(view[pos:pos + n_len])
        pos += n_len
        if len(modulus) != n_len or n_len * 8 != bits or pos != len(raw):
            raise ValueError("malformed RSA EK public")
        key = rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(modulus, "big")).public_key()
        return CredentialTarget("rsa", key, hash_name, digest_size, key_bits // 8, marshalled=bytes(raw))
    if kind == _ALG_ECC:
        curve_id, kdf = struct.unpack_from(">HH", view, pos)
        pos += 4 if kdf == _ALG_NULL else 6
        if curve_id not in _CURVES:
            raise ValueError("unsupported EK curve")
        size, curve_name = _CURVES[curve_id]
        x_len, = struct.unpack_from(">H", view, pos)
        x = bytes(view[pos + 2:pos + 2 + x_len])
        pos += 2 + x_len
        y_len, = struct.unpack_from(">H", view, pos)
        y = bytes(view[pos + 2:pos + 2 + y_len])
        pos += 2 + y_len
        if len(x) != x_len or len(y) != y_len or pos != len(raw) or x_len > size or y_len > size:
            raise ValueError("malformed ECC EK public")
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                            getattr(ec, curve_name)()).public_key()
        return CredentialTarget("ecc", key, hash_name, digest_size, key_bits // 8, x.rjust(size, b"\0"), size,
                                marshalled=bytes(raw))
    raise ValueError("the EK is neither RSA nor ECC")


@functools.lru_cache(maxsize=4096)
def credential_target(marshalled):
    """The CredentialTarget of an EK (marshalled TPM2B_PUBLIC bytes). Cached: the target is a
    pure function of those bytes (a re-enrolled host has another EK, hence other bytes), and
    building the public key object costs as much as the MakeCredential itself."""
    try:
        return _parse_credential_target(bytes(marshalled))
    except (ValueError, struct.error) as exc:
        raise EnvelopeFormatError("the EK public cannot be used for MakeCredential: %s" % exc) from None


def _kdfa(hash_name, digest_size, key, label, context, size):
    """TPM KDFa (Part 1 §11.4.10.2, SP 800-108 counter mode HMAC): ``size`` bytes.
    ``label`` without its terminating NUL (added here, as the TPM does)."""
    fixed = label + b"\0" + context + struct.pack(">I", size * 8)
    out = b"".join(hmac.digest(key, struct.pack(">I", i) + fixed, hash_name)
                   for i in range(1, -(-size // digest_size) + 1))
    return out[:size]


def _kdfe(hash_name, digest_size, z, use, party_u, party_v, size):
    """TPM KDFe (Part 1 §11.4.10.3, SP 800-56A concatenation KDF): ``size`` bytes."""
    other = z + use + party_u + party_v
    out = b"".join(hashlib.new(hash_name, struct.pack(">I", i) + other).digest()
                   for i in range(1, -(-size // digest_size) + 1))
    return out[:size]


def _seed_for(target):
    """(seed, encrypted secret): a fresh seed for the EK (Part 1 §24.4 / Annex B.10.3 / C.6.4)."""
    if target.kind == "rsa":
        seed = os.urandom(target.digest_size)
        hash_alg = hashes.SHA256() if target.hash_name == "sha256" else hashes.SHA384()
        return seed, target.key.encrypt(seed, padding.OAEP(padding.MGF1(hash_alg), hash_alg, IDENTITY_LABEL))
    ephemeral = ec.generate_private_key(target.key.curve)
    numbers = ephemeral.public_key().public_numbers()
    ex = numbers.x.to_bytes(target.curve_bytes, "big")
    ey = numbers.y.to_bytes(target.curve_bytes, "big")
    z = ephemeral.exchange(ec.ECDH(), target.key)
    seed = _kdfe(target.hash_name, target.digest_size, z, IDENTITY_LABEL, ex, target.ecc_x, target.digest_size)
    return seed, struct.pack(">H", len(ex)) + ex + struct.pack(">H", len(ey)) + ey


def make_credential_fast(target, credential, object_name):
    """TPM2_MakeCredential(EK ``target`` (CredentialTarget), ``credential``, ``object_name``) in
    software: (credential_blob, encrypted_secret), the contents of TPM2B_ID_OBJECT and
    TPM2B_ENCRYPTED_SECRET. Part 1 §24: symKey = KDFa(nameAlg, seed, "STORAGE", name, "", symBits),
    encIdentity = AES-CFB(symKey, IV 0, TPM2B(credential)), HMACkey = KDFa(nameAlg, seed,
    "INTEGRITY", "", "", digest bits), outerHMAC = HMAC(HMACkey, encIdentity || name)."""
    credential = bytes(credential)
    object_name = bytes(object_name)
    if len(credential) > target.digest_size:
        raise EnvelopeFormatError("a credential is at most %d bytes" % target.digest_size)
    seed, secret = _seed_for(target)
    sym_key = _kdfa(target.hash_name, target.digest_size, seed, b"STORAGE", object_name, target.sym_bytes)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(struct.pack(">H", len(credential)) + credential) + encryptor.finalize()
    hmac_key = _kdfa(target.hash_name, target.digest_size, seed, b"INTEGRITY", b"", target.digest_size)
    outer = hmac.digest(hmac_key, enc_identity + object_name, target.hash_name)
    return struct.pack(">H", len(outer)) + outer + enc_identity, secret


def make_credential_reference(ek_public, credential, object_name):
    """tpm2-pytss' utils.make_credential (the reference implementation; tests compare with it)."""
    require_tpm2_pytss()
    with warnings.catch_warnings():
        # tpm2-pytss imports AES-CFB from its deprecated cryptography location.
        warnings.simplefilter("ignore")
        blob, secret = make_credential(ek_public, credential, TPM2B_NAME(bytes(object_name)))
    return bytes(blob), bytes(secret)


def make_credential_to_ek(ek_public, credential, object_name):
    """TPM2_MakeCredential in software: wrap ``credential`` (bytes, at most 64) to the EK
    ``ek_public`` (TPM2B_PUBLIC, its marshalled bytes, or a CredentialTarget) for the object named
    ``object_name`` (bytes, nameAlg || digest).

    Only the TPM owning that EK, with an object of that name loaded (and its authorisation
    satisfied), can recover ``credential`` with ActivateCredential. Returns
    (credential_blob, encrypted_secret) as the bytes of TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET
    contents. Used for envelopes (well-known key name) and attestation (AK name)."""
    if isinstance(ek_public, CredentialTarget):
        target = ek_public
    else:
        target = credential_target(bytes(ek_public) if isinstance(ek_public, (bytes, bytearray, memoryview))
                                   else ek_public.marshal())
    return make_credential_fast(target, credential, object_name)


def activate_credential(tpm, object_handle, credential_blob, encrypted_secret, object_session=None):
    """TPM2_ActivateCredential(activateHandle=``object_handle``, keyHandle=EK): the inverse of
    make_credential_to_ek() on the TPM. ``object_session`` authorises the object (default: a
    password session, empty auth); the EK is authorised with PolicySecret(endorsement).
    Returns the credential bytes; TSS2_Exception propagates for the caller to classify."""
    blob = TPM2B_ID_OBJECT(credential=bytes(credential_blob))
    secret = TPM2B_ENCRYPTED_SECRET(secret=bytes(encrypted_secret))
    ek = tpm.ek()
    with tpm.ek_session() as ek_session:
        return bytes(tpm.ectx.activate_credential(
            object_handle, ek, blob, secret,
            session1=ESYS_TR.PASSWORD if object_session is None else object_session, session2=ek_session,
        ))


def _header_aad(envelope):
    """The AEAD associated data: canonical JSON of everything but the ciphertext."""
    header = {k: v for k, v in envelope.items() if k != "ciphertext"}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _fingerprint(data, salt):
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(data)


def seal(ek_public, plaintext, policy=None, fingerprint=True):
    """Seal ``plaintext`` (bytes) to the TPM owning ``ek_public``; no TPM is needed here.

    ``ek_public``: anything load_ek_public() accepts. ``policy``: a policy description
    (see tpm_policy). ``fingerprint``: embed a salted scrypt digest of the plaintext so a
    later seal or unseal can tell, without the TPM, whether content changed.
    Returns the envelope as a dict (serialise with dumps()).
    """
    require_tpm2_pytss()
    if isinstance(plaintext, str):
        plaintext = plaintext.encode("utf-8")
    if len(plaintext) > MAX_PAYLOAD:
        raise EnvelopeFormatError("payload of %d bytes exceeds the %d-byte limit" % (len(plaintext), MAX_PAYLOAD))
    public = load_ek_public(ek_public)
    policy = tpm_policy.normalize_policy(policy)
    digest = tpm_policy.policy_digest(policy)
    key = os.urandom(32)
    blob, secret = make_credential_to_ek(public, key, well_known_name(digest))
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "ekpubhash": ekpubhash(public),
        "policy": policy,
        "policy_digest": digest.hex(),
        "kem": {
            "alg": KEM_ALG,
            "credential_blob": _b64(blob),
            "encrypted_secret": _b64(secret),
        },
        "dem": {"alg": DEM_ALG, "nonce": _b64(os.urandom(12))},
    }
    if fingerprint:
        salt = os.urandom(16)
        envelope["fingerprint"] = {
            "alg": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": _b64(salt),
            "digest": _b64(_fingerprint(plaintext, salt)),
        }
    nonce = base64.b64decode(envelope["dem"]["nonce"])
    envelope["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, plaintext, _header_aad(envelope)))
    return envelope


def dumps(envelope):
    """Serialise an envelope (UTF-8 JSON bytes, keys sorted, trailing newline)."""
    return (json.dumps(envelope, sort_keys=True, indent=1) + "\n").encode("utf-8")


def loads(data):
    """Parse and validate an envelope (bytes, str or dict). Raises EnvelopeFormatError/VersionError."""
    if isinstance(data, dict):
        envelope = data
    else:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise EnvelopeFormatError("envelope is not UTF-8 JSON")
        try:
            envelope = json.loads(data)
        except ValueError as exc:
            raise EnvelopeFormatError("envelope is not valid JSON: %s" % exc)
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise EnvelopeFormatError("not an hcp.core envelope (format must be %r)" % FORMAT)
    version = envelope.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise EnvelopeVersionError(
            "unsupported envelope version %r: this hcp.core reads version(s) %s"
            % (version, ", ".join(map(str, SUPPORTED_VERSIONS)))
        )
    hash_ = envelope.get("ekpubhash")
    if not isinstance(hash_, str) or len(hash_) != 64 or any(c not in "0123456789abcdef" for c in hash_):
        raise EnvelopeFormatError("envelope ekpubhash must be 64 lowercase hex characters")
    if envelope.get("kem", {}).get("alg") != KEM_ALG or envelope.get("dem", {}).get("alg") != DEM_ALG:
        raise EnvelopeFormatError("envelope algorithms must be %s / %s" % (KEM_ALG, DEM_ALG))
    policy = tpm_policy.normalize_policy(envelope.get("policy"))
    if tpm_policy.policy_digest(policy).hex() != envelope.get("policy_digest"):
        raise EnvelopeIntegrityError("envelope policy_digest does not match its policy description")
    for path in (("kem", "credential_blob"), ("kem", "encrypted_secret"), ("dem", "nonce"), ("ciphertext",)):
        _unb64(envelope, *path)
    return envelope


def fingerprint_matches(envelope, data):
    """True/False whether ``data`` is the sealed plaintext; None if the envelope has no fingerprint."""
    envelope = loads(envelope)
    fp = envelope.get("fingerprint")
    if not fp:
        return None
    if (fp.get("alg"), fp.get("n"), fp.get("r"), fp.get("p")) != ("scrypt", SCRYPT_N, SCRYPT_R, SCRYPT_P):
        raise EnvelopeFormatError("unsupported fingerprint parameters")
    if isinstance(data, str):
        data = data.encode("utf-8")
    digest = _fingerprint(data, _unb64(envelope, "fingerprint", "salt"))
    return hmac.compare_digest(digest, _unb64(envelope, "fingerprint", "digest"))


def describe(envelope):
    """Non-secret metadata of an envelope, safe to log and return."""
    envelope = loads(envelope)
    return {
        "version": envelope["version"],
        "ekpubhash": envelope["ekpubhash"],
        "policy": envelope["policy"],
        "policy_digest": envelope["policy_digest"],
        "has_fingerprint": bool(envelope.get("fingerprint")),
    }


def unseal(tpm, envelope):
    """Unseal an envelope on the TPM it was sealed to; returns the plaintext bytes.

    Raises WrongTpmError (another EK), PolicyNotSatisfiedError (PCR state),
    EnvelopeIntegrityError (tampered), EnvelopeFormatError/VersionError (malformed).
    """
    envelope = loads(envelope)
    local = tpm.ekpubhash()
    if not hmac.compare_digest(local, envelope["ekpubhash"]):
        raise WrongTpmError(
            "envelope was sealed to EK %s… but this TPM's EK is %s…" % (envelope["ekpubhash"][:16], local[:16])
        )
    policy = envelope["policy"]
    bank, wanted = tpm_policy.policy_pcrs(policy)
    if wanted:  # a clear error naming the PCRs; the TPM enforces the policy regardless
        tpm_policy.check_pcrs(policy, tpm.read_pcrs(bank, sorted(wanted)))
    digest = bytes.fromhex(envelope["policy_digest"])
    wk_public, wk_sensitive = well_known_key(digest)
    blob = _unb64(envelope, "kem", "credential_blob")
    secret = _unb64(envelope, "kem", "encrypted_secret")
    tpm.ek()
    wk = session = None
    try:
        wk = tpm.ectx.load_external(wk_public, wk_sensitive, ESYS_TR.NULL)
        session = tpm.policy_session()
        tpm_policy.apply_policy(tpm, session, policy)
        key = activate_credential(tpm, wk, blob, secret, object_session=session)
    except TSS2_Exception as exc:
        if rc_is(exc, TPM2_RC.POLICY_FAIL):
            raise PolicyNotSatisfiedError("the TPM refused the unseal policy: %s" % exc)
        if any(rc_is(exc, getattr(TPM2_RC, rc)) for rc in _TAMPER_RCS):
            raise EnvelopeIntegrityError(
                "the TPM could not recover the envelope key (credential tampered with, or not made for this EK): %s"
                % exc
            )
        raise TpmError("TPM failed to unseal: %s (rc 0x%x)" % (exc, tss_rc(exc)))
    finally:
        tpm.flush(session)
        tpm.flush(wk)
    try:
        nonce = _unb64(envelope, "dem", "nonce")
        return AESGCM(key).decrypt(nonce, _unb64(envelope, "ciphertext"), _header_aad(envelope))
    except InvalidTag:
        raise EnvelopeIntegrityError("envelope failed authentication (AES-GCM tag mismatch): it was tampered with")


def unseal_once(tpm, env, extend_pcr=True):
    """(plaintext, pcr_extended): unseal the envelope ``env`` (dict) with ``tpm``; a one-time
    envelope then closes its window at once (PCR 11, ``tpm_policy.close_one_time``) unless
    ``extend_pcr`` is false."""
    plaintext = unseal(tpm, env)
    if env["policy"]["type"] == "one_time" and extend_pcr:
        tpm_policy.close_one_time(tpm)
        return plaintext, True
    return plaintext, False
