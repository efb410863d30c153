# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""X.509 for the enrollment pipeline (no Ansible imports): keys, the enrollment CA and the
service-client CA (service identities, reserved names), certificate profiles (HTTPS and
Kerberos PKINIT), chain verification and the asset signer.

Private keys leave this module only as PKCS#8 PEM bytes for the caller to seal or write
0600; no message raised here contains key material.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
except ImportError:  # pragma: no cover - require_cryptography() reports it
    x509 = None

KEY_KINDS = ("ec-p256", "rsa-2048", "rsa-3072", "ed25519")
PROFILES = ("https-server", "https-client", "pkinit-client", "pkinit-kdc", "pkinit-iprop", "pkinit-user")
CLOCK_SKEW = datetime.timedelta(minutes=5)
OID_PKINIT_SAN = "1.3.6.1.5.2.2"
OID_PKINIT_KP_CLIENT = "1.3.6.1.5.2.3.4"
OID_PKINIT_KP_KDC = "1.3.6.1.5.2.3.5"
NT_PRINCIPAL = 1
NT_SRV_INST = 2


class PkiError(HcpError):
    """Bad input to a PKI operation (unknown key kind or profile, malformed principal or PEM)."""


class CertificateVerifyError(HcpError):
    """A certificate chain does not verify (signature, validity, CA flags or no anchor)."""


class SignatureError(HcpError):
    """A signature made by the asset signer does not verify."""


def require_cryptography():
    """Raise MissingDependencyError when the cryptography library is not importable."""
    if x509 is None:
        raise MissingDependencyError("the Python library 'cryptography' is required for X.509 operations")


def _now(now):
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        raise PkiError("'now' must be a timezone-aware datetime")
    return now


# -- keys --------------------------------------------------------------------------------

def new_private_key(kind="ec-p256"):
    """A new private key: ec-p256 (default), rsa-2048, rsa-3072 or ed25519."""
    require_cryptography()
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError("unknown key kind %r (known: %s)" % (kind, ", ".join(KEY_KINDS)))


def private_key_pem(key):
    """PKCS#8 PEM, unencrypted: the caller seals it or writes it 0600."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(pem):
    """A private key from PEM bytes (unencrypted)."""
    require_cryptography()
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise PkiError("not an unencrypted PEM private key")


def public_key_pem(key):
    """SubjectPublicKeyInfo PEM of a private or public key."""
    if hasattr(key, "public_key"):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_public_key(public_key_or_pem):
    require_cryptography()
    if isinstance(public_key_or_pem, (bytes, str)):
        data = public_key_or_pem.encode("ascii") if isinstance(public_key_or_pem, str) else public_key_or_pem
        try:
            return serialization.load_pem_public_key(data)
        except ValueError:
            raise PkiError("not a PEM public key")
    return public_key_or_pem


def load_public_key(pem):
    """A public key from SubjectPublicKeyInfo PEM (str or bytes); PkiError otherwise."""
    if not isinstance(pem, (bytes, str)):
        raise PkiError("not a PEM public key")
    return _load_public_key(pem)


def _hash_for(key):
    # Ed25519 signs without a separate hash; everything else uses SHA-256.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


# -- certificates ------------------------------------------------------------------------

def certificate_pem(cert):
    """PEM bytes of one certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificates(pem):
    """Every certificate in a PEM bundle, in order (PkiError when there is none)."""
    require_cryptography()
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise PkiError("no valid PEM certificate found")
    return certs


def _name(common_name, org=None):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _serial():
    # 159 random bits: positive and at most 20 octets (RFC 5280).
    return int.from_bytes(os.urandom(20), "big") >> 1 or 1


def create_ca(common_name, days=3650, kind="ec-p256", now=None, path_length=0):
    """A new self-signed CA: returns (private key, certificate)."""
    require_cryptography()
    now = _now(now)
    key = new_private_key(kind)
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, _hash_for(key))
    )
    return key, cert


# -- Kerberos principal names (id-pkinit-san) -----------------------------------------------
# KRB5PrincipalName (RFC 4556 3.2.2) is encoded by hand: none of our dependencies has an
# ASN.1 encoder for it (cryptography only carries the otherName as opaque DER), and the
# structure is tiny. Kerberos ASN.1 uses EXPLICIT tags throughout.

_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "0": "\0"}


