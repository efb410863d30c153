# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Site init and unseal (seed 004) end to end: three controllers whose shares are protected
by three real swtpm processes, a real control tower store, real X25519/AES-GCM."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import (
    ControlTower,
    TokenForbiddenError,
    TokenInvalidError,
    UnwrapLockedError,
)
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import inspect_share, write_share
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import (
    InsufficientSharesError,
    LocalTower,
    SiteSecretError,
    SiteUnsealError,
    WrongSiteKeyError,
    combine_shares,
    generate_site_key,
    init_site,
    load_host_share,
    open_sealed,
    public_key_pem,
    reinit_due,
    reinit_site,
    seal_to_site,
    unseal,
)

CONTROLLERS = ["c1", "c2", "c3"]


@pytest.fixture
def tower(tmp_path):
    return LocalTower(ControlTower(str(tmp_path / "tower")))


def test_sealed_box_binds_site_and_purpose():
    key = generate_site_key()
    sealed = seal_to_site(public_key_pem(key), b"secret", "site-a", "token")
    assert open_sealed(key, sealed, "site-a", "token") == b"secret"
    assert b"secret" not in json.dumps(sealed).encode()
    with pytest.raises(WrongSiteKeyError):
        open_sealed(key, sealed, "site-a", "seal-key")
    with pytest.raises(WrongSiteKeyError):
        open_sealed(generate_site_key(), sealed, "site-a", "token")
    forged = dict(sealed, site="site-b")
    with pytest.raises(WrongSiteKeyError):
        open_sealed(key, forged, "site-b", "token")
    with pytest.raises(SiteSecretError):
        open_sealed(key, dict(sealed, version=2), "site-a", "token")


def test_init_then_unseal_two_of_three_with_tpm_protected_shares(tower, tmp_path, swtpm, other_swtpm, new_swtpm):
    init = init_site("site-a", CONTROLLERS, tower=tower)
    assert init.threshold == 2 and sorted(init.shares) == CONTROLLERS and len(init.seal_key) == 32
    assert init.seal_key.hex() not in repr(init) and "hcpshare1" not in repr(init)
    status = tower.status("site-a")
    assert status["has_bundle"] and status["unwrap_allowed"] and status["has_token"]
    tpms = dict(zip(CONTROLLERS, (swtpm, other_swtpm, new_swtpm)))
    paths = {}
    for name in CONTROLLERS:
        paths[name] = str(tmp_path / ("%s.share" % name))
        result = write_share(paths[name], shamir.Share.from_text(init.shares[name]), "require",
                             tpm_factory=tpms[name].open)
        assert result.protection == "tpm"
        assert inspect_share(paths[name])["protected_with_tpm"] is True
    gathered = [load_host_share(paths[n], tpm_factory=tpms[n].open)["share"] for n in ("c1", "c3")]
    result = unseal(gathered, tower=tower, site="site-a")
    assert result.seal_key == init.seal_key and result.used == [1, 3] and result.via == "tower"
    assert init.seal_key.hex() not in repr(result)
    # the bundle unwraps once: a replay of the same shares (and token) is refused
    with pytest.raises(UnwrapLockedError):
        unseal(gathered, tower=tower, site="site-a")
    tower.reallow_unwrap("site-a")
    assert unseal([init.shares["c2"], init.shares["c3"]], tower=tower).seal_key == init.seal_key


def test_refused_with_one_share_and_corrupted_share_named(tower):
    init = init_site("site-a", CONTROLLERS, tower=tower)
    with pytest.raises(InsufficientSharesError) as info:
        unseal([init.shares["c1"]], tower=tower, site="site-a")
    assert (info.value.valid, info.value.needed) == (1, 2) and "1 valid share(s) for site site-a, 2 needed" in str(
        info.value)
    text = init.shares["c2"]
    corrupted = text[:40] + ("A" if text[40] != "A" else "B") + text[41:]
    with pytest.raises(InsufficientSharesError) as info:
        unseal([init.shares["c1"], corrupted], tower=tower)
    assert "share #2" in str(info.value) and info.value.excluded[0]["share"] == "share #2"
    assert tower.status("site-a")["unwrap_allowed"] is True  # nothing was unwrapped
    result = unseal([corrupted, init.shares["c1"], init.shares["c3"]], tower=tower)
    assert result.seal_key == init.seal_key and result.used == [1, 3]
    assert [e["share"] for e in result.excluded] == ["share #1"]


def test_foreign_duplicated_and_wrong_site(tower):
    site_a = init_site("site-a", CONTROLLERS, tower=tower)
    site_b = init_site("site-b", CONTROLLERS, tower=tower)
    with pytest.raises(shamir.ShareSetMismatchError):
        unseal([site_a.shares["c1"], site_b.shares["c2"]], tower=tower)
    with pytest.raises(shamir.DuplicateShareError):
        unseal([site_a.shares["c1"], site_a.shares["c1"]], tower=tower)
    with pytest.raises(SiteSecretError, match="belong to site 'site-b'"):
        unseal([site_b.shares["c1"], site_b.shares["c2"]], tower=tower, site="site-a")
    for site in ("site-a", "site-b"):
        assert tower.status(site)["unwrap_allowed"] is True


