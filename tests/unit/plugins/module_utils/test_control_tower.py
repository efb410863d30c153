# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control tower store on a real directory: registration, tokens, one-time unwrap."""
from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import (
    BadRequestError,
    ControlTower,
    ControlTowerError,
    OperatorRequiredError,
    SiteConflictError,
    TokenForbiddenError,
    TokenInvalidError,
    UnknownSiteError,
    UnwrapLockedError,
)
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import (
    generate_site_key,
    public_key_pem,
    seal_to_site,
)


@pytest.fixture
def tower(tmp_path):
    return ControlTower(str(tmp_path / "tower"))


@pytest.fixture
def pem():
    return public_key_pem(generate_site_key())


def bundle(pem, site="site-a"):
    return seal_to_site(pem, b"k" * 32, site, "seal-key")


def test_register_is_idempotent_and_conflicts_on_another_key(tower, pem):
    status, changed = tower.register_site("site-a", pem)
    assert changed and status["registered"] and not status["has_bundle"] and not status["unwrap_allowed"]
    assert tower.register_site("site-a", pem)[1] is False
    other = public_key_pem(generate_site_key())
    with pytest.raises(SiteConflictError) as info:
        tower.register_site("site-a", other)
    assert info.value.status == 409
    status, changed = tower.register_site("site-a", other, replace=True)
    assert changed and status["public_key"].strip() == other.strip()
    path = os.path.join(tower.sites_dir, "site-a.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tower.store).st_mode) == 0o700
    doc = json.load(open(path))
    assert doc["format"] == "hcp.core.control-tower-site" and doc["version"] == 1
    assert tower.sites() == ["site-a"]
    assert tower.status("nope") == {"site": "nope", "registered": False}
    assert tower.delete_site("site-a") is True and tower.delete_site("site-a") is False


def test_token_is_stored_as_hash_and_unwrap_is_once(tower, pem):
    tower.register_site("site-a", pem)
    token = tower.issue_token("site-a")
    assert token.startswith("hcpct1.") and len(token) > 40
    raw = open(os.path.join(tower.sites_dir, "site-a.json")).read()
    assert token not in raw and token[7:] not in raw
    with pytest.raises(ControlTowerError) as info:
        tower.unwrap("site-a", token)
    assert info.value.status == 409  # no bundle yet
    stored = bundle(pem)
    status = tower.store_bundle("site-a", token, stored)
    assert status["has_bundle"] and status["unwrap_allowed"]
    assert tower.unwrap("site-a", token) == stored
    with pytest.raises(UnwrapLockedError) as info:
        tower.unwrap("site-a", token)
    assert info.value.status == 423 and "re-allow" in str(info.value)
    status = tower.status("site-a")
    assert status["unwrap_allowed"] is False and status["last_unwrap"]
    assert status["counts"] == {"tokens_issued": 1, "stores": 1, "unwraps": 1, "refused_unwraps": 1, "reallows": 0,
                                "refused_stores": 0}
    assert token not in json.dumps(status)
    status, changed = tower.reallow_unwrap("site-a")
    assert changed and status["unwrap_allowed"]
    assert tower.reallow_unwrap("site-a")[1] is False
    assert tower.unwrap("site-a", token) == stored


def test_only_an_operator_replaces_a_bundle(tower, pem):
    tower.register_site("site-a", pem)
    token = tower.issue_token("site-a")
    first = bundle(pem)
    assert tower.store_bundle("site-a", token, first)["unwrap_allowed"]  # the first store: the init flow
    assert tower.unwrap("site-a", token) == first
    # the attack: the token holder stores again to re-arm the one-time unwrap
    with pytest.raises(OperatorRequiredError) as info:
        tower.store_bundle("site-a", token, seal_to_site(pem, b"x" * 32, "site-a", "seal-key"))
    assert info.value.status == 403
    status = tower.status("site-a")
    assert status["unwrap_allowed"] is False and status["counts"]["refused_stores"] == 1 and status["counts"]["stores"] == 1
    with pytest.raises(UnwrapLockedError):
        tower.unwrap("site-a", token)
    other = bundle(pem)
    assert tower.store_bundle("site-a", token, other, operator="operator")["unwrap_allowed"]
    assert tower.unwrap("site-a", token) == other
    # a record written before refused_stores existed still loads and counts
    path = os.path.join(tower.sites_dir, "site-a.json")
    doc = json.load(open(path))
    del doc["counts"]["refused_stores"]
    with open(path, "w") as handle:
        json.dump(doc, handle)
    assert tower.status("site-a")["counts"]["refused_stores"] == 0
    with pytest.raises(OperatorRequiredError):
        tower.store_bundle("site-a", token, other)
    assert tower.status("site-a")["counts"]["refused_stores"] == 1


def test_tokens_are_per_site_and_revocable(tower, pem):
    tower.register_site("site-a", pem)
    other_pem = public_key_pem(generate_site_key())
    tower.register_site("site-b", other_pem)
    token_a, token_b = tower.issue_token("site-a"), tower.issue_token("site-b")
    tower.store_bundle("site-b", token_b, bundle(other_pem, "site-b"))
    with pytest.raises(TokenForbiddenError) as info:
        tower.unwrap("site-b", token_a)
    assert info.value.status == 403
    with pytest.raises(TokenForbiddenError):
        tower.store_bundle("site-b", token_a, bundle(pem, "site-b"))
    with pytest.raises(TokenInvalidError) as info:
        tower.unwrap("site-b", "hcpct1.forged")
    assert info.value.status == 401
    with pytest.raises(TokenInvalidError):
        tower.unwrap("site-b", "")
    fresh = tower.issue_token("site-b")
    with pytest.raises(TokenInvalidError):
        tower.unwrap("site-b", token_b)
    assert tower.unwrap("site-b", fresh)["site"] == "site-b"


def test_bad_input(tower, pem):
    for name in ("", "UPPER", "../x", "a/b", "x" * 80, None):
        with pytest.raises(BadRequestError):
            tower.register_site(name, pem)
    with pytest.raises(BadRequestError):
        tower.register_site("site-a", "not a key")
    with pytest.raises(UnknownSiteError) as info:
        tower.issue_token("site-a")
    assert info.value.status == 404
    tower.register_site("site-a", pem)
    token = tower.issue_token("site-a")
    for bad in ("x", [], {"format": "f", "version": 1, "epk": "!!", "nonce": "", "ct": ""},
                {"format": "f", "version": 1, "epk": "a" * 100000, "nonce": "", "ct": ""}):
        with pytest.raises(BadRequestError):
            tower.store_bundle("site-a", token, bad)
    assert tower.status("site-a")["has_bundle"] is False
    with pytest.raises(UnknownSiteError):
        tower.reallow_unwrap("site-z")
    with pytest.raises(SiteConflictError):
        tower.reallow_unwrap("site-a")


def test_site_name_is_matched_whole_and_echoed_bounded(tower, pem):
    for name in ("site-a\n", "site-a\n\n", "x" * 100000 + "\n"):
        with pytest.raises(BadRequestError) as info:
            tower.register_site(name, pem)
        assert info.value.status == 400 and len(str(info.value)) < 300
    assert "'site-a\\n'" in _message(tower, "site-a\n", pem)
    assert os.listdir(tower.sites_dir) == [] and tower.sites() == []
    with pytest.raises(BadRequestError):
        tower.status("site-a\n")


def _message(tower, name, pem):
    with pytest.raises(BadRequestError) as info:
        tower.register_site(name, pem)
    return str(info.value)


def test_concurrent_unwraps_release_the_bundle_once(tower, pem):
    tower.register_site("site-a", pem)
    token = tower.issue_token("site-a")
    tower.store_bundle("site-a", token, bundle(pem))
    results = []

    def attempt():
        try:
            tower.unwrap("site-a", token)
            results.append("ok")
        except UnwrapLockedError:
            results.append("locked")

    threads = [threading.Thread(target=attempt) for dummy in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["locked"] * 7 + ["ok"]
