# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy engine: every action, condition and scope step, validation with locations,
limits, comments, {VAR} expansion and the example enrollment policy."""

from __future__ import annotations

import copy
import json
import os

import pytest

from ansible_collections.hcp.core.plugins.module_utils.policy.engine import (
    PolicyEvaluationError,
    PolicyValidationError,
    evaluate_json,
    load_policy,
)

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "examples", "policy", "enrollment-policy.json")


def one(rule, default="reject", **extra):
    """A policy whose start chain is ``rule`` followed by an explicit fallthrough reject."""
    filters = {"main": [rule, {"name": "fallthrough", "action": "reject"}]}
    filters.update(extra)
    return load_policy({"start": "main", "default": default, "filters": filters})


def decide(policy, data):
    decision = policy.evaluate(data)
    return decision.action, decision.rule


# ---------------------------------------------------------------- actions

def test_accept_and_reject():
    assert decide(one({"action": "accept"}), {}) == ("accept", "main")
    assert decide(one({"action": "reject"}, default="accept"), {}) == ("reject", "main")


def test_default_applies_when_nothing_decides():
    pol = load_policy({"start": "a", "default": "accept", "filters": {"a": {"action": "return"}}})
    decision = pol.evaluate({})
    assert decision.accepted and decision.rule == "default"
    pol = load_policy({"start": "a", "filters": {"a": {"action": "return"}}})
    assert not pol.evaluate({}).accepted


def test_jump_and_next():
    pol = one({"action": "jump", "jump": "target"}, target={"action": "accept"})
    assert decide(pol, {}) == ("accept", "target")
    pol = one({"if": {"exist": ".x"}, "action": "accept"})
    assert decide(pol, {}) == ("reject", "fallthrough")
    assert decide(pol, {"x": 1}) == ("accept", "main")
    pol = one({"action": "next", "next": "elsewhere"}, elsewhere={"action": "accept"})
    assert decide(pol, {}) == ("accept", "elsewhere")


def test_explicit_next_overrides_chain_link():
    pol = one({"if": {"exist": ".x"}, "action": "reject", "next": "ok"}, ok={"action": "accept"})
    assert decide(pol, {}) == ("accept", "ok")


@pytest.mark.parametrize("otherwise,expected", [
    ("accept", ("accept", "main")), ("reject", ("reject", "main")),
    ("return", ("accept", "default")), ("next", ("reject", "fallthrough")),
])
def test_otherwise_forms(otherwise, expected):
    pol = one({"if": {"exist": ".x"}, "action": "jump", "jump": "never", "otherwise": otherwise},
              default="accept", never={"action": "reject"})
    assert decide(pol, {}) == expected
    assert decide(pol, {"x": 1}) == ("reject", "never")


def test_call_decision_inside_callee_is_final():
    pol = one({"action": "call", "call": "sub", "on-return": "reject"}, sub={"action": "accept"})
    assert decide(pol, {}) == ("accept", "sub")


@pytest.mark.parametrize("on_return,expected", [("accept", ("accept", "main")), ("reject", ("reject", "main")), (None, ("reject", "fallthrough"))])
def test_call_on_return(on_return, expected):
    rule = {"action": "call", "call": "sub"}
    if on_return:
        rule["on-return"] = on_return
    pol = one(rule, default="accept", sub={"action": "return"})
    assert decide(pol, {}) == expected


def test_call_scope_string_and_steps():
    data = {"a": {"b": 1}, "secret": "s", "x": [1, 2]}
    pol = one({"action": "call", "call": "sub", "scope": ".a"}, sub=[
        {"if": {"exist": ".secret"}, "action": "reject"},
        {"if": {"equal": ".b", "value": 1}, "action": "accept"}, {"action": "reject"}])
    assert decide(pol, data) == ("accept", "sub_1")
    steps = [{"set": ".s.t", "value": {"k": [1]}}, {"import": ".i", "source": ".x"},
             {"set": ".gone", "value": 1}, {"delete": ".gone"}, {"delete": ".not.there"},
             {"set": ".u1", "value": {"l": [1, 2], "o": {"p": 1}, "v": 1}},
             {"set": ".u2", "value": {"l": [2, 3], "o": {"q": 2}, "v": 2}},
             {"union": ".u", "source1": ".u1", "source2": ".u2"},
             {"union": ".n", "source1": None, "source2": ".u2"}]
    sub = [{"if": [{"equal": ".s", "value": {"t": {"k": [1]}}}, {"equal": ".i", "value": [1, 2]},
                   {"not-exist": ".gone"}, {"not-exist": ".a"},
                   {"equal": ".u", "value": {"l": [1, 2, 3], "o": {"p": 1, "q": 2}, "v": 2}},
                   {"equal": ".n", "value": {"l": [2, 3], "o": {"q": 2}, "v": 2}}],
            "action": "accept"}, {"action": "reject"}]
    assert decide(one({"action": "call", "call": "sub", "scope": steps}, sub=sub), data) == ("accept", "sub")


def test_call_scope_set_root_and_isolation():
    data = {"a": {"b": 1}}
    steps = [{"import": ".", "source": "."}, {"set": ".a.b", "value": 2}]
    pol = one({"action": "call", "call": "sub", "scope": steps, "on-return": "reject"},
              sub={"if": {"equal": ".a.b", "value": 2}, "action": "return", "otherwise": "accept"})
    assert decide(pol, data) == ("reject", "main")
    assert data == {"a": {"b": 1}}  # the caller's data is never modified
    pol = one({"action": "call", "call": "sub", "scope": [{"set": ".", "value": {"z": 1}}]},
              sub={"if": {"equal": ".", "value": {"z": 1}}, "action": "accept", "otherwise": "reject"})
    assert decide(pol, data) == ("accept", "sub")


def test_call_without_scope_sees_caller_data():
    pol = one({"action": "call", "call": "sub"}, sub={"if": {"exist": ".x"}, "action": "accept", "otherwise": "return"})
    assert decide(pol, {"x": 1}) == ("accept", "sub")
    assert decide(pol, {}) == ("reject", "fallthrough")


def test_scope_errors_fail_closed():
    pol = one({"action": "call", "call": "sub", "scope": [{"import": ".x", "source": ".missing"}]}, sub={"action": "accept"})
    with pytest.raises(PolicyEvaluationError, match="import source .missing"):
        pol.evaluate({})
    pol = one({"action": "call", "call": "sub", "scope": [{"union": ".x", "source1": ".a", "source2": ".b"}]}, sub={"action": "accept"})
    with pytest.raises(PolicyEvaluationError, match="union source"):
        pol.evaluate({})


# ---------------------------------------------------------------- conditions

CONDITIONS = [
    ({"exist": ".a.b"}, {"a": {"b": None}}, {"a": {"c": 1}}),
    ({"exist": "."}, {}, None),
    ({"equal": ".a", "value": {"x": [1, 2], "y": "1"}}, {"a": {"y": "1", "x": [1, 2]}}, {"a": {"x": [2, 1], "y": "1"}}),
    ({"equal": ".a", "value": 1}, {"a": 1}, {"a": True}),
    ({"equal": ".a", "value": "1"}, {"a": "1"}, {"a": 1}),
    ({"subset": ".a", "value": ["x", "y"]}, {"a": ["y"]}, {"a": ["x", "z"]}),
    ({"subset": ".a", "value": ["x"]}, {"a": []}, {"a": "x"}),
    ({"subset": ".a", "value": [{"k": 1}]}, {"a": [{"k": 1}]}, {"a": [{"k": 2}]}),
    ({"elementof": ".a", "value": ["x", {"o": 1}]}, {"a": {"o": 1}}, {"a": "y"}),
    ({"elementof": ".a", "value": [1]}, {"a": 1}, {"a": True}),
    ({"contains": ".a", "value": "pkinit-kdc"}, {"a": ["x", "pkinit-kdc"]}, {"a": "pkinit-kdc-extra"}),
    ({"isinstance": ".a", "type": "number"}, {"a": 1.5}, {"a": False}),
    ({"isinstance": ".a", "type": "bool"}, {"a": False}, {"a": 0}),
    ({"isinstance": ".a", "type": "null"}, {"a": None}, {}),
    ({"isinstance": ".a", "type": "string"}, {"a": ""}, {"a": []}),
    ({"isinstance": ".a", "type": "array"}, {"a": []}, {"a": {}}),
    ({"isinstance": ".a", "type": "object"}, {"a": {}}, {"a": []}),
]


@pytest.mark.parametrize("cond,yes,no", CONDITIONS)
def test_conditions_and_negations(cond, yes, no):
    pol = one({"if": cond, "action": "accept"})
    assert decide(pol, yes) == ("accept", "main")
    op = next(iter(cond))
    neg = dict(cond)
    neg["not-" + op] = neg.pop(op)
    npol = one({"if": neg, "action": "accept"})
    assert decide(npol, yes) == ("reject", "fallthrough")
    if no is not None:
        assert decide(pol, no) == ("reject", "fallthrough")
        assert decide(npol, no) == ("accept", "main")


@pytest.mark.parametrize("op", ["exist", "equal", "subset", "elementof", "contains", "isinstance"])
def test_every_not_form_is_true_on_missing_path(op):
    operands = {"exist": {}, "equal": {"value": 1}, "subset": {"value": []}, "elementof": {"value": [1]},
                "contains": {"value": 1}, "isinstance": {"type": "null"}}[op]
    cond = dict(operands)
    cond["not-" + op] = ".missing.deep"
    assert decide(one({"if": cond, "action": "accept"}), {"missing": 5}) == ("accept", "main")
    cond = dict(operands)
    cond[op] = ".missing.deep"
    assert decide(one({"if": cond, "action": "accept"}), {"missing": 5}) == ("reject", "fallthrough")


def test_if_list_is_and_and_empty_list_is_true():
    pol = one({"if": [{"exist": ".a"}, {"exist": ".b"}], "action": "accept"})
    assert decide(pol, {"a": 1, "b": 1}) == ("accept", "main")
    assert decide(pol, {"a": 1}) == ("reject", "fallthrough")
    assert decide(one({"if": [], "action": "accept"}), {}) == ("accept", "main")


# ---------------------------------------------------------------- validation

def problems_of(doc):
    with pytest.raises(PolicyValidationError) as info:
        load_policy(doc)
    assert info.value.problems
    return info.value.problems


@pytest.mark.parametrize("doc,expected", [
    ({"start": "a", "filters": {"a": [{"action": "accept"}, {"if": [{"exist": ".x"}, {"equals": ".x"}], "action": "accept"}]}},
     'filters.a[1].if[1]: unknown condition "equals"'),
    ({"start": "a", "filters": {"a": {"action": "frob"}}}, 'filters.a.action: unknown action "frob"'),
    ({"start": "a", "filters": {"a": {"action": "accept", "colour": 1}}}, 'filters.a: unknown key "colour"'),
    ({"start": "a", "filters": {"a": {"action": "jump", "jump": "nowhere"}}}, 'filters.a.jump: no filter named "nowhere"'),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "nowhere", "on-return": "accept"}}}, 'filters.a.call: no filter named "nowhere"'),
    ({"start": "zz", "filters": {"a": {"action": "accept"}}}, 'start: no filter named "zz"'),
    ({"start": "a", "filters": {"a": {"action": "next"}}}, "filters.a: can continue to the next filter but has no next"),
    ({"start": "a", "filters": {"a": {"if": {"exist": ".x"}, "action": "accept"}}}, "filters.a: can continue to the next filter"),
    ({"start": "a", "filters": {"a": {"action": "next", "next": "b"}}}, 'filters.a.next: no filter named "b"'),
    ({"start": "a", "filters": {"a": {"if": {"exist": "x"}, "action": "accept", "otherwise": "reject"}}}, 'filters.a.if[0].exist: invalid path "x"'),
    ({"start": "a", "filters": {"a": {"if": {"exist": ".x."}, "action": "accept", "otherwise": "reject"}}}, "invalid path"),
    ({"start": "a", "filters": {"a": {"if": {"exist": ".a[0]"}, "action": "accept", "otherwise": "reject"}}}, "invalid path"),
    ({"start": "a", "filters": {"a": {"if": {"equal": ".x", "value": 1, "type": "x"}, "action": "accept", "otherwise": "reject"}}},
     'filters.a.if[0]: unexpected key "type" for condition "equal"'),
    ({"start": "a", "filters": {"a": {"if": {"equal": ".x"}, "action": "accept", "otherwise": "reject"}}}, 'condition "equal" needs "value"'),
    ({"start": "a", "filters": {"a": {"if": {"subset": ".x", "value": "s"}, "action": "accept", "otherwise": "reject"}}}, "needs a list"),
    ({"start": "a", "filters": {"a": {"if": {"isinstance": ".x", "type": "float"}, "action": "accept", "otherwise": "reject"}}}, "unknown type"),
    ({"start": "a", "filters": {"a": {"if": {"exist": ".x"}, "action": "accept", "otherwise": "jump"}}}, "filters.a.otherwise: must be one of"),
    ({"start": "a", "filters": {"a": {"action": "accept", "on-return": "accept"}}}, 'filters.a.on-return: only valid with action "call"'),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "b", "on-return": "next"}, "b": {"action": "return"}}}, "on-return: must be accept or reject"),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "b", "on-return": "accept", "scope": [{"copy": ".x"}]},
                                "b": {"action": "return"}}}, "filters.a.scope[0]: a scope step needs exactly one of"),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "b", "on-return": "accept", "scope": [{"import": ".x"}]},
                                "b": {"action": "return"}}}, 'filters.a.scope[0]: a import step needs "source"'),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "b", "on-return": "accept", "scope": [{"set": "x", "value": 1}]},
                                "b": {"action": "return"}}}, "filters.a.scope[0].set: invalid path"),
    ({"start": "a", "filters": {"a": {"action": "accept"}, "b": {"name": "a", "action": "reject"}}}, 'duplicate filter name "a"'),
    ({"start": "a", "filters": {"a": {"action": "jump", "jump": "b"}, "b": {"action": "jump", "jump": "a"}}}, "filters.a: never exits"),
    ({"start": "a", "filters": {"a": {"action": "call", "call": "a", "on-return": "accept"}}}, "filters.a: never exits"),
    ({"start": "a", "default": "maybe", "filters": {"a": {"action": "accept"}}}, "default: must be accept or reject"),
    ({"start": "a", "filters": {}}, "filters: required"),
    ({"start": "a", "rules": {}, "filters": {"a": {"action": "accept"}}}, '(top): unknown key "rules"'),
    ({"version": 2, "start": "a", "filters": {"a": {"action": "accept"}}}, "version: unsupported version 2"),
    ([], "(top): the policy must be a JSON object"),
])
def test_validation_problems_have_locations(doc, expected):
    found = problems_of(doc)
    assert any(expected in problem for problem in found), found


def test_validation_reports_every_problem_at_once():
    found = problems_of({"start": "a", "filters": {"a": [
        {"if": {"nope": ".x"}, "action": "accept"}, {"action": "frob"}, {"action": "jump", "jump": "zz"}]}})
    assert len(found) >= 3


def test_malformed_policy_json():
    assert "malformed policy JSON" in problems_of("{nope")[0]
    assert problems_of(b'{"start": NaN}')


def test_cycle_with_an_exit_is_allowed():
    pol = load_policy({"start": "a", "filters": {
        "a": {"if": {"exist": ".x"}, "action": "accept", "otherwise": "next", "next": "b"},
        "b": {"action": "jump", "jump": "a"}}})
    assert decide(pol, {"x": 1}) == ("accept", "a")
    with pytest.raises(PolicyEvaluationError, match="steps"):
        pol.evaluate({})


def test_falling_off_a_chain_cannot_happen_after_validation_but_runtime_guard_exists():
    # the only runtime "no next" is a chain reached through {VAR}-expanded targets
    pol = load_policy({"start": "a", "filters": {"a": {"action": "jump", "jump": "{T}"}, "b": {"action": "accept"}}})
    assert decide(pol, {"__env": {"T": "b"}}) == ("accept", "b")
    with pytest.raises(PolicyEvaluationError, match="after {VAR} expansion"):
        pol.evaluate({"__env": {"T": "zz"}})
    with pytest.raises(PolicyEvaluationError, match="after {VAR} expansion"):
        pol.evaluate({})


# ---------------------------------------------------------------- comments and {VAR}

def test_comment_keys_exactly_underscore():
    pol = load_policy({"_": "comment", "start": "a", "filters": {"_": {"nonsense": 1}, "a": {
        "_": "why", "if": {"exist": "._"}, "action": "accept", "otherwise": "reject"}}})
    assert decide(pol, {"_": 1}) == ("reject", "a")
    pol = load_policy({"start": "a", "filters": {"a": {"if": {"exist": ".__cmd"}, "action": "accept", "otherwise": "reject"}}})
    assert decide(pol, {"__cmd": 1}) == ("accept", "a")
    assert problems_of({"start": "a", "filters": {"a": {"_x": 1, "action": "accept"}}})


def test_var_expansion_in_data_and_policy():
    pol = load_policy({"start": "a", "filters": {"a": [
        {"if": {"equal": ".host", "value": "{HOST}"}, "action": "jump", "jump": "{NEXT}"},
        {"action": "reject"}], "b": {"if": {"equal": ".p", "value": "host/kdc1.{DOMAIN}"}, "action": "accept", "otherwise": "reject"}}})
    env = {"HOST": "kdc1.{DOMAIN}", "DOMAIN": "example.test", "NEXT": "b"}
    data = {"host": "kdc1.example.test", "p": "host/{HOST}", "__env": env}
    assert decide(pol, data) == ("accept", "b")
    assert data["p"] == "host/{HOST}"  # caller's data untouched
    assert decide(pol, dict(data, host="kdc2.example.test")) == ("reject", "a_1")


def test_var_non_string_replaces_whole_string_only_and_unknown_stays():
    pol = load_policy({"start": "a", "filters": {"a": [
        {"if": [{"equal": ".n", "value": "{N}"}, {"equal": ".u", "value": "{UNKNOWN}"}, {"equal": ".m", "value": "x{N}"}],
         "action": "accept"}, {"action": "reject"}]}})
    assert decide(pol, {"n": [1, 2], "u": "{UNKNOWN}", "m": "x{N}", "__env": {"N": [1, 2]}}) == ("accept", "a")


def test_env_errors():
    pol = one({"action": "accept"})
    with pytest.raises(PolicyEvaluationError, match="__env must be an object"):
        pol.evaluate({"__env": "x"})
    with pytest.raises(PolicyEvaluationError, match="fixpoint"):
        pol.evaluate({"__env": {"A": "x{A}"}})


def test_hookname_and_request_uid_written_into_data():
    pol = one({"if": [{"equal": ".hookname", "value": "h"}, {"equal": ".request_uid", "value": "u"}], "action": "accept"})
    assert pol.evaluate({}, hookname="h", request_uid="u").accepted
    assert not pol.evaluate({}).accepted


# ---------------------------------------------------------------- limits

def test_runaway_recursion_is_bounded():
    pol = load_policy({"start": "a", "filters": {"a": {"if": {"exist": ".stop"}, "action": "accept", "otherwise": "next", "next": "b"},
                                                 "b": {"action": "call", "call": "a", "on-return": "reject"}}})
    with pytest.raises(PolicyEvaluationError, match="call depth exceeds 32"):
        pol.evaluate({})
    small = load_policy(pol.document, limits={"max_call_depth": 3, "max_steps": 5})
    with pytest.raises(PolicyEvaluationError, match="exceeds"):
        small.evaluate({})


def test_deep_and_huge_payloads_rejected_before_evaluation():
    pol = one({"action": "accept"})
    deep = cursor = {}
    for _level in range(200):
        cursor["d"] = {}
        cursor = cursor["d"]
    with pytest.raises(PolicyEvaluationError, match="nested deeper than 64"):
        pol.evaluate(deep)
    with pytest.raises(PolicyEvaluationError, match="larger than"):
        pol.evaluate({"blob": "x" * (1024 * 1024)})
    text = "[" * 100000 + "]" * 100000
    with pytest.raises(PolicyEvaluationError):
        evaluate_json(pol, '{"a": %s}' % text)
    with pytest.raises(PolicyEvaluationError, match="larger than"):
        evaluate_json(pol, json.dumps({"blob": "x" * (1024 * 1024)}))


def test_evaluate_json():
    pol = one({"if": {"equal": ".a", "value": 1}, "action": "accept"})
    assert evaluate_json(pol, '{"a": 1}').accepted
    assert not evaluate_json(pol, b'{"a": 2}').accepted
    for bad in ("{nope", b"\xff", "[1]", "1"):
        with pytest.raises(PolicyEvaluationError):
            evaluate_json(pol, bad)


def test_bad_limits():
    with pytest.raises(Exception, match="unknown policy limit"):
        load_policy({"start": "a", "filters": {"a": {"action": "accept"}}}, limits={"max_fun": 1})


# ---------------------------------------------------------------- trace

def test_trace_has_names_not_data():
    pol = load_policy(open(EXAMPLE, encoding="utf-8").read())
    data = enrollment("ws1.example.test", ["pkinit-user"], users=["alice"])
    data["secret"] = "TOPSECRET-VALUE"
    decision = pol.evaluate(data, hookname="enrollsvc::add_request")
    assert decision.accepted
    text = json.dumps(decision.as_dict())
    assert "TOPSECRET" not in text and "alice" not in text
    assert all(set(entry) == {"filter", "matched", "action"} for entry in decision.trace)


# ---------------------------------------------------------------- example policy

def enrollment(hostname, assets, users=None, operation="add"):
    certs = {"https-server": {}, "pkinit-client": {"principal": "host/%s@EXAMPLE.TEST" % hostname}}
    if users is not None:
        certs["pkinit-user"] = {"users": users}
    return {"hostname": hostname, "ekpubhash": "ab" * 32, "operation": operation,
            "auth": {"client_cert": {"subject": "CN=enroller", "cn": "enroller", "emails": ["ops@example.test"], "dns": []}},
            "profile": {"assets": ["hostname", "https-server"] + assets, "certificates": certs,
                        "__env": {"ENROLL_HOSTNAME": hostname, "ENROLL_DOMAIN": "example.test"}}}


@pytest.mark.parametrize("hostname,assets,users,accepted", [
    ("kdc1.example.test", ["pkinit-kdc"], None, True),
    ("kdc2.example.test", ["pkinit-kdc", "pkinit-iprop"], None, True),
    ("ws1.example.test", ["pkinit-kdc"], None, False),
    ("ws1.example.test", ["pkinit-iprop"], None, False),
    ("ws1.example.test", [], None, True),
    ("ws1.example.test", ["pkinit-user"], ["alice", "bob"], True),
    ("ws1.example.test", ["pkinit-user"], [], True),
    ("ws1.example.test", ["pkinit-user"], ["alice", "mallory"], False),
    ("ws1.example.test", ["pkinit-user"], "alice", False),
    ("kdc1.example.test", ["pkinit-user"], ["kdcadmin"], True),
    ("kdc1.example.test", ["pkinit-user"], ["alice"], False),
    ("ws2.example.test", ["pkinit-user"], ["alice"], False),
    ("", [], None, False),
])
def test_example_policy(hostname, assets, users, accepted):
    pol = load_policy(open(EXAMPLE, encoding="utf-8").read())
    data = enrollment(hostname, assets, users)
    assert pol.evaluate(copy.deepcopy(data), hookname="enrollsvc::add_request").accepted is accepted
    assert not pol.evaluate(data, hookname="kdcsvc::add").accepted
    assert not pol.evaluate(data).accepted


def test_example_policy_operation_and_hostname_type():
    pol = load_policy(open(EXAMPLE, encoding="utf-8").read())
    assert not pol.evaluate(enrollment("ws1.example.test", [], operation="delete"), hookname="enrollsvc::add_request").accepted
    data = enrollment("ws1.example.test", [])
    data["hostname"] = ["ws1.example.test"]
    assert not pol.evaluate(data, hookname="enrollsvc::add_request").accepted


def test_chain_key_names_first_entry_even_when_it_has_a_name():
    chain = [{"name": "first", "if": {"exist": ".x"}, "action": "accept"},
             {"action": "jump", "jump": "c_2"}, {"action": "reject"}]
    pol = load_policy({"start": "c", "filters": {"c": chain}})
    assert pol.filter_names == ["c_1", "c_2", "first"]
    assert decide(pol, {"x": 1}) == ("accept", "first")
    assert decide(pol, {}) == ("reject", "c_2")
    assert problems_of({"start": "c", "filters": {"c": [{"name": "first", "action": "accept"}], "d": {"name": "c", "action": "reject"}}})


# ---------------------------------------------------------------- load-time graph check, call depth, {VAR} cache

def test_long_chain_with_callers_before_callees_loads():
    # the "never exits" check was a fixpoint over the filter list: quadratic when each filter
    # refers to one listed after it (4,000 filters took seconds); it is a linear walk now
    count = 4000
    filters = dict(("f%d" % i, {"action": "jump", "jump": "f%d" % (i + 1)}) for i in range(count - 1))
    filters["f%d" % (count - 1)] = {"if": {"exist": ".ok"}, "action": "accept", "otherwise": "reject"}
    pol = load_policy({"start": "f0", "filters": filters})
    assert decide(pol, {"ok": 1}) == ("accept", "f%d" % (count - 1))
    assert decide(pol, {}) == ("reject", "f%d" % (count - 1))
    # the same chain closed into a loop without exit is still refused, every filter named
    filters["f%d" % (count - 1)] = {"action": "jump", "jump": "f0"}
    problems = problems_of({"start": "f0", "filters": filters})
    assert len(problems) == count and all("never exits" in p for p in problems)


def test_never_exits_through_calls_and_aliases():
    # a call counts as exiting when its callee can; a chain alias is followed to its filter
    pol = load_policy({"start": "a", "filters": {"a": {"action": "call", "call": "c", "on-return": "accept"},
                                                 "c": [{"name": "c0", "action": "return"}]}})
    assert decide(pol, {}) == ("accept", "a")
    problems = problems_of({"start": "a", "filters": {"a": {"action": "call", "call": "c", "on-return": "accept"},
                                                      "c": [{"name": "c0", "action": "jump", "jump": "c"}]}})
    assert problems == ["filters.a: never exits (every path loops without accept, reject or return)",
                        "filters.c[0]: never exits (every path loops without accept, reject or return)"]


def nested_calls(depth):
    """A policy making ``depth`` nested calls before accepting."""
    filters = dict(("c%d" % i, {"action": "call", "call": "c%d" % (i + 1), "on-return": "reject"}) for i in range(depth))
    filters["c%d" % depth] = {"action": "accept"}
    return {"start": "c0", "filters": filters}


@pytest.mark.parametrize("limit", [3, 32])
def test_call_depth_limit_is_the_documented_number_of_nested_calls(limit):
    # docs/policy-language.md: max_call_depth (default 32) nested calls are allowed
    limits = None if limit == 32 else {"max_call_depth": limit}
    assert decide(load_policy(nested_calls(limit), limits=limits), {}) == ("accept", "c%d" % limit)
    with pytest.raises(PolicyEvaluationError, match="call depth exceeds %d" % limit):
        load_policy(nested_calls(limit + 1), limits=limits).evaluate({})


HOST_POLICY = {"start": "main", "filters": {"main": [
    {"name": "own-name", "if": {"equal": ".hostname", "value": "{HOST}"}, "action": "jump", "jump": "check", "otherwise": "reject"},
], "check": [
    {"if": {"elementof": ".domain", "value": ["{DOMAIN}", "x.{DOMAIN}"]}, "action": "call", "call": "scoped",
     "scope": [{"set": ".want", "value": {"p": "host/{HOST}"}}, {"import": ".got", "source": ".principal"}], "on-return": "accept",
     "otherwise": "reject"},
    {"name": "unreached", "action": "reject"},
], "scoped": {"if": {"equal": ".got", "value": "host/{HOST}"}, "action": "return", "otherwise": "reject"}}}


def host_data(host, domain="example.test", principal=None, **env):
    return {"hostname": host, "domain": domain, "principal": principal or "host/" + host,
            "__env": dict({"HOST": host, "DOMAIN": "example.test"}, **env)}


def test_var_cache_follows_the_variables():
    # the compiled policy is cached per value of the variables the policy names: a new host
    # (new HOST) is never decided with another host's expansion, and a variable the policy
    # does not name (REQUEST) shares the entry
    pol = load_policy(HOST_POLICY)
    assert decide(pol, host_data("a.example.test")) == ("accept", "check")
    assert decide(pol, dict(host_data("b.example.test"), hostname="a.example.test")) == ("reject", "own-name")
    assert decide(pol, host_data("b.example.test", principal="host/a.example.test")) == ("reject", "scoped")
    assert decide(pol, host_data("a.example.test", domain="other.test")) == ("reject", "check")
    assert decide(pol, host_data("a.example.test", domain="x.example.test")) == ("accept", "check")
    cached = len(pol._cache)  # pylint: disable=protected-access
    assert cached == 2
    for n in range(5):
        assert decide(pol, host_data("a.example.test", REQUEST="r%d" % n)) == ("accept", "check")
    assert len(pol._cache) == cached  # pylint: disable=protected-access
    # a variable that is absent, a string or another JSON value are different keys
    # unknown {HOST} stays as written on both sides (and matches itself)
    assert decide(pol, {"hostname": "{HOST}", "__env": {"DOMAIN": "example.test"}}) == ("reject", "check")
    assert decide(pol, {"hostname": 1, "domain": "example.test", "principal": "host/1", "__env": {"HOST": 1, "DOMAIN": "example.test"}}) == \
        ("reject", "scoped")
    assert decide(pol, {"hostname": "1", "__env": {"HOST": "1", "DOMAIN": "example.test"}}) == ("reject", "check")


def test_var_fast_path_decides_as_full_expansion():
    # the per-filter re-compilation (vars only in values) decides exactly as expanding and
    # validating the whole policy again does
    fast = load_policy(HOST_POLICY)
    full = load_policy(HOST_POLICY)
    assert fast._templates and full._templates  # pylint: disable=protected-access
    full._templates = None  # pylint: disable=protected-access
    cases = [host_data("a.example.test"), host_data("b.example.test", principal="host/a.example.test"),
             host_data("a.example.test", domain="x.example.test"), host_data("a.example.test", DOMAIN="x.example.test"),
             {"hostname": "a", "__env": {"HOST": ["a"]}}, {"hostname": ["a"], "__env": {"HOST": ["a"]}}, {"hostname": "a"}]
    for data in cases:
        one_way, other = fast.evaluate(copy.deepcopy(data)), full.evaluate(copy.deepcopy(data))
        assert (one_way.action, one_way.rule, one_way.trace) == (other.action, other.rule, other.trace)


def test_var_in_a_target_still_revalidates_everything():
    pol = load_policy({"start": "a", "filters": {"a": {"if": {"equal": ".x", "value": "{X}"}, "action": "jump", "jump": "{T}", "otherwise": "reject"},
                                                 "b": {"action": "accept"}}})
    assert pol._templates is None  # pylint: disable=protected-access
    assert decide(pol, {"x": "1", "__env": {"X": "1", "T": "b"}}) == ("accept", "b")
    with pytest.raises(PolicyEvaluationError, match="after {VAR} expansion"):
        pol.evaluate({"x": "1", "__env": {"X": "1", "T": "zz"}})
