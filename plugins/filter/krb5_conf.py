# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.krb5_conf filter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: krb5_conf
short_description: A client's krb5.conf for a Heimdal realm
version_added: 0.1.0
author: HCP maintainers (@hcp-core)
description:
  - The text of a client krb5.conf for the realm given as input, built by the hcp.core Kerberos library
    (C(kerberos/config.py) C(krb5_conf_sections)) and rendered with every name and value checked
    (C(docs/kerberos.md)) - default realm, no DNS lookups, AES encryption types, C(pkinit_dh_min_bits = 1536), the
    realm's KDCs and, with O(pkinit_anchors), PKINIT with the KDC certificate's EKU and krbtgt name required.
options:
  _input:
    description: The realm (upper-case DNS-like labels).
    type: str
    required: true
  kdcs:
    description: The realm's KDCs (C(host) or C(host:port)), tried in order.
    type: list
    elements: str
    required: true
  admin_server:
    description: The admin server (C(host) or C(host:port)).
    type: str
  pkinit_anchors:
    description: The CA file verifying the KDC's PKINIT certificate (absolute path).
    type: str
  domains:
    description: DNS domains mapped to the realm.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: The realm's krb5.conf
  ansible.builtin.copy:
    content: "{{ 'EXAMPLE.TEST' | hcp.core.krb5_conf(kdcs=['kdc1.example.test', 'kdc2.example.test'], pkinit_anchors='/etc/hcp/kdc/ca.pem') }}"
    dest: /etc/krb5.conf
    mode: "0644"
    validate: /usr/bin/verify_krb5_conf %s
"""

RETURN = r"""
_value:
  description: The configuration (krb5.conf syntax).
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf


def krb5_conf(realm, kdcs=None, admin_server=None, pkinit_anchors=None, domains=()):
    """krb5.conf text for ``realm`` (see DOCUMENTATION)."""
    try:
        return krbconf.render(krbconf.krb5_conf_sections(realm, list(kdcs or []), admin_server=admin_server or None,
                                                         pkinit_anchors=pkinit_anchors or None, domains=list(domains)))
    except (HcpError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("krb5_conf: %s" % exc) from None


class FilterModule(object):
    def filters(self):
        return {"krb5_conf": krb5_conf}
