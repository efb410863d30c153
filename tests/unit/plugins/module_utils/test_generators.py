# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every asset generator with a realistic context and a real enrollment CA."""
from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract
from ansible_collections.hcp.core.plugins.module_utils.enrollment import generators
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorContext, GeneratorError

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)
ENV = {"ENROLL_HOSTNAME": "web1.example.com", "ENROLL_DOMAIN": "example.com", "ENROLL_REALM": "EXAMPLE.COM"}
SECRETS = {"db-password": b"hunter2-very-secret", "api-token": b"tok-123-secret"}


@pytest.fixture(scope="module")
def issuer():
    key, cert = pki.create_ca("Test Enrollment CA", kind="rsa-2048", now=NOW)
    return pki.Issuer(key, [cert])


def make_ctx(issuer, profile=None, secrets=None):
    return GeneratorContext("web1.example.com", "ab" * 32, b"\x00\x01ek", profile or {}, dict(ENV), issuer,
                            SECRETS if secrets is None else secrets, NOW)


def run(name, ctx):
    assets = asset_contract.get_generator(name).generate(ctx)
    for asset in assets:
        assert "PRIVATE" not in repr(asset) and "bytes, sensitive=" in repr(asset)
        assert not any(value.decode() in repr(asset) for value in SECRETS.values())
    return {asset.name: asset for asset in assets}


def leaf(asset):
    return pki.load_certificates(asset.data)[0]


def test_registry_complete():
    assert generators.__all__
    assert set(asset_contract.REGISTRY) >= {
        "hostname", "rootfs-key", "https-server", "https-client", "pkinit-client", "pkinit-kdc", "pkinit-iprop",
        "pkinit-user", "issuer-ca", "krb5-conf", "ssh-host-keys", "secrets", "reenroll-hint"}


def test_unknown_generator():
    with pytest.raises(GeneratorError, match="unknown asset generator 'nope'"):
        asset_contract.get_generator("nope")


def test_hostname(issuer):
    assets = run("hostname", make_ctx(issuer))
    assert assets["etc-hostname"].data == b"web1.example.com\n"
    assert not assets["etc-hostname"].sensitive
    assert assets["etc-hostname"].install["dest"] == "/etc/hostname"


def test_rootfs_key(issuer):
    first = run("rootfs-key", make_ctx(issuer))["rootfs.key"]
    second = run("rootfs-key", make_ctx(issuer))["rootfs.key"]
    assert first.sensitive and len(first.data) == 64 and first.data != second.data
    assert first.install == {"category": "rootfs", "dest": "/etc/hcp/rootfs.key", "mode": "0600", "owner": "root"}


@pytest.mark.parametrize("name", ["https-server", "https-client"])
def test_https(issuer, name):
    profile = {"certificates": {name: {"dns_names": ["web1.example.com", "www.example.com"], "days": 10}}}
    assets = run(name, make_ctx(issuer, profile))
    assert assets[name + ".key"].sensitive and not assets[name + ".pem"].sensitive
    chain = pki.load_certificates(assets[name + ".pem"].data)
    assert len(chain) == 2 and chain[1] == issuer.certificate
    pki.verify_chain(chain[0], chain[1:], [issuer.certificate], now=NOW)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web1.example.com", "www.example.com"]
    assert chain[0].not_valid_after_utc == NOW + datetime.timedelta(days=10)
    key = pki.load_private_key(assets[name + ".key"].data)
    assert pki.public_key_pem(key) == pki.public_key_pem(chain[0].public_key())
    assert assets[name + ".key"].install == {"category": name, "dest": "/etc/hcp/%s/%s.key" % (name, name),
                                             "mode": "0600", "owner": "root"}


