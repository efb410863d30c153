# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EK public keys without a TPM: parse the forms operators and TPMs hand around.

Accepted: TPM2B_PUBLIC (raw bytes or base64, as returned by hcp.core.tpm_info in
``ekpub_tpm2b``), TPMT_PUBLIC, a PEM public key, or a PEM/DER EK certificate. PEM keys
and certificates carry only the key, so the TPM2B_PUBLIC is rebuilt from the TCG default
EK template (L-1 for RSA-2048, L-2 for ECC P-256) — the EK every TPM derives by default.

The decision does not depend on the encoding: hcp.core uses exactly the EKs of templates L-1
and L-2 (tpm/device.py derives no other), so a TPM2B_PUBLIC is accepted only when it is what
its key rebuilds through the template. Any other EK (the high-range H-3 ECC P-384 EK that swtpm
also makes, RSA-3072, another symmetric or nameAlg) is refused in every encoding with the same
reason; its ekpubhash would differ from a PEM's, and the TPM-side code could not use it anyway.
"""

from __future__ import annotations

import base64
import binascii

from ansible_collections.hcp.core.plugins.module_utils.errors import InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import (
    check_ek_public,
    ekpubhash,
    require_tpm2_pytss,
)

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
except ImportError:  # pragma: no cover - require_tpm2_pytss() reports the missing stack
    x509 = None

try:
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template
except ImportError:  # pragma: no cover
    TPM2B_PUBLIC = None


def _no_nv(index):
    raise NoSuchIndex(index)


def default_ek_template(kind="rsa"):
    """The TCG default EK template (TPM2B_PUBLIC) with an empty unique field."""
    require_tpm2_pytss()
    _cert, template = create_ek_template("EK-RSA2048" if kind == "rsa" else "EK-ECC256", _no_nv)
    return template


def ek_public_from_key(key):
    """Rebuild the EK TPM2B_PUBLIC of a cryptography public key using the default template."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size != 2048 or key.public_numbers().e != 65537:
            raise InvalidEkError("an RSA EK must be RSA-2048 with exponent 65537 (TCG EK template L-1)")
        public = default_ek_template("rsa")
        public.publicArea.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
        return public
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidEkError("an ECC EK must be on NIST P-256 (TCG EK template L-2)")
        public = default_ek_template("ecc")
        nums = key.public_numbers()
        public.publicArea.unique.ecc.x = nums.x.to_bytes(32, "big")
        public.publicArea.unique.ecc.y = nums.y.to_bytes(32, "big")
        return public
    raise InvalidEkError("unsupported EK key type %s" % type(key).__name__)


def check_default_template(public):
    """``public`` (TPM2B_PUBLIC) unless it differs from what its key rebuilds through the TCG
    default EK template L-1/L-2 (InvalidEkError, the same reason a PEM of the key would get)."""
    check_ek_public(public)
    try:
        key = serialization.load_pem_public_key(public.to_pem())
    except (ValueError, TypeError) as exc:
        raise InvalidEkError("the EK public key cannot be read: %s" % exc)
    rebuilt = ek_public_from_key(key)
    if rebuilt.marshal() != public.marshal():
        raise InvalidEkError("the EK is not of the TCG default EK template L-1 (RSA-2048) or L-2 (ECC P-256)")
    return public


def _from_tpm_bytes(raw):
    if len(raw) >= 2 and int.from_bytes(raw[:2], "big") == len(raw) - 2:
        public, used = TPM2B_PUBLIC.unmarshal(raw)
    else:
        area, used = TPMT_PUBLIC.unmarshal(raw)
        public = TPM2B_PUBLIC(publicArea=area)
    if used != len(raw):
        raise InvalidEkError("EK public has %d trailing bytes" % (len(raw) - used))
    return public


def load_ek_public(data):
    """Parse an EK public key in any accepted form and check its EK attributes.

    Returns a TPM2B_PUBLIC. Raises InvalidEkError with the reason on anything else.
    """
    require_tpm2_pytss()
    if isinstance(data, TPM2B_PUBLIC):
        return check_default_template(data)
    if isinstance(data, str):
        data = data.encode("utf-8")
    data = bytes(data or b"")
    if not data.strip():
        raise InvalidEkError("EK public key is empty")
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN CERTIFICATE"):
            return check_ek_public(ek_public_from_key(x509.load_pem_x509_certificate(stripped).public_key()))
        if stripped.startswith(b"-----BEGIN"):
            return check_ek_public(ek_public_from_key(serialization.load_pem_public_key(stripped)))
        if data[:1] == b"\x30":  # DER certificate or SubjectPublicKeyInfo
            try:
                return check_ek_public(ek_public_from_key(x509.load_der_x509_certificate(data).public_key()))
            except ValueError:
                return check_ek_public(ek_public_from_key(serialization.load_der_public_key(data)))
    except InvalidEkError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidEkError("cannot parse the EK public key/certificate: %s" % exc)
    raw = data
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        pass  # not base64: treat as raw TPM bytes
    try:
        public = _from_tpm_bytes(raw)
    except InvalidEkError:
        raise
    except Exception as exc:  # pylint: disable=broad-except  # the TSS unmarshaller raises several types
        raise InvalidEkError("malformed EK public key (not TPM2B_PUBLIC, TPMT_PUBLIC, PEM or certificate): %s" % exc)
    return check_default_template(public)


def ek_public_pem(public):
    """PEM SubjectPublicKeyInfo of an EK TPM2B_PUBLIC."""
    return public.to_pem().decode("ascii")


def ek_public_b64(public):
    """base64 of the marshalled TPM2B_PUBLIC (the canonical wire form of an EK in hcp.core)."""
    return base64.b64encode(public.marshal()).decode("ascii")


def describe_certificate(der):
    """Subject, issuer, serial and validity of an EK certificate (DER)."""
    cert = x509.load_der_x509_certificate(der)
    return {
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": "%x" % cert.serial_number,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


__all__ = [
    "check_default_template",
    "default_ek_template",
    "describe_certificate",
    "ek_public_b64",
    "ek_public_from_key",
    "ek_public_pem",
    "ekpubhash",
    "load_ek_public",
    "TPM2_ALG",
]
