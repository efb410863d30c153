# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible lookup face of enroll_client (queries only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: enrollment
short_description: Query an hcp.core enrollment service
description:
  - Returns, for each term, the enrollment entries matching it, as a list of dicts with
    C(ekpubhash), C(hostname) and (for ekpubhash queries) C(files).
  - A term is an ekpubhash prefix (lowercase hex, may be empty for all entries), or a hostname
    regular expression when O(by=hostname).
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
options:
  _terms:
    description: ekpubhash prefixes or hostname regular expressions.
    required: true
  url:
    description: Base URL of the enrollment service.
    type: str
    required: true
  by:
    description: What the terms are.
    type: str
    choices: [ekpubhash, hostname]
    default: ekpubhash
  ca_file:
    description: CA bundle verifying the service's TLS certificate.
    type: path
  client_cert:
    description: Client certificate (PEM).
    type: path
  client_key:
    description: Key of O(client_cert).
    type: path
  timeout:
    description: Seconds per request.
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Every host enrolled under example.test
  ansible.builtin.debug:
    msg: "{{ lookup('hcp.core.enrollment', '\\.example\\.test$', by='hostname', url=enroll_url,
             ca_file=ca, client_cert=cert, client_key=key) }}"
"""

RETURN = r"""
_raw:
  description: One list of entries per term.
  type: list
  elements: list
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


class LookupModule(LookupBase):
    """hcp.core.enrollment lookup."""

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        by = self.get_option("by")
        try:
            client = EnrollmentClient(self.get_option("url"), self.get_option("ca_file"), self.get_option("client_cert"),
                                      self.get_option("client_key"), self.get_option("timeout"))
        except HcpError as exc:
            raise AnsibleLookupError("hcp.core.enrollment: %s" % exc) from exc
        results = []
        for term in terms:
            try:
                if by == "hostname":
                    results.append(client.find(term))
                else:
                    entries = client.query(term)
                    results.append([dict((k, e[k]) for k in ("ekpubhash", "hostname", "files") if k in e) for e in entries])
            except HcpError as exc:
                raise AnsibleLookupError("hcp.core.enrollment: term %r: %s" % (term, exc)) from exc
        return results
