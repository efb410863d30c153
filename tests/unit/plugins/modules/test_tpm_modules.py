# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The three TPM modules run in-process against a real swtpm: results, idempotence,
check mode, file modes and every bad input ending in fail_json (never a traceback)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.modules import tpm_info, tpm_seal, tpm_unseal

SECRET = "correct horse battery staple"


@pytest.fixture
def info(swtpm, run_module):
    return run_module(tpm_info, {"tcti": swtpm.tcti})


def test_tpm_info(info):
    assert info["rc"] == 0 and info["changed"] is False
    assert len(info["ekpubhash"]) == 64
    assert info["ek_cert"]["issuer"] == "CN=swtpm-localca"
    assert info["ekpub"].startswith("-----BEGIN PUBLIC KEY-----")
    assert info["encrypt_decrypt2"] is True and info["manufacturer"] == "IBM"
    assert sorted(info["pcrs"]["sha256"], key=int) == [str(i) for i in range(24)]


def test_tpm_info_unreachable_tcti(run_module):
    out = run_module(tpm_info, {"tcti": "swtpm:host=127.0.0.1,port=1"})
    assert out["rc"] == 1 and out["failed"] and "cannot reach the TPM" in out["msg"]


def test_seal_unseal_roundtrip_idempotent(swtpm, info, tmp_path, run_module):
    env_path = str(tmp_path / "secret.env")
    plain = str(tmp_path / "secret.txt")
    seal_args = {"ekpub": info["ekpub_tpm2b"], "content": SECRET, "dest": env_path}

    checked = run_module(tpm_seal, dict(seal_args, _ansible_check_mode=True))
    assert checked["changed"] is True and not os.path.exists(env_path)
    first = run_module(tpm_seal, seal_args)
    assert first["changed"] is True and first["ekpubhash"] == info["ekpubhash"]
    assert stat.S_IMODE(os.stat(env_path).st_mode) == 0o600
    assert SECRET not in open(env_path).read() and SECRET not in json.dumps(first)
    before = open(env_path).read()
    again = run_module(tpm_seal, seal_args)
    assert again["changed"] is False and open(env_path).read() == before
    changed = run_module(tpm_seal, dict(seal_args, content=SECRET + "!"))
    assert changed["changed"] is True
    run_module(tpm_seal, seal_args)

    unseal_args = {"tcti": swtpm.tcti, "src": env_path, "dest": plain, "mode": "0640"}
    checked = run_module(tpm_unseal, dict(unseal_args, _ansible_check_mode=True))
    assert checked["changed"] is True and not os.path.exists(plain)
    first = run_module(tpm_unseal, unseal_args)
    assert first["changed"] is True and first["unsealed"] is True and "content" not in first
    assert open(plain).read() == SECRET and stat.S_IMODE(os.stat(plain).st_mode) == 0o640
    again = run_module(tpm_unseal, unseal_args)
    assert again["changed"] is False and again["unsealed"] is False  # proven by the fingerprint
    ret = run_module(tpm_unseal, {"tcti": swtpm.tcti, "src": env_path, "return_content": True})
    assert ret["content"] == SECRET and ret["changed"] is False


def test_unseal_without_fingerprint_compares_content(swtpm, info, tmp_path, run_module):
    env_path, plain = str(tmp_path / "e"), str(tmp_path / "p")
    args = {"ekpub": info["ekpub"], "content": SECRET, "dest": env_path, "fingerprint": False}
    assert run_module(tpm_seal, args)["changed"] is True
    assert run_module(tpm_seal, args)["changed"] is True  # cannot prove equality without a fingerprint
    unseal_args = {"tcti": swtpm.tcti, "src": env_path, "dest": plain}
    assert run_module(tpm_unseal, unseal_args)["changed"] is True
    again = run_module(tpm_unseal, unseal_args)
    assert again["changed"] is False and again["unsealed"] is True


def test_one_time_envelope(fresh_swtpm, tmp_path, run_module):
    info = run_module(tpm_info, {"tcti": fresh_swtpm.tcti})
    env_path, plain = str(tmp_path / "e"), str(tmp_path / "p")
    run_module(tpm_seal, {"ekpub": info["ekpub_tpm2b"], "content": SECRET, "dest": env_path,
                          "policy": {"type": "one_time"}})
    first = run_module(tpm_unseal, {"tcti": fresh_swtpm.tcti, "src": env_path, "dest": plain})
    assert first["changed"] is True and first["pcr_extended"] is True
    # the file is current: nothing to unseal, so the consumed one-time policy is no obstacle
    assert run_module(tpm_unseal, {"tcti": fresh_swtpm.tcti, "src": env_path, "dest": plain})["changed"] is False
    os.unlink(plain)
    again = run_module(tpm_unseal, {"tcti": fresh_swtpm.tcti, "src": env_path, "dest": plain})
    assert again["failed"] and "already unsealed once this boot" in again["msg"]
    assert not os.path.exists(plain)


