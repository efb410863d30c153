# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EK trust (tpm/ek_trust.py over pki.verify_chain) against real swtpm EKs and EK certificates:
vendor CAs by default, the allow list, explicit trust on first use, the EK certificate profile
(tcg-kp-EKCertificate, critical extensions, path lengths) and one decision whatever the encoding."""
from __future__ import annotations

import base64
import datetime
import json
import os

import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tpm2_pytss.utils import NVReadEK

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.errors import InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm import ek_trust, ekpub
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import trim_der
from ansible_collections.hcp.core.plugins.module_utils.web import attest_app

NOW = datetime.datetime.now(datetime.timezone.utc)
EK_EKU = x509.ObjectIdentifier("2.23.133.8.1")  # tcg-kp-EKCertificate
ROOT = os.path.abspath(os.path.join(os.path.dirname(ek_trust.__file__), "..", "..", ".."))
# swtpm also manufactures the high-range ECC P-384 EK (TCG template H-3) and its certificate
P384_HANDLE, P384_CERT_INDEX = 0x81010016, 0x01C00016


def _vendor_cas(tpm_fixture):
    cas = []
    for path in tpm_fixture.vendor_ca_files:
        with open(path, "rb") as handle:
            cas.extend(pki.load_certificates(handle.read()))
    return cas


def _pem(cert_der):
    return x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def eks(swtpm, other_swtpm):
    with swtpm.open() as tpm:
        public, cert = tpm.ek_public(), tpm.ek_certificate_der()
        handle = tpm.ectx.tr_from_tpmpublic(P384_HANDLE)
        p384, _name, _qname = tpm.ectx.read_public(handle)
        tpm.ectx.tr_close(handle)
        p384_cert = trim_der(NVReadEK(tpm.ectx)(P384_CERT_INDEX))
    with other_swtpm.open() as other:
        other_public, other_cert = other.ek_public(), other.ek_certificate_der()
    return {"public": public, "cert": cert, "hash": ekpub.ekpubhash(public), "pem": ekpub.ek_public_pem(public),
            "p384": p384, "p384_cert": p384_cert, "other_public": other_public, "other_cert": other_cert,
            "other_hash": ekpub.ekpubhash(other_public), "cas": _vendor_cas(swtpm)}


def _forms(public, cert_der):
    """The same EK as TPM2B_PUBLIC (raw, base64), TPMT_PUBLIC, PEM public key, DER and PEM certificate."""
    return {"tpm2b": public.marshal(), "tpm2b-b64": base64.b64encode(public.marshal()), "tpmt": public.publicArea.marshal(),
            "pem": ekpub.ek_public_pem(public).encode(), "cert-der": cert_der, "cert-pem": _pem(cert_der)}


# -- a vendor PKI of our own, to make the defective certificates an attacker would present --------

def _ca(name, issuer=None, path_length=None, extra=()):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sign_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(sign_key, hashes.SHA256())


UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")


def _ek_cert(ek_pem, issuer, ekus=(EK_EKU,), extra=()):
    """A TCG-profile EK certificate (empty subject, critical SAN directoryName) for ``ek_pem``."""
    tpm_name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:00001014"),
                          x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "swtpm"),
                          x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:20191023")])
    builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer[1].subject)
               .public_key(serialization.load_pem_public_key(ek_pem.encode())).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=365))
               .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm_name)]), critical=True)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False))
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer[0], hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def vendor():
    root = _ca("Test TPM vendor root", path_length=1)
    issuing = _ca("Test TPM vendor EK CA", issuer=root, path_length=0)
    return {"root": root, "issuing": issuing, "trust": ek_trust.EkTrust(vendor_cas=[root[1], issuing[1]])}


# -- the tests ------------------------------------------------------------------------------

def test_real_swtpm_ek_certificates_are_accepted(eks):
    trust = ek_trust.EkTrust(vendor_cas=eks["cas"])
    for form in (eks["cert"], _pem(eks["cert"])):
        assert ekpub.ekpubhash(trust.check_ek(form)) == eks["hash"]
    trust.check_attestation(eks["hash"], eks["pem"].encode(), eks["cert"], now=NOW.timestamp())
    # swtpm's localca marks them as EK certificates, and its P-384 EK certificate chains as well
    assert EK_EKU in x509.load_der_x509_certificate(eks["cert"]).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    trust.verify_chain(x509.load_der_x509_certificate(eks["p384_cert"]))


def test_vendor_signed_certificate_without_the_ek_eku_is_refused(eks, vendor):
    """A vendor CA that also signs TLS or code-signing certificates: such a certificate for any
    key of the attacker's is not an EK certificate."""
    tls = _ek_cert(eks["pem"], vendor["issuing"], ekus=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))
    with pytest.raises(InvalidEkError, match="lacks 2.23.133.8.1"):
        vendor["trust"].check_ek(tls)
    with pytest.raises(InvalidEkError, match="lacks 2.23.133.8.1"):
        vendor["trust"].check_attestation(eks["hash"], eks["pem"].encode(), tls, now=NOW.timestamp())
    # the same chain with the EK EKU, or with no EKU extension at all (older profiles), passes
    assert ekpub.ekpubhash(vendor["trust"].check_ek(_ek_cert(eks["pem"], vendor["issuing"]))) == eks["hash"]
    assert ekpub.ekpubhash(vendor["trust"].check_ek(_ek_cert(eks["pem"], vendor["issuing"], ekus=()))) == eks["hash"]


