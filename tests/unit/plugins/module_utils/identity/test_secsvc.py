# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The security service on its real sockets with an in-test identity provider (a TrustedSide):
every bad token refused with 401, namespaces isolated (another identity's key answers exactly
like a missing one), the PSA operations; the key store sealed to a real swtpm."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.hcp.core.plugins.module_utils.identity import keystore, secsvc, trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.identity.idhelpers import SECSVC_NAME

ALICE = "spiffe://site.test/node1/alice"
BOB = "spiffe://site.test/node1/bob"


def _b64(data):
    return base64.b64encode(data).decode("ascii")


class Site(object):
    def __init__(self, tmp_path, store_key=None):
        self.config = {"site": "site.test", "host": "node1", "state_dir": str(tmp_path / "state"),
                       "store_dir": str(tmp_path / "store"), "socket": str(tmp_path / "secsvc.sock"),
                       "admin_socket": str(tmp_path / "secsvc-admin.sock"), "socket_group": None, "socket_mode": 0o660,
                       "audience": SECSVC_NAME, "store_key": store_key or {"backend": "memory"}, "max_body": wire.MAX_BODY}
        self.service, self.servers = secsvc.serve(self.config)
        self.idp = trust.TrustedSide("idp")
        trust.share(self.idp, self.config["admin_socket"])

    def token(self, sub=ALICE, **claims):
        return self.idp.sign(dict({"sub": sub}, **claims), audience=claims.pop("aud", SECSVC_NAME), lifetime=300)

    def call(self, op, body=None, token=None, sub=ALICE):
        return wire.call(self.config["socket"], op, body or {}, auth=token or self.token(sub), auth_type=wire.AUTH_JWT)

    def close(self):
        for server in self.servers:
            server.close()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def _refused(site, op, body=None, token=None, sub=ALICE, auth_type=wire.AUTH_JWT):
    with pytest.raises(IdentityError) as info:
        wire.call(site.config["socket"], op, body or {}, auth=token if token is not None else site.token(sub), auth_type=auth_type)
    return info.value.status, info.value.error, info.value.detail


def test_bad_tokens_are_refused_with_401(site):
    now = int(time.time())
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": site.idp.kid}).encode()).rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps({"sub": ALICE, "aud": SECSVC_NAME, "iat": now, "exp": now + 60,
                                                   "jti": "x"}).encode()).rstrip(b"=").decode()
    old = site.token()
    assert site.call("ping", token=old)["identity"] == ALICE
    time.sleep(1.1)
    site.idp.rotate()
    trust.share(site.idp, site.config["admin_socket"])
    cases = {
        "alg none": (header + "." + payload + ".", "bad-token"),
        "other audience": (site.idp.sign({"sub": ALICE}, audience="spiffe://site.test/node1/other"), "wrong-audience"),
        "expired": (site.idp.sign({"sub": ALICE, "iat": now - 400, "exp": now - 100}, audience=SECSVC_NAME), "token-expired"),
        "old intermediate": (old, "unknown-intermediate"),
        "other signer": (trust.TrustedSide("intruder").sign({"sub": ALICE}, audience=SECSVC_NAME), "unknown-intermediate"),
        "no sub": (site.idp.sign({}, audience=SECSVC_NAME), "bad-token"),
        "garbage": ("a.b.c", "bad-token"),
    }
    for what, (token, error) in cases.items():
        status, got, detail = _refused(site, "sign", {"name": "k", "data": _b64(b"x")}, token=token)
        assert (status, got) == (401, error), what
        assert "BEGIN" not in detail
    assert _refused(site, "ping", token=b"")[:2] == (401, "no-token")
    assert _refused(site, "ping", token=site.token(), auth_type=wire.AUTH_SIGNED)[:2] == (401, "no-token")
    assert site.call("ping")["identity"] == ALICE  # a fresh token of the new intermediate


