# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shamir split/combine: property tests and the identified failure cases."""
from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.unseal.shamir import (
    DuplicateShareError,
    NotEnoughSharesError,
    Share,
    ShareFormatError,
    ShareIntegrityError,
    ShareSetMismatchError,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def split_case(draw, min_secret=0):
    count = draw(st.integers(min_value=1, max_value=7))
    threshold = draw(st.integers(min_value=1, max_value=count))
    secret = draw(st.binary(min_size=min_secret, max_size=64))
    return secret, count, threshold


@SETTINGS
@given(split_case(), st.randoms(use_true_random=False))
def test_any_threshold_subset_recovers_in_any_order(case, rnd):
    secret, count, threshold = case
    shares = shamir.split(secret, count, threshold)
    subset = rnd.sample(shares, threshold)
    assert shamir.combine(subset) == secret
    result = shamir.combine_detailed(subset)
    assert result.used == sorted(s.index for s in subset) and result.excluded == []


@SETTINGS
@given(split_case(min_secret=16), st.randoms(use_true_random=False))
def test_fewer_than_threshold_shares_do_not_reproduce_the_secret(case, rnd):
    secret, count, threshold = case
    if threshold < 2:
        return
    shares = shamir.split(secret, count, threshold)
    subset = rnd.sample(shares, threshold - 1)
    with pytest.raises(NotEnoughSharesError, match="%d valid share\\(s\\), %d needed" % (threshold - 1, threshold)):
        shamir.combine(subset)
    # Interpolating the too-small subset directly yields something else (chance 2^-128).
    assert shamir._recover(subset) != secret


@SETTINGS
@given(split_case(), st.data())
def test_any_flipped_bit_is_detected(case, data):
    secret, count, threshold = case
    shares = shamir.split(secret, count, threshold)
    victim = data.draw(st.integers(min_value=0, max_value=threshold - 1))
    blob = bytearray(shares[victim].to_bytes())
    bit = data.draw(st.integers(min_value=0, max_value=len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ShareFormatError, match="share #%d" % (victim + 1)):
        Share.from_bytes(bytes(blob), "share #%d" % (victim + 1))
    given_shares = [s.to_bytes() for s in shares[:threshold]]
    given_shares[victim] = bytes(blob)
    with pytest.raises(ShareFormatError, match="share #%d" % (victim + 1)):
        shamir.combine(given_shares)


@SETTINGS
@given(split_case(), split_case())
def test_shares_of_two_splits_never_combine(case_a, case_b):
    shares_a = shamir.split(case_a[0], case_a[1], case_a[2])
    shares_b = shamir.split(case_b[0], case_b[1], case_b[2])
    mixed = shares_a[:case_a[2]] + shares_b[-1:]
    with pytest.raises(ShareSetMismatchError, match="share #%d" % len(mixed)):
        shamir.combine(mixed)


@SETTINGS
@given(split_case())
def test_text_and_binary_round_trip(case):
    secret, count, threshold = case
    for share in shamir.split(secret, count, threshold):
        text = share.to_text()
        assert text.startswith("hcpshare1.") and "=" not in text
        assert Share.from_text(text) == share
        assert Share.from_bytes(share.to_bytes()) == share


def test_default_threshold_is_majority():
    assert [shamir.split(b"x", n)[0].threshold for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 2, 3, 3, 4]


def test_share_carries_its_metadata():
    set_id = bytes(range(16))
    shares = shamir.split(b"hunter2", 5, 3, set_id=set_id)
    assert [s.index for s in shares] == [1, 2, 3, 4, 5]
    assert {(s.threshold, s.count, s.set_id, s.secret_length, s.version) for s in shares} == {(3, 5, set_id, 7, 1)}
    assert "hunter2" not in repr(shares[0]) and shares[0].data.hex() not in repr(shares[0])


def test_split_sets_get_random_ids():
    assert shamir.split(b"a", 2)[0].set_id != shamir.split(b"a", 2)[0].set_id


def test_large_secret_and_255_shares():
    secret = os.urandom(1 << 20)
    shares = shamir.split(secret, 5, 3)
    assert shamir.combine([shares[4], shares[0], shares[2]]) == secret
    small = shamir.split(b"k" * 32, 255, 200)
    assert shamir.combine(random.sample(small, 200)) == b"k" * 32


@pytest.mark.parametrize("count, threshold", [(0, None), (256, None), (3, 4), (3, 0), (True, None), (3, "2")])
def test_split_rejects_bad_parameters(count, threshold):
    with pytest.raises(HcpError):
        shamir.split(b"s", count, threshold)


def test_split_rejects_non_bytes_secret_and_bad_set_id():
    with pytest.raises(HcpError, match="bytes"):
        shamir.split("text", 3)
    with pytest.raises(HcpError, match="set_id"):
        shamir.split(b"s", 3, set_id=b"short")


def test_duplicate_index_is_named():
    shares = shamir.split(b"secret", 3, 2)
    with pytest.raises(DuplicateShareError, match="share #1 and share #2 both carry share index 1"):
        shamir.combine([shares[0], shares[0], shares[1]])


def test_truncated_share_is_named():
    shares = shamir.split(b"secret", 3, 2)
    text = shares[1].to_text()
    with pytest.raises(ShareFormatError, match="share #2: truncated"):
        shamir.combine([shares[0], shares[1].to_bytes()[:-5]])
    with pytest.raises(ShareFormatError, match="share #1"):
        shamir.combine([text[:20], shares[0]])
    with pytest.raises(ShareFormatError, match="prefix"):
        Share.from_text("hcpshare2." + text[10:])
    with pytest.raises(ShareFormatError, match="base64url"):
        Share.from_text("hcpshare1.a")


def test_unknown_version_is_reported():
    blob = bytearray(shamir.split(b"secret", 2)[0].to_bytes())
    blob[4] = 2
    with pytest.raises(ShareFormatError, match="version 2"):
        Share.from_bytes(bytes(blob))


def test_corrupted_share_is_excluded_when_enough_remain():
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, 2)
    bad = bytearray(shares[1].to_bytes())
    bad[-40] ^= 0x10
    result = shamir.combine_detailed([shares[0], bytes(bad), shares[2]])
    assert result.secret == secret and result.used == [1, 3]
    assert [(e["share"], e["index"]) for e in result.excluded] == [("share #2", None)]
    assert "integrity tag mismatch" in result.excluded[0]["reason"]


def _forge(share, data):
    """A share altered by someone who recomputes the (unkeyed) integrity tag."""
    return Share(share.index, share.threshold, share.count, share.set_id, share.commitment, data)


def test_forged_share_is_found_by_commitment_and_excluded():
    secret = os.urandom(32)
    shares = shamir.split(secret, 5, 3)
    forged = _forge(shares[0], bytes(b ^ 0x5A for b in shares[0].data))
    result = shamir.combine_detailed([forged] + shares[1:])
    assert result.secret == secret and result.used == [2, 3, 4, 5]
    assert [e["index"] for e in result.excluded] == [1]


def test_forged_share_without_spares_raises_integrity_error():
    shares = shamir.split(os.urandom(32), 3, 2)
    forged = _forge(shares[0], bytes(b ^ 1 for b in shares[0].data))
    with pytest.raises(ShareIntegrityError, match="share #1 \\(index 1\\)"):
        shamir.combine([forged, shares[1]])


def test_mixed_threshold_or_length_is_a_set_mismatch():
    set_id = os.urandom(16)
    a = shamir.split(b"secret", 3, 2, set_id=set_id)
    b = shamir.split(b"secret", 3, 3, set_id=set_id)
    with pytest.raises(ShareSetMismatchError):
        shamir.combine([a[0], a[1], b[2]])


def test_empty_and_garbage_inputs():
    with pytest.raises(NotEnoughSharesError, match="no shares"):
        shamir.combine([])
    with pytest.raises(ShareFormatError, match="share #1: expected"):
        shamir.combine([42])
    with pytest.raises(ShareFormatError, match="bad magic"):
        shamir.combine([b"\x00" * 100])


def test_gf_field_axioms():
    for a, b in itertools.product(range(1, 256, 7), range(1, 256, 11)):
        product = shamir._mul(a, b)
        assert product == shamir._mul(*reversed((a, b)))
        assert shamir._mul(product, shamir._inv(b)) == a
