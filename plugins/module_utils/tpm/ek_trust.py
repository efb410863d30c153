# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust in EKs, once for enrollment and attestation.

Three modes (``ek_trust`` in the service configurations, docs/enrollment-service.md):

``vendor_ca`` (the default)
    An EK is trusted when it comes with a certificate that certifies that very EK and chains
    to one of the site's TPM vendor CAs (``pki.verify_chain``: RFC 5280 path building, path
    lengths, no unrecognised critical extension, and a leaf with an extendedKeyUsage must list
    tcg-kp-EKCertificate 2.23.133.8.1). A bare public key is refused. Without vendor CAs the
    service refuses to start.
``allow_list``
    For TPMs without EK certificates: an EK is trusted when its ekpubhash is on the allow list,
    whatever its encoding. A certificate sent along must certify the EK; its chain is not used.
``tofu``
    Trust on first use: any EK with the EK attributes. Only when configured explicitly; a
    certificate sent along is still checked against the vendor CAs when there are some.

The enrollment pipeline checks an EK when a host is added (``EkTrust.check_ek``); the
attestation server on every completion (``EkTrust.check_attestation``), with a bounded cache of
the chains it already verified, so a fleet re-attesting costs one chain check per EK
certificate and period. Every refusal is an ``InvalidEkError`` whose message says why; a
configuration that cannot work is an ``EkTrustConfigError`` when the object is built.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public

MAX_EK_BYTES = 16 * 1024
CACHE_SIZE = 65536
CACHE_TTL = 3600
VENDOR_CA = "vendor_ca"
ALLOW_LIST = "allow_list"
TOFU = "tofu"
TRUST_MODES = (VENDOR_CA, ALLOW_LIST, TOFU)
DEFAULT_MODE = VENDOR_CA
MAX_ALLOW_LIST = 1000000
EKPUBHASH = re.compile(r"\A[0-9a-fA-F]{64}\Z")


class EkTrustConfigError(HcpError):
    """The EK trust configuration cannot work (vendor_ca without vendor CAs, an empty or
    malformed allow list, an unknown mode): raised when the service starts, never per request."""

    status = 500


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
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise EkTrustConfigError("cannot read the vendor CA directory %s: %s" % (directory, exc.strerror))
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                raise EkTrustConfigError("cannot read the vendor CA file %s: %s" % (path, exc.strerror))
            cert = load_certificate(data)
            if cert is not None:
                cas.extend(pki.load_certificates(data) if b"-----BEGIN CERTIFICATE" in data else [cert])
    return cas


def split_anchors(cas):
    """(anchors, intermediates) of the vendor CAs: a CA is an intermediate when another listed
    CA is its issuer (by name), so the constraints of the CA above it (path length...) apply;
    self-issued CAs and CAs whose issuer is not listed are trust anchors."""
    subjects = set(cert.subject for cert in cas)
    anchors, intermediates = [], []
    for cert in cas:
        if cert.issuer != cert.subject and cert.issuer in subjects:
            intermediates.append(cert)
        else:
            anchors.append(cert)
    return anchors, intermediates


def parse_allow_list(allow_list):
    """The allow list as a frozenset of lowercase ekpubhashes (EkTrustConfigError on anything
    that is not a list of 64-hex-character strings)."""
    if allow_list is None:
        return frozenset()
    if not isinstance(allow_list, (list, tuple, set, frozenset)) or len(allow_list) > MAX_ALLOW_LIST:
        raise EkTrustConfigError("ek_allow_list must be a list of ekpubhashes (64 hex characters)")
    for item in allow_list:
        if not isinstance(item, str) or not EKPUBHASH.fullmatch(item):
            raise EkTrustConfigError("ek_allow_list entry %r is not an ekpubhash (64 hex characters)" % (str(item)[:80],))
    return frozenset(item.lower() for item in allow_list)


def trust_from_config(config):
    """(mode, vendor_ca_dir or None, allow list) from a service configuration dict: keys
    ``ek_trust`` (default vendor_ca), ``vendor_ca_dir``, ``ek_allow_list``. The former
    ``require_ek_cert`` is read only as ``true`` (= vendor_ca): ``false`` used to mean trust on
    first use, which must now be asked for by name (EkTrustConfigError)."""
    mode = config.get("ek_trust")
    legacy = config.get("require_ek_cert")
    if legacy is not None:
        if legacy is not True:
            raise EkTrustConfigError("require_ek_cert is replaced by ek_trust (vendor_ca, allow_list or tofu); "
                                     "require_ek_cert false no longer means trust on first use: set ek_trust")
        if mode not in (None, VENDOR_CA):
            raise EkTrustConfigError("require_ek_cert true contradicts ek_trust %r" % (mode,))
    if mode is None:
        mode = DEFAULT_MODE
    return mode, config.get("vendor_ca_dir") or None, config.get("ek_allow_list")


