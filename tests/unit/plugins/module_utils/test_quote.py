# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import base64
import copy
import os

import pytest

from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.errors import QuoteVerificationError


@pytest.fixture(scope="module")
def quoted(swtpm):
    nonce = os.urandom(16)
    with swtpm.open() as tpm:
        bundle = quote_mod.quote(tpm, nonce, [0, 7, 11, 16])
        current = tpm.read_pcrs("sha256", [0, 7, 11, 16])
    return nonce, bundle, current


def test_quote_verifies(quoted):
    nonce, bundle, current = quoted
    result = quote_mod.verify_quote(bundle, nonce)
    assert result["pcrs"]["sha256"] == {str(k): v.hex() for k, v in current.items()}
    assert len(result["ak_name"]) == 68


def test_wrong_nonce_is_rejected(quoted):
    _nonce, bundle, _current = quoted
    with pytest.raises(QuoteVerificationError, match="nonce does not match"):
        quote_mod.verify_quote(bundle, os.urandom(16))


def test_forged_pcr_value_is_rejected(quoted):
    nonce, bundle, _current = quoted
    forged = copy.deepcopy(bundle)
    forged["pcrs"]["sha256"]["7"] = "11" * 32
    with pytest.raises(QuoteVerificationError, match="do not match the quoted PCR digest"):
        quote_mod.verify_quote(forged, nonce)
    del forged["pcrs"]["sha256"]["7"]
    with pytest.raises(QuoteVerificationError, match="PCR 7 but its value is missing"):
        quote_mod.verify_quote(forged, nonce)


def test_bad_signature_is_rejected(quoted):
    nonce, bundle, _current = quoted
    forged = copy.deepcopy(bundle)
    raw = bytearray(base64.b64decode(forged["attest"]))
    raw[-1] ^= 1
    forged["attest"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(QuoteVerificationError, match="signature does not verify"):
        quote_mod.verify_quote(forged, nonce)


def test_unrestricted_ak_is_rejected(quoted):
    """A key without 'restricted' could sign a forged TPMS_ATTEST: never trust it."""
    nonce, bundle, _current = quoted
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    ak, _used = TPM2B_PUBLIC.unmarshal(base64.b64decode(bundle["ak_public"]))
    ak.publicArea.objectAttributes &= ~TPMA_OBJECT.RESTRICTED
    forged = dict(bundle, ak_public=base64.b64encode(ak.marshal()).decode())
    with pytest.raises(QuoteVerificationError, match="AK lacks required attributes: restricted"):
        quote_mod.verify_quote(forged, nonce)


def test_unexpected_ak_and_garbage(quoted):
    nonce, bundle, _current = quoted
    with pytest.raises(QuoteVerificationError, match="unexpected AK"):
        quote_mod.verify_quote(bundle, nonce, ak_public=b"other")
    with pytest.raises(QuoteVerificationError, match="not an hcp.core quote bundle"):
        quote_mod.verify_quote({"format": "x"}, nonce)
    # unsigned garbage never reaches the parser: the signature is checked first
    with pytest.raises(QuoteVerificationError, match="signature does not verify"):
        quote_mod.verify_quote(dict(bundle, attest=base64.b64encode(b"\xff\x54").decode()), nonce)
    truncated = base64.b64encode(base64.b64decode(bundle["ak_public"])[:-5]).decode()
    with pytest.raises(QuoteVerificationError, match="malformed AK public"):
        quote_mod.verify_quote(dict(bundle, ak_public=truncated), nonce)
    with pytest.raises(QuoteVerificationError, match="not base64"):
        quote_mod.verify_quote(dict(bundle, signature="***"), nonce)


def test_rsa_or_storage_key_is_not_an_ak(swtpm, quoted):
    nonce, bundle, _current = quoted
    with swtpm.open() as tpm:
        ek = tpm.ek_public()  # restricted decrypt RSA key
    with pytest.raises(QuoteVerificationError, match="AK must be an ECC"):
        quote_mod.verify_quote(dict(bundle, ak_public=base64.b64encode(ek.marshal()).decode()), nonce)


def test_non_canonical_pcr_values_get_the_reference_walk(quoted):
    """The one-pass check of canonical PCR values (lowercase hex) and the reference walk agree:
    upper-case values are accepted and proven in lowercase, values of the wrong length, a value
    moved between PCRs (same concatenation, other split) or a non-string are refused."""
    nonce, bundle, current = quoted
    upper = copy.deepcopy(bundle)
    upper["pcrs"]["sha256"] = dict((k, v.upper()) for k, v in upper["pcrs"]["sha256"].items())
    assert quote_mod.verify_quote(upper, nonce)["pcrs"]["sha256"] == {str(k): v.hex() for k, v in current.items()}
    shifted = copy.deepcopy(bundle)
    values = shifted["pcrs"]["sha256"]
    values["0"], values["7"] = values["0"] + values["7"][:2], values["7"][2:]
    with pytest.raises(QuoteVerificationError, match="wrong length"):
        quote_mod.verify_quote(shifted, nonce)
    for bad in (7, None, ["00"], "zz" * 32):
        forged = copy.deepcopy(bundle)
        forged["pcrs"]["sha256"]["11"] = bad
        with pytest.raises(QuoteVerificationError, match="PCR 11 but its value is missing or not hex"):
            quote_mod.verify_quote(forged, nonce)
    forged = copy.deepcopy(bundle)
    forged["pcrs"] = {"sha256": [1, 2]}
    with pytest.raises(QuoteVerificationError, match="missing or not hex"):
        quote_mod.verify_quote(forged, nonce)


def test_truncated_or_padded_structures_are_refused(quoted):
    """Every prefix of the signed TPMS_ATTEST and of the signature, and either with a byte added,
    is a QuoteVerificationError from the parsers (never another exception)."""
    _nonce, bundle, _current = quoted
    attest_raw = base64.b64decode(bundle["attest"])
    signature = base64.b64decode(bundle["signature"])
    assert quote_mod.parse_attest(attest_raw)[1]
    for cut in list(range(len(attest_raw))) + [-1]:
        data = attest_raw[:cut] if cut >= 0 else attest_raw + b"\0"
        with pytest.raises(QuoteVerificationError):
            quote_mod.parse_attest(data)
    for cut in list(range(len(signature))) + [-1]:
        data = signature[:cut] if cut >= 0 else signature + b"\0"
        with pytest.raises(QuoteVerificationError):
            quote_mod.parse_signature(data)
