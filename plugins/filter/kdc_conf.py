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
  - With O(kdcs) the file also carries the client settings of the realm (C(krb5_conf_sections) merged in:
    C([realms]) with the KDC list, AES C(default_etypes), PKINIT anchors), so the KDC daemons, ipropd and
    C(kadmin -l) need this one file. kadmin signals ipropd-master over C(<db_dir>/signal) and ipropd
    keeps its files in C(<db_dir>) (C([hdb] db-dir)), and each KDC's host name (and each of O(domains)) maps to the realm in C([domain_realm]): ipropd
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

import os

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf


def _path(value, what):
    if not isinstance(value, str) or not krbconf.PATH_RE.fullmatch(value) or "/../" in value + "/":
        raise krbconf.KerberosConfigError("%s must be an absolute path of letters, digits and _ . / + -" % what)
    return value


def kdc_conf(realm, db_dir=None, ports=(88,), addresses=(), pkinit=None, iprop=False, log_file=None, mkey_file=None, kdcs=(),
             pkinit_anchors=None, domains=(), iprop_acl=None):
    """kdc.conf text for ``realm`` (see DOCUMENTATION)."""
    try:
        sections = krbconf.kdc_conf_sections(realm, db_dir, ports=[int(p) for p in ports], addresses=list(addresses) or None,
                                             pkinit=dict(pkinit) if pkinit else None, iprop=bool(iprop), log_file=log_file or None)
        if mkey_file:
            sections["kdc"]["database"]["mkey_file"] = _path(mkey_file, "mkey_file")
        if iprop and iprop_acl:
            sections["kdc"]["iprop-acl"] = _path(iprop_acl, "iprop_acl")
        # kadmin tells ipropd-master of a change over this socket, and ipropd-master writes its dump
        # for a full resend into [hdb] db-dir: both default to the system HDB's directory
        # /var/lib/heimdal-kdc, which the sandboxed daemons cannot write (nor should they use)
        sections["kdc"]["signal_socket"] = _path(os.path.join(db_dir, "signal"), "db_dir")
        sections["hdb"] = {"db-dir": db_dir}
        if not log_file:
            sections["logging"] = {"kdc": "STDERR", "default": "STDERR"}
        if kdcs:
            client = krbconf.krb5_conf_sections(realm, list(kdcs), pkinit_anchors=pkinit_anchors or None, domains=list(domains))
            libdefaults = dict(client["libdefaults"])
            libdefaults.update(sections["libdefaults"])
            hosts = dict((krbconf._endpoint(k, "kdcs").rpartition(":")[0] if ":" in k else k, realm)  # pylint: disable=protected-access
                         for k in kdcs)
            hosts.update(client.get("domain_realm", {}))
            sections = dict([("libdefaults", libdefaults), ("realms", client["realms"]), ("domain_realm", hosts)]
                            + [(name, body) for name, body in sections.items() if name != "libdefaults"])
        return krbconf.render(sections)
    except (HcpError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("kdc_conf: %s" % exc) from None


class FilterModule(object):
    def filters(self):
        return {"kdc_conf": kdc_conf}
