#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: site_credentials
short_description: Create a site's seed credentials (enrollment, service-client and key-server credential CAs, signer, TLS)
version_added: 0.1.0
description:
  - Creates, in O(path), each seed credential a site needs that is not there yet, so a fresh site needs no
    hand-made keys or certificates. Existing files are never replaced (except client certificates the
    service-client CA did not issue), so running it again changes nothing.
  - The enrollment CA (C(ca.key), C(ca.pem); RSA-3072, because Heimdal's PKINIT cannot verify ECDSA-signed
    certificates), the service-client CA (C(svc-ca.key), C(svc-ca.pem); ECDSA P-256), the key-server credential CA
    (C(kscred-ca.key), C(kscred-ca.pem); ECDSA P-256), the asset signer
    (C(signer.key), C(signer.pub.pem); ECDSA P-256), the server TLS certificate
    (C(server.key), C(server.pem) with the CA chain) for O(server_names), one extra server certificate per
    O(server_certs) label (C(server-LABEL.key), C(server-LABEL.pem)), and one TLS client certificate per
    O(client_names) entry (C(client-NAME.key), C(client-NAME.pem)).
  - Client certificates are service identities (the orchestrator, the enrollment service, the attestation
    servers' erepl clients) and come from the service-client CA only; the enrollment CA issues every host and
    user certificate, so services trust only the service-client CA for their callers (docs/ARCHITECTURE.md,
    "Service identities"). The key-server credential CA issues nothing here - the attestation servers hold it and
    issue minutes-long key-server credentials to hosts whose quote matched; only the key-server trusts it
    (C(docs/keyserver.md), part 2). A client certificate present but not issued by the service-client CA (made by an
    older release with the enrollment CA) is re-issued with a new key and listed in RV(reissued).
  - Private keys are written atomically with mode V(0600) in a V(0700) directory; certificates and public keys
    V(0644). O(owner) and O(group) are applied to the directory and every file.
  - Nothing secret is returned; only the paths and the public CA certificate and signer key.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.attributes
attributes:
  check_mode:
    details: Reports what would be created without creating it.
requirements:
  - cryptography (on the target; the hcp.core runtime venv has it)
options:
  path:
    description: Directory of the credentials (created V(0700) when absent).
    type: path
    required: true
  site:
    description: Site name, used in the CA's common name and the certificates' organisation.
    type: str
    required: true
  server_names:
    description: DNS names of the server TLS certificate (the first one is also its common name).
    type: list
    elements: str
    required: true
  client_names:
    description: One TLS client certificate (service identity, from the service-client CA) is made per name (its
      common name), for example V(orchestrator).
    type: list
    elements: str
    default: []
  server_certs:
    description:
      - Extra TLS server certificates (for example for other services of the site), as a mapping of label
        (V([a-z0-9][a-z0-9_.-]*)) to a non-empty list of DNS names, the first one being the common name.
      - Each is created once, like the main server certificate; later changes of its names are ignored.
    type: dict
    default: {}
  owner:
    description: Owner of the directory and the files.
    type: str
  group:
    description: Group of the directory and the files.
    type: str
notes:
  - Existing files are kept except client certificates not issued by the service-client CA, which are
    re-issued.
  - The server certificates' names are fixed at creation; to change them remove C(server.key) and C(server.pem)
    (or C(server-LABEL.key) and C(server-LABEL.pem)).
seealso:
  - module: hcp.core.enrollment
"""

EXAMPLES = r"""
- name: Seed the site credentials on the enrollment server
  hcp.core.site_credentials:
    path: /etc/hcp/enroll/pki
    site: lab
    server_names: [enroll.example.net, localhost]
    client_names: [orchestrator, attest-a1]
    server_certs:
      attest-a1: [a1.example.net]
    owner: hcp-enroll-db
    group: hcp-enroll-db
  register: creds
"""

RETURN = r"""
paths:
  description: Path of every credential file by label (C(ca_key), C(ca_cert), C(svc_ca_key), C(svc_ca_cert),
    C(kscred_ca_key), C(kscred_ca_cert), C(signer_key), C(signer_pub),
    C(server_key), C(server_cert), C(server_LABEL_key), C(server_LABEL_cert), C(client_NAME_key),
    C(client_NAME_cert)).
  returned: always
  type: dict
created:
  description: Labels of the files created by this run (in check mode, that would be created).
  returned: always
  type: list
  elements: str
reissued:
  description: Labels of the client certificate files re-issued by this run (in check mode, that would be) because
    the service-client CA had not issued them.
  returned: always
  type: list
  elements: str
ca_cert:
  description: The enrollment CA certificate (PEM; public). Empty in check mode before the first run.
  returned: always
  type: str
svc_ca_cert:
  description: The service-client CA certificate (PEM; public), which services trust for their callers. Empty in
    check mode before the first run.
  returned: always
  type: str
keyserver_credential_ca_cert:
  description: The key-server credential CA certificate (PEM; public), which the key-server trusts (besides the
    enrollment CA) for its callers. Empty in check mode before the first run.
  returned: always
  type: str
signer_public_key:
  description: The asset signer's public key (PEM; public). Empty in check mode before the first run.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import fail_on_hcp_error


def _read_text(path):
    try:
        with open(path, "r") as handle:
            return handle.read()
    except OSError:
        return ""


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            site=dict(type="str", required=True),
            server_names=dict(type="list", elements="str", required=True),
            client_names=dict(type="list", elements="str", default=[]),
            server_certs=dict(type="dict", default={}),
            owner=dict(type="str"),
            group=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    directory = params["path"]
    if not params["server_names"]:
        module.fail_json(msg="server_names must name at least one DNS name")
    try:
        pki.check_server_certs(params["server_certs"])
        files = pki.site_credential_files(params["client_names"], params["server_certs"])
        paths = dict((label, os.path.join(directory, name)) for label, name in files.items())
        if module.check_mode:
            created = pki.missing_site_credentials(directory, params["client_names"], params["server_certs"])
            reissued = pki.stale_site_credentials(directory, params["client_names"])
        else:
            result = pki.bootstrap_site_credentials(directory, params["site"], params["server_names"],
                                                    params["client_names"], server_certs=params["server_certs"])
            created = sorted(result["created"])
            reissued = sorted(result["reissued"])
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    changed = bool(created or reissued)
    for target in [directory] + sorted(paths.values()):
        if os.path.exists(target):
            changed = module.set_owner_if_different(target, params["owner"], changed)
            changed = module.set_group_if_different(target, params["group"], changed)
    module.exit_json(changed=changed, paths=paths, created=created, reissued=reissued, ca_cert=_read_text(paths["ca_cert"]),
                     svc_ca_cert=_read_text(paths["svc_ca_cert"]), keyserver_credential_ca_cert=_read_text(paths["kscred_ca_cert"]),
                     signer_public_key=_read_text(paths["signer_pub"]))


if __name__ == "__main__":
    main()