def test_one_identity_never_uses_sees_or_lists_anothers_keys(site):
    site.call("generate_key", {"name": "bob-secret"}, sub=BOB)
    site.call("generate_key", {"name": "shared"}, sub=BOB)
    site.call("generate_key", {"name": "shared"}, sub=ALICE)
    missing = _refused(site, "sign", {"name": "no-such-name", "data": _b64(b"x")})
    for op, body in (("sign", {"data": _b64(b"x")}), ("export_public_key", {}), ("destroy_key", {}),
                     ("verify", {"data": _b64(b"x"), "signature": _b64(b"y")})):
        status, error, detail = _refused(site, op, dict(body, name="bob-secret"))
        assert (status, error) == (404, "no-such-key")
        assert detail == missing[2].replace("no-such-name", "bob-secret")  # the answer of a missing key
    assert [k["name"] for k in site.call("list_keys")["keys"]] == ["shared"]
    assert [k["name"] for k in site.call("list_keys", sub=BOB)["keys"]] == ["bob-secret", "shared"]
    alice_pub = site.call("export_public_key", {"name": "shared"})["public_key"]
    bob_pub = site.call("export_public_key", {"name": "shared"}, sub=BOB)["public_key"]
    assert alice_pub != bob_pub  # same name, two keys
    site.call("destroy_key", {"name": "shared"})
    assert site.call("export_public_key", {"name": "shared"}, sub=BOB)["public_key"] == bob_pub


def test_psa_operations(site):
    pub = serialization.load_pem_public_key(site.call("generate_key", {"name": "ec"})["public_key"].encode())
    sig = base64.b64decode(site.call("sign", {"name": "ec", "data": _b64(b"msg")})["signature"])
    pub.verify(sig, b"msg", ec.ECDSA(hashes.SHA256()))  # a standard ECDSA P-256 signature
    assert site.call("verify", {"name": "ec", "data": _b64(b"msg"), "signature": _b64(sig)})["valid"] is True
    assert site.call("verify", {"name": "ec", "data": _b64(b"other"), "signature": _b64(sig)})["valid"] is False
    sig2 = site.call("sign", {"name": "ec", "hash": _b64(hashlib.sha256(b"msg").digest())})["signature"]
    assert site.call("verify", {"name": "ec", "data": _b64(b"msg"), "signature": sig2})["valid"] is True
    for key_type in ("ecc-p384", "ed25519", "rsa-2048"):
        site.call("generate_key", {"name": key_type, "type": key_type})
        s = site.call("sign", {"name": key_type, "data": _b64(b"m")})["signature"]
        assert site.call("verify", {"name": key_type, "data": _b64(b"m"), "signature": s})["valid"] is True
    ct = site.call("asymmetric_encrypt", {"name": "rsa-2048", "plaintext": _b64(b"hi"), "label": _b64(b"l")})["ciphertext"]
    assert base64.b64decode(site.call("asymmetric_decrypt", {"name": "rsa-2048", "ciphertext": ct, "label": _b64(b"l")})["plaintext"]) == b"hi"
    assert _refused(site, "asymmetric_decrypt", {"name": "rsa-2048", "ciphertext": ct})[:2] == (400, "decrypt-failed")
    assert _refused(site, "asymmetric_encrypt", {"name": "ec", "plaintext": _b64(b"x")})[:2] == (400, "wrong-key-type")
    site.call("generate_key", {"name": "box", "type": "aes-256-gcm"})
    box = site.call("aead_encrypt", {"name": "box", "plaintext": _b64(b"secret"), "aad": _b64(b"ctx")})
    assert base64.b64decode(site.call("aead_decrypt", dict(box, name="box", aad=_b64(b"ctx")))["plaintext"]) == b"secret"
    assert _refused(site, "aead_decrypt", dict(box, name="box", aad=_b64(b"other")))[:2] == (400, "decrypt-failed")
    assert _refused(site, "sign", {"name": "box", "data": _b64(b"x")})[:2] == (400, "wrong-key-type")
    assert _refused(site, "export_public_key", {"name": "box"})[:2] == (400, "wrong-key-type")
    assert len(base64.b64decode(site.call("generate_random", {"size": 64})["random"])) == 64
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    site.call("import_key", {"name": "imported", "type": "ecc-p256", "key": _b64(der)})
    sig = base64.b64decode(site.call("sign", {"name": "imported", "data": _b64(b"z")})["signature"])
    key.public_key().verify(sig, b"z", ec.ECDSA(hashes.SHA256()))
    assert _refused(site, "generate_key", {"name": "imported"})[:2] == (409, "key-exists")
    for bad in ({"name": "x\n"}, {"name": "../x"}, {"name": "a" * 65}, {"name": "ok", "type": "des"}, {"name": 5}):
        assert _refused(site, "generate_key", bad)[0] == 400
    assert _refused(site, "import_key", {"name": "bad", "type": "ecc-p256", "key": _b64(b"junk")})[:2] == (400, "bad-key")
    assert _refused(site, "import_key", {"name": "bad", "type": "rsa-2048", "key": _b64(der)})[:2] == (400, "bad-key")
    for size in (0, 1025, "8", True, 10 ** 30):
        assert _refused(site, "generate_random", {"size": size})[0] == 400
    assert _refused(site, "sign", {"name": "ec", "data": "!!"})[:2] == (400, "bad-request")
    assert _refused(site, "share_trust_bundle", site.idp.bundle(True))[:2] == (403, "forbidden")


