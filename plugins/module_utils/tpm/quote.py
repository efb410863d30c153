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
import collections
import contextlib
import functools
import hashlib
import hmac
import operator
import struct
import threading

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


def create_ak(tpm):
    """(TPM2B_PRIVATE, TPM2B_PUBLIC) of a new AK (ak_template()) under the EK: the private part
    is wrapped by the TPM (only this TPM, under this EK, can load it)."""
    require_tpm2_pytss()
    try:
        with tpm.ek_session() as session:
            priv, pub, _cd, _ch, _tk = tpm.ectx.create(tpm.ek(), TPM2B_SENSITIVE_CREATE(), ak_template(), session1=session)
    except TSS2_Exception as exc:
        raise TpmError("TPM failed to create the attestation key: %s (rc 0x%x)" % (exc, tss_rc(exc)))
    return priv, pub


def load_ak(tpm, priv, pub):
    """ESYS_TR of the AK (``priv``, ``pub`` from create_ak()) loaded under the EK; TSS2_Exception
    propagates (e.g. an stClear AK after a TPM reset: the caller creates a new one)."""
    require_tpm2_pytss()
    with tpm.ek_session() as session:
        return tpm.ectx.load(tpm.ek(), priv, pub, session1=session)


@contextlib.contextmanager
def ephemeral_ak(tpm):
    """Create and load a fresh AK (ak_template()) under the EK; yields (handle, TPM2B_PUBLIC).

    The AK stays loaded inside the block (the attestation client needs it for
    ActivateCredential after the server's answer) and is flushed on exit."""
    require_tpm2_pytss()
    tpm.ek()
    ak = None
    try:
        priv, pub = create_ak(tpm)
        try:
            ak = load_ak(tpm, priv, pub)
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
_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256()) if ec is not None else None


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


_U16, _U32, _MAGIC_TYPE = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">IH")
_CLOCK_FIRMWARE = 8 + 4 + 4 + 1 + 8  # TPMS_CLOCK_INFO (clock, resetCount, restartCount, safe) + firmwareVersion


_IDX = tuple(str(i) for i in range(256 * 8))


@functools.lru_cache(maxsize=256)
def _bitmap_indices(bitmap):
    """pcr_bitmap_indices(bitmap) as a tuple, cached (a fleet quotes a handful of selections)."""
    return tuple(pcr_bitmap_indices(bitmap))


def parse_attest(raw):
    """(extraData, [(bank, index)], pcrDigest) of a TPMS_ATTEST quote (see _parse_attest)."""
    extra, groups, digest = _parse_attest(raw)
    return extra, [(bank, idx) for bank, indices in groups for idx in indices], digest


def _parse_attest(raw):
    """(extraData, [(bank, (index, ...))] per TPMS_PCR_SELECTION, pcrDigest) of a TPMS_ATTEST quote.

    One pass of ``struct.unpack_from`` over a memoryview (the attestation server's hot path):
    magic, type, qualifiedSigner, extraData, clockInfo (``safe`` must be a TPMI_YES_NO),
    firmwareVersion, the PCR selection, pcrDigest, no trailing bytes."""
    view = memoryview(raw)
    end = len(raw)
    try:
        magic, kind = _MAGIC_TYPE.unpack_from(view, 0)
        if magic != TPM_GENERATED_VALUE:
            raise QuoteVerificationError("attestation data was not generated by a TPM (bad magic)")
        if kind != TPM_ST_ATTEST_QUOTE:
            raise QuoteVerificationError("attestation data is not a quote")
        pos = 8 + _U16.unpack_from(view, 6)[0]  # qualifiedSigner
        size = _U16.unpack_from(view, pos)[0]
        extra = bytes(view[pos + 2:pos + 2 + size])
        pos += 2 + size
        if pos + _CLOCK_FIRMWARE > end:
            raise IndexError("truncated")
        if view[pos + 16] > 1:  # clockInfo.safe
            raise QuoteVerificationError("malformed TPMS_ATTEST: clockInfo.safe is not a boolean")
        pos += _CLOCK_FIRMWARE
        count = _U32.unpack_from(view, pos)[0]
        pos += 4
        selected = []
        for _bank in range(count):
            alg = _U16.unpack_from(view, pos)[0]
            size = view[pos + 2]
            bitmap = bytes(view[pos + 3:pos + 3 + size])
            pos += 3 + size
            bank = BANK_BY_ALG.get(alg)
            if bank is None:
                raise QuoteVerificationError("quote selects an unsupported PCR bank 0x%x" % alg)
            if len(bitmap) != size:
                raise IndexError("truncated")
            selected.append((bank, _bitmap_indices(bitmap)))
        size = _U16.unpack_from(view, pos)[0]
        digest = bytes(view[pos + 2:pos + 2 + size])
        pos += 2 + size
    except (struct.error, IndexError):
        raise QuoteVerificationError("malformed TPMS_ATTEST: truncated") from None
    if pos > end or len(digest) != size:
        raise QuoteVerificationError("malformed TPMS_ATTEST: truncated")
    if pos != end:
        raise QuoteVerificationError("malformed TPMS_ATTEST: %d trailing bytes" % (end - pos))
    return extra, selected, digest


