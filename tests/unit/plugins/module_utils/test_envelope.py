# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seal on the 'server' (no TPM involved) and unseal on a real swtpm."""
from __future__ import annotations

import base64
import copy
import json

import pytest
from tpm2_pytss.constants import ESYS_TR

from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.errors import (
    EnvelopeFormatError,
    EnvelopeIntegrityError,
    EnvelopeVersionError,
    InvalidEkError,
    PolicyNotSatisfiedError,
    WrongTpmError,
)

SECRET = b"s3cret \x00\xff payload"


@pytest.fixture(scope="module")
def ek_pem(swtpm):
    with swtpm.open() as tpm:
        return ek_public_pem(tpm.ek_public())


def roundtrip(swtpm, env):
    with swtpm.open() as tpm:
        return envelope.unseal(tpm, envelope.dumps(env))


def test_seal_unseal_without_policy(swtpm, ek_pem):
    env = envelope.seal(ek_pem, SECRET)
    assert roundtrip(swtpm, env) == SECRET
    text = envelope.dumps(env)
    assert SECRET not in text and base64.b64encode(SECRET) not in text
    meta = envelope.describe(env)
    assert meta["policy"] == {"type": "none"} and meta["version"] == 1


def test_each_seal_is_fresh(ek_pem):
    one, two = envelope.seal(ek_pem, SECRET), envelope.seal(ek_pem, SECRET)
    assert one["ciphertext"] != two["ciphertext"] and one["kem"] != two["kem"]


def test_pcr_policy_satisfied_and_violated(swtpm, ek_pem):
    with swtpm.open() as tpm:
        pcrs = tpm.read_pcrs("sha256", [0, 7, 16])
    policy = {"type": "pcr", "pcrs": {str(k): v.hex() for k, v in pcrs.items()}}
    env = envelope.seal(ek_pem, SECRET, policy)
    assert roundtrip(swtpm, env) == SECRET
    with swtpm.open() as tpm:
        tpm.extend_pcr(16, b"a change the policy does not allow")
    with pytest.raises(PolicyNotSatisfiedError, match="PCR\\(s\\) 16 differ"):
        roundtrip(swtpm, env)


def test_tpm_itself_enforces_the_pcr_policy(swtpm, ek_pem, monkeypatch):
    """With the library's early PCR check disabled, the TPM still refuses the key."""
    with swtpm.open() as tpm:
        pcr = tpm.read_pcrs("sha256", [23])[23]
        env = envelope.seal(ek_pem, SECRET, {"type": "pcr", "pcrs": {"23": pcr.hex()}})
        tpm.extend_pcr(23, b"drift")
    monkeypatch.setattr(tpm_policy, "check_pcrs", lambda policy, current: None)
    with pytest.raises(PolicyNotSatisfiedError, match="TPM refused the unseal policy"):
        roundtrip(swtpm, env)


def test_one_time_policy_unseals_once_per_boot(fresh_swtpm, ek_pem):
    env = envelope.seal(ek_pem, SECRET, "one_time")
    with fresh_swtpm.open() as tpm:
        assert envelope.unseal(tpm, env) == SECRET
        tpm.extend_pcr(tpm_policy.ONE_TIME_PCR, b"unsealed")
        with pytest.raises(PolicyNotSatisfiedError, match="already unsealed once this boot"):
            envelope.unseal(tpm, env)
    fresh_swtpm.restart()  # next boot: PCR 11 is zero again
    assert roundtrip(fresh_swtpm, env) == SECRET


def test_policy_digest_matches_the_tpm(fresh_swtpm):
    """The pure-Python digest equals what a TPM trial session computes."""
    policies = [
        {"type": "none"},
        "one_time",
        {"type": "pcr", "pcrs": {"0": "00" * 32, "7": "00" * 32, "16": "00" * 32}},
    ]
    with fresh_swtpm.open() as tpm:
        for policy in policies:
            session = tpm.policy_session(trial=True)
            try:
                tpm_policy.apply_policy(tpm, session, policy)
                assert bytes(tpm.ectx.policy_get_digest(session)) == tpm_policy.policy_digest(policy)
            finally:
                tpm.flush(session)


