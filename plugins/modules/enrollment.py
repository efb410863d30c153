#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible face of enroll_client.ensure."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: enrollment
short_description: Enroll a TPM (its EK) with a hostname and profile at an hcp.core enrollment service
description:
  - Adds, re-enrolls or removes the enrollment of one TPM at the enrollment service, over HTTPS
    with a client certificate.
  - Idempotent. An identical enrollment (same EK, hostname and client profile) changes nothing;
    a changed profile re-enrolls; a different hostname for an enrolled EK is refused.
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
attributes:
  check_mode:
    details: Reports what would change (added, reenrolled, deleted) without calling a writing API.
extends_documentation_fragment:
  - hcp.core.attributes
  - hcp.core.service_client
options:
  state:
    description: V(present) enrolls (or re-enrolls on a profile change), V(absent) removes, V(reenrolled) always regenerates the assets.
    type: str
    choices: [present, absent, reenrolled]
    default: present
  ekpub:
    description: The EK as PEM public key, PEM EK certificate or base64 TPM2B_PUBLIC (as returned by M(hcp.core.tpm_info)).
    type: str
    required: true
  hostname:
    description: Hostname to bind the EK to. Required for O(state=present).
    type: str
  profile:
    description: Client profile (see docs/enrollment-assets.md).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Enroll this host's TPM
  hcp.core.enrollment:
    url: https://enroll.example.test:8443
    ca_file: /etc/hcp/enroll-ca.pem
    client_cert: /etc/hcp/orchestrator.pem
    client_key: /etc/hcp/orchestrator.key
    ekpub: "{{ tpm.ekpub_pem }}"
    hostname: "{{ inventory_hostname }}"
    profile:
      assets: [hostname, rootfs-key, https-server]
  delegate_to: localhost
"""

RETURN = r"""
ekpubhash:
  description: SHA-256 of the EK public (TPM2B_PUBLIC), hex.
  returned: always
  type: str
hostname:
  description: The enrolled hostname.
  returned: always
  type: str
assets:
  description: File names of the entry (sealed assets end in C(.sealed)); no content.
  returned: always
  type: list
  elements: str
action:
  description: V(none), V(added), V(reenrolled) or V(deleted).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient, ensure
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
            state=dict(type="str", default="present", choices=["present", "absent", "reenrolled"]),
            ekpub=dict(type="str", required=True),
            hostname=dict(type="str"),
            profile=dict(type="dict", default={}),
        ),
        required_if=[("state", "present", ["hostname"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        client = EnrollmentClient(*service_client_args(p))
        result = ensure(client, p["state"], p["ekpub"], p["hostname"], p["profile"], check_mode=module.check_mode)
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