def attest_counters(raw):
    """(resetCount, restartCount) of a TPMS_ATTEST's clockInfo: they change on every TPM Reset and
    Restart (Startup(CLEAR)), which the client's AK cache uses as an invalidation signal."""
    view = memoryview(raw)
    try:
        pos = 8 + _U16.unpack_from(view, 6)[0]
        pos += 2 + _U16.unpack_from(view, pos)[0]
        return struct.unpack_from(">II", view, pos + 8)
    except struct.error:
        raise QuoteVerificationError("malformed TPMS_ATTEST: truncated") from None


_SIG_HEAD = struct.Struct(">HH")


def parse_signature(raw):
    """DER ECDSA signature of a TPMT_SIGNATURE (ECDSA with SHA-256 only)."""
    if len(raw) < 4:
        raise QuoteVerificationError("malformed signature: truncated")
    if _SIG_HEAD.unpack_from(raw, 0) != (TPM_ALG_ECDSA, TPM_ALG_SHA256):
        raise QuoteVerificationError("quote signature must be ECDSA with SHA-256")
    try:
        r_len, = _U16.unpack_from(raw, 4)
        r = raw[6:6 + r_len]
        s_len, = _U16.unpack_from(raw, 6 + r_len)
        s = raw[8 + r_len:8 + r_len + s_len]
    except struct.error:
        raise QuoteVerificationError("malformed signature: truncated") from None
    if len(s) != s_len or len(r) != r_len:
        raise QuoteVerificationError("malformed signature: truncated")
    if 8 + r_len + s_len != len(raw):
        raise QuoteVerificationError("malformed signature: %d trailing bytes" % (len(raw) - 8 - r_len - s_len))
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


class AkCache(object):
    """Parsed AK public keys (name, cryptography key) by their exact TPM2B_PUBLIC bytes.

    Sound by construction: the entry is a pure function of its key (the bytes), so a cached
    AK is exactly what parse_ak_public() would return, every attribute check included; a host
    with a new AK (new boot, re-enrolled TPM) presents other bytes and is parsed afresh.
    Bounded, least recently used out; the attestation server only adds AKs whose attestation
    completed, so a flood of software AKs cannot evict the fleet's."""

    def __init__(self, size=4096):
        self.size = size
        self._data = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._data)

    def get(self, raw):
        with self._lock:
            parsed = self._data.get(raw)
            if parsed is not None:
                self._data.move_to_end(raw)
            return parsed

    def remember(self, raw, parsed):
        if not self.size:
            return
        with self._lock:
            self._data[raw] = parsed
            self._data.move_to_end(raw)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


def _proven(quoted, supplied, pcr_digest):
    """{bank: {index: hex}} of the quoted PCRs, whose values in ``supplied`` must hash (SHA-256,
    in selection order) to the signed ``pcr_digest``: the reference walk, one value at a time."""
    concat = hashlib.sha256()
    proven = {}
    for bank, idx in quoted:
        try:
            text = supplied[bank][str(idx)]
            value = bytes.fromhex(text)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise QuoteVerificationError("quote covers %s PCR %d but its value is missing or not hex" % (bank, idx))
        if len(value) != _DIGEST_SIZES[bank]:
            raise QuoteVerificationError("%s PCR %d value has the wrong length" % (bank, idx))
        concat.update(value)
        proven.setdefault(bank, {})[str(idx)] = value.hex()
    # the TPM hashes the PCR values with the signing scheme's hash (checked above: SHA-256)
    if not hmac.compare_digest(concat.digest(), pcr_digest):
        raise QuoteVerificationError("PCR values do not match the quoted PCR digest")
    return proven