def parse_principal(principal):
    """Split "comp1/comp2@REALM" (krb5 escapes: backslash before / @ \\ n t b 0) into
    (list of components, realm)."""
    if not isinstance(principal, str) or not principal:
        raise PkiError("a Kerberos principal must be a non-empty string")
    components, current, realm, in_realm = [], [], None, False
    chars = iter(principal)
    for char in chars:
        if char == "\\":
            nxt = next(chars, None)
            if nxt is None:
                raise PkiError("Kerberos principal %r ends with a lone backslash" % principal)
            current.append(_ESCAPES.get(nxt, nxt))
        elif char == "/" and not in_realm:
            components.append("".join(current))
            current = []
        elif char == "@" and not in_realm:
            components.append("".join(current))
            current, in_realm = [], True
        else:
            current.append(char)
    if not in_realm:
        raise PkiError("Kerberos principal %r has no realm" % principal)
    realm = "".join(current)
    if not realm or not all(components):
        raise PkiError("Kerberos principal %r has an empty component or realm" % principal)
    return components, realm


def _der_len(length):
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag, content):
    return bytes([tag]) + _der_len(len(content)) + content


def _der_int(value):
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _general_string(text):
    return _tlv(0x1B, text.encode("utf-8"))


def encode_krb5_principal_name(components, realm, name_type=NT_PRINCIPAL):
    """DER of KRB5PrincipalName ::= SEQUENCE { realm [0] Realm, principalName [1] PrincipalName }."""
    principal_name = _tlv(0x30, _tlv(0xA0, _der_int(name_type))
                          + _tlv(0xA1, _tlv(0x30, b"".join(_general_string(c) for c in components))))
    return _tlv(0x30, _tlv(0xA0, _general_string(realm)) + _tlv(0xA1, principal_name))


def _read_tlv(data, pos, tag):
    if pos + 2 > len(data) or data[pos] != tag:
        raise PkiError("malformed KRB5PrincipalName: expected tag 0x%02x" % tag)
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        length, pos = int.from_bytes(data[pos:pos + count], "big"), pos + count
    if pos + length > len(data):
        raise PkiError("malformed KRB5PrincipalName: truncated")
    return data[pos:pos + length], pos + length


def decode_krb5_principal_name(der):
    """(components, realm, name_type) from KRB5PrincipalName DER (the inverse of the encoder)."""
    body, end = _read_tlv(der, 0, 0x30)
    if end != len(der):
        raise PkiError("malformed KRB5PrincipalName: trailing data")
    realm_tagged, pos = _read_tlv(body, 0, 0xA0)
    realm = _read_tlv(realm_tagged, 0, 0x1B)[0].decode("utf-8")
    pn_tagged = _read_tlv(body, pos, 0xA1)[0]
    pn_body = _read_tlv(pn_tagged, 0, 0x30)[0]
    nt_tagged, pos = _read_tlv(pn_body, 0, 0xA0)
    name_type = int.from_bytes(_read_tlv(nt_tagged, 0, 0x02)[0], "big", signed=True)
    strings = _read_tlv(_read_tlv(pn_body, pos, 0xA1)[0], 0, 0x30)[0]
    components, pos = [], 0
    while pos < len(strings):
        value, pos = _read_tlv(strings, pos, 0x1B)
        components.append(value.decode("utf-8"))
    return components, realm, name_type


def pkinit_san(principal):
    """The id-pkinit-san otherName for ``principal`` ("name/inst@REALM")."""
    components, realm = parse_principal(principal)
    name_type = NT_SRV_INST if components[0] == "krbtgt" else NT_PRINCIPAL
    return x509.OtherName(ObjectIdentifier(OID_PKINIT_SAN), encode_krb5_principal_name(components, realm, name_type))


def principals_in_certificate(cert):
    """The Kerberos principals ("a/b@R") named by a certificate's id-pkinit-san entries."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    result = []
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id.dotted_string == OID_PKINIT_SAN:
            components, realm, _name_type = decode_krb5_principal_name(other.value)
            result.append("/".join(components) + "@" + realm)
    return result


# -- service identities --------------------------------------------------------------------
# Service callers (the orchestrator toward the enrollment API, the enrollment service toward
# the policy service, the attestation servers toward erepl) hold certificates of the site's
# *service-client CA* (svc-ca.key/svc-ca.pem), a CA apart from the enrollment CA that issues
# every host and user certificate; the services trust only the service-client CA for their
# callers. The names are also reserved: the enrollment CA never issues them (Issuer).

RESERVED_SERVICE_NAMES = ("orchestrator", "enrollsvc")
RESERVED_SERVICE_PREFIXES = ("attest-",)


class ReservedNameError(PkiError):
    """A host, user or certificate name is one reserved for the site's service identities."""