def test_well_known_key_refuses_password_auth(swtpm, ek_pem):
    """adminWithPolicy: ActivateCredential cannot bypass the policy with the (known) auth value."""
    env = envelope.seal(ek_pem, SECRET)
    digest = bytes.fromhex(env["policy_digest"])
    public, sensitive = envelope.well_known_key(digest)
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT

    with swtpm.open() as tpm:
        wk = tpm.ectx.load_external(public, sensitive, ESYS_TR.NULL)
        try:
            with tpm.ek_session() as ek_session:
                with pytest.raises(TSS2_Exception):
                    tpm.ectx.activate_credential(
                        wk, tpm.ek(),
                        TPM2B_ID_OBJECT(credential=base64.b64decode(env["kem"]["credential_blob"])),
                        TPM2B_ENCRYPTED_SECRET(secret=base64.b64decode(env["kem"]["encrypted_secret"])),
                        session1=ESYS_TR.PASSWORD, session2=ek_session,
                    )
        finally:
            tpm.flush(wk)


def test_sealed_to_another_tpm(swtpm, other_swtpm, ek_pem):
    env = envelope.seal(ek_pem, SECRET)
    with other_swtpm.open() as other:
        with pytest.raises(WrongTpmError, match="sealed to EK"):
            envelope.unseal(other, env)
        # an attacker relabelling the envelope for the other TPM gets nothing either
        forged = copy.deepcopy(env)
        forged["ekpubhash"] = other.ekpubhash()
        with pytest.raises(EnvelopeIntegrityError):
            envelope.unseal(other, forged)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "credential_blob", "encrypted_secret", "policy"])