@functools.lru_cache(maxsize=256)
def _getter(indices):
    """(operator.itemgetter of the index keys, the keys): one C call fetches a bank's values."""
    keys = tuple(_IDX[i] for i in indices)
    return (operator.itemgetter(*keys) if len(keys) > 1 else (lambda values: (values[keys[0]],))), keys


def _proven_fast(groups, supplied, pcr_digest):
    """What _proven() returns, in one bytes.fromhex over all values, when every value is
    canonical (lowercase hex of the bank's digest size: what quote_with_ak() writes); None
    otherwise (missing, non-canonical or malformed values: _proven() then decides, with its
    exact refusal). A digest mismatch is refused here as there."""
    texts = []
    proven = {}
    for bank, indices in groups:
        getter, keys = _getter(indices)
        try:
            values = getter(supplied[bank])
        except (KeyError, TypeError, IndexError):
            return None
        try:
            if set(map(len, values)) != {2 * _DIGEST_SIZES[bank]}:
                return None
        except TypeError:  # a value without a length
            return None
        texts.extend(values)
        proven.setdefault(bank, {}).update(zip(keys, values))
    try:
        joined = "".join(texts)  # TypeError unless every value is a string
        raw = bytes.fromhex(joined)  # ValueError unless hex digits (and blanks)
    except (TypeError, ValueError):
        return None
    if raw.hex() != joined:  # not canonical (upper case, blanks): the reference walk decides
        return None
    # the TPM hashes the PCR values with the signing scheme's hash (checked above: SHA-256)
    if not hmac.compare_digest(hashlib.sha256(raw).digest(), pcr_digest):
        raise QuoteVerificationError("PCR values do not match the quoted PCR digest")
    return proven


def verify_quote(bundle, nonce, ak_public=None, ak_cache=None, proof=None):
    """Verify a quote bundle against the expected ``nonce``.

    ``ak_public``: an expected AK TPM2B_PUBLIC (bytes); when given the bundle's must be identical.
    ``ak_cache``: an AkCache to look the parsed AK up in (never added to here); ``proof``: a
    dict that receives ``ak_raw`` and ``ak`` (the parsed AK), for the caller to remember.
    Returns {"ak_name": hex, "pcrs": {bank: {index: hex}}} with the PCR values proven by the quote.
    """
    if ec is None:
        raise QuoteVerificationError("the Python package cryptography is required to verify quotes")
    if not isinstance(bundle, dict) or bundle.get("format") != QUOTE_FORMAT or bundle.get("version") != QUOTE_VERSION:
        raise QuoteVerificationError("not an hcp.core quote bundle of version %d" % QUOTE_VERSION)
    ak_raw = _b64field(bundle, "ak_public")
    if ak_public is not None and not hmac.compare_digest(ak_raw, bytes(ak_public)):
        raise QuoteVerificationError("quote was signed by an unexpected AK")
    parsed = ak_cache.get(ak_raw) if ak_cache is not None else None
    if parsed is None:
        parsed = parse_ak_public(ak_raw)
    if proof is not None:
        proof["ak_raw"], proof["ak"] = ak_raw, parsed
    ak_name, key = parsed
    attest_raw = _b64field(bundle, "attest")
    der = parse_signature(_b64field(bundle, "signature"))
    try:
        key.verify(der, attest_raw, _ECDSA_SHA256)
    except InvalidSignature:
        raise QuoteVerificationError("quote signature does not verify with the AK")
    # only signed data from here on: selection and digest come from TPMS_ATTEST
    extra, groups, pcr_digest = _parse_attest(attest_raw)
    if not hmac.compare_digest(extra, bytes(nonce)):
        raise QuoteVerificationError("quote nonce does not match (stale or replayed quote)")
    if not any(indices for _bank, indices in groups):
        raise QuoteVerificationError("quote covers no PCRs")
    supplied = bundle.get("pcrs") or {}
    proven = _proven_fast([g for g in groups if g[1]], supplied, pcr_digest)
    if proven is None:
        proven = _proven([(bank, idx) for bank, indices in groups for idx in indices], supplied, pcr_digest)
    return {"ak_name": ak_name.hex(), "pcrs": proven}