def reserved_service_name(name, site_names=()):
    """The service identity ``name`` would impersonate (a reserved name or prefix), or None.
    Compared case-insensitively, as given and by its first DNS label (a trailing dot ignored):
    "Orchestrator", "orchestrator.example.net" and "attest-x.example.net" are reserved."""
    if not isinstance(name, str):
        return None
    folded = name.strip().lower().rstrip(".")
    reserved = set(RESERVED_SERVICE_NAMES) | set(str(n).lower() for n in site_names or ())
    for candidate in (folded, folded.split(".", 1)[0]):
        if candidate in reserved:
            return candidate
        for prefix in RESERVED_SERVICE_PREFIXES:
            if candidate.startswith(prefix):
                return prefix + "*"
    return None


def check_reserved_name(name, site_names=(), what="name"):
    """Raise ReservedNameError when ``name`` is reserved for a service identity (see
    reserved_service_name; ``site_names`` are the site's service client names)."""
    match = reserved_service_name(name, site_names)
    if match is not None:
        raise ReservedNameError("%s %r is reserved for the site's service identities (%s)" % (what, name[:80], match))


def verify_service_client(cert, anchors, now=None):
    """Raise CertificateVerifyError unless ``cert`` (a certificate, or PEM whose first
    certificate is the leaf) is a service client certificate: directly issued by one of
    ``anchors`` (the service-client CA), valid at ``now``, not a CA, and with the clientAuth
    extended key usage. PkiError when the PEM holds no certificate."""
    require_cryptography()
    if isinstance(cert, (bytes, str)):
        cert = load_certificates(cert)[0]
    if not anchors:
        raise CertificateVerifyError("no service-client CA is configured")
    anchor_ders = set(a.public_bytes(serialization.Encoding.DER) for a in anchors)
    if cert.public_bytes(serialization.Encoding.DER) in anchor_ders:
        raise CertificateVerifyError("a CA certificate is not a service client certificate")
    verify_chain(cert, [], anchors, now=now)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise CertificateVerifyError("a CA certificate is not a service client certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateVerifyError("certificate %s is not a TLS client certificate" % cert.subject.rfc4514_string())


def issued_by(cert, ca_cert):
    """True when ``ca_cert`` signed ``cert`` (names and signature; no validity check)."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- the issuer --------------------------------------------------------------------------

def _general_names(dns_names, emails):
    names = []
    for entry in dns_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    names.extend(x509.RFC822Name(email) for email in emails)
    return names


class Issuer(object):
    """A CA private key and its chain ``[issuing cert, ..., root]``; issues leaf certificates.

    ``reserve_service_names`` (default true): refuse to name a certificate (common name, DNS
    name, Kerberos principal component) after a service identity (RESERVED_SERVICE_NAMES,
    RESERVED_SERVICE_PREFIXES and ``reserved_names``, the site's service client names) with
    ReservedNameError. Only the site bootstrap turns it off: the service-client CA issues
    exactly those names, and the operator names the site's own server certificates."""

    def __init__(self, key, chain, reserved_names=(), reserve_service_names=True):
        require_cryptography()
        if not chain:
            raise PkiError("an issuer needs at least its own certificate")
        if public_key_pem(key) != public_key_pem(chain[0].public_key()):
            raise PkiError("the issuer key does not match the first certificate of the chain")
        self.key = key
        self.chain = list(chain)
        self.reserve_service_names = bool(reserve_service_names)
        self.reserved_names = tuple(reserved_names or ())

    def __repr__(self):
        return "Issuer(%r)" % (self.chain[0].subject.rfc4514_string(),)

    @classmethod
    def from_pem(cls, key_pem, chain_pem, reserved_names=(), reserve_service_names=True):
        """An issuer from its PEM private key and PEM chain."""
        return cls(load_private_key(key_pem), load_certificates(chain_pem), reserved_names=reserved_names,
                   reserve_service_names=reserve_service_names)

    @property
    def certificate(self):
        """The issuing certificate (first of the chain)."""
        return self.chain[0]

    def chain_pem(self):
        """The whole chain as one PEM bundle (issuing certificate first)."""
        return b"".join(certificate_pem(cert) for cert in self.chain)

    def issue(self, public_key, profile, subject_cn, dns_names=(), emails=(), principal=None,
              days=30, now=None, serial=None, org=None, keyserver_binding=None, lifetime=None):
        """A leaf certificate for ``public_key`` following ``profile`` (see PROFILES).

        https-*: SAN from ``dns_names`` (IP literals become IP entries) and ``emails``;
        pkinit-client/-iprop/-user: ``principal`` is required; pkinit-kdc: ``principal``
        defaults to nothing, give "krbtgt/REALM@REALM". ``keyserver_binding`` (https-client
        only): a dict for keyserver_binding_extension(); the certificate then also carries the
        key-server client purpose (OID_KP_KEYSERVER_CLIENT). ``lifetime`` (a timedelta): the
        validity instead of ``days`` (the attestation server's minutes-long key-server credentials)."""
        if profile not in PROFILES:
            raise PkiError("unknown certificate profile %r (known: %s)" % (profile, ", ".join(PROFILES)))
        now = _now(now)
        if self.reserve_service_names:
            check_reserved_name(subject_cn, self.reserved_names, "common name")
            for dns_name in dns_names:
                check_reserved_name(dns_name, self.reserved_names, "DNS name")
            if principal:
                for component in parse_principal(principal)[0]:
                    check_reserved_name(component, self.reserved_names, "Kerberos principal component")
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        ekus, names = [], _general_names(dns_names, emails)
        if profile == "https-server":
            ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
            if not names:
                raise PkiError("an https-server certificate needs at least one DNS name")
        elif profile == "https-client":
            ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
            if keyserver_binding is not None:
                ekus.append(ObjectIdentifier(OID_KP_KEYSERVER_CLIENT))
        else:
            if not principal:
                raise PkiError("a %s certificate needs a Kerberos principal" % profile)
            names.insert(0, pkinit_san(principal))
            if profile == "pkinit-kdc":
                ekus.extend([ObjectIdentifier(OID_PKINIT_KP_KDC), ExtendedKeyUsageOID.SERVER_AUTH])
            else:
                ekus.extend([ObjectIdentifier(OID_PKINIT_KP_CLIENT), ExtendedKeyUsageOID.CLIENT_AUTH])
        key_usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                                  data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                  crl_sign=False, encipher_only=False, decipher_only=False)
        issuer_ski = self.chain[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject_cn, org))
            .issuer_name(self.chain[0].subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else _serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + (lifetime if lifetime is not None else datetime.timedelta(days=days)))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                           critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if keyserver_binding is not None:
            if profile != "https-client":
                raise PkiError("only an https-client certificate can carry the key-server client purpose")
            builder = builder.add_extension(keyserver_binding_extension(**keyserver_binding), critical=False)
        return builder.sign(self.key, _hash_for(self.key))


