# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json

import pytest

from ansible_collections.hcp.core.plugins.module_utils.enrollment.profile import (
    ProfileError,
    build_env,
    check_hostname,
    effective_profile,
    expand,
    golden_pcrs,
    merge,
    parse_profile,
    seal_policy,
)

H = "ab" * 32


@pytest.mark.parametrize("name", ["", "   ", None, "-a.example", "a..b", "a_b.example", "x" * 64 + ".example", "a.b/c", 5])
def test_bad_hostnames(name):
    with pytest.raises(ProfileError):
        check_hostname(name)


def test_good_hostname_normalised():
    assert check_hostname("Node-1.Example.TEST.") == "node-1.example.test"


@pytest.mark.parametrize(
    "data,match",
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        (b"\xff", "UTF-8"),
        ("x" * 70000, "larger"),
        (json.dumps({"a": json.loads("[" * 20 + "1" + "]" * 20)}), "deeper"),
    ],
)
def test_bad_profiles(data, match):
    with pytest.raises(ProfileError, match=match):
        parse_profile(data)


def test_merge_is_recursive_and_server_wins():
    pre = {"certificates": {"https-server": {"days": 10}}, "assets": ["hostname"]}
    client = {"certificates": {"https-server": {"days": 99, "dns_names": ["x"]}}, "assets": ["hostname", "rootfs-key"]}
    post = {"certificates": {"https-server": {"days": 30}}}
    out = merge(pre, client, post)
    assert out == {"certificates": {"https-server": {"days": 30, "dns_names": ["x"]}}, "assets": ["hostname", "rootfs-key"]}
    assert pre["certificates"]["https-server"]["days"] == 10  # inputs untouched


def test_env_and_expansion():
    env = build_env("node1.example.test", H)
    assert env["ENROLL_DOMAIN"] == "example.test"
    assert env["ENROLL_DOMAIN_DC"] == "DC=example,DC=test"
    assert env["ENROLL_REALM"] == "EXAMPLE.TEST"
    assert expand({"p": "host/{ENROLL_HOSTNAME}@{ENROLL_REALM}", "l": ["{ENROLL_ID}"], "n": 3}, env) == {
        "p": "host/node1.example.test@EXAMPLE.TEST", "l": [H], "n": 3}
    assert expand("{lower} stays", env) == "{lower} stays"
    with pytest.raises(ProfileError, match=r"unknown variable \{NOPE\} at profile.a\[0\]"):
        expand({"a": ["{NOPE}"]}, env)


def test_client_cannot_set_env_and_identity_vars_are_fixed():
    out = effective_profile(
        {"__env": {"ENROLL_HOSTNAME": "evil"}, "x": "{ENROLL_HOSTNAME}"},
        "node1.example.test", H,
        preclient={"__env": {"SITE": "lab", "ENROLL_HOSTNAME": "also-evil"}},
        postclient={"y": "{SITE}"}, realm="LAB.TEST",
    )
    assert out["x"] == "node1.example.test"
    assert out["y"] == "lab"
    assert out["__env"]["ENROLL_REALM"] == "LAB.TEST"
    assert out["__env"]["ENROLL_HOSTNAME"] == "node1.example.test"


Z = "00" * 32


@pytest.mark.parametrize("profile, match", [
    ({"attest": []}, "'attest' must be an object"),
    ({"attest": {"pcrs": ["7"]}}, "attest.pcrs must be an object"),
    ({"attest": {"pcrs": {"sha257": {"7": Z}}}}, "unsupported PCR bank"),
    ({"attest": {"pcrs": {"SHA256": {"7": Z}}}}, "unsupported PCR bank"),
    ({"attest": {"pcrs": {"sha256": ["7"]}}}, "mapping of index"),
    ({"attest": {"pcrs": {"sha256": {"24": Z}}}}, "bad PCR index"),
    ({"attest": {"pcrs": {"sha256": {"07": Z}}}}, "bad PCR index"),
    ({"attest": {"pcrs": {"sha256": {"+7": Z}}}}, "bad PCR index"),
    ({"attest": {"pcrs": {"sha256": {" 7": Z}}}}, "bad PCR index"),
    ({"attest": {"pcrs": {"sha256": {"7\n": Z}}}}, "bad PCR index"),
    ({"attest": {"pcrs": {"sha256": {"\u0667": Z}}}}, "bad PCR index"),  # ARABIC-INDIC SEVEN: int() takes it
    ({"attest": {"pcrs": {"sha256": {"7": Z + "\n"}}}}, "64 hex characters"),
    ({"attest": {"pcrs": {"sha256": {"7": Z[:-2] + " 0"}}}}, "64 hex characters"),  # bytes.fromhex takes spaces
    ({"attest": {"pcrs": {"sha256": {"7": "00" * 20}}}}, "64 hex characters"),
    ({"attest": {"pcrs": {"sha1": {"7": Z}}}}, "40 hex characters"),
    ({"attest": {"pcrs": {"sha256": {"7": 0}}}}, "64 hex characters"),
    ({"attest": {"pcrs": {"sha256": {"7": "zz" * 32}}}}, "64 hex characters"),
    ({"seal_policy": "sometimes"}, "'seal_policy': unknown policy type"),
    ({"seal_policy": {"type": "pcr", "pcrs": {"07": Z}}}, "'seal_policy': policy: bad PCR index"),
    ({"seal_policy": 5}, "'seal_policy': policy must be a mapping"),
])
def test_bad_golden_values_and_seal_policies(profile, match):
    with pytest.raises(ProfileError, match=match):
        seal_policy(profile)


def test_golden_values_normalised_and_sealed_to_by_default():
    upper = {"attest": {"pcrs": {"sha256": {"16": "AB" * 32, "7": Z}, "sha1": {"0": "11" * 20}}}}
    assert golden_pcrs(upper) == {"sha256": {"7": Z, "16": "ab" * 32}, "sha1": {"0": "11" * 20}}
    assert seal_policy(upper) == {"type": "pcr", "bank": "sha256", "pcrs": {"7": Z, "16": "ab" * 32}}
    assert seal_policy({"attest": {"pcrs": {"sha1": {"0": "11" * 20}}}})["bank"] == "sha1"
    for none in ({}, {"attest": {}}, {"attest": {"pcrs": None}}, {"attest": {"pcrs": {}}}, {"attest": {"pcrs": {"sha256": {}}}},
                 dict(upper, seal_policy="none"), dict(upper, seal_policy={"type": "none"})):
        assert seal_policy(none) == {"type": "none"}
    assert seal_policy(dict(upper, seal_policy=None))["type"] == "pcr"  # null is absent: the default applies
    assert seal_policy(dict(upper, seal_policy="one_time")) == {"type": "one_time"}
    # the merge: a server postclient can force its choice over the client's
    merged = effective_profile(upper, "n.example.test", H, postclient={"seal_policy": "none"})
    assert seal_policy(merged) == {"type": "none"}
