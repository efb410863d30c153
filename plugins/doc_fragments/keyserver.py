# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Options of the key-server clients (module hcp.core.keyserver_item, lookup hcp.core.keyserver) on top of
    # fragment hcp.core.service_client (same argument spec: module_helpers.SERVICE_CLIENT_ARGUMENT_SPEC).
    # List it before hcp.core.service_client: the descriptions here then replace that fragment's.
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the key-server, for example V(https://keys.example.test:8443). Only V(https://) is accepted.
  client_cert:
    description:
      - The host's key-server client certificate (PEM), required - issued by the site's enrollment CA with the
        key-server client purpose (enrollment profile C(certificates.https-client.keyserver_client=true)).
      - Its key (in the same file or O(client_key)) also answers the key-server's auth-challenge (proof of possession).
notes:
  - "Wire format, ACL and threat model: C(docs/keyserver.md) in the collection."
"""

    # Lookups also read the key-server's URL and the client credentials from the environment, variables or
    # ansible.cfg (section [hcp_keyserver]), like community.hashi_vault's options.
    PLUGINS = r"""
options:
  url:
    env:
      - name: HCP_KEYSERVER_URL
    ini:
      - section: hcp_keyserver
        key: url
    vars:
      - name: hcp_keyserver_url
  ca_file:
    ini:
      - section: hcp_keyserver
        key: ca_file
  client_cert:
    ini:
      - section: hcp_keyserver
        key: client_cert
  client_key:
    ini:
      - section: hcp_keyserver
        key: client_key
  timeout:
    ini:
      - section: hcp_keyserver
        key: timeout
"""
