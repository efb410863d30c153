#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: policy
short_description: Deploy an HCP JSON policy file on a policy server
version_added: 0.1.0
description:
  - Validates an HCP JSON policy (C(docs/policy-language.md)) and writes it to O(path) atomically as canonical
    JSON (sorted keys, two-space indentation). The policy service picks the new file up by itself on its next
    request (it reloads a changed file when it validates).
  - An invalid policy fails the task with every problem and its location; the file is left untouched.
  - Idempotent, an existing file holding the same policy (compared as canonical JSON) is not rewritten.
  - With C(--diff) the canonical JSON before and after is shown, so changes appear rule by rule.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - ansible.builtin.files
  - hcp.core.attributes
attributes:
  diff_mode:
    support: full
    description: Shows the policy's canonical JSON before and after.
options:
  path:
    description: Path of the policy file (the service's C(policy_file)).
    type: path
    required: true
  policy:
    description:
      - The policy document, as a dictionary or as JSON text. Required when O(state=present).
      - Comment keys C(_) are kept in the file.
    type: raw
  state:
    description: V(present) writes the policy; V(absent) removes the file.
    type: str
    choices: [present, absent]
    default: present
  backup:
    description: Keep a timestamped copy of the previous file when it is replaced or removed.
    type: bool
    default: false
notes:
  - O(mode) defaults to V(0640) (the policy is not secret, but there is no reason for everyone to read it).
seealso:
  - plugin: hcp.core.policy_eval
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Deploy the enrollment policy
  hcp.core.policy:
    path: /etc/hcp/policy/enrollment-policy.json
    policy: "{{ lookup('ansible.builtin.file', 'files/enrollment-policy.json') }}"
    owner: root
    group: hcp-policy
    backup: true

- name: Remove a policy
  hcp.core.policy:
    path: /etc/hcp/policy/old.json
    state: absent
"""

RETURN = r"""
path:
  description: The policy file.
  returned: always
  type: str
sha256:
  description: SHA-256 (hex) of the file content in force after the task; null when absent.
  returned: always
  type: str
filters:
  description: Names of the policy's filters (chain entries included), sorted.
  returned: when O(state=present)
  type: list
  elements: str
problems:
  description: Every validation problem with its location, when the policy is invalid.
  returned: failure
  type: list
  elements: str
backup_file:
  description: The backup copy, when one was made.
  returned: changed and O(backup=true)
  type: str
"""

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.fileutil import read_if_exists
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import apply_file_attributes, fail_on_hcp_error, write_private_file
from ansible_collections.hcp.core.plugins.module_utils.policy.engine import (
    PolicyError,
    PolicyValidationError,
    load_policy,
    parse_json,
)


def canonical(doc):
    """The file text for a policy document."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _existing(module, path):
    raw = read_if_exists(path)
    if raw is None:
        return None, None
    try:
        doc = parse_json(raw, "existing policy file")
    except PolicyError:
        doc = None
    return raw, doc


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            policy=dict(type="raw"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            backup=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["policy"])],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    if module.params["mode"] is None:
        module.params["mode"] = "0640"
    raw, old_doc = _existing(module, path)
    before = canonical(old_doc) if old_doc is not None else (raw.decode("utf-8", "replace") if raw is not None else "")
    result = dict(changed=False, path=path)

    if module.params["state"] == "absent":
        result["sha256"] = None
        if raw is not None:
            result["changed"] = True
            if not module.check_mode:
                if module.params["backup"]:
                    result["backup_file"] = module.backup_local(path)
                os.unlink(path)
        if module._diff:
            result["diff"] = dict(before=before, after="", before_header=path, after_header=path)
        module.exit_json(**result)

    policy = module.params["policy"]
    if isinstance(policy, str):
        try:
            doc = parse_json(policy, "policy JSON")
        except PolicyError as exc:
            fail_on_hcp_error(module, exc, msg="invalid policy: %s" % exc, problems=["(top): %s" % exc], path=path)
    elif isinstance(policy, dict):
        doc = policy
    else:
        module.fail_json(msg="policy must be a dictionary or JSON text", path=path)
    try:
        compiled = load_policy(doc)
    except PolicyValidationError as exc:
        fail_on_hcp_error(module, exc, msg="invalid policy:\n- " + "\n- ".join(exc.problems), problems=exc.problems, path=path)
    after = canonical(doc)
    data = after.encode("utf-8")
    result["filters"] = compiled.filter_names
    if raw is not None and old_doc is not None and canonical(old_doc) == after:
        result["sha256"] = hashlib.sha256(raw).hexdigest()
    else:
        result["changed"] = True
        result["sha256"] = hashlib.sha256(data).hexdigest()
        if raw is not None and module.params["backup"] and not module.check_mode:
            result["backup_file"] = module.backup_local(path)
        result["changed"] = write_private_file(module, path, data, True)
    result["changed"] = apply_file_attributes(module, path, result["changed"])
    if module._diff:
        result["diff"] = dict(before=before, after=after, before_header=path, after_header=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