# -- key-server clients (docs/keyserver.md) ----------------------------------------------------
# hcp.core's own OIDs live under a UUID arc (ITU-T X.667 / RFC 4122: 2.25.<uuid as an integer>),
# which needs no registration. A certificate of the enrollment CA is a key-server client only
# with the purpose OID_KP_KEYSERVER_CLIENT in its extendedKeyUsage (next to clientAuth); its
# non-critical OID_KEYSERVER_BINDING extension (a DER UTF8String holding canonical JSON) names
# the enrollment profile label and the measurement (golden PCR digest) the host was enrolled
# with, which the key-server's ACL and non-exportable items check.
OID_HCP_ARC = "2.25.125363905877265103526182148086583304256"
OID_KP_KEYSERVER_CLIENT = OID_HCP_ARC + ".1.1"
OID_KEYSERVER_BINDING = OID_HCP_ARC + ".2.1"
KEYSERVER_BINDING_VERSION = 1
MAX_BINDING_BYTES = 512
_BINDING_LABEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MEASUREMENT = re.compile(r"pcrs-sha256:[0-9a-f]{64}")


def _check_binding(profile, measurement):
    if profile is not None and (not isinstance(profile, str) or not _BINDING_LABEL.fullmatch(profile)):
        raise PkiError("key-server binding profile must match [a-z0-9][a-z0-9_.-]{0,63}")
    if measurement is not None and (not isinstance(measurement, str) or not _MEASUREMENT.fullmatch(measurement)):
        raise PkiError("key-server binding measurement must be pcrs-sha256:<64 hex>")


