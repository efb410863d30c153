# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment pipeline with a real swtpm EK (and its vendor-CA-signed EK certificate),
real asset generators, sealing, the signed manifest and the git DB."""
from __future__ import annotations

import json

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.enrollment import generators  # noqa: F401  pylint: disable=unused-import
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorError
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollDbError, EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.enrollment.profile import ProfileError
from ansible_collections.hcp.core.plugins.module_utils.errors import InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.enrollment import manifest as manifest_mod

PROFILE = {"assets": ["hostname", "rootfs-key", "https-server", "issuer-ca"]}


@pytest.fixture(scope="module")
def ek(swtpm):
    with swtpm.open() as tpm:
        return {"pem": ek_public_pem(tpm.ek_public()), "cert": tpm.ek_certificate_der(), "hash": tpm.ekpubhash()}


@pytest.fixture(scope="module")
def config(swtpm):
    ca_key, ca_cert = pki.create_ca("HCP test enrollment CA")
    cas = []
    for path in swtpm.vendor_ca_files:
        with open(path, "rb") as handle:
            cas.extend(pki.load_certificates(handle.read()))
    return enroll.EnrollmentConfig(
        issuer=pki.Issuer(ca_key, [ca_cert]), signer=pki.Signer(pki.new_private_key("ec-p256")),
        postclient={"seal_policy": {"type": "none"}}, vendor_cas=cas,
    )


def test_entry_is_sealed_signed_and_unsealable(swtpm, ek, config, tmp_path):
    h, host, files, summary = enroll.build_entry(config, ek["cert"], "Node1.Example.Test", PROFILE, generation=7)
    assert h == ek["hash"] and host == "node1.example.test"
    assert files["etc-hostname"] == b"node1.example.test\n"
    assert "rootfs.key" not in files and "rootfs.key.sealed" in files
    manifest = manifest_mod.verify_entry(files, config.signer.public_key_pem())
    assert manifest["version"] == 2 and manifest["generation"] == 7
    assert {a["name"] for a in manifest["assets"]} >= {"etc-hostname", "rootfs.key", "https-server.key", "https-server.pem", "ca.pem"}
    assert all(s["sensitive"] is False or "key" in s["name"] for s in summary["assets"])
    assert b"PRIVATE KEY" not in b"".join(v for k, v in files.items() if not k.endswith(".sealed"))
    with swtpm.open() as tpm:
        key = envelope.unseal(tpm, envelope.loads(files["rootfs.key.sealed"]))
    assert len(key) == 64
    # Tampering with any file breaks the manifest.
    bad = dict(files, **{"etc-hostname": b"evil.example.test\n"})
    with pytest.raises(pki.SignatureError):
        manifest_mod.verify_entry(bad, config.signer.public_key_pem())
    # And the entry lands in the DB as one commit, its manifest stamped with that commit's generation
    # (a manifest signed for another generation is refused).
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    with pytest.raises(EnrollDbError, match="generation 7, its commit gets 2"):
        db.add(h, host, files)
    enroll.store_entry(db, config, h, host, files)
    stored = manifest_mod.verify_entry(db.get(h), config.signer.public_key_pem())
    assert stored["generation"] == db.generation() == 2 and stored["files"] == manifest["files"]
    unsigned = enroll.build_entry(config, ek["cert"], "node1.example.test", PROFILE)[2]
    assert "manifest.sig" not in unsigned and "generation" not in json.loads(unsigned["manifest.json"])


def test_sealed_asset_is_useless_to_another_tpm(other_swtpm, ek, config):
    _h, _host, files, _s = enroll.build_entry(config, ek["cert"], "node1.example.test", PROFILE)
    with other_swtpm.open() as tpm:
        with pytest.raises(Exception):
            envelope.unseal(tpm, envelope.loads(files["rootfs.key.sealed"]))


@pytest.mark.parametrize(
    "hostname,profile,exc",
    [
        ("", PROFILE, ProfileError),
        ("node1.example.test", "{not json", ProfileError),
        ("node1.example.test", {"assets": ["no-such-generator"]}, GeneratorError),
        ("node1.example.test", {"assets": "hostname"}, ProfileError),
        ("node1.example.test", {"x": "y" * 70000}, ProfileError),
    ],
)
def test_bad_input(ek, config, hostname, profile, exc):
    with pytest.raises(exc):
        enroll.build_entry(config, ek["cert"], hostname, profile)


def test_ek_checks(ek, config):
    with pytest.raises(InvalidEkError):
        enroll.build_entry(config, b"garbage", "node1.example.test", PROFILE)
    # vendor_ca is the default: the bare public key of the same EK is refused
    with pytest.raises(InvalidEkError, match="certificate chaining to a TPM vendor CA is required"):
        enroll.build_entry(config, ek["pem"], "node1.example.test", PROFILE)
    other_ca_key, other_ca = pki.create_ca("Not the vendor")
    untrusting = enroll.EnrollmentConfig(config.issuer, config.signer, vendor_cas=[other_ca])
    with pytest.raises(InvalidEkError, match="not trusted"):
        enroll.build_entry(untrusting, ek["cert"], "node1.example.test", PROFILE)
    assert enroll.build_entry(config, ek["cert"], "node1.example.test", PROFILE)[0] == ek["hash"]


def test_client_profile_kept_for_reenrollment(ek, config):
    _h, _host, files, summary = enroll.build_entry(config, ek["cert"], "node1.example.test", dict(PROFILE, note="{ENROLL_HOSTNAME}"))
    assert json.loads(files["clientprofile"])["note"] == "{ENROLL_HOSTNAME}"
    assert summary["profile"]["note"] == "node1.example.test"
