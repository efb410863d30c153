# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificate profiles, KRB5PrincipalName, chain verification, signer and site bootstrap."""
from __future__ import annotations

import datetime
import os
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ansible_collections.hcp.core.plugins.module_utils import pki

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca():
    key, cert = pki.create_ca("Test Enrollment CA", kind="rsa-2048", now=NOW)
    return pki.Issuer(key, [cert])


@pytest.fixture(scope="module")
def rsa_key():
    return pki.new_private_key("rsa-2048")


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls).value


def test_ca_flags(ca):
    cert = ca.certificate
    assert ext(cert, x509.BasicConstraints).ca is True
    usage = ext(cert, x509.KeyUsage)
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.subject == cert.issuer


def test_https_server_profile(ca):
    key = pki.new_private_key()
    cert = ca.issue(key.public_key(), "https-server", "www.example.com",
                    dns_names=["www.example.com", "10.0.0.1"], days=10, now=NOW)
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    usage = ext(cert, x509.KeyUsage)
    assert usage.digital_signature and not usage.key_encipherment  # EC key
    assert ext(cert, x509.BasicConstraints).ca is False
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=10)
    assert ext(cert, x509.AuthorityKeyIdentifier).key_identifier == \
        ext(ca.certificate, x509.SubjectKeyIdentifier).digest
    assert 0 < cert.serial_number < 2 ** 159


def test_https_server_rsa_has_key_encipherment(ca, rsa_key):
    cert = ca.issue(rsa_key.public_key(), "https-server", "a", dns_names=["a"], now=NOW)
    assert ext(cert, x509.KeyUsage).key_encipherment


