#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kerberos_principal
short_description: Manage a Kerberos principal through the HCP kadmin web API
version_added: 0.1.0
description:
  - Creates, deletes or re-keys a principal of the site's Heimdal realm through the kadmin web API on the primary KDC
    (C(docs/kerberos.md)), over HTTPS with a service-client certificate. Every call is also decided by the site's policy
    (hook C(kdcsvc::<command>)); a policy reject fails the task with HTTP 403, an unavailable policy with 503.
  - Keys are always random. The module never returns key material (keytabs come to hosts by attestation).
  - O(state=present) creates the principal when it does not exist; an existing principal is left as it is (its
    attributes are set at creation only). O(state=absent) deletes it when it exists. O(state=rotated) gives it new keys
    (a new kvno) on every run.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.service_client
  - hcp.core.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  principal:
    description:
      - The principal, such as V(host/node1.example.test) or V(host/node1.example.test@EXAMPLE.TEST) (the realm must be
        the API's). One to three components of ASCII letters, digits, V(.), V(_) and V(-), each starting with a letter or
        digit. The realm's own principals (C(krbtgt), C(kadmin), C(changepw), C(iprop), ...) are refused.
    type: str
    required: true
  state:
    description: V(present), V(absent) or V(rotated) (new keys, always a change).
    type: str
    choices: [present, absent, rotated]
    default: present
  attributes:
    description:
      - Heimdal principal attributes set when the principal is created, such as V(requires-pre-auth) or
        V(disallow-svr) (the list the API accepts is in C(docs/kerberos.md)).
    type: list
    elements: str
    default: []
  expiration:
    description: Expiry date (V(YYYY-MM-DD)) set when the principal is created; never by default.
    type: str
  keep_old:
    description:
      - With O(state=rotated), keep the previous keys so tickets and keytabs already issued keep working for a grace period
        (the KDC drops kept keys older than the principal's maximum ticket life at a later rotation). V(false) drops every
        old key at once.
    type: bool
    default: true
seealso:
  - module: hcp.core.enrollment
"""

EXAMPLES = r"""
- name: The host principal of a web server exists
  hcp.core.kerberos_principal:
    url: https://kdc1.example.test:8443
    ca_file: /etc/hcp/ca.pem
    client_cert: /etc/hcp/kadmin-client.pem
    client_key: /etc/hcp/kadmin-client.key
    principal: HTTP/web1.example.test
    attributes: [requires-pre-auth]

- name: Re-key it (old keys kept for the grace period)
  hcp.core.kerberos_principal:
    url: https://kdc1.example.test:8443
    ca_file: /etc/hcp/ca.pem
    client_cert: /etc/hcp/kadmin-client.pem
    client_key: /etc/hcp/kadmin-client.key
    principal: HTTP/web1.example.test
    state: rotated

- name: Remove a user principal
  hcp.core.kerberos_principal:
    url: https://kdc1.example.test:8443
    ca_file: /etc/hcp/ca.pem
    client_cert: /etc/hcp/kadmin-client.pem
    client_key: /etc/hcp/kadmin-client.key
    principal: alice
    state: absent
"""

RETURN = r"""
principal:
  description: The principal with its realm (as the API names it), or as given when it does not exist.
  returned: always
  type: str
  sample: host/node1.example.test@EXAMPLE.TEST
action:
  description: What was done (or would be, in check mode) - V(created), V(deleted), V(rotated) or V(none).
  returned: always
  type: str
kvno:
  description: The current key version number; null when the principal does not exist (or in check mode before creation).
  returned: always
  type: int
kvnos:
  description: Every key version number that has keys (the current one and those kept for the grace period).
  returned: always
  type: list
  elements: int
attributes:
  description: The principal's attributes.
  returned: always
  type: list
  elements: str
enctypes:
  description: The encryption types of its keys.
  returned: always
  type: list
  elements: str
status_code:
  description: The HTTP status of a refused request (403 policy reject or unauthorised caller, 503 policy unavailable, ...).
  returned: failure
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminClient, ensure
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
            principal=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent", "rotated"]),
            attributes=dict(type="list", elements="str", default=[]),
            expiration=dict(type="str"),
            keep_old=dict(type="bool", default=True, no_log=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        client = KadminClient(*service_client_args(params))
        result = ensure(client, params["state"], params["principal"], attributes=params["attributes"],
                        expiration=params["expiration"], keep_old=params["keep_old"], check_mode=module.check_mode)
    except HcpError as exc:
        fail_on_hcp_error(module, exc, principal=params["principal"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
