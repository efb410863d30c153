#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible face of enrollment/fleet.py reconcile."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: enrollment_reconcile
short_description: Unenroll the hosts that left the inventory from an hcp.core enrollment service
description:
  - Lists the enrollment service's entries and unenrolls, one delete (one DB commit) each, every entry whose
    hostname is not in O(hostnames). The service records each removal with the caller's certificate subject.
  - The plan is made from one listing before anything is removed. When more entries than O(max_removals) would
    be removed, the module fails and removes nothing (in check mode too), naming the hosts.
  - An empty O(hostnames) is refused (it would unenroll every host).
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
attributes:
  check_mode:
    details: Returns the entries that would be removed (RV(remove)) without calling a writing API.
extends_documentation_fragment:
  - hcp.core.attributes
  - hcp.core.service_client
options:
  hostnames:
    description: The hostnames the inventory lists (compared lower case, without a trailing dot).
    type: list
    elements: str
    required: true
  max_removals:
    description: The most entries one run may remove; more fails the run before any removal.
    type: int
    default: 5
  scope:
    description:
      - Only entries whose hostname this regular expression (RE2 syntax, searched) matches are considered;
        the others are never removed. Default all entries.
    type: str
"""

EXAMPLES = r"""
- name: Unenroll the hosts no longer in group tpm_hosts (at most 5)
  hcp.core.enrollment_reconcile:
    url: https://enroll.example.test:8443
    ca_file: /etc/hcp/enroll/ca.pem
    client_cert: /etc/hcp/enroll/pki/client-orchestrator.pem
    client_key: /etc/hcp/enroll/pki/client-orchestrator.key
    hostnames: "{{ groups['tpm_hosts'] }}"
    max_removals: 5
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
remove:
  description: The entries not in the inventory (removed, or to be removed in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"hostname": "old.example.test", "ekpubhash": "3f5a..."}]
removed:
  description: The entries this run removed (empty in check mode; an entry already gone is left out).
  returned: always
  type: list
  elements: dict
kept:
  description: Number of entries in scope whose host is in the inventory.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.enrollment.fleet import reconcile
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    SERVICE_CLIENT_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
    service_client_args,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            SERVICE_CLIENT_ARGUMENT_SPEC,
            hostnames=dict(type="list", elements="str", required=True),
            max_removals=dict(type="int", default=5),
            scope=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        client = EnrollmentClient(*service_client_args(p))
        result = reconcile(client, p["hostnames"], p["max_removals"], p["scope"], check_mode=module.check_mode)
    except HcpError as exc:
        fail_on_hcp_error(module, exc, remove=[], removed=[])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
