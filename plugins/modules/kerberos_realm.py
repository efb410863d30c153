#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kerberos_realm
short_description: Initialise a Heimdal realm's database on its primary KDC
version_added: 0.1.0
description:
  - Initialises the database (HDB) of a Heimdal realm once, with a random master key, from the realm's own kdc.conf
    (C(kadmin -l -c KDC_CONF); the configuration must name exactly one database, for the realm, so the system HDB
    under C(/var/lib/heimdal-kdc) is never touched). An initialised realm is left as it is.
  - Creates the realm's infrastructure principals with random keys when they are missing, such as
    V(iprop/kdc2.example.test) for a secondary KDC or V(alice) for a user who logs in by PKINIT (the realm's reserved
    names are allowed here, unlike through the kadmin web API), and exports what a secondary KDC needs into files on
    this host, written by this (root) process, mode 0600, into directories that must exist - a keytab when its file does
    not exist yet, the master key when its copy differs.
  - With O(run_as), every kadmin run (and every read in the database directory) happens in a child process that has
    dropped to that user, the owner of the database directory, so root never works in a directory that user can change.
  - Runs on the primary KDC. Keys and the master key are never returned nor shown in a diff.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  realm:
    description: The realm, such as V(EXAMPLE.TEST) (upper-case DNS-like labels).
    type: str
    required: true
  kdc_conf:
    description: The realm's kdc.conf (absolute path), naming exactly one database, for O(realm).
    type: path
    required: true
  kadmin:
    description: The Heimdal kadmin binary; by default C(/usr/bin/kadmin.heimdal).
    type: path
  run_as:
    description:
      - The user owning the database directory; kadmin runs as that user (and its group, without supplementary groups).
        By default kadmin runs as the user running the module.
    type: str
  max_ticket_life:
    description: The realm's maximum ticket life in seconds, set at initialisation.
    type: int
    default: 86400
  max_renewable_life:
    description: The realm's maximum renewable life in seconds, set at initialisation.
    type: int
    default: 604800
  principals:
    description:
      - Principals of the realm's own infrastructure that must exist (created with random keys when missing; an existing
        one is left as it is), such as V(iprop/kdc1.example.test).
    type: list
    elements: str
    default: []
  keytabs:
    description:
      - Keytabs to export, a mapping of principals of O(principals) to files (absolute paths, written 0600 owned by the
        module's user) each written only when it does not exist (the principal's keys do not change). A secret.
    type: dict
    default: {}
  master_key_path:
    description:
      - Where to keep a copy of the realm's master key (the configuration's C(mkey_file)), written 0600 when it is missing
        or differs. Secondary KDCs need the same master key to read the entries they receive by iprop. A secret.
    type: path
seealso:
  - module: hcp.core.kerberos_principal
"""

EXAMPLES = r"""
- name: The realm's database exists, with the iprop principals of both KDCs
  hcp.core.kerberos_realm:
    realm: EXAMPLE.TEST
    kdc_conf: /etc/hcp/kdc/kdc.conf
    run_as: hcp-kdc
    principals:
      - iprop/kdc1.example.test
      - iprop/kdc2.example.test

- name: Export the secondary's iprop keytab and the master key for it
  hcp.core.kerberos_realm:
    realm: EXAMPLE.TEST
    kdc_conf: /etc/hcp/kdc/kdc.conf
    run_as: hcp-kdc
    principals: [iprop/kdc2.example.test]
    keytabs:
      iprop/kdc2.example.test: /etc/hcp/kdc/export/iprop-kdc2.example.test.keytab
    master_key_path: /etc/hcp/kdc/export/m-key
"""

RETURN = r"""
realm:
  description: The realm.
  returned: always
  type: str
  sample: EXAMPLE.TEST
initialised:
  description: Whether this run initialised the realm (or would, in check mode).
  returned: always
  type: bool
created:
  description: The principals this run created (or would create), with their realm.
  returned: always
  type: list
  elements: str
  sample: [iprop/kdc2.example.test@EXAMPLE.TEST]
krbtgt_kvno:
  description: The key version number of C(krbtgt/REALM@REALM); null in check mode before initialisation.
  returned: always
  type: int
written:
  description: The files this run wrote (or would write) - keytabs and the master key copy; never their content.
  returned: always
  type: list
  elements: str
status_code:
  description: The status of the failure (400 bad option, 409 realm conflict, 503 kadmin or database unusable, ...).
  returned: failure
  type: int
"""

import base64
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin
from ansible_collections.hcp.core.plugins.module_utils.kerberos.realm import MAX_MASTER_KEY_BYTES, inspect, run_as
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import fail_on_hcp_error, mask_secret


def _current(path):
    """The bytes of the file ``path`` (root-owned directory of the operator), None when absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_MASTER_KEY_BYTES + 1)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            realm=dict(type="str", required=True),
            kdc_conf=dict(type="path", required=True),
            kadmin=dict(type="path"),
            run_as=dict(type="str"),
            max_ticket_life=dict(type="int", default=86400),
            max_renewable_life=dict(type="int", default=7 * 86400),
            principals=dict(type="list", elements="str", default=[]),
            keytabs=dict(type="dict", default={}, no_log=False),
            master_key_path=dict(type="path", no_log=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    keytabs = [{"principal": principal, "path": path} for principal, path in sorted(params["keytabs"].items())]
    paths = [item["path"] for item in keytabs] + ([params["master_key_path"]] if params["master_key_path"] else [])
    for path in paths:
        if not isinstance(path, str) or not os.path.isabs(path) or not os.path.isdir(os.path.dirname(path)):
            module.fail_json(msg="%s must be an absolute path in an existing directory" % (path,), status_code=400)
    try:
        kadmin = Kadmin(params["kdc_conf"], params["realm"], kadmin=params["kadmin"])
        # Keytabs are exported only for files that do not exist yet: ask kadmin only for those.
        exports = [item for item in keytabs if not os.path.lexists(item["path"])]
        apply = not module.check_mode

        def work():
            return inspect(kadmin, params["principals"], [item["principal"] for item in exports],
                           master_key=bool(params["master_key_path"]), apply=apply,
                           max_ticket_life=params["max_ticket_life"], max_renewable_life=params["max_renewable_life"])

        result = run_as(params["run_as"], work)
    except HcpError as exc:
        fail_on_hcp_error(module, exc, realm=params["realm"])
    secrets = dict((name, base64.b64decode(data)) for name, data in result.pop("keytabs").items())
    master_key = result.pop("master_key")
    master_key = base64.b64decode(master_key) if master_key else None
    mask_secret(module, master_key, *secrets.values())
    written = []
    for item in exports:
        written.append(item["path"])
        if apply:
            atomic_write(item["path"], secrets[kadmin.principal(item["principal"], allow_reserved=True)], 0o600)
    # (in check mode before initialisation there is no master key yet: the copy would be written)
    if params["master_key_path"] and (master_key is None or _current(params["master_key_path"]) != master_key):
        written.append(params["master_key_path"])
        if apply:
            atomic_write(params["master_key_path"], master_key, 0o600)
    changed = bool(result["initialised"] or result["created"] or written)
    module.exit_json(changed=changed, realm=params["realm"], initialised=result["initialised"], created=result["created"],
                     krbtgt_kvno=result["krbtgt_kvno"], written=written)


if __name__ == "__main__":
    main()
