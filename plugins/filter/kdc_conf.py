# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.kdc_conf filter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kdc_conf
short_description: A Heimdal KDC's kdc.conf for a realm
version_added: 0.1.0
author: HCP maintainers (@hcp-core)
description:
  - The text of a KDC's configuration for the realm given as input, built by the hcp.core Kerberos library
    (C(kerberos/config.py) C(kdc_conf_sections), the same data its tests and the kadmin driver use) and rendered with
    every name and value checked, so no value can open a section or a block (C(docs/kerberos.md), "Realm layout").
  - The database is C(<db_dir>/heimdal) with its iprop log C(<db_dir>/iprop.log); AES keys only; PKINIT on when
    O(pkinit) is given (RSA certificates, C(pkinit_dh_min_bits = 1536)).
  - With O(kdcs) the file also carries the client settings of the realm (C(krb5_conf_sections) merged in,
    C([realms]) with the KDC list, AES C(default_etypes), PKINIT anchors), so the KDC daemons, ipropd and
    C(kadmin -l) need this one file. kadmin signals ipropd-master over C(<db_dir>/signal) and ipropd
    keeps its files in C(<db_dir>) (C([hdb] db-dir)), and each KDC's host name (and each of O(domains)) maps to the realm in C([domain_realm]); ipropd
    names its own C(iprop/<host>) principal from its host name, which would otherwise fall in the realm of the host's
    DNS domain.
  - Heimdal's daemons log to standard error (the journal, under systemd) unless O(log_file) is given for the KDC.
options:
  _input:
    description: The realm (upper-case DNS-like labels).
    type: str
    required: true
  db_dir:
    description: The database directory (absolute).
    type: str
    required: true
  ports:
    description: The KDC's ports.
    type: list
    elements: int
    default: [88]
  addresses:
    description: Listen addresses; all when empty.
    type: list
    elements: str
    default: []
  pkinit:
    description: C(identity_cert), C(identity_key), C(anchors) (absolute paths) and optionally C(pool); PKINIT off when empty.
    type: dict
    default: {}
  iprop:
    description: A primary that replicates by iprop (ACL file C(<db_dir>/slaves), stats C(<db_dir>/slaves-stats)).
    type: bool
    default: false
  log_file:
    description: The KDC log file; syslog when empty.
    type: str
  mkey_file:
    description: The master key file; C(<db_dir>/m-key) when empty (a secondary keeps the primary's copy elsewhere).
    type: str
  kdcs:
    description: The realm's KDCs (C(host) or C(host:port)); when given, the realm's client settings are merged in.
    type: list
    elements: str
    default: []
  pkinit_anchors:
    description: With O(kdcs), the CA file clients verify the KDC's PKINIT certificate with.
    type: str
  domains:
    description: With O(kdcs), DNS domains whose hosts are in the realm.
    type: list
    elements: str
    default: []
  iprop_acl:
    description: The primary's iprop ACL file (one C(iprop/<secondary>@REALM) a line); C(<db_dir>/slaves) when empty.
    type: str
"""

EXAMPLES = r"""
- name: The primary KDC's configuration
  ansible.builtin.copy:
    content: >-
      {{ 'EXAMPLE.TEST' | hcp.core.kdc_conf(db_dir='/var/lib/hcp/kdc/EXAMPLE.TEST', iprop=true,
         kdcs=['kdc1.example.test', 'kdc2.example.test'],
         pkinit={'identity_cert': '/etc/hcp/pkinit-kdc/pkinit-kdc.pem', 'identity_key': '/etc/hcp/pkinit-kdc/pkinit-kdc.key',
                 'anchors': '/etc/hcp/kdc/ca.pem'}) }}
    dest: /etc/hcp/kdc/kdc.conf
    mode: "0640"
    validate: /usr/bin/verify_krb5_conf %s
"""

RETURN = r"""
_value:
  description: The configuration (krb5.conf syntax).
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.realm import kdc_conf_text


def kdc_conf(realm, db_dir=None, ports=(88,), addresses=(), pkinit=None, iprop=False, log_file=None, mkey_file=None, kdcs=(),
             pkinit_anchors=None, domains=(), iprop_acl=None):
    """kdc.conf text for ``realm`` (see DOCUMENTATION; the library's kerberos/realm.py kdc_conf_text)."""
    try:
        return kdc_conf_text(realm, db_dir, ports=ports, addresses=addresses, pkinit=pkinit, iprop=iprop, log_file=log_file,
                             mkey_file=mkey_file, kdcs=kdcs, pkinit_anchors=pkinit_anchors, domains=domains, iprop_acl=iprop_acl)
    except (HcpError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("kdc_conf: %s" % exc) from None


class FilterModule(object):
    def filters(self):
        return {"kdc_conf": kdc_conf}