class EkTrust(object):
    """How EKs are trusted: ``mode`` (vendor_ca | allow_list | tofu), the vendor CAs (x509
    certificates or a directory, ``load_vendor_cas``) and the allow list (ekpubhashes).

    EkTrustConfigError when the combination cannot work: vendor_ca without vendor CAs,
    allow_list with an empty list, an allow list in another mode, an unknown mode."""

    def __init__(self, mode=DEFAULT_MODE, vendor_cas=None, allow_list=None, cache_size=CACHE_SIZE, cache_ttl=CACHE_TTL):
        if mode not in TRUST_MODES:
            raise EkTrustConfigError("unknown EK trust mode %r (known: %s)" % (mode, ", ".join(TRUST_MODES)))
        if isinstance(vendor_cas, str):
            vendor_cas = load_vendor_cas(vendor_cas)
        self.mode = mode
        self.vendor_cas = list(vendor_cas or [])
        self._anchors, self._intermediates = split_anchors(self.vendor_cas)
        self.allow_list = parse_allow_list(allow_list)
        if mode == VENDOR_CA and not self.vendor_cas:
            raise EkTrustConfigError("EK trust vendor_ca needs at least one TPM vendor CA certificate (vendor_ca_dir); "
                                     "for TPMs without EK certificates use ek_trust allow_list")
        if mode == ALLOW_LIST and not self.allow_list:
            raise EkTrustConfigError("EK trust allow_list needs at least one ekpubhash in ek_allow_list")
        if mode != ALLOW_LIST and self.allow_list:
            raise EkTrustConfigError("ek_allow_list is used only with ek_trust allow_list (configured: %s)" % mode)
        self._cache = {}
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()

    @property
    def require_ek_cert(self):
        """Whether an EK without a certificate is refused (vendor_ca)."""
        return self.mode == VENDOR_CA

    def __repr__(self):
        return "EkTrust(%s, %d vendor CAs, %d allowed EKs)" % (self.mode, len(self.vendor_cas), len(self.allow_list))

    def verify_chain(self, cert, now=None, cache_now=None):
        """InvalidEkError unless ``cert`` chains to a vendor CA (checked at ``now``, a datetime,
        default the current time) as an EK certificate. With ``cache_now`` (a timestamp), a
        verified certificate is remembered until ``cache_now`` + the cache period or its
        notAfter, whichever is first."""
        fingerprint = None
        if cache_now is not None:
            from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

            fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
            cached = self._cache.get(fingerprint)
            if cached is not None and cached > cache_now:
                return
        if not self.vendor_cas:
            raise InvalidEkError("EK certificate not trusted: no vendor CA is configured")
        try:
            pki.verify_chain(cert, self._intermediates, self._anchors, now=now, leaf_eku=pki.OID_TCG_KP_EK_CERTIFICATE)
        except HcpError as exc:
            raise InvalidEkError("EK certificate not trusted: %s" % exc)
        if fingerprint is not None:
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[fingerprint] = min(cache_now + self._cache_ttl, cert.not_valid_after_utc.timestamp())

    def _check_listed(self, ekhash):
        if ekhash not in self.allow_list:
            raise InvalidEkError("EK %s is not on the EK allow list (ek_trust allow_list)" % ekhash)

    def check_ek(self, data, now=None):
        """The EK's TPM2B_PUBLIC from ``data`` (TPM2B/PEM/EK certificate, bytes or str), after
        the attribute and template checks and the trust decision of the mode (enrollment)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data or len(data) > MAX_EK_BYTES:
            raise InvalidEkError("the EK is empty or larger than %d bytes" % MAX_EK_BYTES)
        # parsed first: an EK hcp.core refuses is refused for the same reason in every encoding
        public = load_ek_public(data)
        cert = load_certificate(data)
        if self.mode == VENDOR_CA:
            if cert is None:
                raise InvalidEkError("an EK certificate chaining to a TPM vendor CA is required (ek_trust vendor_ca); "
                                     "got a bare public key")
            self.verify_chain(cert, now=now)
        elif self.mode == ALLOW_LIST:
            self._check_listed(ekpubhash(public))
        elif cert is not None and self.vendor_cas:
            self.verify_chain(cert, now=now)
        return public

    def check_attestation(self, ekhash, public_pem, cert_data=None, now=None):
        """InvalidEkError unless the EK (``ekhash``, ``public_pem``) with its certificate
        ``cert_data`` (PEM or DER, or None) is trusted in this mode (attestation; chain checks
        cached, ``now`` a timestamp)."""
        if cert_data is not None:
            self.check_certificate_for(cert_data, public_pem, now=now)
        elif self.mode == VENDOR_CA:
            raise InvalidEkError("an EK certificate is required (ek_trust vendor_ca)")
        if self.mode == ALLOW_LIST:
            self._check_listed(ekhash)

    def check_certificate_for(self, cert_data, public_pem, now=None):
        """InvalidEkError unless ``cert_data`` (PEM or DER) certifies the EK ``public_pem`` and,
        in vendor_ca mode (or tofu with vendor CAs), chains to a vendor CA (cached; ``now`` a
        timestamp)."""
        pki.require_cryptography()
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

        cert = load_certificate(cert_data)
        if cert is None:
            raise InvalidEkError("EK certificate is not a certificate")
        try:
            spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ek_spki = serialization.load_pem_public_key(public_pem).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except (ValueError, TypeError) as exc:
            raise InvalidEkError("EK public key cannot be compared with its certificate: %s" % exc)
        if not hmac.compare_digest(spki, ek_spki):
            raise InvalidEkError("EK certificate does not certify this EK")
        if self.mode == VENDOR_CA or (self.mode == TOFU and self.vendor_cas):
            self.verify_chain(cert, cache_now=time.time() if now is None else now)
