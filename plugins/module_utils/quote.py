# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM quotes: an ephemeral restricted ECC AK under the EK signs a nonce and PCR digest.

``quote()`` needs the TPM; ``verify_quote()`` needs none: it checks, in Python with
cryptography, the AK's attributes, the TPMS_ATTEST magic/type, the nonce, the PCR
selection and digest (both taken from the *signed* structure, never from the unsigned
PCR list), and the ECDSA signature. Bundle layout: docs/quote-format.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from ansible_collections.hcp.core.plugins.module_utils.errors import QuoteVerificationError, TpmError
from ansible_collections.hcp.core.plugins.module_utils.tpm import (
    parse_pcr_indices,
    pcr_selection_string,
    require_tpm2_pytss,
    tss_rc,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm_policy import TPM_ALG_IDS

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
except ImportError:  # pragma: no cover
    ec = None

try:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPML_PCR_SELECTION,
        TPMS_ATTEST,
        TPMS_ECC_PARMS,
        TPMT_ECC_SCHEME,
        TPMT_KDF_SCHEME,
        TPMT_PUBLIC,
        TPMT_SIGNATURE,
        TPMT_SIG_SCHEME,
        TPMT_SYM_DEF_OBJECT,
        TPMU_PUBLIC_PARMS,
    )
except ImportError:  # pragma: no cover
    TSS2_Exception = None

QUOTE_FORMAT = "hcp.core.quote"
QUOTE_VERSION = 1
# The AK must be a TPM-resident restricted signing key, so a TPMS_ATTEST it signed was
# produced by the TPM itself (an unrestricted key could sign forged attestation data).
AK_REQUIRED_ATTRS = ("FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN", "RESTRICTED", "SIGN_ENCRYPT")
AK_ATTRS = AK_REQUIRED_ATTRS + ("USERWITHAUTH", "NODA", "STCLEAR")
MIN_NONCE, MAX_NONCE = 8, 64


def ak_template():
    """TPM2B_PUBLIC of the ephemeral AK: ECC P-256, ECDSA-SHA256, restricted signing."""
    attrs = 0
    for name in AK_ATTRS:
        attrs |= getattr(TPMA_OBJECT, name)
    return TPM2B_PUBLIC(
        publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.ECC,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=attrs,
            parameters=TPMU_PUBLIC_PARMS(
                eccDetail=TPMS_ECC_PARMS(
                    symmetric=TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                    scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.ECDSA),
                    curveID=TPM2_ECC.NIST_P256,
                    kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
                )
            ),
        )
    )


def _set_scheme_hash(template):
    template.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    return template


def quote(tpm, nonce, pcrs=None, bank="sha256"):
    """Quote ``pcrs`` (default 0-23) over ``nonce`` with a fresh AK under the EK.

    Returns the bundle dict (all binary fields base64). The AK is flushed afterwards.
    """
    require_tpm2_pytss()
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise QuoteVerificationError("nonce must be %d-%d bytes" % (MIN_NONCE, MAX_NONCE))
    indices = parse_pcr_indices(range(24) if pcrs is None else pcrs)
    ek = tpm.ek()
    ak = None
    try:
        with tpm.ek_session() as session:
            priv, pub, _cd, _ch, _tk = tpm.ectx.create(
                ek, TPM2B_SENSITIVE_CREATE(), _set_scheme_hash(ak_template()), session1=session
            )
        with tpm.ek_session() as session:
            ak = tpm.ectx.load(ek, priv, pub, session1=session)
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        attest, signature = tpm.ectx.quote(
            ak, TPML_PCR_SELECTION.parse(pcr_selection_string(bank, indices)), nonce, scheme
        )
    except TSS2_Exception as exc:
        raise TpmError("TPM failed to quote: %s (rc 0x%x)" % (exc, tss_rc(exc)))
    finally:
        tpm.flush(ak)
    values = tpm.read_pcrs(bank, indices)
    return {
        "format": QUOTE_FORMAT,
        "version": QUOTE_VERSION,
        "ak_public": base64.b64encode(pub.marshal()).decode("ascii"),
        "attest": base64.b64encode(bytes(attest)).decode("ascii"),
        "signature": base64.b64encode(signature.marshal()).decode("ascii"),
        "pcrs": {bank: {str(i): values[i].hex() for i in indices}},
    }


def _b64field(bundle, key):
    try:
        return base64.b64decode(bundle[key], validate=True)
    except (KeyError, TypeError, ValueError):
        raise QuoteVerificationError("quote bundle field %r is missing or not base64" % key)


def _unmarshal(cls, data, what):
    try:
        obj, used = cls.unmarshal(data)
    except Exception as exc:  # pylint: disable=broad-except  # TSS unmarshal raises several types
        raise QuoteVerificationError("malformed %s: %s" % (what, exc))
    if used != len(data):
        raise QuoteVerificationError("malformed %s: %d trailing bytes" % (what, len(data) - used))
    return obj


