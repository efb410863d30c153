#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: crl
short_description: Make the certificate revocation list (CRL) of a CA
version_added: 0.1.0
description:
  - Writes to O(dest) a PEM CRL signed by the CA (O(ca_key_path), O(ca_cert_path)) that lists the certificates
    in O(revoked), valid for O(days) days. nginx (role hcp.core.webapi, C(webapi_client_crl)) then refuses those
    client certificates.
  - Idempotent. The CRL is rewritten only when the list changes, when O(dest) holds no CRL of this CA, or when it
    expires within a third of O(days) (run it regularly, e.g. from the play that deploys the services, so the CRL
    never expires, as nginx refuses every client certificate once the CRL in force has expired). The CRL number grows
    by one at every rewrite and the revocation dates of listed certificates are kept.
  - The CRL is public (it names serial numbers); it is written atomically with mode V(0644). The CA key is read
    without following symbolic links and is never returned.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.attributes
attributes:
  check_mode:
    details: Reports whether the CRL would be rewritten, without writing it.
requirements:
  - cryptography (on the target; the hcp.core runtime venv has it)
options:
  ca_key_path:
    description: PEM private key of the CA that issued the revoked certificates.
    type: path
    required: true
  ca_cert_path:
    description: PEM certificate of that CA (the first certificate of the file).
    type: path
    required: true
  revoked:
    description:
      - The certificates to revoke, each the path of its PEM certificate on the target or its serial number (decimal,
        or hexadecimal with C(0x), as in C(openssl x509 -serial) with C(0x) added).
      - The full list in force, so a certificate left out of it is no longer revoked.
    type: list
    elements: str
    default: []
  dest:
    description: Path of the CRL file.
    type: path
    required: true
  days:
    description: Validity of a new CRL in days (1-3650).
    type: int
    default: 90
seealso:
  - module: hcp.core.site_credentials
"""

EXAMPLES = r"""
- name: Revoke the orchestrator's old client certificate
  hcp.core.crl:
    ca_key_path: /etc/hcp/enroll/pki/ca.key
    ca_cert_path: /etc/hcp/enroll/pki/ca.pem
    revoked:
      - /etc/hcp/enroll/pki/retired/client-orchestrator.pem
      - "0x3f2a91c4"
    dest: /etc/hcp/enroll/pki/clients.crl
  register: crl
"""

RETURN = r"""
dest:
  description: Path of the CRL file.
  returned: always
  type: str
serials:
  description: Revoked serial numbers (lowercase hexadecimal with C(0x)).
  returned: always
  type: list
  elements: str
crl:
  description: The CRL in force after the run (PEM; public). Empty in check mode when it would be rewritten.
  returned: always
  type: str
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils import fileutil, pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import fail_on_hcp_error

SERIAL_RE = re.compile(r"(0x[0-9a-fA-F]{1,40}|[0-9]{1,49})")
MAX_PEM = 1024 * 1024


def _read(path, what):
    _info, data = fileutil.read_nofollow(path, MAX_PEM)
    if data is None:
        raise pki.PkiError("%s %s is missing or larger than 1 MiB" % (what, path))
    return data


def _revoked(items):
    out = []
    for item in items:
        if SERIAL_RE.fullmatch(item):
            out.append(int(item, 0) if item.startswith("0x") else int(item, 10))
        else:
            out.append(_read(item, "revoked certificate"))
    return out


def _serial_of(item):
    return item if isinstance(item, int) else pki.load_certificates(item)[0].serial_number


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_key_path=dict(type="path", required=True, no_log=False),
            ca_cert_path=dict(type="path", required=True),
            revoked=dict(type="list", elements="str", default=[]),
            dest=dict(type="path", required=True),
            days=dict(type="int", default=pki.DEFAULT_CRL_DAYS),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        issuer = pki.Issuer.from_pem(_read(params["ca_key_path"], "CA key"), _read(params["ca_cert_path"], "CA certificate"))
        current = fileutil.read_if_exists(params["dest"])
        wanted = _revoked(params["revoked"])
        new = pki.make_crl(issuer, wanted, days=params["days"], current=current)
        if new is not None and not module.check_mode:
            fileutil.atomic_write(params["dest"], new, mode=0o644)
        if new is not None and module.check_mode:
            in_force = ""
            serials = sorted(set("0x%x" % _serial_of(item) for item in wanted))
        else:
            in_force = (new if new is not None else current).decode("ascii")
            serials = sorted("0x%x" % entry.serial_number for entry in pki.x509.load_pem_x509_crl(in_force.encode("ascii")))
    except (HcpError, OSError, ValueError) as exc:
        fail_on_hcp_error(module, exc if isinstance(exc, HcpError) else pki.PkiError(str(exc)))
    module.exit_json(changed=new is not None, dest=params["dest"], serials=serials, crl=in_force)


if __name__ == "__main__":
    main()