def keyserver_binding_extension(profile=None, measurement=None):
    """The OID_KEYSERVER_BINDING extension value naming ``profile`` (label) and ``measurement``
    (``pcrs-sha256:<hex>``), both optional."""
    require_cryptography()
    _check_binding(profile, measurement)
    text = json.dumps({"v": KEYSERVER_BINDING_VERSION, "profile": profile, "measurement": measurement},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")
    return x509.UnrecognizedExtension(ObjectIdentifier(OID_KEYSERVER_BINDING), _tlv(0x0C, text))


def _read_binding(cert):
    try:
        ext = cert.extensions.get_extension_for_oid(ObjectIdentifier(OID_KEYSERVER_BINDING))
    except x509.ExtensionNotFound:
        return {"profile": None, "measurement": None}
    der = ext.value.value
    if len(der) > MAX_BINDING_BYTES + 4:
        raise CertificateVerifyError("the key-server binding extension is too large")
    try:
        text, end = _read_tlv(der, 0, 0x0C)
        if end != len(der):
            raise ValueError("trailing bytes")
        value = json.loads(text.decode("utf-8"))
    except (ValueError, PkiError, UnicodeDecodeError, RecursionError):
        raise CertificateVerifyError("the key-server binding extension is malformed") from None
    if not isinstance(value, dict) or value.get("v") != KEYSERVER_BINDING_VERSION or set(value) != {"v", "profile", "measurement"}:
        raise CertificateVerifyError("the key-server binding extension has an unknown layout")
    try:
        _check_binding(value["profile"], value["measurement"])
    except PkiError as exc:
        raise CertificateVerifyError(str(exc)) from None
    return {"profile": value["profile"], "measurement": value["measurement"]}


def keyserver_binding(cert):
    """``{"profile", "measurement"}`` of a certificate's key-server binding extension (both None
    without one); CertificateVerifyError when the extension is malformed."""
    require_cryptography()
    if isinstance(cert, (bytes, str)):
        cert = load_certificates(cert)[0]
    return _read_binding(cert)


# The key-server credential CA (docs/keyserver.md, part 2): held by the attestation servers, it
# signs minutes-long key-server client certificates whose binding names the measurement the
# host's quote proved. It is a service CA of its own: it never issues host or user certificates
# and the enrollment CA never issues credentials, so the key-server knows from the anchor which
# one it holds. Its certificates are refused when they live longer than this (the bound of the
# attestation server's ``keyserver_credential_minutes``).
MAX_CREDENTIAL_MINUTES = 60


def is_credential_key(public_key):
    """True for the public keys a key-server credential may certify: EC P-256/P-384, Ed25519,
    RSA of 2048 bits or more."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return isinstance(public_key.curve, (ec.SECP256R1, ec.SECP384R1))
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.key_size >= 2048
    return isinstance(public_key, ed25519.Ed25519PublicKey)


def verify_keyserver_client(cert, anchors, now=None, credential_anchors=None, max_credential_minutes=MAX_CREDENTIAL_MINUTES):
    """The key-server identity of ``cert`` (a certificate, or PEM whose first certificate is the
    leaf): ``{"cn", "profile", "measurement", "fingerprint_sha256", "public_key", "not_after",
    "attested"}`` (``not_after`` in seconds since the epoch). Raises CertificateVerifyError unless
    it chains to ``anchors`` (the site's enrollment CA) or to ``credential_anchors`` (the
    key-server credential CA of the attestation servers: ``attested`` is then True, and the
    certificate must live at most ``max_credential_minutes``) at ``now``, is not a CA, and its
    extendedKeyUsage lists clientAuth AND the key-server client purpose (a certificate without
    an extendedKeyUsage extension does not qualify). The credential anchors are accepted for
    this purpose only: no other verifier of the collection is given them."""
    require_cryptography()
    if isinstance(cert, (bytes, str)):
        cert = load_certificates(cert)[0]
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CertificateVerifyError("a CA certificate is not a key-server client")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ObjectIdentifier(OID_KP_KEYSERVER_CLIENT) not in usages or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateVerifyError("certificate %s lacks the key-server client purpose (%s)" % (
            _subject(cert), OID_KP_KEYSERVER_CLIENT))
    attested = False
    try:
        verify_chain(cert, [], anchors, now=now, leaf_eku=OID_KP_KEYSERVER_CLIENT)
    except CertificateVerifyError:
        if not credential_anchors:
            raise
        verify_chain(cert, [], credential_anchors, now=now, leaf_eku=OID_KP_KEYSERVER_CLIENT)
        attested = True
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if lifetime > datetime.timedelta(minutes=max_credential_minutes) + CLOCK_SKEW:
            raise CertificateVerifyError("key-server credential %s lives %d minutes, longer than the %d allowed"
                                         % (_subject(cert), lifetime.total_seconds() // 60, max_credential_minutes))
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise CertificateVerifyError("a key-server client certificate needs a common name")
    binding = _read_binding(cert)
    return {"cn": str(cns[0].value), "profile": binding["profile"], "measurement": binding["measurement"],
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(), "public_key": cert.public_key(),
            "not_after": cert.not_valid_after_utc.timestamp(), "attested": attested}


# Chain verification is cryptography's RFC 5280 path builder (cryptography.x509.verification),
# not hand-written: it checks signatures, validity, the CA flag and keyUsage of every issuer,
# basicConstraints path lengths, and refuses any certificate with a critical extension nobody
# accounted for. Issuers follow its web-PKI CA rules except extendedKeyUsage (TPM vendor CAs
# may carry tcg-kp-EKCertificate); the leaf's extensions are free (an EK certificate has an
# empty subject and a critical subjectAltName directoryName, TCG EK profile 3.2) except the EKU
# rule of ``leaf_eku``.
OID_TCG_KP_EK_CERTIFICATE = "2.23.133.8.1"
MAX_CHAIN_DEPTH = 8


def _eku_validator(required):
    def check(_policy, _cert, value):
        if value is not None and ObjectIdentifier(required) not in list(value):
            raise ValueError("the certificate's extendedKeyUsage lacks %s" % required)
    return check


def verify_chain(cert, chain, anchors, now=None, leaf_eku=None):
    """Check that ``cert`` chains through ``chain`` (intermediates, any order) to one of
    ``anchors`` at ``now``: signatures, validity, CA flags and keyUsage of issuers, path length
    constraints, no unrecognised critical extension anywhere. ``leaf_eku`` (dotted OID): a leaf
    with an extendedKeyUsage extension must list it (EK certificates: OID_TCG_KP_EK_CERTIFICATE).
    Raises CertificateVerifyError."""
    require_cryptography()
    from cryptography.x509 import verification  # pylint: disable=import-outside-toplevel  # guarded above

    now = _now(now)
    if not anchors:
        raise CertificateVerifyError("no trusted issuer verifies %s: no trust anchors" % _subject(cert))
    leaf_policy = verification.ExtensionPolicy.permit_all()
    if leaf_eku:
        leaf_policy = leaf_policy.may_be_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC,
                                                 _eku_validator(leaf_eku))
    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None)
    try:
        verifier = (verification.PolicyBuilder().store(verification.Store(list(anchors))).time(now)
                    .max_chain_depth(MAX_CHAIN_DEPTH).extension_policies(ca_policy=ca_policy, ee_policy=leaf_policy)
                    .build_client_verifier())
        verifier.verify(cert, list(chain))
    except (verification.VerificationError, ValueError, TypeError) as exc:
        raise CertificateVerifyError("no trusted issuer verifies %s: %s" % (_subject(cert), exc))


def _subject(cert):
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unparseable subject)"


# -- the asset signer ------------------------------------------------------------------------

class Signer(object):
    """Signs asset bytes: ECDSA P-256/SHA-256 (DER signature) or Ed25519."""

    def __init__(self, key):
        require_cryptography()
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
            raise PkiError("the asset signer key must be EC P-256 or Ed25519")
        self.key = key

    def __repr__(self):
        return "Signer(%s)" % type(self.key).__name__

    def public_key_pem(self):
        """The signer's public key (what clients pre-install)."""
        return public_key_pem(self.key)

    def sign(self, data):
        """The signature of ``data`` (bytes)."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(public_key_or_pem, data, signature):
    """Raise SignatureError unless ``signature`` is the signer's signature of ``data``."""
    key = _load_public_key(public_key_or_pem)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureError("unsupported signer key type %s" % type(key).__name__)
    except InvalidSignature:
        raise SignatureError("signature does not verify with the asset signer key")


# -- site self-bootstrap -----------------------------------------------------------------------

def _ensure_dir(directory):
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


SERVER_CERT_LABEL = re.compile(r"\A[a-z0-9][a-z0-9_.-]*\Z")


def check_server_certs(server_certs):
    """Raise PkiError unless ``server_certs`` is {label: [DNS names, at least one]} with
    labels matching ``^[a-z0-9][a-z0-9_.-]*$``."""
    if not isinstance(server_certs, dict):
        raise PkiError("server_certs must be a mapping of label to a list of DNS names")
    for label, names in server_certs.items():
        if not isinstance(label, str) or not SERVER_CERT_LABEL.fullmatch(label):
            raise PkiError("invalid server certificate label %r (allowed: [a-z0-9][a-z0-9_.-]*)" % (label,))
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(name, str) and name for name in names)):
            raise PkiError("server certificate %r needs a non-empty list of DNS names" % label)