def check_ak_public(ak_public):
    """Raise QuoteVerificationError unless the AK is a restricted ECDSA P-256 signing key."""
    area = ak_public.publicArea
    missing = [n.lower() for n in AK_REQUIRED_ATTRS if not area.objectAttributes & getattr(TPMA_OBJECT, n)]
    if missing:
        raise QuoteVerificationError("AK lacks required attributes: %s" % ", ".join(missing))
    if area.objectAttributes & TPMA_OBJECT.DECRYPT:
        raise QuoteVerificationError("AK must not be a decryption key")
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise QuoteVerificationError("AK must be an ECC NIST P-256 key")


def ak_public_key(ak_public):
    area = ak_public.publicArea
    x = int.from_bytes(bytes(area.unique.ecc.x), "big")
    y = int.from_bytes(bytes(area.unique.ecc.y), "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise QuoteVerificationError("AK public point is invalid: %s" % exc)


def _selection_from_attest(selection):
    out = []
    for sel in selection.pcrSelections[: selection.count]:
        bank = next((b for b, alg in TPM_ALG_IDS.items() if alg == int(sel.hash)), None)
        if bank is None:
            raise QuoteVerificationError("quote selects an unsupported PCR bank 0x%x" % int(sel.hash))
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        for byte_idx, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (1 << bit):
                    out.append((bank, byte_idx * 8 + bit))
    return out


def verify_quote(bundle, nonce, ak_public=None):
    """Verify a quote bundle against the expected ``nonce``.

    ``ak_public``: an expected AK TPM2B_PUBLIC (bytes); when given the bundle's must be identical.
    Returns {"ak_name": hex, "pcrs": {bank: {index: hex}}} with the PCR values proven by the quote.
    """
    require_tpm2_pytss()
    if not isinstance(bundle, dict) or bundle.get("format") != QUOTE_FORMAT or bundle.get("version") != QUOTE_VERSION:
        raise QuoteVerificationError("not an hcp.core quote bundle of version %d" % QUOTE_VERSION)
    ak_raw = _b64field(bundle, "ak_public")
    if ak_public is not None and not hmac.compare_digest(ak_raw, bytes(ak_public)):
        raise QuoteVerificationError("quote was signed by an unexpected AK")
    ak = _unmarshal(TPM2B_PUBLIC, ak_raw, "AK public")
    check_ak_public(ak)
    attest_raw = _b64field(bundle, "attest")
    attest = _unmarshal(TPMS_ATTEST, attest_raw, "TPMS_ATTEST")
    signature = _unmarshal(TPMT_SIGNATURE, _b64field(bundle, "signature"), "signature")

    if signature.sigAlg != TPM2_ALG.ECDSA or signature.signature.ecdsa.hash != TPM2_ALG.SHA256:
        raise QuoteVerificationError("quote signature must be ECDSA with SHA-256")
    der = encode_dss_signature(
        int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big"),
        int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big"),
    )
    try:
        ak_public_key(ak).verify(der, attest_raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise QuoteVerificationError("quote signature does not verify with the AK")

    if attest.magic != TPM2_GENERATED.VALUE:
        raise QuoteVerificationError("attestation data was not generated by a TPM (bad magic)")
    if attest.type != TPM2_ST.ATTEST_QUOTE:
        raise QuoteVerificationError("attestation data is not a quote")
    if not hmac.compare_digest(bytes(attest.extraData), bytes(nonce)):
        raise QuoteVerificationError("quote nonce does not match (stale or replayed quote)")

    quoted = _selection_from_attest(attest.attested.quote.pcrSelect)
    supplied = bundle.get("pcrs") or {}
    concat = b""
    proven = {}
    for bank, idx in quoted:
        try:
            value = bytes.fromhex(supplied[bank][str(idx)])
        except (KeyError, TypeError, ValueError):
            raise QuoteVerificationError("quote covers %s PCR %d but its value is missing or not hex" % (bank, idx))
        if len(value) != hashlib.new(bank).digest_size:
            raise QuoteVerificationError("%s PCR %d value has the wrong length" % (bank, idx))
        concat += value
        proven.setdefault(bank, {})[str(idx)] = value.hex()
    if not quoted:
        raise QuoteVerificationError("quote covers no PCRs")
    # the TPM hashes the PCR values with the signing scheme's hash (checked above: SHA-256)
    digest = hashlib.sha256(concat).digest()
    if not hmac.compare_digest(digest, bytes(attest.attested.quote.pcrDigest)):
        raise QuoteVerificationError("PCR values do not match the quoted PCR digest")
    return {"ak_name": bytes(ak.get_name()).hex(), "pcrs": proven}

