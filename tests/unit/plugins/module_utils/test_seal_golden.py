# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sealing to the golden PCR values by default (issue 16 item 4), with a real swtpm: an entry
of a profile with ``attest.pcrs`` is sealed with a PCR policy, unseals on its TPM in the golden
state (library, attestation client, re-enrollment) and not after a golden PCR changed, even for
someone holding the TPM and a copy of the entry (the attack). ``seal_policy: none`` stays
possible, explicitly; a profile without golden values is sealed as before."""
from __future__ import annotations

import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import manifest as manifest_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.errors import PolicyNotSatisfiedError
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy

GOLDEN_PCR = 23  # resettable, zero after start-up, used by nothing else here
PROFILE = {"assets": ["hostname", "rootfs-key", "https-server"]}
SEALED = ("rootfs.key.sealed", "https-server.key.sealed")


def _vendor_cas(swtpm):
    cas = []
    for path in swtpm.vendor_ca_files:
        with open(path, "rb") as handle:
            cas.extend(pki.load_certificates(handle.read()))
    return cas


def _config(swtpm, postclient=None):
    ca_key, ca_cert = pki.create_ca("HCP test golden-seal CA")
    return enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=pki.Signer(pki.new_private_key("ec-p256")),
                                   postclient=postclient, vendor_cas=_vendor_cas(swtpm))


def _golden(swtpm):
    """(EK certificate PEM, the golden profile for the TPM's current PCR 23, its value)."""
    with swtpm.open() as tpm:
        cert = x509.load_der_x509_certificate(tpm.ek_certificate_der()).public_bytes(serialization.Encoding.PEM)
        value = tpm.read_pcrs("sha256", [GOLDEN_PCR])[GOLDEN_PCR].hex()
    return cert, dict(PROFILE, attest={"pcrs": {"sha256": {str(GOLDEN_PCR): value.upper()}}}), value


def _policies(files):
    return [envelope.loads(files[name])["policy"] for name in SEALED]


def test_golden_profile_seals_every_sensitive_asset_to_the_golden_pcrs(fresh_swtpm, monkeypatch):
    config = _config(fresh_swtpm)
    cert, profile, value = _golden(fresh_swtpm)
    _h, _host, files, _summary = enroll.build_entry(config, cert, "golden.example.test", profile, generation=1)
    stolen = files["rootfs.key.sealed"]  # the attacker's copy of the DB entry
    with fresh_swtpm.open() as tpm:
        key = envelope.unseal(tpm, stolen)  # golden state: the host unseals
        assert len(key) == 64
        # THE ATTACK: the TPM in another boot state (a golden PCR changed), the entry copied.
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
        with pytest.raises(PolicyNotSatisfiedError, match="PCR\\(s\\) %d differ" % GOLDEN_PCR):
            envelope.unseal(tpm, stolen)
    # Without the library's early PCR check (an attacker's own unseal code), the TPM refuses.
    monkeypatch.setattr(tpm_policy, "check_pcrs", lambda policy, current: None)
    with fresh_swtpm.open() as tpm:
        with pytest.raises(PolicyNotSatisfiedError, match="TPM refused the unseal policy"):
            envelope.unseal(tpm, stolen)
    # After a reboot (PCR 23 zero again) the same envelope opens again.
    fresh_swtpm.restart()
    with fresh_swtpm.open() as tpm:
        assert envelope.unseal(tpm, stolen) == key
    wanted = {"type": "pcr", "bank": "sha256", "pcrs": {str(GOLDEN_PCR): value}}
    manifest = manifest_mod.verify_entry(files, config.signer.public_key_pem())
    assert manifest["seal_policy"] == wanted
    assert _policies(files) == [wanted, wanted]


def test_explicit_none_still_seals_without_a_pcr_condition(fresh_swtpm):
    cert, profile, _value = _golden(fresh_swtpm)
    for config, client in ((_config(fresh_swtpm), dict(profile, seal_policy="none")),
                           (_config(fresh_swtpm, postclient={"seal_policy": {"type": "none"}}), profile)):
        _h, _host, files, _s = enroll.build_entry(config, cert, "golden.example.test", client)
        assert json.loads(files["manifest.json"])["seal_policy"] == {"type": "none"}
        assert _policies(files) == [{"type": "none"}] * 2
    with fresh_swtpm.open() as tpm:
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
        assert len(envelope.unseal(tpm, files["rootfs.key.sealed"])) == 64  # the operator's explicit choice


def test_explicit_one_time_and_pcr_policies_win_over_the_default(fresh_swtpm):
    cert, profile, _value = _golden(fresh_swtpm)
    _h, _host, files, _s = enroll.build_entry(_config(fresh_swtpm), cert, "golden.example.test",
                                              dict(profile, seal_policy={"type": "one_time"}))
    assert _policies(files) == [{"type": "one_time"}] * 2
    with fresh_swtpm.open() as tpm:
        pcr7 = tpm.read_pcrs("sha256", [7])[7].hex()
    explicit = {"type": "pcr", "pcrs": {"7": pcr7}}
    _h, _host, files, _s = enroll.build_entry(_config(fresh_swtpm), cert, "golden.example.test", dict(profile, seal_policy=explicit))
    assert _policies(files) == [{"type": "pcr", "bank": "sha256", "pcrs": {"7": pcr7}}] * 2


def test_profile_without_golden_values_is_sealed_as_before(fresh_swtpm):
    cert, _profile, _value = _golden(fresh_swtpm)
    for client in (PROFILE, dict(PROFILE, attest={}), dict(PROFILE, attest={"pcrs": {"sha256": {}}}), dict(PROFILE, seal_policy=None)):
        _h, _host, files, _s = enroll.build_entry(_config(fresh_swtpm), cert, "plain.example.test", client)
        assert json.loads(files["manifest.json"])["seal_policy"] == {"type": "none"}
        assert _policies(files) == [{"type": "none"}] * 2
    with fresh_swtpm.open() as tpm:
        tpm.extend_pcr(GOLDEN_PCR, b"no golden values, no condition")
        assert len(envelope.unseal(tpm, files["rootfs.key.sealed"])) == 64


def test_attestation_client_unseals_golden_sealed_assets_only_in_the_golden_state(fresh_swtpm, tmp_path, monkeypatch):
    """The host path: attest (server golden check), then unseal with a PCR policy session."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config(fresh_swtpm)
    cert, profile, _value = _golden(fresh_swtpm)
    h, host, files, _s = enroll.build_entry(config, cert, "golden.example.test", profile)
    enroll.store_entry(db, config, h, host, files)
    server = attest.Attestor(lambda: db, os.urandom(32), signer_pub=config.signer.public_key_pem(),
                             vendor_cas=_vendor_cas(fresh_swtpm))
    transport = attest_client.attestor_transport(server)
    signer = config.signer.public_key_pem()
    with fresh_swtpm.open() as tpm:
        result = attest_client.attest(tpm, transport, signer)
        assert len(result["assets"]["rootfs.key"]) == 64 and b"PRIVATE KEY" in result["assets"]["https-server.key"]
        # The entry the server released, kept by the host (or copied off the DB), in another boot state:
        kept = dict(result["files"])
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
        with pytest.raises(attest_client.AttestServerError, match="PCR policy not satisfied"):
            attest_client.attest(tpm, transport, signer)
        monkeypatch.setattr(tpm_policy, "check_pcrs", lambda policy, current: None)
        with pytest.raises(PolicyNotSatisfiedError, match="TPM refused"):
            attest_client.open_assets(tpm, result["manifest"], kept)
    assert result["manifest"]["seal_policy"]["type"] == "pcr"


def test_reenrollment_seals_the_same_way(fresh_swtpm, tmp_path):
    cred = tmp_path / "cred"
    pki.bootstrap_site_credentials(str(cred), "test", ["enroll.example.test"], [])
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    service = enroll_service.EnrollmentService({"db": db.path, "credentials_dir": str(cred), "ek_trust": "tofu"})
    cert, profile, value = _golden(fresh_swtpm)
    summary = service.perform({"op": "add", "ekpub": cert.decode(), "hostname": "golden.example.test", "profile": profile})
    h = summary["ekpubhash"]
    before = db.get(h)
    service.perform({"op": "reenroll", "ekpubhash": h, "caller": {"subject": "test"}})
    after = db.get(h)
    assert after["rootfs.key.sealed"] != before["rootfs.key.sealed"]
    with fresh_swtpm.open() as tpm:
        assert len(envelope.unseal(tpm, after["rootfs.key.sealed"])) == 64
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
        with pytest.raises(PolicyNotSatisfiedError):
            envelope.unseal(tpm, after["rootfs.key.sealed"])
    wanted = {"type": "pcr", "bank": "sha256", "pcrs": {str(GOLDEN_PCR): value}}
    for files in (before, after):
        assert json.loads(files["manifest.json"])["seal_policy"] == wanted and _policies(files) == [wanted] * 2