def site_credential_files(client_names, server_certs=None):
    """{label: file name} of the seed credentials bootstrap_site_credentials manages
    (``server_certs``: extra server certificates, {label: [DNS names]})."""
    files = {"ca_key": "ca.key", "ca_cert": "ca.pem", "svc_ca_key": "svc-ca.key", "svc_ca_cert": "svc-ca.pem",
             "kscred_ca_key": "kscred-ca.key", "kscred_ca_cert": "kscred-ca.pem",
             "signer_key": "signer.key", "signer_pub": "signer.pub.pem",
             "server_key": "server.key", "server_cert": "server.pem"}
    for label in sorted(server_certs or {}):
        files["server_%s_key" % label] = "server-%s.key" % label
        files["server_%s_cert" % label] = "server-%s.pem" % label
    for name in client_names:
        files["client_%s_key" % name] = "client-%s.key" % name
        files["client_%s_cert" % name] = "client-%s.pem" % name
    return files


def missing_site_credentials(directory, client_names, server_certs=None):
    """Labels of the seed credentials absent from ``directory`` (what a bootstrap would create)."""
    check_server_certs(server_certs or {})
    return sorted(label for label, name in site_credential_files(client_names, server_certs).items()
                  if not os.path.exists(os.path.join(directory, name)))


