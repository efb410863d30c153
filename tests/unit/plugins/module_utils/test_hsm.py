# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HSM share protection on a real SoftHSM2 token in a temporary directory."""
from __future__ import annotations

import os
import subprocess

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.unseal.hsm import Hsm, HsmAuthError, HsmError, HsmIntegrityError
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import (
    ShareUndecryptableError,
    inspect_share,
    read_share,
    write_share,
)

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
MODULE = next((m for m in MODULES if os.path.exists(m)), None)
PIN = "4321-user-pin"
pytestmark = pytest.mark.skipif(MODULE is None, reason="libsofthsm2.so not installed (apt-get install softhsm2)")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A fresh SoftHSM2 token labelled 'hcp-test' with its own token directory."""
    workdir = tmp_path_factory.mktemp("softhsm")
    tokens = workdir / "tokens"
    tokens.mkdir(mode=0o700)
    conf = workdir / "softhsm2.conf"
    conf.write_text("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % tokens)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the library at C_Initialize
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "hcp-test", "--pin", PIN,
                    "--so-pin", "8765-so-pin"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return "hcp-test"


def test_round_trip_and_key_attributes(token):
    with Hsm(MODULE, token, PIN) as hsm:
        hsm.ensure_key("rt-key")
        assert hsm.ensure_key("rt-key") is False
        blob = hsm.encrypt(b"a share" * 100)
        assert b"a share" not in blob and blob[0] == 1
        assert hsm.decrypt(blob) == b"a share" * 100
        assert hsm.encrypt(b"x") != hsm.encrypt(b"x")
        key = hsm._session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label="rt-key")
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE] and key[Attribute.VALUE_LEN] == 32
    with Hsm(MODULE, token, PIN) as hsm:  # the key persists on the token
        assert hsm.ensure_key("rt-key") is False
        assert hsm.decrypt(blob) == b"a share" * 100


def test_first_ensure_creates(token):
    with Hsm(MODULE, token, PIN) as hsm:
        assert hsm.ensure_key("created-key") is True


def test_wrong_pin_is_refused_without_showing_it(token):
    with pytest.raises(HsmAuthError, match="refused the user PIN") as info:
        with Hsm(MODULE, token, "0000-wrong"):
            pass
    assert "0000-wrong" not in str(info.value) and PIN not in repr(Hsm(MODULE, token, PIN))


def test_tampered_blob_and_other_key_fail(token):
    with Hsm(MODULE, token, PIN) as hsm:
        hsm.ensure_key("tamper-key")
        blob = bytearray(hsm.encrypt(b"secret share"))
        blob[20] ^= 0x01
        with pytest.raises(HsmIntegrityError, match="authentication"):
            hsm.decrypt(bytes(blob))
        with pytest.raises(HsmIntegrityError, match="truncated"):
            hsm.decrypt(b"\x01short")
        good = hsm.encrypt(b"secret share")
        hsm.ensure_key("another-key")
        with pytest.raises(HsmIntegrityError):
            hsm.decrypt(good)


def test_unknown_token_and_missing_key(token):
    with pytest.raises(HsmError, match="no PKCS#11 token labelled 'nope'"):
        with Hsm(MODULE, "nope", PIN):
            pass
    with Hsm(MODULE, token, PIN) as hsm:
        with pytest.raises(HsmError, match="ensure_key"):
            hsm.encrypt(b"x")


def test_share_store_with_hsm(token, tmp_path):
    share = shamir.split(b"site token", 3, 2)[0]
    path = str(tmp_path / "share.json")
    with Hsm(MODULE, token, PIN) as hsm:
        hsm.ensure_key("store-key")
        result = write_share(path, share, "best-effort", hsm=hsm)
        assert result.protection == "hsm"
        facts = inspect_share(path)
        assert facts["protection"] == "hsm" and facts["protected_with_tpm"] is False
        assert facts["hsm"] == {"token_label": token, "key_label": "store-key", "mechanism": "CKM_AES_GCM"}
        assert read_share(path, hsm=hsm) == share
        hsm.ensure_key("store-key-2")
        with pytest.raises(ShareUndecryptableError, match="HSM decryption failed"):
            read_share(path, hsm=hsm)
    with pytest.raises(ShareUndecryptableError, match="no HSM"):
        read_share(path)
