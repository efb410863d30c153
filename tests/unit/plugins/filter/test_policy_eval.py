# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy_eval filter through its FilterModule class, with the real engine."""
from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.filter import policy_eval as plugin

EVAL = plugin.FilterModule().filters()["policy_eval"]
POLICY = {"start": "main", "filters": {"main": [
    {"if": {"contains": ".assets", "value": "pkinit-kdc"}, "action": "jump", "jump": "kdc"},
    {"name": "ok", "action": "accept"}],
    "kdc": {"if": {"elementof": ".hostname", "value": ["kdc1"]}, "action": "accept", "otherwise": "reject"}}}


def test_accept_and_reject_with_rule_and_trace():
    out = EVAL({"hostname": "kdc1", "assets": ["pkinit-kdc"]}, POLICY)
    assert out["decision"] == "accept" and out["accepted"] is True and out["rule"] == "kdc"
    assert out["trace"] == [{"filter": "main", "matched": True, "action": "jump"},
                            {"filter": "kdc", "matched": True, "action": "accept"}]
    out = EVAL({"hostname": "ws1", "assets": ["pkinit-kdc"]}, json.dumps(POLICY))
    assert out["decision"] == "reject" and out["accepted"] is False and out["rule"] == "kdc"
    assert EVAL({"hostname": "ws1", "assets": []}, POLICY)["rule"] == "ok"


def test_hookname_is_visible_to_the_policy():
    pol = {"start": "a", "filters": {"a": {"if": {"equal": ".hookname", "value": "h"}, "action": "accept", "otherwise": "reject"}}}
    assert EVAL({}, pol, hookname="h")["accepted"]
    assert not EVAL({}, pol)["accepted"]


def test_invalid_policy_lists_every_problem_with_location():
    bad = {"start": "a", "filters": {"a": [{"if": {"equals": ".x"}, "action": "accept"}, {"action": "frob"}]}}
    with pytest.raises(AnsibleFilterError) as info:
        EVAL({}, bad)
    text = str(info.value)
    assert 'filters.a[0].if[0]: unknown condition "equals"' in text
    assert 'filters.a[1].action: unknown action "frob"' in text


def test_limits_fail_the_task():
    pol = {"start": "a", "filters": {"a": {"action": "call", "call": "b", "on-return": "reject"},
                                     "b": {"if": {"exist": ".x"}, "action": "accept", "otherwise": "next", "next": "a"}}}
    with pytest.raises(AnsibleFilterError, match="no decision: call depth"):
        EVAL({}, pol)
    with pytest.raises(AnsibleFilterError, match="not JSON"):
        EVAL({"x": object()}, POLICY)
