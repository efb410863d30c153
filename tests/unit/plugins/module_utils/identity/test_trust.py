# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust relationships (seed 001): root once (also across restarts, until reset), intermediates
chaining to the root, rotation invalidating at once, tokens ES256 only; the root key sealed to a real swtpm."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

AUD = "spiffe://site.test/node1/hcp-identity-provider"


def _status(exc_info):
    return exc_info.value.status, exc_info.value.error


@pytest.fixture
def pair(tmp_path):
    trusted = trust.TrustedSide("orchestrator")
    trusting = trust.TrustingSide(str(tmp_path / "state"))
    assert trusting.share_trust_bundle(trusted.bundle(root=True))["changed"] is True
    assert trusting.share_trust_bundle(trusted.bundle(root=False))["changed"] is True
    return trusted, trusting


def test_signed_token_verifies_and_state_files_are_private(pair):
    trusted, trusting = pair
    claims = trusting.verify(trusted.sign({"app": "a"}, audience=AUD), AUD)
    assert claims["app"] == "a" and claims["aud"] == AUD and claims["jti"]
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(trusted.sign({}, audience=AUD))["kid"] == trusted.kid == trusting.kid
    for name in (trust.ROOT_FILE, trust.INTERMEDIATE_FILE):
        assert stat.S_IMODE(os.stat(os.path.join(trusting.state_dir, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(trusting.state_dir).st_mode) == 0o700


def test_second_root_refused_also_after_restart_until_reset(pair, tmp_path):
    trusted, trusting = pair
    other = trust.TrustedSide("intruder")
    # the same root again is a no-op, a different one a conflict
    assert trusting.share_trust_bundle(trusted.bundle(root=True))["changed"] is False
    with pytest.raises(IdentityError) as info:
        trusting.share_trust_bundle(other.bundle(root=True))
    assert _status(info) == (409, "root-already-pinned")
    restarted = trust.TrustingSide(trusting.state_dir)  # the trusting process restarted
    with pytest.raises(IdentityError) as info:
        restarted.share_trust_bundle(other.bundle(root=True))
    assert _status(info) == (409, "root-already-pinned")
    # the restarted side still verifies the current intermediate's tokens (public state persisted)
    assert restarted.verify(trusted.sign({}, audience=AUD), AUD)
    # the intruder's intermediate does not chain to the pinned root
    with pytest.raises(IdentityError) as info:
        restarted.share_trust_bundle(other.bundle(root=False))
    assert _status(info) == (400, "not-chaining")
    # the operator's reset: then (after a restart) the new root is accepted
    assert trust.reset_trust(trusting.state_dir) == trusted.root_fingerprint
    fresh = trust.TrustingSide(trusting.state_dir)
    assert fresh.share_trust_bundle(other.bundle(root=True))["changed"] is True
    fresh.share_trust_bundle(other.bundle(root=False))
    with pytest.raises(IdentityError) as info:
        fresh.verify(trusted.sign({}, audience=AUD), AUD)
    assert info.value.status == 401


def test_intermediate_not_chaining_and_forged_bundles(tmp_path):
    trusted = trust.TrustedSide("orchestrator")
    trusting = trust.TrustingSide(str(tmp_path / "s"))
    with pytest.raises(IdentityError) as info:  # intermediate before any root
        trusting.share_trust_bundle(trusted.bundle(root=False))
    assert _status(info) == (401, "no-root-pinned")
    # an intermediate (not self-signed, not a CA) offered as the root
    with pytest.raises(IdentityError) as info:
        trusting.share_trust_bundle({"root": True, "certificates": trusted.bundle(root=False)["certificates"][:1]})
    assert _status(info) == (400, "bad-root")
    trusting.share_trust_bundle(trusted.bundle(root=True))
    other = trust.TrustedSide("other")
    # other's intermediate, even followed by the trusted root, does not chain
    forged = {"root": False, "certificates": [other.bundle(False)["certificates"][0], trusted.bundle(True)["certificates"][0]]}
    with pytest.raises(IdentityError) as info:
        trusting.share_trust_bundle(forged)
    assert _status(info) == (400, "not-chaining")
    for bad in ({"root": "yes", "certificates": []}, {"root": False, "certificates": ["junk"]}, [], {"root": False},
                {"root": False, "certificates": ["x" * 20000]}, {"root": True, "certificates": [], "extra": 1}):
        with pytest.raises(IdentityError) as info:
            trusting.share_trust_bundle(bad)
        assert info.value.status == 400
    assert trusting.kid is None  # nothing was accepted


def test_rotation_invalidates_the_old_intermediate_at_once(pair):
    trusted, trusting = pair
    old_token = trusted.sign({"n": 1}, audience=AUD)
    old_bundle = trusted.bundle(root=False)
    assert trusting.verify(old_token, AUD)
    time.sleep(1.1)  # X.509 times have one-second resolution: the new one is strictly younger
    trusted.rotate()
    trusting.share_trust_bundle(trusted.bundle(root=False))
    with pytest.raises(IdentityError) as info:
        trusting.verify(old_token, AUD)  # signed by the old intermediate: refused at once
    assert _status(info) == (401, "unknown-intermediate")
    with pytest.raises(IdentityError) as info:  # the old intermediate shared again (replay)
        trusting.share_trust_bundle(old_bundle)
    assert _status(info) == (409, "stale-intermediate")
    assert trusting.verify(trusted.sign({"n": 2}, audience=AUD), AUD)["n"] == 2


def test_rotation_is_due_after_the_period():
    now = [1000.0]
    trusted = trust.TrustedSide("o", intermediate_period=10, clock=lambda: now[0])
    kid = trusted.kid
    assert not trusted.maybe_rotate()
    now[0] += 10
    assert trusted.maybe_rotate() and trusted.kid != kid
    cert = trusted.intermediate_cert
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 20 + 60


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def test_alg_none_hs256_expired_other_audience_and_long_lifetime_are_refused(pair):
    trusted, trusting = pair
    now = int(time.time())
    claims = {"sub": "x", "aud": AUD, "iat": now, "exp": now + 60, "jti": "j"}
    unsigned = "%s.%s." % (_b64(json.dumps({"alg": "none", "kid": trusted.kid}).encode()), _b64(json.dumps(claims).encode()))
    public_pem = trusted.intermediate_cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    # alg confusion: HMAC keyed with the public key
    hs = "%s.%s" % (_b64(json.dumps({"alg": "HS256", "kid": trusted.kid}).encode()), _b64(json.dumps(claims).encode()))
    import hashlib
    import hmac
    hs += "." + _b64(hmac.new(public_pem, hs.encode(), hashlib.sha256).digest())
    cases = [
        (unsigned, (401, "bad-token")),
        (hs, (401, "bad-token")),
        (trusted.sign({"iat": now - 120, "exp": now - 60}, audience=AUD), (401, "token-expired")),
        (trusted.sign({}, audience="spiffe://site.test/node1/other"), (401, "wrong-audience")),
        (trusted.sign({}, audience=AUD, lifetime=3600), (401, "bad-token")),
        (trusted.sign({}), (401, "bad-token")),  # no audience at all
        ("not.a.token", (401, "bad-token")),
        ("", (401, "bad-token")),
        (b"\xff\xfe", (401, "bad-token")),
        ("a" * 10000, (401, "bad-token")),
    ]
    for token, expected in cases:
        with pytest.raises(IdentityError) as info:
            trusting.verify(token, AUD)
        assert _status(info) == expected, token[:40]
    # a valid signature with the token's payload changed
    good = trusted.sign({"app": "a"}, audience=AUD)
    head, _payload, sig = good.split(".")
    tampered = "%s.%s.%s" % (head, _b64(json.dumps(dict(claims, app="b")).encode()), sig)
    with pytest.raises(IdentityError) as info:
        trusting.verify(tampered, AUD)
    assert _status(info) == (401, "bad-token")


def test_damaged_pin_fails_closed(pair):
    _trusted, trusting = pair
    with open(trusting.root_path, "w") as handle:
        handle.write("{}")
    with pytest.raises(IdentityError) as info:
        trust.TrustingSide(trusting.state_dir)
    assert info.value.status == 500


def test_signed_call_recovers_after_rotation_and_after_trusting_side_reset(tmp_path):
    trusted = trust.TrustedSide("orchestrator")
    state = str(tmp_path / "state")
    holder = {"side": trust.TrustingSide(state)}

    def handler(request):
        if request.name == "share_trust_bundle":
            if request.peer.uid != 0:
                raise IdentityError(403, "forbidden", "root only")
            return holder["side"].share_trust_bundle(request.body)
        claims = trust.verify_signed_request(holder["side"], request, AUD)
        return {"app": claims["app"]}

    srv = wire.serve(str(tmp_path / "admin.sock"), handler, mode=0o600)
    try:
        trust.share(trusted, srv.path)
        assert trust.signed_call(trusted, srv.path, "add_client", {"app": "a"}, AUD) == {"app": "a"}
        trusted.rotate()  # not shared: the first call fails with unknown-intermediate, then recovers
        assert trust.signed_call(trusted, srv.path, "add_client", {"app": "b"}, AUD) == {"app": "b"}
        trust.reset_trust(state)
        holder["side"] = trust.TrustingSide(state)  # the trusting side restarted after a reset
        assert trust.signed_call(trusted, srv.path, "add_client", {"app": "c"}, AUD) == {"app": "c"}
        # a token for one operation is refused for another
        token = trusted.sign({"app": "a", "op": "remove_client"}, audience=AUD)
        with pytest.raises(IdentityError) as info:
            wire.call(srv.path, "add_client", {}, auth=token, auth_type=wire.AUTH_SIGNED)
        assert _status(info) == (401, "bad-token")
        with pytest.raises(IdentityError) as info:  # unsigned
            wire.call(srv.path, "add_client", {"app": "a"})
        assert _status(info) == (401, "unsigned")
        # another trusted side (not the pinned root) cannot sign, even after "recovery"
        intruder = trust.TrustedSide("intruder")
        with pytest.raises(IdentityError) as info:
            trust.signed_call(intruder, srv.path, "add_client", {"app": "x"}, AUD)
        assert _status(info) == (409, "root-already-pinned")
    finally:
        srv.close()


def test_root_key_sealed_to_the_tpm_survives_restart_and_not_elsewhere(swtpm, other_swtpm, tmp_path):
    path = str(tmp_path / "root.envelope.json")
    first = trust.TrustedSide("idp", root_key_store=trust.SealedFile(path, tcti=swtpm.tcti))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as handle:
        sealed = handle.read()
    key_der = first._root_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    scalar = first._root_key.private_numbers().private_value.to_bytes(32, "big")
    for secret in (key_der, scalar, base64.b64encode(scalar), base64.b64encode(key_der)):
        assert secret not in sealed
    again = trust.TrustedSide("idp", root_key_store=trust.SealedFile(path, tcti=swtpm.tcti))
    assert again.root_fingerprint == first.root_fingerprint and again.kid != first.kid
    trusting = trust.TrustingSide(str(tmp_path / "s"))
    trusting.share_trust_bundle(first.bundle(True))
    assert trusting.share_trust_bundle(again.bundle(True))["changed"] is False  # the restarted side's root is the same
    trusting.share_trust_bundle(again.bundle(False))
    assert trusting.verify(again.sign({}, audience=AUD), AUD)
    with pytest.raises(IdentityError) as info:  # another host's TPM cannot open it
        trust.SealedFile(path, tcti=other_swtpm.tcti).load()
    assert _status(info) == (500, "sealed-key")