def test_store_records_are_private_authenticated_and_bound_to_their_place(site):
    site.call("generate_key", {"name": "k1"})
    site.call("generate_key", {"name": "k1"}, sub=BOB)
    store = site.service.store
    alice_file = store._record_path(ALICE, "k1")
    bob_file = store._record_path(BOB, "k1")
    assert stat.S_IMODE(os.stat(alice_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(alice_file)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(site.config["store_dir"]).st_mode) == 0o700
    key = store.load(ALICE, "k1")[1]
    raw = open(alice_file, "rb").read()
    assert key.private_numbers().private_value.to_bytes(32, "big") not in raw
    # Bob's record copied over Alice's (a disk-level attacker): refused, never used as Alice's key
    os.replace(bob_file, alice_file)
    store._cache.clear()
    status, error, _detail = _refused(site, "sign", {"name": "k1", "data": _b64(b"x")})
    assert (status, error) == (500, "bad-store")


def test_wrapping_key_sealed_to_the_tpm_survives_restart_and_refuses_another_tpm(swtpm, other_swtpm, tmp_path):
    config = {"backend": "tpm", "tcti": swtpm.tcti}
    store = keystore.KeyStore(str(tmp_path / "store"), keystore.store_key_backend(config, str(tmp_path / "store")))
    store.create(ALICE, "k", "ecc-p256", keystore.generate_material("ecc-p256"))
    before = store.load(ALICE, "k")[1].public_key().public_numbers()
    sealed = tmp_path / "store" / keystore.SEALED_KEY_FILE
    assert stat.S_IMODE(os.stat(sealed).st_mode) == 0o600
    again = keystore.KeyStore(str(tmp_path / "store"), keystore.store_key_backend(config, str(tmp_path / "store")))
    assert again.load(ALICE, "k")[1].public_key().public_numbers() == before
    other = {"backend": "tpm", "tcti": other_swtpm.tcti}
    with pytest.raises(IdentityError) as info:
        keystore.KeyStore(str(tmp_path / "store"), keystore.store_key_backend(other, str(tmp_path / "store")))
    assert info.value.status == 500
    with pytest.raises(IdentityError) as info:  # a memory key cannot open a TPM store either
        keystore.KeyStore(str(tmp_path / "store"), keystore.MemoryStoreKey())
    assert (info.value.status, info.value.error) == (500, "bad-store")