def _read_svc_ca(directory):
    """The service-client CA certificate of ``directory``, None when a bootstrap would make a new one."""
    if not os.path.exists(os.path.join(directory, "svc-ca.key")):
        return None
    try:
        with open(os.path.join(directory, "svc-ca.pem"), "rb") as pem_file:
            return load_certificates(pem_file.read())[0]
    except (OSError, PkiError):
        return None


def _client_cert_issued_by(path, ca_cert):
    """True when the client certificate at ``path`` (leaf first) was issued by ``ca_cert``."""
    if ca_cert is None:
        return False
    try:
        with open(path, "rb") as handle:
            leaf = load_certificates(handle.read())[0]
    except (OSError, PkiError):
        return False
    return issued_by(leaf, ca_cert)


def stale_site_credentials(directory, client_names):
    """Labels of the client certificates in ``directory`` that a bootstrap would re-issue:
    present, but not issued by the service-client CA (e.g. made by the enrollment CA of an
    older release, or the service-client CA is not there yet)."""
    svc_cert = _read_svc_ca(directory)
    labels = []
    for name in client_names:
        cert_path = os.path.join(directory, "client-%s.pem" % name)
        key_path = os.path.join(directory, "client-%s.key" % name)
        if os.path.exists(cert_path) and os.path.exists(key_path) and not _client_cert_issued_by(cert_path, svc_cert):
            labels.extend(["client_%s_cert" % name, "client_%s_key" % name])
    return sorted(labels)


def bootstrap_site_credentials(directory, site_name, server_names, client_names, now=None, days=3650,
                               ca_kind="rsa-3072", server_certs=None, svc_ca_kind="ec-p256", kscred_ca_kind="ec-p256"):
    """Create the site's seed credentials in ``directory`` (0700), each only if absent:
    enrollment CA (ca.key, ca.pem), service-client CA (svc-ca.key, svc-ca.pem), key-server
    credential CA (kscred-ca.key, kscred-ca.pem: the attestation servers' issuer of minutes-long
    key-server credentials, docs/keyserver.md part 2; it issues nothing here), asset signer
    (signer.key, signer.pub.pem), server TLS (server.key, server.pem + chain), one extra server
    certificate per ``server_certs`` label (server-<label>.key/.pem for its DNS names, the first
    one its common name) and one service client certificate per name (client-<name>.key/.pem).

    Client certificates come from the service-client CA only, never from the enrollment CA
    (which issues every host and user certificate): one present but not issued by the
    service-client CA (an older release's) is re-issued with a new key.
    Returns {"paths": {label: path}, "created": [labels], "reissued": [labels]};
    never key material. The enrollment CA is RSA by default: Heimdal's hx509 (Debian 12) cannot
    verify ECDSA-signed certificates, so PKINIT certificates must come from an RSA CA."""
    require_cryptography()
    now = _now(now)
    if not server_names:
        raise PkiError("bootstrap needs at least one server name")
    for name in client_names:  # checked before anything is written
        if not name or "/" in name or name.startswith("."):
            raise PkiError("invalid client name %r" % (name,))
    server_certs = server_certs or {}
    check_server_certs(server_certs)
    _ensure_dir(directory)
    paths = dict((label, os.path.join(directory, name))
                 for label, name in site_credential_files(client_names, server_certs).items())
    created, reissued = [], []

    def write(label, data, mode, fresh=True):
        atomic_write(paths[label], data, mode)
        (created if fresh else reissued).append(label)

    def ca(prefix, common_name, kind):
        if os.path.exists(paths[prefix + "_key"]) and os.path.exists(paths[prefix + "_cert"]):
            with open(paths[prefix + "_key"], "rb") as key_file, open(paths[prefix + "_cert"], "rb") as pem_file:
                return Issuer.from_pem(key_file.read(), pem_file.read(), reserve_service_names=False)
        ca_key, ca_cert = create_ca(common_name, days=days, now=now, kind=kind)
        write(prefix + "_key", private_key_pem(ca_key), 0o600)
        write(prefix + "_cert", certificate_pem(ca_cert), 0o644)
        return Issuer(ca_key, [ca_cert], reserve_service_names=False)

    issuer = ca("ca", "%s enrollment CA" % site_name, ca_kind)
    svc_issuer = ca("svc_ca", "%s service-client CA" % site_name, svc_ca_kind)
    # a CA of its own, never the enrollment or the service-client CA: only the key-server trusts it
    ca("kscred_ca", "%s key-server credential CA" % site_name, kscred_ca_kind)

    if not os.path.exists(paths["signer_key"]):
        signer_key = new_private_key("ec-p256")
        write("signer_key", private_key_pem(signer_key), 0o600)
        write("signer_pub", public_key_pem(signer_key), 0o644)
    elif not os.path.exists(paths["signer_pub"]):
        with open(paths["signer_key"], "rb") as key_file:
            write("signer_pub", public_key_pem(load_private_key(key_file.read())), 0o644)

    leaves = [("server", issuer, "https-server", list(server_names), server_names[0])]
    for label in sorted(server_certs):
        leaves.append(("server_" + label, issuer, "https-server", list(server_certs[label]), server_certs[label][0]))
    for name in client_names:
        leaves.append(("client_" + name, svc_issuer, "https-client", [], name))
    for label, leaf_issuer, profile, dns_names, common_name in leaves:
        fresh = True
        if os.path.exists(paths[label + "_key"]) and os.path.exists(paths[label + "_cert"]):
            if leaf_issuer is issuer or _client_cert_issued_by(paths[label + "_cert"], svc_issuer.certificate):
                continue
            fresh = False  # a client certificate of the enrollment CA (older release): re-issued
        key = new_private_key("ec-p256")
        cert = leaf_issuer.issue(key.public_key(), profile, common_name, dns_names=dns_names, days=days, now=now,
                                 org=site_name)
        # the key first: a certificate never names a key that is not there yet
        write(label + "_key", private_key_pem(key), 0o600, fresh)
        write(label + "_cert", certificate_pem(cert) + leaf_issuer.chain_pem(), 0o644, fresh)
    return {"paths": paths, "created": created, "reissued": reissued}