def test_https_server_defaults_to_hostname(issuer):
    cert = leaf(run("https-server", make_ctx(issuer))["https-server.pem"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web1.example.com"]
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=30)


@pytest.mark.parametrize("name,principal", [
    ("pkinit-client", "host/web1.example.com@EXAMPLE.COM"),
    ("pkinit-kdc", "krbtgt/EXAMPLE.COM@EXAMPLE.COM"),
    ("pkinit-iprop", "iprop/web1.example.com@EXAMPLE.COM"),
])
def test_pkinit_host(issuer, name, principal):
    assets = run(name, make_ctx(issuer))
    cert = leaf(assets[name + ".pem"])
    assert pki.principals_in_certificate(cert) == [principal]
    assert pki.is_rsa_key(cert.public_key()) and cert.public_key().key_size == 2048
    assert assets[name + ".key"].sensitive


def test_pkinit_client_principal_override(issuer):
    profile = {"certificates": {"pkinit-client": {"principal": "svc/web1.example.com@OTHER.ORG"}}}
    cert = leaf(run("pkinit-client", make_ctx(issuer, profile))["pkinit-client.pem"])
    assert pki.principals_in_certificate(cert) == ["svc/web1.example.com@OTHER.ORG"]


def test_pkinit_user(issuer):
    profile = {"certificates": {"pkinit-user": {"users": ["alice", "bob"]}}}
    assets = run("pkinit-user", make_ctx(issuer, profile))
    assert sorted(assets) == ["user-alice.key", "user-alice.pem", "user-bob.key", "user-bob.pem"]
    assert pki.principals_in_certificate(leaf(assets["user-bob.pem"])) == ["bob@EXAMPLE.COM"]
    assert assets["user-alice.key"].install == {"category": "pkinit-user", "dest": "~alice/.hcp/pkinit/user-alice.key",
                                                "mode": "0600", "owner": "alice"}


def test_pkinit_needs_rsa_ca():
    key, cert = pki.create_ca("EC CA", now=NOW)
    with pytest.raises(GeneratorError, match="pkinit-client: profile key certificates.pkinit-client: .*RSA"):
        run("pkinit-client", make_ctx(pki.Issuer(key, [cert])))


def test_no_issuer():
    with pytest.raises(GeneratorError, match="no enrollment CA"):
        run("https-server", make_ctx(None))


def test_issuer_ca(issuer):
    asset = run("issuer-ca", make_ctx(issuer))["ca.pem"]
    assert asset.data == issuer.chain_pem() and not asset.sensitive
    assert asset.install["category"] == "trust-anchor"


def test_krb5_conf(issuer):
    profile = {"krb5_conf": {
        "realms": {"EXAMPLE.COM": {"kdc": ["kdc1.example.com", "kdc2.example.com"], "pkinit_anchors": "FILE:/a.pem"}},
        "libdefaults": {"rdns": False, "default_realm": "EXAMPLE.COM", "ticket_lifetime": 36000},
        "domain_realm": {".example.com": "EXAMPLE.COM"},
    }}
    text = run("krb5-conf", make_ctx(issuer, profile))["krb5.conf"].data.decode()
    body = text.split("\n", 1)[1]
    assert body == (
        "\n[domain_realm]\n    .example.com = EXAMPLE.COM\n"
        "\n[libdefaults]\n    default_realm = EXAMPLE.COM\n    rdns = false\n    ticket_lifetime = 36000\n"
        "\n[realms]\n    EXAMPLE.COM = {\n        kdc = kdc1.example.com\n        kdc = kdc2.example.com\n"
        "        pkinit_anchors = FILE:/a.pem\n    }\n")
    assert text == run("krb5-conf", make_ctx(issuer, profile))["krb5.conf"].data.decode()


@pytest.mark.parametrize("config,key", [
    ({"libdefaults": {"default_realm": "X\n[realms]"}}, "krb5_conf.libdefaults.default_realm"),
    ({"libdefaults": {"a": "}"}}, "krb5_conf.libdefaults.a"),
    ({"libdefaults": {"bad key": "x"}}, "krb5_conf.libdefaults.bad key"),
    ({"Bad]": {}}, "krb5_conf.Bad]"),
    ({"libdefaults": "x"}, "krb5_conf.libdefaults"),
    ({"realms": {"R": {"kdc": []}}}, "krb5_conf.realms.R.kdc"),
    ({}, "krb5_conf"),
])
def test_krb5_conf_rejects(issuer, config, key):
    with pytest.raises(GeneratorError) as info:
        run("krb5-conf", make_ctx(issuer, {"krb5_conf": config}))
    assert "krb5-conf" in str(info.value) and key in str(info.value)


def test_ssh_host_keys(issuer):
    assets = run("ssh-host-keys", make_ctx(issuer))
    assert sorted(assets) == ["ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key",
                              "ssh_host_ed25519_key.pub"]
    private = serialization.load_ssh_private_key(assets["ssh_host_ed25519_key"].data, password=None)
    public = assets["ssh_host_ed25519_key.pub"].data.decode()
    assert public.startswith("ssh-ed25519 ") and public.endswith(" root@web1.example.com\n")
    assert public.split()[1].encode() in private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert assets["ssh_host_ed25519_key"].sensitive and not assets["ssh_host_ed25519_key.pub"].sensitive
    assert assets["ssh_host_ecdsa_key.pub"].data.startswith(b"ecdsa-sha2-nistp256 ")
    assert assets["ssh_host_ecdsa_key"].install["mode"] == "0600"


def test_ssh_host_keys_rsa(issuer):
    assets = run("ssh-host-keys", make_ctx(issuer, {"ssh_host_keys": {"types": ["rsa"]}}))
    assert assets["ssh_host_rsa_key.pub"].data.startswith(b"ssh-rsa ")


def test_secrets(issuer):
    assets = run("secrets", make_ctx(issuer, {"secrets": ["db-password"]}))
    assert list(assets) == ["secret-db-password"]
    asset = assets["secret-db-password"]
    assert asset.sensitive and asset.data == SECRETS["db-password"]
    assert asset.install["dest"] == "/etc/hcp/secrets/db-password"


def test_secret_missing_does_not_leak(issuer):
    with pytest.raises(GeneratorError) as info:
        run("secrets", make_ctx(issuer, {"secrets": ["db-password", "nope"]}))
    message = str(info.value)
    assert "secrets" in message and "nope" in message
    for value in SECRETS.values():
        assert value.decode() not in message
    assert "api-token" not in message


def test_reenroll_hint(issuer):
    hint = json.loads(run("reenroll-hint", make_ctx(issuer))["reenroll-hint"].data)
    assert hint == {"due": "2026-06-08T12:00:00Z"}
    short = {"certificates": {"https-server": {"days": 4}}}
    assert json.loads(run("reenroll-hint", make_ctx(issuer, short))["reenroll-hint"].data) == \
        {"due": "2026-06-03T12:00:00Z"}
    explicit = {"reenroll": {"days": 1}, "certificates": {"https-server": {"days": 4}}}
    assert json.loads(run("reenroll-hint", make_ctx(issuer, explicit))["reenroll-hint"].data) == \
        {"due": "2026-06-02T12:00:00Z"}


@pytest.mark.parametrize("name,profile,key", [
    ("https-server", {"certificates": {"https-server": {"days": 0}}}, "certificates.https-server.days"),
    ("https-server", {"certificates": {"https-server": {"days": "7"}}}, "certificates.https-server.days"),
    ("https-server", {"certificates": {"https-server": {"dns_names": "a"}}}, "certificates.https-server.dns_names"),
    ("https-server", {"certificates": {"https-server": {"dns_names": []}}}, "certificates.https-server.dns_names"),
    ("https-client", {"certificates": {"https-client": {"emails": [1]}}}, "certificates.https-client.emails"),
    ("https-client", {"certificates": []}, "certificates"),
    ("https-client", {"certificates": {"https-client": "x"}}, "certificates.https-client"),
    ("pkinit-client", {"certificates": {"pkinit-client": {"principal": "nouser"}}},
     "certificates.pkinit-client.principal"),
    ("pkinit-user", {"certificates": {"pkinit-user": {"users": ["../root"]}}}, "certificates.pkinit-user.users"),
    ("pkinit-user", {"certificates": {"pkinit-user": {"users": ["a"], "realm": "A@B"}}},
     "certificates.pkinit-user.realm"),
    ("ssh-host-keys", {"ssh_host_keys": {"types": ["dsa"]}}, "ssh_host_keys.types"),
    ("ssh-host-keys", {"ssh_host_keys": {"types": ["rsa", "rsa"]}}, "ssh_host_keys.types"),
    ("secrets", {"secrets": "db-password"}, "secrets"),
    ("secrets", {"secrets": ["../x"]}, "secrets"),
    ("reenroll-hint", {"reenroll": {"days": -1}}, "reenroll.days"),
])
def test_bad_profile_inputs(issuer, name, profile, key):
    with pytest.raises(GeneratorError) as info:
        run(name, make_ctx(issuer, profile))
    assert "asset generator %s: profile key %s:" % (name, key) in str(info.value)


def test_pkinit_realm_required(issuer):
    ctx = make_ctx(issuer)
    ctx.env = {}
    with pytest.raises(GeneratorError, match="certificates.pkinit-kdc.realm"):
        run("pkinit-kdc", ctx)


@pytest.mark.parametrize("name,hostname,profile,key", [
    ("pkinit-user", "web1.example.com", {"certificates": {"pkinit-user": {"users": ["alice", "orchestrator"]}}},
     "certificates.pkinit-user.users"),
    ("pkinit-user", "web1.example.com", {"certificates": {"pkinit-user": {"users": ["enrollsvc"]}}}, "certificates.pkinit-user.users"),
    ("https-client", "attest-x", {}, "certificates.https-client.dns_names"),
    ("https-server", "attest-x.example.com", {}, "certificates.https-server.dns_names"),
    ("https-server", "web1.example.com", {"certificates": {"https-server": {"dns_names": ["orchestrator"]}}},
     "certificates.https-server.dns_names"),
    ("pkinit-client", "orchestrator", {}, "certificates.pkinit-client.principal"),
    ("pkinit-client", "web1.example.com", {"certificates": {"pkinit-client": {"principal": "attest-a1@EXAMPLE.COM"}}},
     "certificates.pkinit-client.principal"),
])
def test_generators_refuse_reserved_service_names(issuer, name, hostname, profile, key):
    """A profile (or a host name) asking for a certificate named after a service identity is a
    GeneratorError (HTTP 400), whatever CA the services trust."""
    ctx = GeneratorContext(hostname, "ab" * 32, b"\x00\x01ek", profile, dict(ENV), issuer, {}, NOW)
    with pytest.raises(GeneratorError, match="profile key %s: .*reserved for the site's service identities" % key.replace(".", r"\.")):
        asset_contract.get_generator(name).generate(ctx)


def test_generators_refuse_the_sites_own_client_names():
    key, cert = pki.create_ca("Site CA", kind="rsa-2048", now=NOW)
    site_issuer = pki.Issuer(key, [cert], reserved_names=["ci-runner"])
    ctx = make_ctx(site_issuer, {"certificates": {"pkinit-user": {"users": ["ci-runner"]}}})
    with pytest.raises(GeneratorError, match="reserved"):
        run("pkinit-user", ctx)
    assert "user-ci-runner.pem" in run("pkinit-user", make_ctx(issuer_without_site_names(), ctx.profile))


def issuer_without_site_names():
    key, cert = pki.create_ca("Other CA", kind="rsa-2048", now=NOW)
    return pki.Issuer(key, [cert])
