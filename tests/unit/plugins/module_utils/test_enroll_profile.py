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
    merge,
    parse_profile,
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
