# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measurement-keyed release (issue 18 part 2, seed 002) end to end: a host enrolled with golden
PCR values attests to the real attestation app over real TLS with a real swtpm, gets a
minutes-long key-server credential from the key-server credential CA, and retrieves from the
real key-server app (over real TLS, store sealed to the swtpm) the secrets the release policy
maps to its measurement, from the three backends (the key-server store, a JSON file, and a KMS
over PKCS#11 on a real SoftHSM2 token). The attacks: a host whose quote does not match, an
expired or over-long credential, a host-CA certificate for measurement-bound items, a
measurement change between two attests, a replayed attest request and a replayed answer."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import replica as arepl
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.keyserver import release as ks_release
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient, KeyServerClientError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.unseal.hsm import Hsm
from ansible_collections.hcp.core.plugins.module_utils.web import attest_app
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import ServiceConfigError
from ansible_collections.hcp.core.tests.unit.helpers import serve_wsgi
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import M1, KeyServerSite, write

GOLDEN_PCR = 23
SOFTHSM = next((m for m in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                if os.path.exists(m)), None)
PIN = "4321-user-pin"
STORED = "datica-test/disk-key"


class Clock(object):
    def __init__(self):
        import time  # pylint: disable=import-outside-toplevel
        self.now = time.time()

    def __call__(self):
        return self.now


def softhsm_token(workdir):
    """A fresh SoftHSM2 token 'hcp-kms' in its own token directory (the KMS of the pkcs11 backend)."""
    tokens = workdir / "tokens"
    tokens.mkdir(mode=0o700)
    conf = workdir / "softhsm2.conf"
    conf.write_text("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % tokens)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the library at C_Initialize
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "hcp-kms", "--pin", PIN,
                    "--so-pin", "8765-so-pin"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return "hcp-kms"


class ReleaseSite(object):
    """The enrollment of one host (golden PCR 23, https-client with keyserver_profile ``vm``), the
    attestation app with the key-server credential CA over TLS, and the key-server app with
    ``credential_ca`` and the release policy over TLS."""

    def __init__(self, tpm_fixture, tmp_path, clock):
        self.tmp = tmp_path
        self.tpm = tpm_fixture
        self.stack = contextlib.ExitStack()
        with tpm_fixture.open() as tpm:
            self.golden = tpm.read_pcrs("sha256", [GOLDEN_PCR])[GOLDEN_PCR].hex()
            ek_pem = ek_public_pem(tpm.ek_public())
        self.measurement = measurement_of({"sha256": {str(GOLDEN_PCR): self.golden}})
        # enrollment: the host's entry in a git DB, replicated by arepl
        source = EnrollmentDb(str(tmp_path / "source.git"))
        source.init()
        ca_key, ca_cert = pki.create_ca("HCP test enrollment CA")
        self.signer = pki.Signer(pki.new_private_key("ec-p256"))
        config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=self.signer,
                                         postclient={"seal_policy": {"type": "none"}}, ek_trust="tofu")
        profile = {"assets": ["hostname", "https-client"],
                   "certificates": {"https-client": {"keyserver_client": True, "keyserver_profile": "vm"}},
                   "attest": {"pcrs": {"sha256": {str(GOLDEN_PCR): self.golden}}}}
        h, host, files, _s = enroll.build_entry(config, ek_pem, "node9.example.test", profile)
        enroll.store_entry(source, config, h, host, files)
        replica = arepl.Replica(str(tmp_path / "arepl"), source.path)
        assert replica.sync()["error"] is None
        # the key-server credential CA, held by the attestation servers
        cred_key, cred_cert = pki.create_ca("HCP test key-server credential CA")
        self.credential_issuer = pki.Issuer(cred_key, [cred_cert])
        cred_dir = tmp_path / "credca"
        cred_dir.mkdir()
        self.credential_ca_key = write(cred_dir / "ca.key", pki.private_key_pem(cred_key))
        self.credential_ca_file = write(cred_dir / "ca.pem", pki.certificate_pem(cred_cert), 0o644)
        key_file = tmp_path / "ticket.key"
        attest.write_ticket_key_file(str(key_file))
        self.attest_config = {"db": replica.current_link, "ticket_key_file": str(key_file), "ek_trust": "tofu",
                              "used_ticket_dir": str(tmp_path / "used"),
                              "keyserver_credential_ca_key": self.credential_ca_key,
                              "keyserver_credential_ca_cert": self.credential_ca_file, "keyserver_credential_minutes": 10}
        # the key-server, its store sealed to the swtpm; the TLS front end also trusts the credential CA
        self.ks = KeyServerSite(tpm_fixture, tmp_path, credential_ca=self.credential_ca_file)
        with open(self.ks.front_ca_file, "ab") as handle:
            handle.write(pki.certificate_pem(cred_cert))
        self.ks.store.store(STORED, b"disk-key-from-the-store")
        self.ks.store.store("datica-test/bound", b"bound-to-M1", exportable=False, measurements=[M1])
        self.secrets_file = write(tmp_path / "secrets.json", b"", 0o600)
        ks_release.write_secrets_file(self.secrets_file, {"app-token": b"app-token-from-json", "other": b"other-secret"})
        self.policy = {
            "format": "hcp.core.keyserver-release-policy", "version": 1,
            "backends": {"ks": {"type": "keyserver"}, "file": {"type": "json", "path": self.secrets_file}},
            "secrets": {"release/disk-key": {"backend": "ks", "ref": STORED},
                        "release/app-token": {"backend": "file", "ref": "app-token"},
                        "release/other": {"backend": "file", "ref": "other"},
                        "release/vm-token": {"backend": "file", "ref": "app-token"}},
            "rules": [{"measurement": self.measurement, "secrets": ["release/disk-key", "release/app-token"]},
                      {"measurement": M1, "secrets": ["release/other"]},
                      {"profile": "vm", "secrets": ["release/vm-token"]}],
        }
        if SOFTHSM:
            token = softhsm_token(tmp_path)
            pin_file = write(tmp_path / "kms.pin", PIN.encode(), 0o600)
            with Hsm(SOFTHSM, token, PIN) as hsm:
                hsm.ensure_key("hcp-kms-key")
                blob = hsm.encrypt(b"image-key-from-the-kms")
            self.kms_file = write(tmp_path / "kms.json", b"", 0o600)
            ks_release.write_secrets_file(self.kms_file, {"occlum/1/image_key": blob})
            self.policy["backends"]["kms"] = {"type": "pkcs11", "module": SOFTHSM, "token_label": token,
                                              "pin_file": pin_file, "key_label": "hcp-kms-key", "path": self.kms_file}
            self.policy["secrets"]["release/image-key"] = {"backend": "kms", "ref": "occlum/1/image_key"}
            self.policy["rules"][0]["secrets"].append("release/image-key")
        self.ks.config["release_policy"] = write(tmp_path / "release.json", json.dumps(self.policy).encode(), 0o644)
        self.ks.start(clock=clock)
        self.stack.callback(self.ks.close)
        self.attest_url = self.stack.enter_context(serve_wsgi(attest_app.create_app(self.attest_config),
                                                              self.ks.server_cert, self.ks.server_key))
        self.credential_dir = str(tmp_path / "credential")

    def attest(self, transport=None, credential_dir=None):
        with self.tpm.open() as tpm:
            return attest_client.attest(tpm, transport or self.attest_url, self.signer.public_key_pem(),
                                        ca_file=self.ks.ca_file, unseal=False,
                                        keyserver_credential_dir=credential_dir or self.credential_dir)

    def host_certificate(self):
        """(cert path, key path) of a node9 certificate from the enrollment (host) CA naming the same
        measurement and profile as its credential would: what the host holds without attesting."""
        key = pki.new_private_key()
        cert = self.ks.issuer.issue(key.public_key(), "https-client", "node9.example.test",
                                    keyserver_binding={"profile": "vm", "measurement": self.measurement})
        return (write(self.tmp / "node9.pem", pki.certificate_pem(cert), 0o644),
                write(self.tmp / "node9.key", pki.private_key_pem(key)))

    def client(self, **options):
        return KeyServerClient(self.ks.url, ca_file=self.ks.ca_file, credential_dir=self.credential_dir, timeout=30, **options)

    def close(self):
        self.stack.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def site(fresh_swtpm, tmp_path, clock):
    value = ReleaseSite(fresh_swtpm, tmp_path, clock)
    yield value
    value.close()


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_attested_host_gets_a_credential_and_its_secrets_from_every_backend(site):
    result = site.attest()
    info = result["keyserver_credential"]
    assert info["measurement"] == site.measurement and info["profile"] == "vm"
    assert 9 * 60 <= info["not_after"] - datetime.datetime.now(datetime.timezone.utc).timestamp() <= 10 * 60 + 5
    assert _mode(site.credential_dir) == 0o700
    for name in (attest_client.CREDENTIAL_CERT_FILE, attest_client.CREDENTIAL_KEY_FILE):
        assert _mode(os.path.join(site.credential_dir, name)) == 0o600
    leaf = pki.load_certificates(open(info["path"], "rb").read())[0]
    assert pki.issued_by(leaf, site.credential_issuer.certificate)
    assert leaf.subject.rfc4514_string() == "CN=node9.example.test"
    client = site.client()
    assert client.using_credential
    assert client.retrieve("release/disk-key")["data"] == b"disk-key-from-the-store"
    assert client.retrieve("release/app-token")["data"] == b"app-token-from-json"
    assert client.retrieve("release/vm-token")["data"] == b"app-token-from-json"  # by profile label
    if SOFTHSM:
        assert client.retrieve("release/image-key")["data"] == b"image-key-from-the-kms"
    with pytest.raises(KeyServerClientError, match="not released to this host's measurement") as exc:
        client.retrieve("release/other")  # another measurement's secret
    assert exc.value.status == 403
    assert site.ks.audit()[-1]["attested"] is True and site.ks.audit()[-1]["decision"] == "deny"
    audit = open(site.ks.audit_file, "rb").read()
    for secret in (b"disk-key-from-the-store", b"app-token-from-json", b"image-key-from-the-kms"):
        assert secret not in audit


def test_a_host_whose_quote_does_not_match_gets_no_credential(site):
    with site.tpm.open() as tpm:
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
    with pytest.raises(attest_client.AttestServerError, match="PCR policy not satisfied") as exc:
        site.attest()
    assert exc.value.status == 403
    assert not os.path.exists(os.path.join(site.credential_dir, attest_client.CREDENTIAL_CERT_FILE))


def test_an_expired_or_over_long_credential_is_refused(site, clock):
    site.attest()
    client = site.client()
    assert client.retrieve("release/app-token")["data"] == b"app-token-from-json"
    clock.now += 11 * 60  # past the credential's 10 minutes (the cached verification too)
    with pytest.raises(KeyServerClientError, match="not a key-server client of this site") as exc:
        site.client().retrieve("release/app-token")
    assert exc.value.status == 403
    clock.now -= 11 * 60
    # a credential of the right CA, measurement and profile, but living two hours
    key = pki.new_private_key()
    cert = site.credential_issuer.issue(key.public_key(), "https-client", "node9.example.test",
                                        keyserver_binding={"profile": "vm", "measurement": site.measurement},
                                        lifetime=datetime.timedelta(hours=2))
    long_dir = site.tmp / "long"
    attest_client.store_credential(str(long_dir), key, pki.certificate_pem(cert))
    with pytest.raises(KeyServerClientError, match="longer than the 60 allowed"):
        KeyServerClient(site.ks.url, ca_file=site.ks.ca_file, credential_dir=str(long_dir)).retrieve("release/app-token")
    # the client no longer prefers a credential that expired: it falls back to its certificate
    assert attest_client.load_credential(site.credential_dir, now=clock.now + 11 * 60) is None


def test_a_host_ca_certificate_is_refused_for_measurement_bound_items(site):
    """node1's certificate comes from the enrollment (host) CA and names M1 in its binding: with the
    credential CA configured, that enrollment-time measurement no longer counts. On the old code the
    non-exportable item bound to M1 is released to it."""
    node1 = site.ks.client("node1")
    with pytest.raises(KeyServerClientError, match="not exportable") as exc:
        node1.retrieve("datica-test/bound")
    assert exc.value.status == 403
    with pytest.raises(KeyServerClientError, match="only to hosts holding a key-server credential"):
        node1.retrieve("release/other")  # M1's release secret
    # the same measurement and profile from the host CA in a fresh certificate: still no
    key = pki.new_private_key()
    forged = site.ks.issuer.issue(key.public_key(), "https-client", "node9.example.test",
                                  keyserver_binding={"profile": "vm", "measurement": site.measurement})
    forged_dir = site.tmp / "forged"
    attest_client.store_credential(str(forged_dir), key, pki.certificate_pem(forged))
    forged_client = KeyServerClient(site.ks.url, ca_file=site.ks.ca_file, credential_dir=str(forged_dir))
    with pytest.raises(KeyServerClientError, match="only to hosts holding a key-server credential"):
        forged_client.retrieve("release/disk-key")
    # exportable items under the ACL still work with host certificates
    assert node1.retrieve(STORED)["data"] == b"disk-key-from-the-store"


def test_a_measurement_change_between_two_attests_stops_release(site, clock):
    site.attest()
    first = open(os.path.join(site.credential_dir, attest_client.CREDENTIAL_CERT_FILE), "rb").read()
    assert site.client().retrieve("release/disk-key")["data"] == b"disk-key-from-the-store"
    with site.tpm.open() as tpm:
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
    with pytest.raises(attest_client.AttestServerError, match="PCR policy not satisfied"):
        site.attest()
    # no new credential; the old one names the old measurement and dies within its minutes
    assert open(os.path.join(site.credential_dir, attest_client.CREDENTIAL_CERT_FILE), "rb").read() == first
    clock.now += 11 * 60
    with pytest.raises(KeyServerClientError) as exc:
        site.client().retrieve("release/disk-key")
    assert exc.value.status == 403


def test_replayed_attest_request_and_answer(site):
    recorded = []

    def recording(path, body):
        status, answer = transport(path, body)
        recorded.append((path, body, status, answer))
        return status, answer
    transport = attest_client.http_transport(site.attest_url, site.ks.ca_file)
    site.attest(transport=recording)
    _path, old_request, status, old_answer = recorded[-1]
    assert status == 200
    # 1. the old complete request (ticket, quote, key) sent again: refused, no credential
    status, answer = transport("/v1/complete", old_request)
    assert status == 409 and "already used" in answer["error"] and "keyserver_credential" not in json.dumps(answer)

    # 2. a man in the middle answers a new exchange with the old answer: the client refuses it
    def replaying(path, body):
        if path == "/v1/complete":
            transport(path, body)
            return 200, old_answer
        return transport(path, body)
    other_dir = str(site.tmp / "other-credential")
    with pytest.raises(attest_client.AttestClientError, match="not for this exchange"):
        site.attest(transport=replaying, credential_dir=other_dir)
    assert not os.path.exists(os.path.join(other_dir, attest_client.CREDENTIAL_CERT_FILE))


def test_bad_credential_keys_are_400_before_the_ticket_is_used(site):
    transport = attest_client.http_transport(site.attest_url, site.ks.ca_file)
    with site.tpm.open() as tpm:
        weak = pki.new_private_key("rsa-2048").public_key()  # accepted size; a 1024-bit key is not
        for value, status in (("not a key", 400), ("x" * 5000, 400), (7, 400)):
            started = transport("/v1/initiate", {"ekpubhash": tpm.ekpubhash()})[1]
            code, answer = transport("/v1/complete", {"ticket": started["ticket"], "ekpub": "x", "quote": {},
                                                      "keyserver_key": value})
            assert code == status, answer
    assert pki.is_credential_key(weak)
    from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel
    assert not pki.is_credential_key(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())


def test_release_policy_and_credential_configuration_errors(site, tmp_path):
    bad = dict(site.policy, rules=[{"measurement": "pcrs-sha256:xyz", "secrets": ["release/app-token"]}])
    for policy, message in ((bad, "measurement"),
                            (dict(site.policy, secrets={"keyserver/master": {"backend": "file"}}), "reserved"),
                            (dict(site.policy, rules=[{"secrets": ["release/app-token"]}]), "needs secrets and a measurement"),
                            (dict(site.policy, extra=1), "exactly format"),
                            (dict(site.policy, backends={"x": {"type": "vault"}}), "needs a type")):
        path = write(tmp_path / "bad.json", json.dumps(policy).encode(), 0o644)
        with pytest.raises(ks_release.ReleasePolicyError, match=message):
            ks_release.load_release_policy(path, site.ks.store)
    config = dict(site.ks.config)
    del config["credential_ca"]
    with pytest.raises(ServiceConfigError, match="release_policy needs credential_ca"):
        from ansible_collections.hcp.core.plugins.module_utils.web import keyserver_app  # pylint: disable=import-outside-toplevel
        keyserver_app.create_app(config, store=site.ks.store)
    os.chmod(site.credential_ca_key, 0o644)
    with pytest.raises(attest.AttestError, match="must not be readable by group or others"):
        attest_app.build_attestor(site.attest_config)
    os.chmod(site.credential_ca_key, 0o600)
    with pytest.raises(attest.AttestError, match="1..60"):
        attest_app.build_attestor(dict(site.attest_config, keyserver_credential_minutes=600))
    # a world-readable secrets file is refused at release (503), nothing released
    os.chmod(site.secrets_file, 0o644)
    site.attest()
    with pytest.raises(KeyServerClientError, match="readable by its owner only") as exc:
        site.client().retrieve("release/app-token")
    assert exc.value.status == 503
