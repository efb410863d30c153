# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property-based tests of the policy engine: termination, no accept without an accept
rule, and a leading reject rule never turns a reject into an accept."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.hcp.core.plugins.module_utils.policy.engine import (
    PolicyError,
    PolicyValidationError,
    load_policy,
)

NAMES = ["f0", "f1", "f2", "f3", "f4"]
PATHS = [".", ".a", ".b", ".a.b", ".l", ".__env"]
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["x", "y", "1", ""]))
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "l", "_"]), inner, max_size=3)), max_leaves=8)
DATA = st.dictionaries(st.sampled_from(["a", "b", "l", "_"]), VALUES, max_size=4)
LIMITS = {"max_steps": 300, "max_call_depth": 8}


@st.composite
def conditions(draw):
    base = draw(st.sampled_from(["exist", "equal", "subset", "elementof", "contains", "isinstance"]))
    cond = {("not-" + base) if draw(st.booleans()) else base: draw(st.sampled_from(PATHS))}
    if base in ("equal", "contains"):
        cond["value"] = draw(VALUES)
    elif base in ("subset", "elementof"):
        cond["value"] = draw(st.lists(VALUES, max_size=3))
    elif base == "isinstance":
        cond["type"] = draw(st.sampled_from(["null", "string", "number", "object", "array", "boolean"]))
    return cond


@st.composite
def scopes(draw):
    if draw(st.booleans()):
        return draw(st.sampled_from(PATHS))
    steps = []
    for _index in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["set", "delete", "import", "union"]))
        step = {kind: draw(st.sampled_from(PATHS))}
        if kind == "set":
            step["value"] = draw(VALUES)
        elif kind == "import":
            step["source"] = draw(st.sampled_from(PATHS))
        elif kind == "union":
            step["source1"] = draw(st.sampled_from(PATHS + [None]))
            step["source2"] = draw(st.sampled_from(PATHS))
        steps.append(step)
    return steps


@st.composite
def policies(draw, allow_accept=True):
    actions = ["reject", "jump", "call", "return", "next"] + (["accept"] if allow_accept else [])
    final = ["reject", "return", "next"] + (["accept"] if allow_accept else [])
    filters = {}
    for name in NAMES:
        action = draw(st.sampled_from(actions))
        flt = {"action": action}
        if action in ("jump", "call"):
            flt[action] = draw(st.sampled_from(NAMES))
        if action == "call":
            if draw(st.booleans()):
                flt["scope"] = draw(scopes())
            if draw(st.booleans()):
                flt["on-return"] = draw(st.sampled_from(["reject", "accept"] if allow_accept else ["reject"]))
        if draw(st.booleans()):
            flt["if"] = draw(st.lists(conditions(), max_size=2))
            if draw(st.booleans()):
                flt["otherwise"] = draw(st.sampled_from(final))
        flt["next"] = draw(st.sampled_from(NAMES))
        filters[name] = flt
    default = draw(st.sampled_from(["accept", "reject"])) if allow_accept else "reject"
    return {"start": "f0", "default": default, "filters": filters}


def try_load(doc):
    try:
        return load_policy(doc, limits=LIMITS)
    except PolicyValidationError:
        return None


def outcome(policy, data):
    """The decision's action, or "error" when evaluation failed closed."""
    try:
        return policy.evaluate(data).action
    except PolicyError:
        return "error"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(policies(), DATA)
def test_evaluation_always_terminates(doc, data):
    policy = try_load(doc)
    assume(policy is not None)
    assert outcome(policy, data) in ("accept", "reject", "error")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(policies(allow_accept=False), DATA)
def test_no_accept_rule_never_accepts(doc, data):
    policy = try_load(doc)
    assume(policy is not None)
    assert outcome(policy, data) != "accept"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(policies(), DATA, st.lists(conditions(), max_size=2))
def test_leading_reject_cannot_turn_reject_into_accept(doc, data, conds):
    policy = try_load(doc)
    assume(policy is not None)
    before = outcome(policy, data)
    doc = dict(doc, start="lead", filters=dict(doc["filters"], lead={"if": conds, "action": "reject", "next": "f0"}))
    after = outcome(load_policy(doc, limits=LIMITS), data)
    if before != "accept":
        assert after != "accept"
    else:
        assert after in ("accept", "reject")