def test_unknown_critical_extension_is_refused(eks, vendor):
    leaf = _ek_cert(eks["pem"], vendor["issuing"], extra=[(UNKNOWN, True)])
    with pytest.raises(InvalidEkError, match="critical extension"):
        vendor["trust"].check_ek(leaf)
    marked = _ca("Test TPM vendor EK CA", issuer=vendor["root"], path_length=0, extra=[(UNKNOWN, True)])
    trust = ek_trust.EkTrust(vendor_cas=[vendor["root"][1], marked[1]])
    with pytest.raises(InvalidEkError, match="critical extension"):
        trust.check_ek(_ek_cert(eks["pem"], marked))
    # not critical: ignored, as RFC 5280 says
    assert vendor["trust"].check_ek(_ek_cert(eks["pem"], vendor["issuing"], extra=[(UNKNOWN, False)]))


def test_issuer_path_length_is_enforced(eks):
    """A vendor root that may certify no sub-CA (pathLenConstraint 0): an intermediate under it
    issues nothing trusted, even when that intermediate is in the vendor CA directory."""
    root = _ca("Test TPM vendor root", path_length=0)
    rogue = _ca("Test TPM vendor EK CA", issuer=root, path_length=None)
    trust = ek_trust.EkTrust(vendor_cas=[root[1], rogue[1]])
    with pytest.raises(InvalidEkError, match="path length"):
        trust.check_ek(_ek_cert(eks["pem"], rogue))
    allowed = _ca("Test TPM vendor root", path_length=1)
    issuing = _ca("Test TPM vendor EK CA", issuer=allowed, path_length=None)
    assert ek_trust.EkTrust(vendor_cas=[allowed[1], issuing[1]]).check_ek(_ek_cert(eks["pem"], issuing))


def _render_role_config(role, template):
    """The role's service configuration rendered from its defaults (role vars as given)."""
    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) as handle:
        variables = yaml.safe_load(handle)
    with open(os.path.join(ROOT, "roles", role, "vars", "main.yml")) as handle:
        variables.update(yaml.safe_load(handle))
    variables.setdefault("inventory_hostname", "test-host")  # a magic variable of Ansible's
    env = jinja2.Environment()
    env.filters["to_nice_json"] = lambda value, sort_keys=True: json.dumps(value, sort_keys=sort_keys, indent=4)
    # Ansible's bool filter ("False" is false) and its lazy templating of variables that are templates
    env.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).strip().lower() in ("true", "yes", "on", "1")
    for name, value in list(variables.items()):
        if isinstance(value, str) and "{{" in value:
            variables[name] = env.from_string(value).render(variables)
    with open(os.path.join(ROOT, "roles", role, "templates", template)) as handle:
        return json.loads(env.from_string(handle.read()).render(variables))


