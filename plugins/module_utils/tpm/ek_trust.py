# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust in EK certificates, once for enrollment and attestation.

An EK is trusted when its certificate chains to one of the site's TPM vendor CAs and certifies
that very EK. The enrollment pipeline checks it when a host is added (``EkTrust.check_ek``);
the attestation server checks it on every completion (``EkTrust.check_certificate_for``), with a
bounded cache of the chains it already verified, so a fleet re-attesting costs one chain check per
EK certificate and period. Every refusal is an ``InvalidEkError`` whose message says why.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public

MAX_EK_BYTES = 16 * 1024
CACHE_SIZE = 65536
CACHE_TTL = 3600


def load_certificate(data):
    """An x509 certificate when ``data`` is one (PEM or DER), else None."""
    pki.require_cryptography()
    from cryptography import x509  # pylint: disable=import-outside-toplevel  # guarded by require_cryptography

    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data)
        if data[:1] == b"\x30":
            return x509.load_der_x509_certificate(data)
    except ValueError:
        return None
    return None


def load_vendor_cas(directory):
    """Every certificate (PEM or DER, one or more per file) in ``directory``."""
    cas = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                data = handle.read()
            cert = load_certificate(data)
            if cert is not None:
                cas.extend(pki.load_certificates(data) if b"-----BEGIN CERTIFICATE" in data else [cert])
    return cas


class EkTrust(object):
    """The vendor CAs an EK certificate must chain to, and whether a certificate is required.

    ``vendor_cas``: x509 certificates or a directory (``load_vendor_cas``)."""

    def __init__(self, vendor_cas=None, require_ek_cert=False, cache_size=CACHE_SIZE, cache_ttl=CACHE_TTL):
        if isinstance(vendor_cas, str):
            vendor_cas = load_vendor_cas(vendor_cas)
        self.vendor_cas = list(vendor_cas or [])
        self.require_ek_cert = bool(require_ek_cert)
        self._cache = {}
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()

    def __repr__(self):
        return "EkTrust(%d vendor CAs, certificate %s)" % (
            len(self.vendor_cas), "required" if self.require_ek_cert else "optional")

    def verify_chain(self, cert, now=None, cache_now=None):
        """InvalidEkError unless ``cert`` chains to a vendor CA (checked at ``now``, a datetime,
        default the current time). With ``cache_now`` (a timestamp), a verified certificate is
        remembered until ``cache_now`` + the cache period or its notAfter, whichever is first."""
        fingerprint = None
        if cache_now is not None:
            from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

            fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
            cached = self._cache.get(fingerprint)
            if cached is not None and cached > cache_now:
                return
        try:
            pki.verify_chain(cert, self.vendor_cas, self.vendor_cas, now=now)
        except HcpError as exc:
            raise InvalidEkError("EK certificate not trusted: %s" % exc)
        if fingerprint is not None:
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[fingerprint] = min(cache_now + self._cache_ttl, cert.not_valid_after_utc.timestamp())

    def check_ek(self, data, now=None):
        """The EK's TPM2B_PUBLIC from ``data`` (TPM2B/PEM/EK certificate, bytes or str), after the
        attribute checks and, when vendor CAs are configured, the certificate's chain (enrollment)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data or len(data) > MAX_EK_BYTES:
            raise InvalidEkError("the EK is empty or larger than %d bytes" % MAX_EK_BYTES)
        cert = load_certificate(data)
        if cert is None and self.require_ek_cert:
            raise InvalidEkError("an EK certificate is required (got a bare public key)")
        if cert is not None and self.vendor_cas:
            self.verify_chain(cert, now=now)
        elif cert is not None and self.require_ek_cert:
            raise InvalidEkError("an EK certificate is required but no vendor CA is configured")
        return load_ek_public(data)

    def check_certificate_for(self, cert_data, public_pem, now=None):
        """InvalidEkError unless ``cert_data`` (PEM or DER) certifies the EK ``public_pem`` and,
        when vendor CAs are configured, chains to one (cached; ``now`` a timestamp, attestation)."""
        pki.require_cryptography()
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

        cert = load_certificate(cert_data)
        if cert is None:
            raise InvalidEkError("EK certificate is not a certificate")
        spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            ek_spki = serialization.load_pem_public_key(public_pem).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except (ValueError, TypeError) as exc:
            raise InvalidEkError("EK public key cannot be compared with its certificate: %s" % exc)
        if not hmac.compare_digest(spki, ek_spki):
            raise InvalidEkError("EK certificate does not certify this EK")
        if self.vendor_cas:
            self.verify_chain(cert, cache_now=time.time() if now is None else now)
