# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.policy_eval filter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: policy_eval
short_description: Evaluate data against an HCP JSON policy
version_added: 0.1.0
author: HCP maintainers (@hcp-core)
description:
  - Runs the HCP JSON policy language engine (the one the policy service uses) in the controller on the input
    data and returns the decision, the deciding filter and a trace of the filters visited.
  - The policy is validated first; an invalid policy fails the task with every problem and its location.
  - Evaluation is bounded (call depth, steps, data size and nesting); hitting a limit, a failed scope import or
    bad C(__env) variables fail the task, never accept.
  - The language is described in C(docs/policy-language.md).
options:
  _input:
    description: The data to decide on, a JSON object (for enrollment, the request payload).
    type: dict
    required: true
  policy:
    description: The policy document, as a dictionary or as JSON text.
    type: raw
    required: true
  hookname:
    description: Written into the data as C(hookname) before evaluation, as the policy service does.
    type: str
  request_uid:
    description: Written into the data as C(request_uid) before evaluation.
    type: str
"""

EXAMPLES = r"""
- name: Check that a host may receive a KDC certificate under the site policy
  ansible.builtin.assert:
    that:
      - (payload | hcp.core.policy_eval(site_policy, hookname='enrollsvc::add_request')).accepted
  vars:
    site_policy: "{{ lookup('ansible.builtin.file', 'files/enrollment-policy.json') | from_json }}"
    payload:
      hostname: kdc1.example.test
      operation: add
      profile:
        assets: [hostname, pkinit-kdc]

- name: Show which filter decided
  ansible.builtin.debug:
    msg: "{{ (payload | hcp.core.policy_eval(site_policy)).rule }}"
"""

RETURN = r"""
_value:
  description: The decision.
  type: dict
  contains:
    decision:
      description: V(accept) or V(reject).
      type: str
    accepted:
      description: Whether the decision is V(accept).
      type: bool
    rule:
      description: Name of the deciding filter, or V(default) when the policy default applied.
      type: str
    reason:
      description: Why the deciding filter decided (matched, otherwise, on-return or default).
      type: str
    trace:
      description: The filters visited in order, each as C(filter), C(matched) and C(action); never data values.
      type: list
      elements: dict
"""

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.policy.engine import (
    PolicyError,
    PolicyValidationError,
    load_policy,
)

_CACHE = {}


def _policy(policy):
    if isinstance(policy, (str, bytes)):
        key = policy if isinstance(policy, str) else policy.decode("utf-8", "replace")
    else:
        try:
            key = json.dumps(policy, sort_keys=True)
        except (TypeError, ValueError):
            raise AnsibleFilterError("policy_eval: the policy is not JSON data") from None
    hit = _CACHE.get(key)
    if hit is None:
        try:
            hit = load_policy(policy)
        except PolicyValidationError as exc:
            raise AnsibleFilterError("policy_eval: invalid policy:\n- " + "\n- ".join(exc.problems)) from None
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[key] = hit
    return hit


def policy_eval(data, policy, hookname=None, request_uid=None):
    """The decision on ``data`` under ``policy`` as a dict."""
    compiled = _policy(policy)
    try:
        plain = json.loads(json.dumps(data))
    except (TypeError, ValueError):
        raise AnsibleFilterError("policy_eval: the input is not JSON data") from None
    try:
        return compiled.evaluate(plain, hookname=hookname, request_uid=request_uid).as_dict()
    except PolicyError as exc:
        raise AnsibleFilterError("policy_eval: no decision: %s" % exc) from None


class FilterModule:
    """hcp.core.policy_eval."""

    def filters(self):
        return {"policy_eval": policy_eval}
