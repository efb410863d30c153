# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ansible_collections.hcp.core.plugins.module_utils.tpm import ekpub
from ansible_collections.hcp.core.plugins.module_utils.errors import InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm.quote import ak_template


@pytest.fixture(scope="module")
def ek(swtpm):
    with swtpm.open() as tpm:
        return tpm.ek_public(), tpm.ekpubhash(), tpm.ek_certificate_der()


def test_every_accepted_form_gives_the_same_ek(ek):
    public, digest, cert_der = ek
    pem = ekpub.ek_public_pem(public)
    forms = [
        public.marshal(),
        ekpub.ek_public_b64(public),
        public.publicArea.marshal(),
        pem,
        cert_der,
    ]
    for form in forms:
        assert ekpub.ekpubhash(ekpub.load_ek_public(form)) == digest


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"garbage that is not a key", "malformed EK public key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot parse"),
    ],
)
def test_malformed_ek_is_rejected(data, message):
    with pytest.raises(InvalidEkError, match=message):
        ekpub.load_ek_public(data)


def test_truncated_tpm2b_is_rejected(ek):
    with pytest.raises(InvalidEkError, match="malformed"):
        ekpub.load_ek_public(ek[0].marshal()[:-10])


def test_signing_key_is_not_an_ek():
    template = ak_template()
    template.publicArea.unique.ecc.x = b"\1" * 32
    template.publicArea.unique.ecc.y = b"\2" * 32
    with pytest.raises(InvalidEkError, match="not an endorsement key"):
        ekpub.load_ek_public(base64.b64encode(template.marshal()))


def test_weak_or_odd_pem_keys_are_rejected():
    weak = rsa.generate_private_key(65537, 1024).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    for key, message in ((weak, "RSA-2048"), (p384, "P-256")):
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(InvalidEkError, match=message):
            ekpub.load_ek_public(pem)


def test_pem_of_p256_key_builds_ecc_ek():
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = ekpub.load_ek_public(pem)
    assert ekpub.ek_public_pem(public).encode() == pem
