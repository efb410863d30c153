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
extends_documentation_fragment:
  - hcp.core.service_client
  - hcp.core.service_client.plugins
options:
  _terms:
    description: ekpubhash prefixes or hostname regular expressions.
    required: true
  by:
    description: What the terms are.
    type: str
    choices: [ekpubhash, hostname]
    default: ekpubhash
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

from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.plugin_utils.lookup import HcpLookupBase


class LookupModule(HcpLookupBase):
    """hcp.core.enrollment lookup."""

    NAME = "hcp.core.enrollment"

    def run(self, terms, variables=None, **kwargs):
        self.load_options(variables, kwargs)
        by = self.get_option("by")
        try:
            client = EnrollmentClient(*self.service_client_args())
        except HcpError as exc:
            self.fail(exc)
        results = []
        for term in terms:
            try:
                if by == "hostname":
                    results.append(client.find(term))
                else:
                    entries = client.query(term)
                    results.append([dict((k, e[k]) for k in ("ekpubhash", "hostname", "files") if k in e) for e in entries])
            except HcpError as exc:
                self.fail("term %r: %s" % (term, exc))
        return results