def test_tampered_envelope(swtpm, ek_pem, field):
    env = envelope.seal(ek_pem, SECRET)

    def flip(b64):
        raw = bytearray(base64.b64decode(b64))
        raw[len(raw) // 2] ^= 0x01
        return base64.b64encode(bytes(raw)).decode()

    if field == "ciphertext":
        env["ciphertext"] = flip(env["ciphertext"])
    elif field == "nonce":
        env["dem"]["nonce"] = flip(env["dem"]["nonce"])
    elif field == "policy":
        env["policy"] = {"type": "one_time"}  # a weaker-looking policy with the original digest
    else:
        env["kem"][field] = flip(env["kem"][field])
    with pytest.raises(EnvelopeIntegrityError):
        roundtrip(swtpm, env)


def test_unsupported_version_and_malformed(swtpm, ek_pem):
    env = envelope.seal(ek_pem, SECRET)
    env["version"] = 2
    with pytest.raises(EnvelopeVersionError, match="unsupported envelope version 2"):
        roundtrip(swtpm, env)
    for bad, message in (
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (json.dumps({"format": "other"}).encode(), "not an hcp.core envelope"),
    ):
        with swtpm.open() as tpm:
            with pytest.raises(EnvelopeFormatError, match=message):
                envelope.unseal(tpm, bad)


def test_seal_rejects_bad_inputs(ek_pem):
    with pytest.raises(InvalidEkError):
        envelope.seal("not an ek", SECRET)
    with pytest.raises(EnvelopeFormatError, match="unknown policy type"):
        envelope.seal(ek_pem, SECRET, {"type": "sometimes"})
    with pytest.raises(EnvelopeFormatError, match="must be 32 bytes"):
        envelope.seal(ek_pem, SECRET, {"type": "pcr", "pcrs": {"7": "abcd"}})
    with pytest.raises(EnvelopeFormatError, match="out of range"):
        envelope.seal(ek_pem, SECRET, {"type": "pcr", "pcrs": {"30": "00" * 32}})


def test_fingerprint(ek_pem):
    env = envelope.seal(ek_pem, SECRET)
    assert envelope.fingerprint_matches(env, SECRET) is True
    assert envelope.fingerprint_matches(env, SECRET + b"!") is False
    assert envelope.fingerprint_matches(envelope.seal(ek_pem, SECRET, fingerprint=False), SECRET) is None


def test_ecc_p256_ek_roundtrip(swtpm):
    """The optional ECC P-256 EK (template L-2, derived: swtpm_setup persists only RSA and P-384)."""
    with swtpm.open() as rsa_tpm:
        rsa_hash = rsa_tpm.ekpubhash()
    from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm

    with Tpm(swtpm.tcti, ek_type="ecc") as tpm:
        public = tpm.ek_public()
        assert public.publicArea.parameters.eccDetail.curveID == 0x0003
        assert tpm.ekpubhash() != rsa_hash
        env = envelope.seal(ek_public_pem(public), SECRET, {"type": "none"})
        assert envelope.unseal(tpm, env) == SECRET
    with swtpm.open() as rsa_tpm:  # the RSA EK cannot open it
        with pytest.raises(WrongTpmError):
            envelope.unseal(rsa_tpm, env)


@pytest.mark.parametrize("ek_type", ["rsa", "ecc"])
def test_fast_make_credential_is_accepted_by_the_tpm(swtpm, ek_type):
    """MakeCredential over cryptography (envelope.make_credential_fast) is TPM2_MakeCredential:
    a real swtpm's ActivateCredential recovers the credential for an RSA (L-1) and an ECC (L-2)
    EK, with the AK of the attestation protocol as the activated object."""
    import os

    from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
    from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm

    with Tpm(swtpm.tcti, ek_type=ek_type) as tpm:
        target = envelope.credential_target(tpm.ek_public().marshal())
        assert target.kind == ek_type
        with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
            name = quote_mod.parse_ak_public(ak_public.marshal())[0]
            for size in (32, 16, 1):
                credential = os.urandom(size)
                blob, secret = envelope.make_credential_fast(target, credential, name)
                assert envelope.activate_credential(tpm, ak, blob, secret) == credential
            # the public entry point takes the TPM2B_PUBLIC, its bytes or the target alike
            for form in (tpm.ek_public(), tpm.ek_public().marshal(), target):
                credential = os.urandom(32)
                assert envelope.activate_credential(tpm, ak, *envelope.make_credential_to_ek(form, credential, name)) \
                    == credential


@pytest.mark.parametrize("ek_type", ["rsa", "ecc"])
def test_fast_make_credential_tampered_or_misdirected_is_refused(swtpm, ek_type):
    """The attack: flip a bit anywhere in the blob (outer HMAC, encrypted identity) or the
    encrypted seed, or make the credential for another object name: the TPM refuses to
    release the credential (integrity or seed errors), never a wrong value."""
    import os

    from tpm2_pytss import TSS2_Exception

    from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
    from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm

    def flip(data, index):
        data = bytearray(data)
        data[index] ^= 0x01
        return bytes(data)

    with Tpm(swtpm.tcti, ek_type=ek_type) as tpm:
        target = envelope.credential_target(tpm.ek_public().marshal())
        with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
            name = quote_mod.parse_ak_public(ak_public.marshal())[0]
            credential = os.urandom(32)
            blob, secret = envelope.make_credential_fast(target, credential, name)
            other_name = name[:2] + bytes(32)
            wrong_blob, wrong_secret = envelope.make_credential_fast(target, credential, other_name)
            cases = [(flip(blob, 5), secret), (flip(blob, len(blob) - 1), secret), (flip(blob, 40), secret),
                     (blob, flip(secret, len(secret) // 2)), (wrong_blob, wrong_secret)]
            for bad_blob, bad_secret in cases:
                with pytest.raises(TSS2_Exception):
                    envelope.activate_credential(tpm, ak, bad_blob, bad_secret)
            assert envelope.activate_credential(tpm, ak, blob, secret) == credential


def test_credential_target_refuses_what_it_cannot_wrap_to():
    """A malformed or non-storage EK public is a clear EnvelopeFormatError, not a crash."""
    for raw in (b"", b"\x00\x04\x00\x01\x00\x0b", b"\x00\x01" * 40, bytes(300)):
        with pytest.raises(EnvelopeFormatError):
            envelope.credential_target(raw)