def test_tofu_is_never_a_default(eks, swtpm, tmp_path):
    """Trust on first use had to be turned off; now it must be turned on by name. Every default
    (library, service configurations, role defaults) refuses a bare EK, and a service that could
    only trust on first use refuses to start."""
    cred = tmp_path / "cred"
    pki.bootstrap_site_credentials(str(cred), "t", ["localhost"], [])
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    ca_key, ca_cert = pki.create_ca("t")
    issuer, signer = pki.Issuer(ca_key, [ca_cert]), pki.Signer(pki.new_private_key())
    with pytest.raises(ek_trust.EkTrustConfigError, match="needs at least one TPM vendor CA"):
        ek_trust.EkTrust()
    with pytest.raises(ek_trust.EkTrustConfigError, match="needs at least one TPM vendor CA"):
        enroll.EnrollmentConfig(issuer, signer)
    with pytest.raises(attest.AttestError, match="needs at least one TPM vendor CA"):
        attest.Attestor(lambda: db, os.urandom(32))
    base = {"db": db.path, "credentials_dir": str(cred), "postclient": {"seal_policy": {"type": "none"}}}
    for config in (base, dict(base, require_ek_cert=False), dict(base, ek_trust="vendor_ca", vendor_ca_dir=str(tmp_path / "empty"))):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(enroll_service.ServiceConfigError, match="EK trust refused"):
            enroll_service.EnrollmentService(config)
    attest_base = {"db": db.path, "ticket_key_file": str(key_file)}
    for config in (attest_base, dict(attest_base, require_ek_cert=False)):
        with pytest.raises(attest.AttestError, match="EK trust"):
            attest_app.build_attestor(config)
    # the roles' defaults give the services a configuration they refuse to start with
    enroll_config = _render_role_config("enrollment_server", "enroll.json.j2")
    assert enroll_config["ek_trust"] == "vendor_ca" and enroll_config["vendor_ca_dir"] is None
    with pytest.raises(enroll_service.ServiceConfigError, match="needs at least one TPM vendor CA"):
        enroll_service.EnrollmentService(dict(enroll_config, **base))
    attest_config = _render_role_config("attestation_server", "attest.json.j2")
    assert attest_config["ek_trust"] == "vendor_ca" and attest_config["vendor_ca_dir"] is None
    assert attest_app.flush_interval(attest_config) == 1  # attestation_server_metrics_flush_interval
    with pytest.raises(attest.AttestError, match="needs at least one TPM vendor CA"):
        attest_app.build_attestor(dict(attest_config, asset_signer_pub=None, **attest_base))
    # with the vendor CAs (the default mode), the bare key of a genuine EK is refused: 400, nothing stored
    vendor_dir = tmp_path / "vendor"
    vendor_dir.mkdir()
    for i, path in enumerate(swtpm.vendor_ca_files):
        (vendor_dir / ("ca%d.pem" % i)).write_bytes(open(path, "rb").read())
    service = enroll_service.EnrollmentService(dict(base, vendor_ca_dir=str(vendor_dir)))
    head = db.head()
    for bare in (eks["pem"], base64.b64encode(eks["public"].marshal()).decode()):
        code, body = enroll_service.handle(None, json.dumps({"op": "add", "ekpub": bare, "hostname": "n1.example.test",
                                                             "profile": {"assets": ["hostname"]}}).encode(), service)
        assert code == 2 and "certificate chaining to a TPM vendor CA is required" in body["error"]
    assert db.head() == head
    added = service.perform({"op": "add", "ekpub": _pem(eks["cert"]).decode(), "hostname": "n1.example.test",
                             "profile": {"assets": ["hostname"]}})
    assert added["ekpubhash"] == eks["hash"]
    # tofu, asked for by name, still works
    assert enroll_service.EnrollmentService(dict(base, ek_trust="tofu")).ek_trust.mode == "tofu"