def test_https_client_profile(ca):
    cert = ca.issue(pki.new_private_key().public_key(), "https-client", "ops", emails=["ops@example.com"], now=NOW)
    assert list(ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(cert, x509.SubjectAlternativeName).get_values_for_type(x509.RFC822Name) == ["ops@example.com"]


@pytest.mark.parametrize("profile,principal,eku", [
    ("pkinit-client", "host/a.example.com@EXAMPLE.COM", pki.OID_PKINIT_KP_CLIENT),
    ("pkinit-iprop", "iprop/kdc2.example.com@EXAMPLE.COM", pki.OID_PKINIT_KP_CLIENT),
    ("pkinit-user", "alice@EXAMPLE.COM", pki.OID_PKINIT_KP_CLIENT),
    ("pkinit-kdc", "krbtgt/EXAMPLE.COM@EXAMPLE.COM", pki.OID_PKINIT_KP_KDC),
])
def test_pkinit_profiles(ca, rsa_key, profile, principal, eku):
    cert = ca.issue(rsa_key.public_key(), profile, principal.split("@")[0], principal=principal, now=NOW)
    ekus = list(ext(cert, x509.ExtendedKeyUsage))
    assert ekus[0] == ObjectIdentifier(eku)
    second = ExtendedKeyUsageOID.SERVER_AUTH if profile == "pkinit-kdc" else ExtendedKeyUsageOID.CLIENT_AUTH
    assert ekus[1] == second
    assert pki.principals_in_certificate(cert) == [principal]


def test_pkinit_needs_principal(ca, rsa_key):
    with pytest.raises(pki.PkiError, match="principal"):
        ca.issue(rsa_key.public_key(), "pkinit-client", "x", now=NOW)


def test_unknown_profile(ca, rsa_key):
    with pytest.raises(pki.PkiError, match="unknown certificate profile"):
        ca.issue(rsa_key.public_key(), "code-signing", "x", now=NOW)


def test_principal_parsing_escapes():
    assert pki.parse_principal(r"a\/b/c\@d@R.EX") == (["a/b", "c@d"], "R.EX")
    assert pki.parse_principal("krbtgt/R@R") == (["krbtgt", "R"], "R")
    for bad in ("nouser", "a@", "@R", "a//b@R", "a\\"):
        with pytest.raises(pki.PkiError):
            pki.parse_principal(bad)


def test_krb5_principal_name_roundtrip():
    der = pki.encode_krb5_principal_name(["host", "a" * 200], "EXAMPLE.COM")  # long form length
    assert pki.decode_krb5_principal_name(der) == (["host", "a" * 200], "EXAMPLE.COM", 1)
    with pytest.raises(pki.PkiError):
        pki.decode_krb5_principal_name(der + b"\x00")


def test_krb5_principal_name_openssl_asn1parse(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    path = tmp_path / "name.der"
    path.write_bytes(pki.encode_krb5_principal_name(["host", "a.example.com"], "EXAMPLE.COM"))
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
                         check=True, capture_output=True, text=True).stdout
    # openssl does not print GeneralString contents: check the structure and the lengths.
    rows = [" ".join(line.split(":", 1)[1].split()) for line in out.splitlines()]
    assert rows == [
        "d=0 hl=2 l= 49 cons: SEQUENCE", "d=1 hl=2 l= 13 cons: cont [ 0 ]", "d=2 hl=2 l= 11 prim: GENERALSTRING",
        "d=1 hl=2 l= 32 cons: cont [ 1 ]", "d=2 hl=2 l= 30 cons: SEQUENCE", "d=3 hl=2 l= 3 cons: cont [ 0 ]",
        "d=4 hl=2 l= 1 prim: INTEGER :01", "d=3 hl=2 l= 23 cons: cont [ 1 ]", "d=4 hl=2 l= 21 cons: SEQUENCE",
        "d=5 hl=2 l= 4 prim: GENERALSTRING", "d=5 hl=2 l= 13 prim: GENERALSTRING",
    ]


def test_pkinit_cert_with_heimdal_hxtool(tmp_path, ca, rsa_key):
    if shutil.which("hxtool") is None:
        pytest.skip("Heimdal hxtool is not installed (apt-get install heimdal-clients)")
    cert = ca.issue(rsa_key.public_key(), "pkinit-client", "host", principal="host/a.example.com@EXAMPLE.COM")
    (tmp_path / "c.pem").write_bytes(pki.certificate_pem(cert))
    (tmp_path / "ca.pem").write_bytes(ca.chain_pem())
    out = subprocess.run(["hxtool", "print", "--content", "FILE:%s" % (tmp_path / "c.pem")],
                         check=True, capture_output=True, text=True).stdout
    assert "pk-init: host/a.example.com@EXAMPLE.COM" in out
    verify = subprocess.run(["hxtool", "verify", "--missing-revoke", "cert:FILE:%s" % (tmp_path / "c.pem"),
                             "anchor:FILE:%s" % (tmp_path / "ca.pem")], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr


def test_verify_chain(ca):
    key = pki.new_private_key()
    cert = ca.issue(key.public_key(), "https-client", "c", now=NOW)
    pki.verify_chain(cert, [], [ca.certificate], now=NOW)
    other_key, other_cert = pki.create_ca("Other CA", now=NOW)
    with pytest.raises(pki.CertificateVerifyError, match="no trusted issuer"):
        pki.verify_chain(cert, [], [other_cert], now=NOW)
    with pytest.raises(pki.CertificateVerifyError, match="not valid"):
        pki.verify_chain(cert, [], [ca.certificate], now=NOW + datetime.timedelta(days=31))
    # A leaf used as an issuer: the signature verifies but it is not a CA.
    leaf_issuer = pki.Issuer(other_key, [other_cert])
    non_ca_key = pki.new_private_key()
    non_ca = leaf_issuer.issue(non_ca_key.public_key(), "https-client", "fake-ca", now=NOW)
    forged = pki.Issuer(non_ca_key, [non_ca, other_cert]).issue(key.public_key(), "https-client", "c", now=NOW)
    with pytest.raises(pki.CertificateVerifyError, match="cA must be asserted"):
        pki.verify_chain(forged, [non_ca], [other_cert], now=NOW)


def test_verify_chain_intermediate():
    root_key, root = pki.create_ca("Root", path_length=1, now=NOW)
    inter_key = pki.new_private_key()
    inter = pki.Issuer(root_key, [root]).issue(inter_key.public_key(), "https-client", "x", now=NOW)
    assert ext(inter, x509.BasicConstraints).ca is False  # leaves only: the profile never makes CAs
    loaded = pki.load_certificates(pki.certificate_pem(root) * 2)
    assert len(loaded) == 2


def test_issuer_from_pem_roundtrip(ca):
    again = pki.Issuer.from_pem(pki.private_key_pem(ca.key), ca.chain_pem())
    assert again.chain_pem() == ca.chain_pem()
    assert "PRIVATE" not in repr(again)
    with pytest.raises(pki.PkiError, match="does not match"):
        pki.Issuer(pki.new_private_key(), ca.chain)


@pytest.mark.parametrize("kind", ["ec-p256", "ed25519"])
def test_signer(kind):
    signer = pki.Signer(pki.new_private_key(kind))
    signature = signer.sign(b"manifest")
    pki.verify_signature(signer.public_key_pem(), b"manifest", signature)
    with pytest.raises(pki.SignatureError):
        pki.verify_signature(signer.public_key_pem(), b"manifesT", signature)
    with pytest.raises(pki.SignatureError):
        pki.verify_signature(pki.Signer(pki.new_private_key(kind)).public_key_pem(), b"manifest", signature)


def test_unknown_key_kind():
    with pytest.raises(pki.PkiError, match="unknown key kind"):
        pki.new_private_key("dsa")


def test_bootstrap_idempotent(tmp_path):
    directory = str(tmp_path / "site")
    first = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.com"], ["orchestrator"],
                                           now=NOW, ca_kind="rsa-2048")
    assert set(first["created"]) == {"ca_key", "ca_cert", "svc_ca_key", "svc_ca_cert", "kscred_ca_key", "kscred_ca_cert", "signer_key",
                                     "signer_pub", "server_key", "server_cert", "client_orchestrator_key", "client_orchestrator_cert"}
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for label in ("ca_key", "svc_ca_key", "kscred_ca_key", "signer_key", "server_key", "client_orchestrator_key"):
        assert stat.S_IMODE(os.stat(first["paths"][label]).st_mode) == 0o600
    assert "PRIVATE KEY" not in repr(first)
    with open(first["paths"]["server_cert"], "rb") as handle:
        server_chain = pki.load_certificates(handle.read())
    with open(first["paths"]["ca_cert"], "rb") as handle:
        anchor = pki.load_certificates(handle.read())
    assert len(server_chain) == 2
    pki.verify_chain(server_chain[0], server_chain[1:], anchor, now=NOW)
    with open(first["paths"]["server_key"], "rb") as handle:
        before = handle.read()
    second = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.com"], ["orchestrator"], now=NOW)
    assert second["created"] == [] and second["reissued"] == []
    with open(first["paths"]["server_key"], "rb") as handle:
        assert handle.read() == before
    third = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.com"], ["orchestrator", "ci"], now=NOW)
    assert third["created"] == ["client_ci_key", "client_ci_cert"]


def test_bootstrap_extra_server_certs(tmp_path):
    directory = str(tmp_path / "site")
    extra = {"attest-a1": ["a1.example.com", "10.0.0.7"], "attest-a2": ["a2.example.com"]}
    first = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.com"], [], now=NOW,
                                           ca_kind="rsa-2048", server_certs=extra)
    assert {"server_attest-a1_key", "server_attest-a1_cert", "server_attest-a2_key",
            "server_attest-a2_cert"} <= set(first["created"])
    assert first["paths"]["server_attest-a1_cert"] == os.path.join(directory, "server-attest-a1.pem")
    assert stat.S_IMODE(os.stat(first["paths"]["server_attest-a1_key"]).st_mode) == 0o600
    with open(first["paths"]["server_attest-a1_cert"], "rb") as handle:
        chain = pki.load_certificates(handle.read())
    with open(first["paths"]["ca_cert"], "rb") as handle:
        anchor = pki.load_certificates(handle.read())
    pki.verify_chain(chain[0], chain[1:], anchor, now=NOW)
    assert chain[0].subject.rfc4514_string() == "O=lab,CN=a1.example.com"
    san = ext(chain[0], x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["a1.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert list(ext(chain[0], x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with open(first["paths"]["server_attest-a1_key"], "rb") as handle:
        key = pki.load_private_key(handle.read())
    assert pki.public_key_pem(key) == pki.public_key_pem(chain[0].public_key())
    assert pki.missing_site_credentials(directory, [], extra) == []
    # Idempotent, names fixed at creation; a new label adds only its pair.
    with open(first["paths"]["server_attest-a1_key"], "rb") as handle:
        before = handle.read()
    more = dict(extra, **{"attest-a1": ["renamed.example.com"], "web": ["w.example.com"]})
    assert pki.missing_site_credentials(directory, [], more) == ["server_web_cert", "server_web_key"]
    second = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.com"], [], now=NOW, server_certs=more)
    assert sorted(second["created"]) == ["server_web_cert", "server_web_key"]
    with open(first["paths"]["server_attest-a1_key"], "rb") as handle:
        assert handle.read() == before


@pytest.mark.parametrize("server_certs,message", [
    ({"Bad": ["a"]}, "invalid server certificate label"),
    ({"../x": ["a"]}, "invalid server certificate label"),
    ({"ok": []}, "non-empty list"),
    ({"ok": "a.example.com"}, "non-empty list"),
    ({"ok": [""]}, "non-empty list"),
    (["a"], "mapping"),
])
def test_bootstrap_extra_server_certs_bad_input(tmp_path, server_certs, message):
    directory = str(tmp_path / "site")
    with pytest.raises(pki.PkiError, match=message):
        pki.bootstrap_site_credentials(directory, "lab", ["e"], [], server_certs=server_certs)
    assert not os.path.exists(directory)
    with pytest.raises(pki.PkiError, match=message):
        pki.missing_site_credentials(directory, [], server_certs)


@pytest.mark.parametrize("name", ["orchestrator", "Orchestrator", "enrollsvc", "attest-x", "attest-", "ATTEST-a1.example.net",
                                  "orchestrator.example.net", "orchestrator.", "ci"])
def test_reserved_service_names(name):
    assert pki.reserved_service_name(name, ["ci"]) is not None
    with pytest.raises(pki.ReservedNameError, match="reserved for the site's service identities"):
        pki.check_reserved_name(name, ["ci"], "hostname")


@pytest.mark.parametrize("name", ["node1", "lab-attest1", "attest", "my-orchestrator", "orchestrators", "web.attest-x.net", "cia"])
def test_ordinary_names_are_not_reserved(name):
    assert pki.reserved_service_name(name, ["ci"]) is None
    pki.check_reserved_name(name, ["ci"])


def test_enrollment_issuer_refuses_service_names(ca, rsa_key):
    """Defense in depth: whatever a generator asks, the enrollment CA never names a certificate
    after a service (common name, DNS name, principal component)."""
    site = pki.Issuer(ca.key, ca.chain, reserved_names=["ci"])
    attempts = [dict(profile="https-client", subject_cn="orchestrator"), dict(profile="https-client", subject_cn="attest-x"),
                dict(profile="https-server", subject_cn="web", dns_names=["attest-x.example.com"]),
                dict(profile="pkinit-user", subject_cn="bob", principal="orchestrator@EXAMPLE.COM"),
                dict(profile="pkinit-client", subject_cn="h", principal="host/attest-1.example.com@EXAMPLE.COM"),
                dict(profile="https-client", subject_cn="ci")]
    for attempt in attempts:
        with pytest.raises(pki.ReservedNameError):
            site.issue(rsa_key.public_key(), now=NOW, **attempt)
    site.issue(rsa_key.public_key(), "https-client", "cia", now=NOW)
    # the site bootstrap's issuers (operator names, the service-client CA) do not reserve
    free = pki.Issuer(ca.key, ca.chain, reserve_service_names=False)
    assert free.issue(rsa_key.public_key(), "https-client", "orchestrator", now=NOW).subject.rfc4514_string() == "CN=orchestrator"


def test_verify_service_client(tmp_path):
    paths = pki.bootstrap_site_credentials(str(tmp_path / "s"), "lab", ["enroll.example.com"], ["orchestrator"])["paths"]
    with open(paths["svc_ca_cert"], "rb") as handle:
        svc = pki.load_certificates(handle.read())
    with open(paths["client_orchestrator_cert"], "rb") as handle:
        client_pem = handle.read()
    pki.verify_service_client(client_pem, svc)
    pki.verify_service_client(client_pem.decode(), svc)
    with open(paths["server_cert"], "rb") as handle:  # the enrollment CA's server certificate
        server_pem = handle.read()
    with pytest.raises(pki.CertificateVerifyError):
        pki.verify_service_client(server_pem, svc)
    with pytest.raises(pki.CertificateVerifyError, match="CA certificate"):
        pki.verify_service_client(svc[0], svc)
    with pytest.raises(pki.CertificateVerifyError, match="no service-client CA"):
        pki.verify_service_client(client_pem, [])
    svc_issuer = pki.Issuer.from_pem(open(paths["svc_ca_key"], "rb").read(), open(paths["svc_ca_cert"], "rb").read(),
                                     reserve_service_names=False)
    server_like = svc_issuer.issue(pki.new_private_key().public_key(), "https-server", "orchestrator", dns_names=["x"])
    with pytest.raises(pki.CertificateVerifyError, match="not a TLS client certificate"):
        pki.verify_service_client(server_like, svc)
    late = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=4000)
    with pytest.raises(pki.CertificateVerifyError, match="not valid"):
        pki.verify_service_client(client_pem, svc, now=late)