def test_unseal_enrolled_asset_sealed_to_golden_pcrs(fresh_swtpm, tmp_path, run_module):
    """An enrollment entry's asset sealed by default to the profile's golden PCR 23: the module
    unseals it with a PCR policy session in the golden state, and fails once PCR 23 changed."""
    info = run_module(tpm_info, {"tcti": fresh_swtpm.tcti, "pcrs": [23]})
    ca_key, ca_cert = pki.create_ca("HCP test golden CA")
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=pki.Signer(pki.new_private_key("ec-p256")),
                                     ek_trust="allow_list", ek_allow_list=[info["ekpubhash"]])
    profile = {"assets": ["rootfs-key"], "attest": {"pcrs": {"sha256": {"23": info["pcrs"]["sha256"]["23"]}}}}
    files = enroll.build_entry(config, info["ekpub"], "golden.example.test", profile)[2]
    env_path, plain = str(tmp_path / "rootfs.key.sealed"), str(tmp_path / "rootfs.key")
    with open(env_path, "wb") as handle:
        handle.write(files["rootfs.key.sealed"])
    first = run_module(tpm_unseal, {"tcti": fresh_swtpm.tcti, "src": env_path, "dest": plain})
    assert first["changed"] is True and first["policy"] == {"type": "pcr", "bank": "sha256", "pcrs": {"23": "00" * 32}}
    assert os.path.getsize(plain) == 64
    os.unlink(plain)
    with fresh_swtpm.open() as tpm:
        tpm.extend_pcr(23, b"another boot state")
    again = run_module(tpm_unseal, {"tcti": fresh_swtpm.tcti, "src": env_path, "dest": plain})
    assert again["failed"] and "PCR(s) 23 differ" in again["msg"] and not os.path.exists(plain)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e.update(ciphertext=e["ciphertext"][:-8] + "AAAAAAA="), "tampered"),
        (lambda e: e.update(version=9), "unsupported envelope version 9"),
        (lambda e: e.pop("kem"), "envelope algorithms"),
    ],
)
def test_unseal_bad_envelopes_fail_cleanly(swtpm, info, tmp_path, run_module, mutate, message):
    env_path, plain = str(tmp_path / "e"), str(tmp_path / "p")
    run_module(tpm_seal, {"ekpub": info["ekpub_tpm2b"], "content": SECRET, "dest": env_path})
    env = json.load(open(env_path))
    mutate(env)
    out = run_module(tpm_unseal, {"tcti": swtpm.tcti, "envelope": json.dumps(env), "dest": plain})
    assert out["rc"] == 1 and message in out["msg"] and not os.path.exists(plain)
    assert SECRET not in json.dumps(out)


def test_unseal_envelope_for_another_tpm(other_swtpm, info, tmp_path, run_module):
    env_path = str(tmp_path / "e")
    run_module(tpm_seal, {"ekpub": info["ekpub_tpm2b"], "content": SECRET, "dest": env_path})
    out = run_module(tpm_unseal, {"tcti": other_swtpm.tcti, "src": env_path, "return_content": True})
    assert out["failed"] and "sealed to EK" in out["msg"] and out["error"] == "WrongTpmError"


def test_unseal_pcr_policy_not_satisfied(swtpm, info, tmp_path, run_module):
    env_path = str(tmp_path / "e")
    wrong = "ab" * 32
    run_module(tpm_seal, {"ekpub": info["ekpub_tpm2b"], "content": SECRET, "dest": env_path,
                          "policy": {"type": "pcr", "pcrs": {"15": wrong}}})
    out = run_module(tpm_unseal, {"tcti": swtpm.tcti, "src": env_path, "return_content": True})
    assert out["failed"] and "PCR(s) 15 differ" in out["msg"]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"ekpub": "bm90IGFuIEVL", "content": "x"}, "malformed EK public key"),
        ({"ekpub_path": "/nonexistent/ek.pub", "content": "x"}, "cannot read EK public key"),
        ({"ekpub": "x", "src": "/nonexistent/file"}, "cannot read source"),
        ({"ekpub": "x", "content": "x", "policy": {"type": "pcr"}}, "non-empty 'pcrs'"),
    ],
)
def test_seal_bad_inputs(tmp_path, run_module, args, message):
    out = run_module(tpm_seal, dict(args, dest=str(tmp_path / "e")))
    assert out["rc"] == 1 and message in out["msg"]
    assert not os.path.exists(str(tmp_path / "e"))


def test_unseal_needs_a_destination(swtpm, run_module):
    out = run_module(tpm_unseal, {"tcti": swtpm.tcti, "envelope": "{}"})
    assert out["failed"] and "nothing to do" in out["msg"]
