# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible lookup face of keyserver/client.py: retrieve items from the hcp.core key-server."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: keyserver
short_description: Retrieve items from the hcp.core key-server
description:
  - Returns, for each term (a resource name C(<domain>/<name>)), the content of that item on the site's key-server,
    retrieved over mTLS with a key-server client certificate whose key answers the server's auth-challenge
    (C(docs/keyserver.md)). The key-server's ACL decides (default deny); a non-exportable item comes only to hosts
    whose certificate's measurement matches.
  - "Per-run credential cache: the auth-challenge is answered once per playbook run. Lookups run in forked worker
    processes, so the session token the key-server hands out after the answer is kept in a file, mode V(0600) in a
    V(0700) per-user directory (C($XDG_RUNTIME_DIR) or the temporary directory), named after the C(ansible-playbook)
    process and its start time (as P(hcp.core.attested_secret#lookup)'s cache). The token is bound to the certificate
    (useless without its key) and expires (5 minutes by default); no item data touches the disk."
  - "With O(credential_dir), the host's short-lived key-server credential (issued by the attestation server after its
    quote matched) is presented while it is valid, else O(client_cert): the measurement-keyed release of
    C(docs/keyserver.md) part 2. Lookups run on the controller: use O(credential_dir) where the controller is the
    attested host (C(ansible-pull), a C(local) connection), as the user owning the credential files (root for the
    attester's)."
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
extends_documentation_fragment:
  - hcp.core.keyserver
  - hcp.core.keyserver.plugins
  - hcp.core.service_client
  - hcp.core.service_client.plugins
options:
  _terms:
    description: Resource names.
    required: true
  item_version:
    description: The version to retrieve (the latest when omitted).
    type: int
  encoding:
    description:
      - How to return the bytes. V(utf-8) fails for an item that is not valid UTF-8; use V(base64) for binary items.
    type: str
    choices: [utf-8, base64]
    default: utf-8
  cache:
    description: Use the per-run credential cache described above.
    type: bool
    default: true
notes:
  - The value returned is a secret, printed by any task that prints it; such tasks need C(no_log=true).
"""

EXAMPLES = r"""
- name: The disk key, released to this host by the key-server
  ansible.builtin.set_fact:
    disk_key_b64: "{{ lookup('hcp.core.keyserver', 'datica-test/storage-disk-key', encoding='base64',
                      url='https://keys.example.test:8443', ca_file='/etc/hcp/ca.pem',
                      client_cert='/etc/hcp/https-client/https-client.pem',
                      client_key='/etc/hcp/https-client/https-client.key') }}"
  no_log: true

- name: A secret the release policy maps to this host's measurement (ansible-pull on the host, as root)
  ansible.builtin.set_fact:
    app_token: "{{ lookup('hcp.core.keyserver', 'release/app-token', url='https://keys.example.test:8443',
                   ca_file='/etc/hcp/ca.pem', credential_dir='/var/lib/hcp/attester/keyserver-credential') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One string per term (base64 when O(encoding=base64)).
  type: list
  elements: str
"""

import base64

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient
from ansible_collections.hcp.core.plugins.plugin_utils.lookup import HcpLookupBase


class LookupModule(HcpLookupBase):
    """hcp.core.keyserver lookup."""

    NAME = "hcp.core.keyserver"

    def run(self, terms, variables=None, **kwargs):
        self.load_options(variables, kwargs)
        try:
            client = KeyServerClient(*self.service_client_args(), cache=bool(self.get_option("cache")),
                                     credential_dir=self.get_option("credential_dir"))
        except HcpError as exc:
            self.fail(exc)
        results = []
        for term in terms:
            name = str(term)
            try:
                data = client.retrieve(name, self.get_option("item_version"))["data"]
            except HcpError as exc:
                self.fail(exc)
            if self.get_option("encoding") == "base64":
                results.append(base64.b64encode(data).decode("ascii"))
                continue
            try:
                results.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                self.fail("item %s is not UTF-8 text; use encoding=base64" % name)
        return results