def test_token_of_site_a_is_refused_for_site_b(tower):
    site_a = init_site("site-a", CONTROLLERS, tower=tower)
    init_site("site-b", CONTROLLERS, tower=tower)
    secret, dummy = combine_shares([site_a.shares["c1"], site_a.shares["c2"]])
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(secret["site_key"]))
    token_a = open_sealed(key, secret["token"], "site-a", "token").decode()
    with pytest.raises(TokenForbiddenError):
        tower.unwrap("site-b", token_a)
    assert tower.status("site-b")["unwrap_allowed"] is True


def test_stale_bundle_with_another_site_key_is_refused(tower):
    first = init_site("site-a", CONTROLLERS, tower=tower)
    init_site("site-a", CONTROLLERS, tower=tower, replace=True)  # a second init replaces key, token and bundle
    with pytest.raises(TokenInvalidError):  # the old token was revoked with the re-initialisation
        unseal([first.shares["c1"], first.shares["c2"]], tower=tower)


def test_local_unseal_without_tower(tmp_path):
    with pytest.raises(SiteUnsealError, match="allow_local_unseal"):
        init_site("site-a", CONTROLLERS)
    init = init_site("site-a", CONTROLLERS, allow_local_unseal=True, threshold=3)
    assert init.threshold == 3 and init.tower is False
    with pytest.raises(InsufficientSharesError):
        unseal([init.shares["c1"], init.shares["c2"]])
    result = unseal(list(init.shares.values()))
    assert result.seal_key == init.seal_key and result.via == "local"
    with pytest.raises(SiteUnsealError, match="tower mode needs"):
        unseal(list(init.shares.values()), mode="tower")


def test_tower_only_site_refuses_local_mode(tower):
    init = init_site("site-a", CONTROLLERS, tower=tower)
    with pytest.raises(SiteUnsealError, match="without allow_local_unseal"):
        unseal([init.shares["c1"], init.shares["c2"]], tower=tower, mode="local")


def test_never_stores_plaintext(tower, tmp_path, new_swtpm):
    init = init_site("site-a", CONTROLLERS, tower=tower)
    path = str(tmp_path / "c1.share")
    result = write_share(path, shamir.Share.from_text(init.shares["c1"]), "never", tpm_factory=new_swtpm.open)
    assert result.protection == "plaintext"
    assert inspect_share(path)["protected_with_tpm"] is False
    assert load_host_share(path)["share"] == init.shares["c1"]


def test_tpm_swap_needs_reinit_and_reallow(tower, tmp_path, swtpm, other_swtpm, new_swtpm):
    init = init_site("site-a", CONTROLLERS, tower=tower)
    tpms = dict(zip(CONTROLLERS, (swtpm, other_swtpm, new_swtpm)))
    paths = dict((n, str(tmp_path / n)) for n in CONTROLLERS)
    for name in CONTROLLERS:
        write_share(paths[name], shamir.Share.from_text(init.shares[name]), tpm_factory=tpms[name].open)
    # a normal restart: the site unwraps once
    assert unseal([load_host_share(paths[n], tpm_factory=tpms[n].open)["share"] for n in ("c1", "c2")],
                  tower=tower).seal_key == init.seal_key
    # c3 is restored onto c1's hardware: its share no longer decrypts
    swapped = load_host_share(paths["c3"], tpm_factory=swtpm.open)
    assert swapped["status"] == "reinit_needed" and "TPM replaced" in swapped["reason"]
    assert reinit_due(1000.0, 300, now=1200.0) is False and reinit_due(1000.0, 300, now=1300.0) is True
    others = [load_host_share(paths[n], tpm_factory=tpms[n].open)["share"] for n in ("c1", "c2")]
    with pytest.raises(UnwrapLockedError):
        reinit_site("site-a", others, CONTROLLERS, tower=tower)
    tower.reallow_unwrap("site-a")
    fresh, result = reinit_site("site-a", others, CONTROLLERS, tower=tower)
    assert fresh.seal_key == init.seal_key == result.seal_key and fresh.set_id != init.set_id
    write_share(paths["c3"], shamir.Share.from_text(fresh.shares["c3"]), tpm_factory=swtpm.open)
    assert load_host_share(paths["c3"], tpm_factory=swtpm.open)["status"] == "ok"
    # old shares are of another generation, the new ones unseal (the new bundle is armed)
    with pytest.raises(shamir.ShareSetMismatchError):
        unseal([init.shares["c1"], fresh.shares["c2"]], tower=tower)
    assert unseal([fresh.shares["c2"], fresh.shares["c3"]], tower=tower).seal_key == init.seal_key


def test_bad_init_arguments(tower):
    for controllers in ([], ["a", "a"], "abc", [""]):
        with pytest.raises(SiteUnsealError):
            init_site("site-a", controllers, tower=tower)
    for threshold in (0, 4, True, "2"):
        with pytest.raises(SiteUnsealError):
            init_site("site-a", CONTROLLERS, tower=tower, threshold=threshold)
    with pytest.raises(SiteUnsealError):
        init_site("site-a", CONTROLLERS, tower=tower, seal_key=b"short")
    with pytest.raises(SiteUnsealError):
        unseal([], tower=tower, mode="bogus")
    with pytest.raises(InsufficientSharesError):
        unseal([], tower=tower)
    assert tower.status("site-a") == {"site": "site-a", "registered": False}
