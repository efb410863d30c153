#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: control_tower_site
short_description: Manage a site at the hcp.core control tower (registration, re-allow of the unwrap)
version_added: 0.1.0
description:
  - Operator side of site unseal (C(docs/site-unseal.md)), over HTTPS with an operator client certificate.
  - O(state=present) ensures the site is registered with O(public_key) (optional once registered);
    O(state=absent) forgets the site (key, token and stored bundle).
  - A site's stored seal-key bundle unwraps only once. O(reallow_unwrap=true) lets the site unwrap it once more,
    for example after a controller was restored onto another TPM and the site must re-initialise.
  - Returns the site's status; never a token or key material.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.attributes
  - hcp.core.service_client
options:
  client_cert:
    description: Operator client certificate (PEM); required here.
    type: path
    required: true
  site:
    description: Site name.
    type: str
    required: true
  state:
    description: V(present) or V(absent).
    type: str
    choices: [present, absent]
    default: present
  public_key:
    description:
      - The site public key (PEM, as returned by M(hcp.core.site_unseal) in RV(hcp.core.site_unseal#module:public_key)).
      - Required to register a new site. A different key for a registered site is refused unless O(replace_key=true).
    type: str
  replace_key:
    description: Replace the public key of a registered site (drops its token and bundle).
    type: bool
    default: false
  reallow_unwrap:
    description: Allow the site's stored bundle to be unwrapped once more (no change when it is already allowed).
    type: bool
    default: false
seealso:
  - module: hcp.core.site_unseal
"""

EXAMPLES = r"""
- name: Let site-a unwrap its bundle again after a controller's TPM was replaced
  hcp.core.control_tower_site:
    url: https://tower.example.test:8443
    ca_file: /etc/hcp/tower-ca.pem
    client_cert: /etc/hcp/operator.pem
    client_key: /etc/hcp/operator.key
    site: site-a
    reallow_unwrap: true
  delegate_to: localhost

- name: Forget a decommissioned site
  hcp.core.control_tower_site:
    url: https://tower.example.test:8443
    client_cert: /etc/hcp/operator.pem
    client_key: /etc/hcp/operator.key
    site: old-site
    state: absent
"""

RETURN = r"""
status:
  description: >-
    The site's status at the tower: registered, has_token, has_bundle, unwrap_allowed, last_unwrap, counts
    (tokens_issued, stores, unwraps, refused_unwraps, reallows), public_key and timestamps.
  returned: always
  type: dict
  sample: {"site": "site-a", "registered": true, "has_bundle": true, "unwrap_allowed": false}
actions:
  description: What was (or would be) done, among V(registered), V(replaced_key), V(reallowed), V(deleted).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    SERVICE_CLIENT_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
    service_client_args,
    warn_masked,
)
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import ControlTowerClient, SiteStateError, ensure_site


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            SERVICE_CLIENT_ARGUMENT_SPEC,
            client_cert=dict(type="path", required=True),
            site=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            public_key=dict(type="str"),
            replace_key=dict(type="bool", default=False),
            reallow_unwrap=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        client = ControlTowerClient(*service_client_args(p))
        status, actions, warnings = ensure_site(client, p["site"], p["state"], p["public_key"], p["replace_key"],
                                                p["reallow_unwrap"], check_mode=module.check_mode)
    except SiteStateError as exc:
        fail_on_hcp_error(module, exc, status=exc.site_status)
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    for warning in warnings:
        warn_masked(module, warning)
    module.exit_json(changed=bool(actions), status=status, actions=actions)


if __name__ == "__main__":
    main()
