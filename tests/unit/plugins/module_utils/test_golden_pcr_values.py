# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tpm/policy.golden_pcr_values: the one walk over golden PCR values, used by enrollment
(enrollment/profile.golden_pcrs) and the attestation server (attestation/server.golden_pcrs)."""
from __future__ import annotations

import json

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import profile as enroll_profile
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy

GOOD = {"sha256": {7: "AB" * 32, "0": "cd" * 32}, "sha1": {}}


def both(pcrs):
    """(enrollment's result, the attestation server's result) for one attest.pcrs section."""
    return (enroll_profile.golden_pcrs({"attest": {"pcrs": pcrs}}),
            attest.golden_pcrs({"clientprofile": json.dumps({"attest": {"pcrs": pcrs}}).encode()}))


def test_one_result_for_both_callers():
    expected = {"sha256": {"0": "cd" * 32, "7": "ab" * 32}}
    assert tpm_policy.golden_pcr_values(GOOD) == expected
    assert list(tpm_policy.golden_pcr_values(GOOD)["sha256"]) == ["0", "7"]
    # JSON turns the int key into a string; both callers normalise the same way
    assert both(GOOD) == (expected, expected)
    assert tpm_policy.golden_pcr_values(None) == {} and tpm_policy.golden_pcr_values({}) == {}
    assert both({}) == ({}, {})


@pytest.mark.parametrize("pcrs,message", [
    ({"md5": {"0": "00" * 16}}, "unsupported PCR bank"),
    ({"sha256": {"24": "00" * 32}}, "bad PCR index"),
    ({"sha256": {"07": "00" * 32}}, "bad PCR index"),
    ({"sha256": {"7": "00" * 31}}, "value must be 32 bytes"),
    ({"sha256": {"7": "00" * 32 + "\n"}}, "value must be 32 bytes"),
    ({"sha256": ["00" * 32]}, "must be a mapping"),
    (["sha256"], "must be an object"),
])
def test_bad_golden_values_refused_by_both_callers(pcrs, message):
    with pytest.raises(ValueError, match=message):
        tpm_policy.golden_pcr_values(pcrs)
    with pytest.raises(HcpError):
        enroll_profile.golden_pcrs({"attest": {"pcrs": pcrs}})
    with pytest.raises(attest.PcrPolicyError):
        attest.golden_pcrs({"clientprofile": json.dumps({"attest": {"pcrs": pcrs}}).encode()})
