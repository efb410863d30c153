# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.site_credentials on real files: check mode, creation, idempotence, modes, no secrets out."""
from __future__ import annotations

import datetime
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.modules import site_credentials


def test_bootstrap_check_mode_idempotence(tmp_path, run_module):
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test", "localhost"],
            "client_names": ["orchestrator"]}
    out = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert out["changed"] and "client_orchestrator_key" in out["created"] and not os.path.exists(path)
    out = run_module(site_credentials, args, raw=True)
    assert out["rc"] == 0 and out["changed"] and len(out["created"]) == 12 and out["reissued"] == []
    assert "PRIVATE KEY" not in out["raw"] and "BEGIN CERTIFICATE" in out["ca_cert"] and "BEGIN CERTIFICATE" in out["svc_ca_cert"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out["paths"]["ca_key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out["paths"]["server_cert"]).st_mode) == 0o644
    with open(out["paths"]["server_cert"], "rb") as handle:
        chain = pki.load_certificates(handle.read())
    assert len(chain) == 2
    before = dict((p, open(p, "rb").read()) for p in out["paths"].values())
    again = run_module(site_credentials, args)
    assert not again["changed"] and again["created"] == []
    assert dict((p, open(p, "rb").read()) for p in again["paths"].values()) == before
    # A new client name adds only its pair.
    more = run_module(site_credentials, dict(args, client_names=["orchestrator", "attest-1"]))
    assert sorted(more["created"]) == ["client_attest-1_cert", "client_attest-1_key"]


def test_bad_input(tmp_path, run_module):
    out = run_module(site_credentials, {"path": str(tmp_path / "p"), "site": "lab", "server_names": []})
    assert out["failed"] and "server_names" in out["msg"]
    out = run_module(site_credentials, {"path": str(tmp_path / "p2"), "site": "lab", "server_names": ["a"],
                                        "client_names": ["../x"]})
    assert out["failed"] and "invalid client name" in out["msg"]
    assert not os.path.exists(str(tmp_path / "p2"))


def test_extra_server_certs(tmp_path, run_module):
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test"],
            "server_certs": {"attest-a1": ["a1.example.test", "localhost"]}}
    out = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert out["changed"] and {"server_attest-a1_key", "server_attest-a1_cert"} <= set(out["created"])
    assert not os.path.exists(path)
    out = run_module(site_credentials, args, raw=True)
    assert out["rc"] == 0 and len(out["created"]) == 12 and "PRIVATE KEY" not in out["raw"]
    assert out["paths"]["server_attest-a1_key"] == os.path.join(path, "server-attest-a1.key")
    assert stat.S_IMODE(os.stat(out["paths"]["server_attest-a1_key"]).st_mode) == 0o600
    with open(out["paths"]["server_attest-a1_cert"], "rb") as handle:
        leaf = pki.load_certificates(handle.read())[0]
    assert leaf.subject.rfc4514_string() == "O=lab,CN=a1.example.test"
    again = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert not again["changed"] and again["created"] == []
    again = run_module(site_credentials, args)
    assert not again["changed"] and again["created"] == []
    bad = run_module(site_credentials, dict(args, server_certs={"Bad/label": ["x"]}))
    assert bad["failed"] and "invalid server certificate label" in bad["msg"]


def _leaf(path):
    with open(path, "rb") as handle:
        return pki.load_certificates(handle.read())


def test_client_certificates_come_from_the_service_ca_and_old_ones_are_reissued(tmp_path, run_module):
    """A site of an older release: its orchestrator certificate was issued by the enrollment CA
    (which also issues every host and user certificate). The module re-issues it from the
    service-client CA (check mode reports it first), and leaves everything else alone."""
    path = str(tmp_path / "pki")
    os.makedirs(path, mode=0o700)
    ca_key, ca_cert = pki.create_ca("lab enrollment CA", kind="rsa-2048")
    old_issuer = pki.Issuer(ca_key, [ca_cert], reserve_service_names=False)
    client_key = pki.new_private_key()
    old_client = old_issuer.issue(client_key.public_key(), "https-client", "orchestrator", org="lab")
    files = {"ca.key": pki.private_key_pem(ca_key), "ca.pem": pki.certificate_pem(ca_cert),
             "client-orchestrator.key": pki.private_key_pem(client_key),
             "client-orchestrator.pem": pki.certificate_pem(old_client) + old_issuer.chain_pem()}
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as handle:
            handle.write(data)
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test"], "client_names": ["orchestrator"]}
    checked = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert checked["changed"] and checked["reissued"] == ["client_orchestrator_cert", "client_orchestrator_key"]
    assert open(os.path.join(path, "client-orchestrator.pem"), "rb").read() == files["client-orchestrator.pem"]
    out = run_module(site_credentials, args)
    assert out["changed"] and out["reissued"] == ["client_orchestrator_cert", "client_orchestrator_key"]
    assert "svc_ca_key" in out["created"] and "client_orchestrator_cert" not in out["created"]
    svc = _leaf(out["paths"]["svc_ca_cert"])
    chain = _leaf(out["paths"]["client_orchestrator_cert"])
    assert chain[0].subject.rfc4514_string() == "O=lab,CN=orchestrator"
    pki.verify_service_client(chain[0], svc)
    with pytest.raises(pki.CertificateVerifyError):
        pki.verify_service_client(chain[0], [ca_cert])
    with pytest.raises(pki.CertificateVerifyError):  # the old one is not a service identity
        pki.verify_service_client(old_client, svc)
    assert open(out["paths"]["client_orchestrator_key"], "rb").read() != files["client-orchestrator.key"]
    assert stat.S_IMODE(os.stat(out["paths"]["client_orchestrator_key"]).st_mode) == 0o600
    # the enrollment CA is kept; the next run changes nothing
    assert open(out["paths"]["ca_cert"], "rb").read() == files["ca.pem"]
    again = run_module(site_credentials, args)
    assert not again["changed"] and again["created"] == [] and again["reissued"] == []
    assert run_module(site_credentials, dict(args, _ansible_check_mode=True))["reissued"] == []


def _pem_file(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_keyserver_credential_ca_is_a_third_ca_of_its_own(tmp_path, run_module):
    """The key-server credential CA (docs/keyserver.md, part 2): created once (check mode first),
    0600 key, a CA distinct from the enrollment and service-client CAs, returned publicly. A
    credential it issues (as the attestation server does) is a key-server client certificate
    only for a verifier given it as credential anchor (attested); the enrollment CA alone does
    not accept it, and the service-client verifier refuses it."""
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test"], "client_names": ["orchestrator"]}
    checked = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert {"kscred_ca_key", "kscred_ca_cert"} <= set(checked["created"]) and checked["keyserver_credential_ca_cert"] == ""
    out = run_module(site_credentials, args, raw=True)
    assert out["paths"]["kscred_ca_key"] == os.path.join(path, "kscred-ca.key")
    assert stat.S_IMODE(os.stat(out["paths"]["kscred_ca_key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out["paths"]["kscred_ca_cert"]).st_mode) == 0o644
    assert "PRIVATE KEY" not in out["raw"] and out["keyserver_credential_ca_cert"] == _pem_file(out["paths"]["kscred_ca_cert"]).decode()
    kscred, enroll_ca, svc_ca = (_leaf(out["paths"][label])[0] for label in ("kscred_ca_cert", "ca_cert", "svc_ca_cert"))
    assert kscred.subject.rfc4514_string() == "CN=lab key-server credential CA"
    keys = [pki.public_key_pem(c.public_key()) for c in (kscred, enroll_ca, svc_ca)]
    assert len(set(keys)) == 3  # three CAs, no key reused
    # issue a credential as attestation/server.py does (pki.Issuer.from_pem of the two files)
    issuer = pki.Issuer.from_pem(_pem_file(out["paths"]["kscred_ca_key"]), _pem_file(out["paths"]["kscred_ca_cert"]))
    host_key = pki.new_private_key()
    credential = issuer.issue(host_key.public_key(), "https-client", "node1.example.test", lifetime=datetime.timedelta(minutes=10),
                              keyserver_binding={"profile": "vm", "measurement": None})
    identity = pki.verify_keyserver_client(credential, [enroll_ca], credential_anchors=[kscred])
    assert identity["attested"] and identity["cn"] == "node1.example.test"
    with pytest.raises(pki.CertificateVerifyError):
        pki.verify_keyserver_client(credential, [enroll_ca])
    with pytest.raises(pki.CertificateVerifyError):
        pki.verify_service_client(credential, [svc_ca])
    # idempotent: the next run (and its check mode) keeps the CA
    before = _pem_file(out["paths"]["kscred_ca_key"])
    for check in (True, False):
        again = run_module(site_credentials, dict(args, _ansible_check_mode=check))
        assert not again["changed"] and again["created"] == []
    assert _pem_file(out["paths"]["kscred_ca_key"]) == before


def test_a_site_of_an_older_release_gains_only_the_keyserver_credential_ca(tmp_path, run_module):
    """A site bootstrapped before the credential CA existed: the next run adds kscred-ca.key/.pem
    and changes no other file."""
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test"], "client_names": ["orchestrator"]}
    first = run_module(site_credentials, args)
    for label in ("kscred_ca_key", "kscred_ca_cert"):
        os.unlink(first["paths"][label])
    before = dict((p, _pem_file(p)) for label, p in first["paths"].items() if not label.startswith("kscred_"))
    checked = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert checked["changed"] and checked["created"] == ["kscred_ca_cert", "kscred_ca_key"] and checked["reissued"] == []
    out = run_module(site_credentials, args)
    assert out["changed"] and sorted(out["created"]) == ["kscred_ca_cert", "kscred_ca_key"] and out["reissued"] == []
    assert dict((p, _pem_file(p)) for p in before) == before
