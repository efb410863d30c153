# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shamir_split / shamir_combine filters, through their FilterModule classes."""
from __future__ import annotations

import base64
import os

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.filter import shamir_combine as combine_plugin
from ansible_collections.hcp.core.plugins.filter import shamir_split as split_plugin

SPLIT = split_plugin.FilterModule().filters()["shamir_split"]
COMBINE = combine_plugin.FilterModule().filters()["shamir_combine"]


def test_text_round_trip_any_two_of_three():
    shares = SPLIT("tøken-ü", shares=3, threshold=2)
    assert len(shares) == 3 and all(s.startswith("hcpshare1.") for s in shares)
    for pair in ([0, 1], [1, 2], [2, 0]):
        assert COMBINE([shares[i] for i in pair]) == "tøken-ü"


def test_default_threshold_is_majority():
    shares = SPLIT("x", shares=5)
    with pytest.raises(AnsibleFilterError, match="NotEnoughSharesError: 2 valid share\\(s\\), 3 needed"):
        COMBINE(shares[:2])
    assert COMBINE(shares[2:]) == "x"


def test_binary_secret_as_base64_and_bytes_input():
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    assert COMBINE(SPLIT(key_b64, shares=3, encoding="base64")[1:], encoding="base64") == key_b64
    assert COMBINE(SPLIT(key, shares=2), encoding="base64") == key_b64
    with pytest.raises(AnsibleFilterError, match="not UTF-8 text"):
        COMBINE(SPLIT(b"\xff\xfe", shares=1))


def test_errors_name_the_cause():
    shares = SPLIT("secret", shares=3, threshold=2)
    other = SPLIT("secret", shares=3, threshold=2)
    with pytest.raises(AnsibleFilterError, match="ShareSetMismatchError: .*share #2"):
        COMBINE([shares[0], other[1], shares[2]][:2] + [shares[1]])
    with pytest.raises(AnsibleFilterError, match="DuplicateShareError"):
        COMBINE([shares[0], shares[0]])
    with pytest.raises(AnsibleFilterError, match="ShareFormatError: share #1: truncated"):
        COMBINE([shares[0][:40], shares[1]])
    with pytest.raises(AnsibleFilterError, match="expects a list"):
        COMBINE(shares[0])


def test_corrupted_share_excluded_when_enough_remain():
    shares = SPLIT("secret", shares=3, threshold=2)
    raw = bytearray(base64.urlsafe_b64decode(shares[0][10:] + "=="))
    raw[62] ^= 4
    bad = "hcpshare1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert COMBINE([bad, shares[1], shares[2]]) == "secret"


@pytest.mark.parametrize("kwargs, message", [
    ({"shares": 0}, "share count"),
    ({"shares": 3, "threshold": 4}, "threshold"),
    ({"shares": 3, "encoding": "hex"}, "encoding"),
])
def test_split_parameter_errors(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        SPLIT("secret", **kwargs)


def test_split_input_errors():
    with pytest.raises(AnsibleFilterError, match="not valid base64"):
        SPLIT("not base64!", shares=2, encoding="base64")
    with pytest.raises(AnsibleFilterError, match="string or bytes"):
        SPLIT(42, shares=2)
