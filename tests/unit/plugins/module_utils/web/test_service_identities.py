# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Service identities come from the site's service-client CA, never from the enrollment CA.

The attack: the enrollment CA issues every host and user certificate, so an enrollment whose
profile asks for a pkinit-user "orchestrator", or a host named "attest-x", used to get a
certificate with a service's common name from the CA the services trusted. Both attack
certificates are made here by the real generators from the site's real enrollment CA (with the
generators' reserved-name refusal switched off, as before it existed), then presented over real
TLS to the enrollment API and the policy service: refused (403 by the app even when the TLS
layer trusts the enrollment CA as well; no handshake at all when it trusts only the
service-client CA, as nginx now does). The site's real service certificates pass."""
from __future__ import annotations

import datetime
import json
import os
import ssl
import sys
import urllib.error
import urllib.request

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.policy.client import PolicyClient, PolicyUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.web import enroll_app, policy_app
from ansible_collections.hcp.core.tests.unit.helpers import NginxLikeHandler, serve_wsgi

NOW = datetime.datetime.now(datetime.timezone.utc)


def _generate(issuer, name, hostname, profile):
    ctx = asset_contract.GeneratorContext(hostname, "ab" * 32, b"ek", profile, {"ENROLL_REALM": "LAB.TEST"},
                                          issuer, {}, NOW)
    return dict((a.name, a.data) for a in asset_contract.get_generator(name).generate(ctx))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site credentials (real bootstrap) and the two attack certificate files."""
    base = tmp_path_factory.mktemp("svc-site")
    paths = pki.bootstrap_site_credentials(str(base / "pki"), "lab", ["localhost"], ["orchestrator", "enrollsvc"],
                                           ca_kind="rsa-2048")["paths"]
    with open(paths["ca_key"], "rb") as key, open(paths["ca_cert"], "rb") as pem:
        enrollment_ca = pki.Issuer.from_pem(key.read(), pem.read())
    # The generators as they were before the reserved-name refusal (defense in depth, tested in
    # test_generators.py): what an old enrollment server issued to any profile asking for it.
    enrollment_ca.reserve_service_names = False
    user = _generate(enrollment_ca, "pkinit-user", "node1.lab.test", {"certificates": {"pkinit-user": {"users": ["orchestrator"]}}})
    host = _generate(enrollment_ca, "https-client", "attest-x", {})
    attacks = {}
    for label, files, stem in (("pkinit_user_orchestrator", user, "user-orchestrator"), ("host_attest_x", host, "https-client")):
        (base / (label + ".pem")).write_bytes(files[stem + ".pem"])
        (base / (label + ".key")).write_bytes(files[stem + ".key"])
        os.chmod(str(base / (label + ".key")), 0o600)
        attacks[label] = (str(base / (label + ".pem")), str(base / (label + ".key")))
    both = base / "both-cas.pem"  # a TLS layer that (wrongly, as before) trusts the enrollment CA too
    both.write_bytes(open(paths["ca_cert"], "rb").read() + open(paths["svc_ca_cert"], "rb").read())
    return {"paths": paths, "attacks": attacks, "both_cas": str(both), "base": base}


def _subject_cn(path):
    with open(path, "rb") as handle:
        return pki.load_certificates(handle.read())[0].subject.rfc4514_string()


def test_attack_certificates_carry_service_names_from_the_enrollment_ca(site):
    """The attack is real: both certificates chain to the enrollment CA and carry the names."""
    with open(site["paths"]["ca_cert"], "rb") as handle:
        anchors = pki.load_certificates(handle.read())
    cns = {}
    for label, (cert, _key) in site["attacks"].items():
        with open(cert, "rb") as handle:
            chain = pki.load_certificates(handle.read())
        pki.verify_chain(chain[0], chain[1:], anchors)
        cns[label] = _subject_cn(cert)
    assert cns == {"pkinit_user_orchestrator": "CN=orchestrator", "host_attest_x": "CN=attest-x"}


def _get(url, cert, key, ca):
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def enroll_api(site, swtpm, tmp_path, monkeypatch):
    """The enrollment app with the role's configuration (service_client_ca, authorized_clients
    orchestrator), behind TLS that verifies client certificates against BOTH CAs and passes the
    verified one the way nginx does: the app alone must refuse the enrollment CA's."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": os.path.dirname(site["paths"]["ca_key"]), "authorized_clients": ["orchestrator"],
              "ek_trust": "tofu",
              "service_client_ca": site["paths"]["svc_ca_cert"], "postclient": {"seal_policy": {"type": "none"}},
              "reserved_names": ["orchestrator", "enrollsvc", "ci-runner"], "realm": "LAB.TEST"}
    (tmp_path / "enroll.json").write_text(json.dumps(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    config["writer"] = [sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.service",
                        str(tmp_path / "enroll.json")]
    app = enroll_app.create_app(config)
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
    with serve_wsgi(app, site["paths"]["server_cert"], site["paths"]["server_key"], client_ca=site["both_cas"],
                    request_handler=NginxLikeHandler) as url:
        yield {"url": url, "db": db, "ek": ek}


@pytest.mark.parametrize("attack", ["pkinit_user_orchestrator", "host_attest_x"])
def test_enrollment_api_refuses_enrollment_ca_service_names(site, enroll_api, attack):
    cert, key = site["attacks"][attack]
    head = enroll_api["db"].head()
    status, body = _get(enroll_api["url"] + "/v1/find?hostname_regex=.", cert, key, site["paths"]["ca_cert"])
    assert status == 403 and "service-client CA" in body["error"], body
    # a write too: nothing reaches the DB
    context = ssl.create_default_context(cafile=site["paths"]["ca_cert"])
    context.load_cert_chain(cert, key)
    data = json.dumps({"ekpub": enroll_api["ek"], "hostname": "evil.lab.test", "profile": {}}).encode()
    request = urllib.request.Request(enroll_api["url"] + "/v1/add", data=data, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, context=context, timeout=30)
    assert info.value.code == 403
    assert enroll_api["db"].head() == head


def test_enrollment_api_admits_the_service_certificate(site, enroll_api):
    paths = site["paths"]
    status, body = _get(enroll_api["url"] + "/v1/find?hostname_regex=.", paths["client_orchestrator_cert"],
                        paths["client_orchestrator_key"], paths["ca_cert"])
    assert status == 200 and body == {"entries": []}
    # another service identity of the same CA, but not an authorized one
    status, body = _get(enroll_api["url"] + "/v1/find?hostname_regex=.", paths["client_enrollsvc_cert"],
                        paths["client_enrollsvc_key"], paths["ca_cert"])
    assert status == 403 and "enrollsvc" in body["error"]


def test_tls_trusting_only_the_service_ca_refuses_the_handshake(site):
    """What nginx does now (ssl_client_certificate = svc-ca.pem, the API and erepl alike): the
    enrollment CA's certificates do not even complete the handshake."""
    app = enroll_app.create_app({"db": str(site["base"] / "nodb"), "credentials_dir": "/nonexistent", "require_client_cert": True, "ek_trust": "tofu",
                                 "service_client_ca": site["paths"]["svc_ca_cert"]})
    with serve_wsgi(app, site["paths"]["server_cert"], site["paths"]["server_key"], client_ca=site["paths"]["svc_ca_cert"],
                    request_handler=NginxLikeHandler) as url:
        for cert, key in site["attacks"].values():
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                _get(url + "/v1/janitor", cert, key, site["paths"]["ca_cert"])
        # the service certificate gets through TLS (the app then answers; no DB here: not 403)
        status, body = _get(url + "/healthcheck", site["paths"]["client_orchestrator_cert"], site["paths"]["client_orchestrator_key"],
                            site["paths"]["ca_cert"])
        assert status != 403, body


@pytest.fixture
def policy_service(site, tmp_path):
    """The policy app as the role configures it (service_client_ca, authorized_clients enrollsvc)
    behind TLS trusting both CAs (nginx-like)."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"start": "main", "filters": {"main": [{"name": "all", "action": "accept"}]}}))
    app = policy_app.create_app({"policy_file": str(policy_file), "audit_log": str(tmp_path / "audit"),
                                 "service_client_ca": site["paths"]["svc_ca_cert"], "authorized_clients": ["enrollsvc"]})
    with serve_wsgi(app, site["paths"]["server_cert"], site["paths"]["server_key"], client_ca=site["both_cas"],
                    request_handler=NginxLikeHandler) as url:
        yield url


def _policy(url, site, cert, key):
    return PolicyClient(url, ca_file=site["paths"]["ca_cert"], client_cert=cert, client_key=key, timeout=30).check(
        "enrollsvc::add_request", "t-1", {"hostname": "h"})


@pytest.mark.parametrize("attack", ["pkinit_user_orchestrator", "host_attest_x"])
def test_policy_service_refuses_enrollment_ca_certificates(site, policy_service, attack):
    cert, key = site["attacks"][attack]
    result = _policy(policy_service, site, cert, key)
    assert not result.accepted  # 403: a refusal, never a decision for this caller
    context = ssl.create_default_context(cafile=site["paths"]["ca_cert"])
    context.load_cert_chain(cert, key)
    request = urllib.request.Request(policy_service + "/run", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"hookname": "x", "request_uid": "1", "params": {}}).encode())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, context=context, timeout=30)
    assert info.value.code == 403 and "service-client CA" in json.loads(info.value.read())["error"]


def test_policy_service_admits_the_enrollment_service_only(site, policy_service):
    paths = site["paths"]
    assert _policy(policy_service, site, paths["client_enrollsvc_cert"], paths["client_enrollsvc_key"]).accepted
    assert not _policy(policy_service, site, paths["client_orchestrator_cert"], paths["client_orchestrator_key"]).accepted
    with pytest.raises(PolicyUnavailableError):  # no certificate at all: TLS refuses (CERT_REQUIRED)
        _policy(policy_service, site, None, None)


def _add(url, site, hostname, profile):
    paths = site["paths"]
    context = ssl.create_default_context(cafile=paths["ca_cert"])
    context.load_cert_chain(paths["client_orchestrator_cert"], paths["client_orchestrator_key"])
    data = json.dumps({"ekpub": site["ek"], "hostname": hostname, "profile": profile}).encode()
    request = urllib.request.Request(url + "/v1/add", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("hostname,profile", [
    ("attest-x", {"assets": ["hostname"]}),
    ("attest-x.lab.test", {"assets": ["https-client"]}),
    ("orchestrator", {"assets": ["hostname"]}),
    ("ci-runner.lab.test", {"assets": ["hostname"]}),  # the site's own client name (reserved_names)
    ("node1.lab.test", {"assets": ["pkinit-user"], "certificates": {"pkinit-user": {"users": ["orchestrator"]}}}),
    ("node1.lab.test", {"assets": ["pkinit-user"], "certificates": {"pkinit-user": {"users": ["ci-runner"]}}}),
])
def test_enrollment_refuses_reserved_names(site, enroll_api, hostname, profile):
    """The attacks of this file at their source: the enrollment service will not even issue
    them (400, nothing written)."""
    head = enroll_api["db"].head()
    status, body = _add(enroll_api["url"], dict(site, ek=enroll_api["ek"]), hostname, profile)
    assert status == 400 and "reserved for the site's service identities" in body["error"], body
    assert enroll_api["db"].head() == head
    status, body = _add(enroll_api["url"], dict(site, ek=enroll_api["ek"]), "node1.lab.test",
                        {"assets": ["pkinit-user"], "certificates": {"pkinit-user": {"users": ["alice"]}}})
    assert status == 201, body
