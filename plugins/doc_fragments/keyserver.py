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
      - The host's key-server client certificate (PEM) - issued by the site's enrollment CA with the
        key-server client purpose (enrollment profile C(certificates.https-client.keyserver_client=true)).
      - Its key (in the same file or O(client_key)) also answers the key-server's auth-challenge (proof of possession).
      - Required unless O(credential_dir) holds a valid key-server credential, which is then used instead.
  credential_dir:
    description:
      - Directory where the attestation client keeps the host's short-lived key-server credential
        (C(keyserver-credential.pem) and C(keyserver-credential.key)), issued by the attestation server only after
        the host's quote matched its golden PCR values (attester configuration key C(keyserver_credential_dir), role
        option C(attestation_client_keyserver_credential_dir); C(docs/keyserver.md), part 2).
      - While that credential is valid (both files V(0600) and owned by the user running this plugin, the key the
        certificate's, more than 5 seconds left) it is presented instead of O(client_cert) and O(client_key); it is
        the only certificate that carries a measurement the key-server's release policy and non-exportable items
        accept when the key-server trusts the credential CA. Otherwise O(client_cert) is used.
      - Re-attest (for example C(systemctl start hcp-attester.service)) shortly before; a credential lives minutes.
    type: path
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
  credential_dir:
    env:
      - name: HCP_KEYSERVER_CREDENTIAL_DIR
    ini:
      - section: hcp_keyserver
        key: credential_dir
    vars:
      - name: hcp_keyserver_credential_dir
"""
