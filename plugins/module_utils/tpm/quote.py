# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM quotes: an ephemeral restricted ECC AK under the EK signs a nonce and PCR digest.

``quote()`` needs the TPM; ``verify_quote()`` needs none: it checks, in Python with
cryptography, the AK's attributes, the TPMS_ATTEST magic/type, the nonce, the PCR
selection and digest (both taken from the *signed* structure, never from the unsigned
PCR list), and the ECDSA signature. Bundle layout: docs/quote-format.md.

The verifier parses the three TPM structures it needs with ``struct`` (TPM 2.0 Part 2)
instead of tpm2-pytss: it is the attestation server's hot path, and tpm2-pytss attribute
access cost five times the ECDSA verification itself (benchmarks/tpm_core.py); it also
lets a verifier run without libtss2.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import struct

from ansible_collections.hcp.core.plugins.module_utils.errors import QuoteVerificationError, TpmError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import (
    parse_pcr_indices,
    pcr_bitmap_indices,
    pcr_selection_string,
    require_tpm2_pytss,
    tss_rc,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import TPM_ALG_IDS

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
except ImportError:  # pragma: no cover
    ec = None

try:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPML_PCR_SELECTION,
        TPMS_ECC_PARMS,
        TPMT_ECC_SCHEME,
        TPMT_KDF_SCHEME,
        TPMT_PUBLIC,
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
    template = TPM2B_PUBLIC(
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
    template.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    return template


@contextlib.contextmanager
def ephemeral_ak(tpm):
    """Create and load a fresh AK (ak_template()) under the EK; yields (handle, TPM2B_PUBLIC).

    The AK stays loaded inside the block (the attestation client needs it for
    ActivateCredential after the server's answer) and is flushed on exit."""
    require_tpm2_pytss()
    ek = tpm.ek()
    ak = None
    try:
        try:
            with tpm.ek_session() as session:
                priv, pub, _cd, _ch, _tk = tpm.ectx.create(
                    ek, TPM2B_SENSITIVE_CREATE(), ak_template(), session1=session
                )
            with tpm.ek_session() as session:
                ak = tpm.ectx.load(ek, priv, pub, session1=session)
        except TSS2_Exception as exc:
            raise TpmError("TPM failed to create the attestation key: %s (rc 0x%x)" % (exc, tss_rc(exc)))
        yield ak, pub
    finally:
        tpm.flush(ak)


def quote_with_ak(tpm, ak, ak_public, nonce, pcrs=None, bank="sha256"):
    """Quote ``pcrs`` (default 0-23) over ``nonce`` with the loaded AK ``ak`` (from ephemeral_ak()).

    Returns the bundle dict (all binary fields base64)."""
    require_tpm2_pytss()
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise QuoteVerificationError("nonce must be %d-%d bytes" % (MIN_NONCE, MAX_NONCE))
    indices = parse_pcr_indices(range(24) if pcrs is None else pcrs)
    try:
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        attest, signature = tpm.ectx.quote(
            ak, TPML_PCR_SELECTION.parse(pcr_selection_string(bank, indices)), nonce, scheme
        )
    except TSS2_Exception as exc:
        raise TpmError("TPM failed to quote: %s (rc 0x%x)" % (exc, tss_rc(exc)))
    values = tpm.read_pcrs(bank, indices)
    return {
        "format": QUOTE_FORMAT,
        "version": QUOTE_VERSION,
        "ak_public": base64.b64encode(ak_public.marshal()).decode("ascii"),
        "attest": base64.b64encode(bytes(attest)).decode("ascii"),
        "signature": base64.b64encode(signature.marshal()).decode("ascii"),
        "pcrs": {bank: {str(i): values[i].hex() for i in indices}},
    }


def quote(tpm, nonce, pcrs=None, bank="sha256"):
    """Quote ``pcrs`` (default 0-23) over ``nonce`` with a fresh AK under the EK.

    Returns the bundle dict (all binary fields base64). The AK is flushed afterwards.
    """
    require_tpm2_pytss()
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise QuoteVerificationError("nonce must be %d-%d bytes" % (MIN_NONCE, MAX_NONCE))
    with ephemeral_ak(tpm) as (ak, pub):
        return quote_with_ak(tpm, ak, pub, nonce, pcrs, bank)


TPM_ALG_NULL, TPM_ALG_ECC, TPM_ALG_ECDSA, TPM_ALG_SHA256 = 0x0010, 0x0023, 0x0018, 0x000B
TPM_ECC_NIST_P256 = 0x0003
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
ATTR_BITS = {
    "FIXEDTPM": 1 << 1, "STCLEAR": 1 << 2, "FIXEDPARENT": 1 << 4, "SENSITIVEDATAORIGIN": 1 << 5,
    "USERWITHAUTH": 1 << 6, "NODA": 1 << 10, "RESTRICTED": 1 << 16, "DECRYPT": 1 << 17, "SIGN_ENCRYPT": 1 << 18,
}
BANK_BY_ALG = dict((alg, bank) for bank, alg in TPM_ALG_IDS.items())


class _Reader(object):
    """Big-endian TPM structure reader that fails with QuoteVerificationError."""

    def __init__(self, data, what):
        self.data, self.pos, self.what = data, 0, what

    def take(self, size):
        if self.pos + size > len(self.data):
            raise QuoteVerificationError("malformed %s: truncated" % self.what)
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def tpm2b(self):
        return self.take(self.u16())

    def done(self):
        if self.pos != len(self.data):
            raise QuoteVerificationError("malformed %s: %d trailing bytes" % (self.what, len(self.data) - self.pos))


def _b64field(bundle, key):
    try:
        return base64.b64decode(bundle[key], validate=True)
    except (KeyError, TypeError, ValueError):
        raise QuoteVerificationError("quote bundle field %r is missing or not base64" % key)


def parse_ak_public(raw):
    """Check a TPM2B_PUBLIC AK and return (name bytes, cryptography public key).

    The AK must be a TPM-resident restricted ECDSA P-256 signing key.
    """
    outer = _Reader(raw, "AK public")
    area = outer.tpm2b()
    outer.done()
    rd = _Reader(area, "AK public")
    kind, name_alg, attrs = rd.u16(), rd.u16(), rd.u32()
    rd.tpm2b()  # authPolicy
    if kind != TPM_ALG_ECC:
        raise QuoteVerificationError("AK must be an ECC NIST P-256 key")
    if rd.u16() != TPM_ALG_NULL:  # symmetric: a signing key has none
        raise QuoteVerificationError("AK must not be a storage key")
    scheme = rd.u16()
    scheme_hash = rd.u16() if scheme != TPM_ALG_NULL else None
    curve = rd.u16()
    if rd.u16() != TPM_ALG_NULL:
        rd.u16()  # kdf hash
    x, y = rd.tpm2b(), rd.tpm2b()
    rd.done()
    missing = [n.lower() for n in AK_REQUIRED_ATTRS if not attrs & ATTR_BITS[n]]
    if missing:
        raise QuoteVerificationError("AK lacks required attributes: %s" % ", ".join(missing))
    if attrs & ATTR_BITS["DECRYPT"]:
        raise QuoteVerificationError("AK must not be a decryption key")
    if curve != TPM_ECC_NIST_P256 or scheme not in (TPM_ALG_ECDSA, TPM_ALG_NULL) or scheme_hash not in (
        TPM_ALG_SHA256, None
    ):
        raise QuoteVerificationError("AK must be an ECC NIST P-256 ECDSA-SHA256 key")
    if name_alg != TPM_ALG_SHA256:
        raise QuoteVerificationError("AK name algorithm must be sha256")
    try:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError as exc:
        raise QuoteVerificationError("AK public point is invalid: %s" % exc)
    return struct.pack(">H", name_alg) + hashlib.sha256(area).digest(), key


def parse_attest(raw):
    """(type, extraData, [(bank, index)], pcrDigest) of a TPMS_ATTEST quote."""
    rd = _Reader(raw, "TPMS_ATTEST")
    magic, kind = rd.u32(), rd.u16()
    if magic != TPM_GENERATED_VALUE:
        raise QuoteVerificationError("attestation data was not generated by a TPM (bad magic)")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise QuoteVerificationError("attestation data is not a quote")
    rd.tpm2b()  # qualifiedSigner
    extra = rd.tpm2b()
    rd.take(8 + 4 + 4 + 1 + 8)  # clockInfo, firmwareVersion
    selected = []
    for _bank in range(rd.u32()):
        alg, size = rd.u16(), rd.u8()
        bank = BANK_BY_ALG.get(alg)
        if bank is None:
            raise QuoteVerificationError("quote selects an unsupported PCR bank 0x%x" % alg)
        selected.extend((bank, idx) for idx in pcr_bitmap_indices(rd.take(size)))
    digest = rd.tpm2b()
    rd.done()
    return extra, selected, digest


def parse_signature(raw):
    """DER ECDSA signature of a TPMT_SIGNATURE (ECDSA with SHA-256 only)."""
    rd = _Reader(raw, "signature")
    if rd.u16() != TPM_ALG_ECDSA or rd.u16() != TPM_ALG_SHA256:
        raise QuoteVerificationError("quote signature must be ECDSA with SHA-256")
    r, s = rd.tpm2b(), rd.tpm2b()
    rd.done()
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def verify_quote(bundle, nonce, ak_public=None):
    """Verify a quote bundle against the expected ``nonce``.

    ``ak_public``: an expected AK TPM2B_PUBLIC (bytes); when given the bundle's must be identical.
    Returns {"ak_name": hex, "pcrs": {bank: {index: hex}}} with the PCR values proven by the quote.
    """
    if ec is None:
        raise QuoteVerificationError("the Python package cryptography is required to verify quotes")
    if not isinstance(bundle, dict) or bundle.get("format") != QUOTE_FORMAT or bundle.get("version") != QUOTE_VERSION:
        raise QuoteVerificationError("not an hcp.core quote bundle of version %d" % QUOTE_VERSION)
    ak_raw = _b64field(bundle, "ak_public")
    if ak_public is not None and not hmac.compare_digest(ak_raw, bytes(ak_public)):
        raise QuoteVerificationError("quote was signed by an unexpected AK")
    ak_name, key = parse_ak_public(ak_raw)
    attest_raw = _b64field(bundle, "attest")
    der = parse_signature(_b64field(bundle, "signature"))
    try:
        key.verify(der, attest_raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise QuoteVerificationError("quote signature does not verify with the AK")
    # only signed data from here on: selection and digest come from TPMS_ATTEST
    extra, quoted, pcr_digest = parse_attest(attest_raw)
    if not hmac.compare_digest(extra, bytes(nonce)):
        raise QuoteVerificationError("quote nonce does not match (stale or replayed quote)")
    if not quoted:
        raise QuoteVerificationError("quote covers no PCRs")
    supplied = bundle.get("pcrs") or {}
    concat = []
    proven = {}
    for bank, idx in quoted:
        try:
            value = bytes.fromhex(supplied[bank][str(idx)])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise QuoteVerificationError("quote covers %s PCR %d but its value is missing or not hex" % (bank, idx))
        if len(value) != hashlib.new(bank).digest_size:
            raise QuoteVerificationError("%s PCR %d value has the wrong length" % (bank, idx))
        concat.append(value)
        proven.setdefault(bank, {})[str(idx)] = value.hex()
    # the TPM hashes the PCR values with the signing scheme's hash (checked above: SHA-256)
    if not hmac.compare_digest(hashlib.sha256(b"".join(concat)).digest(), pcr_digest):
        raise QuoteVerificationError("PCR values do not match the quoted PCR digest")
    return {"ak_name": ak_name.hex(), "pcrs": proven}
