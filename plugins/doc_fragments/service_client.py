# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Options of every plugin that calls an hcp.core service over HTTPS (enrollment, control tower);
    # their argument spec is module_helpers.SERVICE_CLIENT_ARGUMENT_SPEC. A plugin whose service URL
    # is optional redefines O(url).
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the service, for example V(https://enroll.example.test:8443). Only V(https://) is accepted.
    type: str
    required: true
  ca_file:
    description: CA bundle verifying the service's TLS certificate (the system CAs when omitted).
    type: path
  client_cert:
    description: Client certificate (PEM) presented to the service.
    type: path
  client_key:
    description: Private key of O(client_cert) (PEM), when it is not in the same file.
    type: path
  timeout:
    description: Seconds to wait for each request.
    type: int
    default: 30
"""

    # Lookups also read the client credentials from the environment or from variables.
    PLUGINS = r"""
options:
  ca_file:
    env:
      - name: HCP_CA_FILE
    vars:
      - name: hcp_ca_file
  client_cert:
    env:
      - name: HCP_CLIENT_CERT
    vars:
      - name: hcp_client_cert
  client_key:
    env:
      - name: HCP_CLIENT_KEY
    vars:
      - name: hcp_client_key
  timeout:
    env:
      - name: HCP_TIMEOUT
    vars:
      - name: hcp_timeout
"""