def test_allow_list_accepts_a_listed_ek_and_refuses_another(eks):
    trust = ek_trust.EkTrust("allow_list", allow_list=[eks["hash"].upper()])
    for name, form in _forms(eks["public"], eks["cert"]).items():
        assert ekpub.ekpubhash(trust.check_ek(form)) == eks["hash"], name
    for name, form in _forms(eks["other_public"], eks["other_cert"]).items():
        with pytest.raises(InvalidEkError, match="not on the EK allow list"):
            trust.check_ek(form)
    trust.check_attestation(eks["hash"], eks["pem"].encode(), None)
    trust.check_attestation(eks["hash"], eks["pem"].encode(), eks["cert"])
    with pytest.raises(InvalidEkError, match="not on the EK allow list"):
        trust.check_attestation(eks["other_hash"], ekpub.ek_public_pem(eks["other_public"]).encode(), None)
    with pytest.raises(InvalidEkError, match="does not certify this EK"):
        trust.check_attestation(eks["hash"], eks["pem"].encode(), eks["other_cert"])
    for kwargs, problem in (({}, "needs at least one ekpubhash"), ({"allow_list": ["ab" * 31]}, "not an ekpubhash"),
                            ({"allow_list": [eks["hash"] + "\n"]}, "not an ekpubhash"), ({"allow_list": eks["hash"]}, "must be a list")):
        with pytest.raises(ek_trust.EkTrustConfigError, match=problem):
            ek_trust.EkTrust("allow_list", **kwargs)
    with pytest.raises(ek_trust.EkTrustConfigError, match="only with ek_trust allow_list"):
        ek_trust.EkTrust("vendor_ca", vendor_cas=eks["cas"], allow_list=[eks["hash"]])
    with pytest.raises(ek_trust.EkTrustConfigError, match="unknown EK trust mode"):
        ek_trust.EkTrust("TOFU")


def test_allow_list_in_the_enrollment_service(eks, tmp_path):
    cred = tmp_path / "cred"
    pki.bootstrap_site_credentials(str(cred), "t", ["localhost"], [])
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    service = enroll_service.EnrollmentService({"db": db.path, "credentials_dir": str(cred), "ek_trust": "allow_list",
                                                "ek_allow_list": [eks["hash"]], "postclient": {"seal_policy": {"type": "none"}}})
    profile = {"assets": ["hostname"]}
    assert service.perform({"op": "add", "ekpub": eks["pem"], "hostname": "n1.example.test", "profile": profile})["ekpubhash"] == eks["hash"]
    code, body = enroll_service.handle(None, json.dumps({"op": "add", "ekpub": ekpub.ek_public_pem(eks["other_public"]),
                                                         "hostname": "n2.example.test", "profile": profile}).encode(), service)
    assert code == 2 and "not on the EK allow list" in body["error"]


def test_same_ek_same_decision_in_every_encoding(eks):
    """swtpm's high-range P-384 EK was accepted as TPM2B_PUBLIC and refused as PEM or certificate;
    hcp.core uses the L-1/L-2 EKs only, so it is refused in every encoding, for the same reason."""
    p384_forms = _forms(eks["p384"], eks["p384_cert"])
    tofu = ek_trust.EkTrust("tofu")
    vendor = ek_trust.EkTrust(vendor_cas=eks["cas"])
    listed = ek_trust.EkTrust("allow_list", allow_list=[ekpub.ekpubhash(eks["p384"])])  # even when listed
    for trust in (tofu, vendor, listed):
        reasons = set()
        for form in p384_forms.values():
            with pytest.raises(InvalidEkError) as info:
                trust.check_ek(form)
            reasons.add(str(info.value))
        assert reasons == {"an ECC EK must be on NIST P-256 (TCG EK template L-2)"}, reasons
    # the RSA EK: one ekpubhash from every encoding, accepted by tofu and a matching allow list
    for trust in (tofu, ek_trust.EkTrust("allow_list", allow_list=[eks["hash"]])):
        for name, form in _forms(eks["public"], eks["cert"]).items():
            assert ekpub.ekpubhash(trust.check_ek(form)) == eks["hash"], name
    # vendor_ca: every certificate encoding accepted, every bare key encoding refused
    for name, form in _forms(eks["public"], eks["cert"]).items():
        if name.startswith("cert"):
            assert ekpub.ekpubhash(vendor.check_ek(form)) == eks["hash"]
        else:
            with pytest.raises(InvalidEkError, match="certificate chaining"):
                vendor.check_ek(form)


def test_tpm2b_outside_the_default_template_is_refused(eks):
    """A TPM2B_PUBLIC that differs from the L-1 template (here: AES-256 instead of AES-128) has
    another ekpubhash than the PEM of its key: refused, like any EK the template cannot rebuild."""
    changed = type(eks["public"]).unmarshal(eks["public"].marshal())[0]
    changed.publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 256
    with pytest.raises(InvalidEkError, match="not of the TCG default EK template"):
        ekpub.load_ek_public(changed.marshal())
