#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: keyserver_item
short_description: Store or delete an item on the hcp.core key-server
version_added: 0.1.0
description:
  - Stores secret material (a key, a certificate, any blob) under a resource name C(<domain>/<name>) on the site's
    key-server, or deletes it, over mTLS with a key-server client certificate whose key also answers the server's
    auth-challenge (C(docs/keyserver.md)). The key-server's ACL decides (default deny).
  - Idempotent - the key-server keeps a keyed hash of each item's content; a store whose data, O(exportable) and
    O(measurements) equal the latest version's changes nothing. Otherwise a new version is kept (the server keeps the
    last versions; P(hcp.core.keyserver#lookup) retrieves the latest or a given one).
  - The data is never returned, logged or shown in a diff.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.keyserver
  - hcp.core.service_client
  - hcp.core.attributes
attributes:
  check_mode:
    support: full
    details: The key-server answers what it would do (a dry run checked by the same ACL), changing nothing.
  diff_mode:
    support: none
options:
  name:
    description:
      - Resource name C(<domain>/<name>), for example V(datica-test/storage-disk-key). The domain is lowercase letters,
        digits, V(_) and V(-); the rest is segments of ASCII letters, digits and V(_.@+=,:-) separated by V(/). No
        V(..), no leading or trailing V(/), at most 255 characters.
    type: str
    required: true
  state:
    description: V(present) stores O(data) (a new version when it differs); V(absent) deletes every version.
    type: str
    choices: [present, absent]
    default: present
  data:
    description: The item's content as text (UTF-8). This or O(data_b64) with O(state=present).
    type: str
  data_b64:
    description: The item's content in base64, for binary items.
    type: str
  exportable:
    description:
      - V(false) - the item is released (and listed) only to hosts whose certificate's measurement is one of
        O(measurements).
    type: bool
    default: true
  measurements:
    description:
      - Measurements (V(pcrs-sha256:<64 hex>), the golden PCR digest carried by the hosts' key-server certificates)
        of the hosts a non-exportable item may be released to.
    type: list
    elements: str
    default: []
seealso:
  - plugin: hcp.core.keyserver
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: The disk key of the deployed VMs is on the key-server
  hcp.core.keyserver_item:
    url: https://keys.example.test:8443
    ca_file: /etc/hcp/ca.pem
    client_cert: /etc/hcp/https-client/https-client.pem
    client_key: /etc/hcp/https-client/https-client.key
    name: datica-test/storage-disk-key
    data_b64: "{{ disk_key_b64 }}"
    exportable: false
    measurements: [pcrs-sha256:5f8a0e3c1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7]

- name: Retire it
  hcp.core.keyserver_item:
    url: https://keys.example.test:8443
    ca_file: /etc/hcp/ca.pem
    client_cert: /etc/hcp/https-client/https-client.pem
    client_key: /etc/hcp/https-client/https-client.key
    name: datica-test/storage-disk-key
    state: absent

- name: Store as the attested host itself, with the credential its attester keeps (client_cert when it expired)
  hcp.core.keyserver_item:
    url: https://keys.example.test:8443
    ca_file: /etc/hcp/ca.pem
    credential_dir: /var/lib/hcp/attester/keyserver-credential
    client_cert: /etc/hcp/https-client/https-client.pem
    client_key: /etc/hcp/https-client/https-client.key
    name: node9/backup-key
    data_b64: "{{ backup_key_b64 }}"
"""

RETURN = r"""
name:
  description: The resource name.
  returned: always
  type: str
item_version:
  description: The version now stored (or that a store would create, in check mode).
  returned: when O(state=present)
  type: int
exportable:
  description: The exportable flag of that version.
  returned: when O(state=present)
  type: bool
deleted:
  description: Whether an item was (or would be) deleted.
  returned: when O(state=absent)
  type: bool
attested:
  description: Whether the host's key-server credential from O(credential_dir) was presented (else O(client_cert)).
  returned: success
  type: bool
status_code:
  description: The HTTP status of a refused request (403 ACL or certificate, 404, 507 store full, ...).
  returned: failure
  type: int
"""

import base64
import binascii

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient, ensure_item
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    KEYSERVER_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
    mask_secret,
    service_client_args,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            KEYSERVER_ARGUMENT_SPEC,
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            data=dict(type="str", no_log=True),
            data_b64=dict(type="str", no_log=True),
            exportable=dict(type="bool", default=True),
            measurements=dict(type="list", elements="str", default=[]),
        ),
        mutually_exclusive=[("data", "data_b64")],
        required_if=[("state", "present", ("data", "data_b64"), True)],
        supports_check_mode=True,
    )
    params = module.params
    data = None
    if params["data_b64"] is not None:
        try:
            data = base64.b64decode(params["data_b64"], validate=True)
        except (binascii.Error, ValueError):
            module.fail_json(msg="data_b64 is not base64", name=params["name"])
    elif params["data"] is not None:
        data = params["data"].encode("utf-8")
    if data:
        mask_secret(module, data)
    try:
        client = KeyServerClient(*service_client_args(params), credential_dir=params["credential_dir"])
        result = ensure_item(client, params["name"], state=params["state"], data=data, exportable=params["exportable"],
                             measurements=params["measurements"], check_mode=module.check_mode)
        result["attested"] = client.using_credential
    except HcpError as exc:
        fail_on_hcp_error(module, exc, name=params["name"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
