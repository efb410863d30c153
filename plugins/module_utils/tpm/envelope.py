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


def make_credential_to_ek(ek_public, credential, object_name):
    """TPM2_MakeCredential in software: wrap ``credential`` (bytes, at most 64) to the EK
    ``ek_public`` (TPM2B_PUBLIC) for the object named ``object_name`` (bytes, nameAlg || digest).

    Only the TPM owning that EK, with an object of that name loaded (and its authorisation
    satisfied), can recover ``credential`` with ActivateCredential. Returns
    (credential_blob, encrypted_secret) as the bytes of TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET
    contents. Used for envelopes (well-known key name) and attestation (AK name)."""
    require_tpm2_pytss()
    with warnings.catch_warnings():
        # tpm2-pytss imports AES-CFB from its deprecated cryptography location.
        warnings.simplefilter("ignore")
        blob, secret = make_credential(ek_public, credential, TPM2B_NAME(bytes(object_name)))
    return bytes(blob), bytes(secret)


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