# -- OpenSSH encodings (ssh host keys) ---------------------------------------------------------

def is_rsa_key(key):
    """True for an RSA private or public key."""
    require_cryptography()
    return isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey))


def openssh_private_key(key):
    """The OpenSSH private key format (unencrypted), as sshd reads host keys."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def openssh_public_key(key, comment):
    """One authorized_keys-style line: "<type> <base64> <comment>\\n"."""
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + b" " + comment.encode("utf-8") + b"\n"


# -- certificate revocation ------------------------------------------------------------------

DEFAULT_CRL_DAYS = 90


def make_crl(issuer, revoked, days=DEFAULT_CRL_DAYS, now=None, current=None, renew_days=None):
    """A PEM CRL of ``issuer`` (an Issuer) listing ``revoked`` (serial numbers as int, or
    certificates as x509 objects or PEM; a certificate of another CA is an error), valid for
    ``days``. With ``current`` (the PEM CRL in force): None when it is already signed by this
    issuer, lists exactly these serials and stays valid for more than ``renew_days`` (default:
    a third of ``days``), so a caller rewrites it only when something changed. The CRL number
    is the current one plus one (1 without ``current``), revocation dates are kept."""
    require_cryptography()
    now = _now(now)
    if not 1 <= int(days) <= 3650:
        raise PkiError("a CRL is valid for 1 to 3650 days")
    renew = datetime.timedelta(days=days / 3.0 if renew_days is None else renew_days)
    ca = issuer.certificate
    serials = set()
    for item in revoked:
        if isinstance(item, (bytes, str)):
            item = load_certificates(item.encode("ascii") if isinstance(item, str) else item)[0]
        if isinstance(item, x509.Certificate):
            try:
                item.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                raise PkiError("certificate %s was not issued by %s"
                               % (item.subject.rfc4514_string(), ca.subject.rfc4514_string()))
            item = item.serial_number
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 1 << 160:
            raise PkiError("a revoked serial number must be a positive integer of at most 20 octets")
        serials.add(item)
    number, dates = 1, {}
    if current:
        try:
            old = x509.load_pem_x509_crl(current if isinstance(current, bytes) else current.encode("ascii"))
        except ValueError:
            raise PkiError("the current CRL is not a PEM CRL")
        if old.issuer == ca.subject and old.is_signature_valid(ca.public_key()):
            dates = dict((entry.serial_number, entry.revocation_date_utc) for entry in old)
            try:
                number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
            except x509.ExtensionNotFound:
                pass
            next_update = old.next_update_utc
            if set(dates) == serials and next_update is not None and next_update - now > renew:
                return None
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(dates.get(serial, now)).build())
    return builder.sign(issuer.key, _hash_for(issuer.key)).public_bytes(serialization.Encoding.PEM)
