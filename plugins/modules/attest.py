#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: attest
short_description: Attest this host with its TPM and install the assets it receives
version_added: 0.1.0
description:
  - Runs attestation protocol v1 (C(docs/attestation.md)) against an hcp.core attestation server with the host's
    TPM, verifies the returned enrollment entry against the trusted asset-signer key, unseals the sensitive
    assets with the TPM and installs every asset by the install hints of the signed manifest, or by O(rules).
  - Files change only when their content, mode or ownership differ; secret files are always V(0600); a
    symbolic link at a destination is refused; keytabs are merged; the issuer CA goes into the system trust
    store (C(update-ca-certificates) runs when it changed and O(root=/)). Layout and rules are described in
    C(docs/attestation-client.md).
  - Assets sealed with the one-time policy are unsealed once per boot, and PCR 11 is extended afterwards. When
    PCR 11 is already extended (a re-attestation), they are skipped and their installed files left alone.
  - The same code runs in the periodic attester (C(python -m ansible_collections.hcp.core.plugins.module_utils.attestation.attester)).
  - The module never returns asset content.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.tpm.tcti
  - hcp.core.attestation
  - hcp.core.attributes
attributes:
  check_mode:
    details: Attests and unseals ordinary assets to compare them, but never unseals one-time assets, never
      extends PCR 11, asks for no key-server credential and writes nothing.
options:
  install:
    description: Install the assets; V(false) attests only.
    type: bool
    default: true
  keyserver_credential_dir:
    description:
      - Absolute directory where this run asks the attestation server for a key-server credential and keeps it
        (C(docs/keyserver.md), part 2) - the same as the attester's C(keyserver_credential_dir), so a playbook run
        holds a fresh credential without waiting for C(hcp-attester.timer).
      - The module makes a fresh key, sends its public key with the evidence, checks the certificate the server
        returns inside the answer encrypted to this TPM (it certifies that key, has the key-server client purpose
        and is valid now) and writes C(keyserver-credential.key) and C(keyserver-credential.pem) there, each V(0600)
        and atomic. The directory is created V(0700); an existing one must be a directory (not a link) of the user
        running the module that nobody else may read or write.
      - A credential lives minutes (C(attestation_server_keyserver_credential_minutes)). Key-server clients present
        it with C(credential_dir) (lookup hcp.core.keyserver, module hcp.core.keyserver_item).
      - Renewing the credential is not a change (C(changed) reports the assets only). When the server issues
        none (it holds no key-server credential CA), RV(keyserver_credential) is V(null), the files are left
        alone and the module warns.
      - Not in check mode.
    type: path
  root:
    description: Prefix of every destination path (tests, images).
    type: path
    default: /
  rules:
    description:
      - "Per-asset overrides of the manifest's install hints: a mapping of asset name to a mapping with keys
        C(dest), C(mode), C(owner) and C(group), or to V(false) to not install that asset."
    type: dict
    default: {}
  site:
    description: Label of the trust-anchor file C(hcp-<site>.crt); default the host name of the entry.
    type: str
notes:
  - Runs as root on the target, because it needs the TPM and writes system files.
seealso:
  - module: hcp.core.tpm_unseal
  - plugin: hcp.core.attested_secret
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Attest and install the enrolled assets
  hcp.core.attest:
    servers:
      - https://attest1.example.test
      - https://attest2.example.test
    ca_file: /etc/hcp/trust/ca.pem
    signer_public_file: /etc/hcp/trust/signer.pub.pem
  register: attestation
  notify: Restart sshd

- name: Attest with a software TPM, keep the host name file untouched
  hcp.core.attest:
    url: https://attest1.example.test
    signer_public: "{{ hcp_asset_signer_pub }}"
    tcti: swtpm:host=127.0.0.1,port=2321
    rules:
      etc-hostname: false
"""

RETURN = r"""
hostname:
  description: Host name of the enrolled entry.
  returned: always
  type: str
  sample: node1.example.test
ekpubhash:
  description: SHA-256 of the TPM's EK public area.
  returned: always
  type: str
server:
  description: The server that answered.
  returned: always
  type: str
snapshot:
  description: Enrollment DB commit the server attested against.
  returned: always
  type: str
changed_assets:
  description: Names of the assets whose files changed (or would change in check mode).
  returned: always
  type: list
  elements: str
  sample: [https-server.pem, https-server.key]
skipped:
  description: Assets not installed, with the reason (missing user, one-time asset already unsealed this boot).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "rootfs.key", "reason": "one-time asset already unsealed this boot (PCR 11 extended)"}]
files:
  description: Installed files, C({name, path, changed}).
  returned: always
  type: list
  elements: dict
pcr_extended:
  description: Whether PCR 11 was extended after unsealing one-time assets.
  returned: always
  type: bool
keyserver_credential:
  description:
    - The key-server credential this run received, without its key - C(not_after) (epoch seconds), the
      C(measurement) the quote proved (V(null) when the host's profile has no golden PCR values) and the C(profile)
      label bound into it, and the C(path) of its certificate; V(null) when the server issued none.
  returned: when O(keyserver_credential_dir) is set, not in check mode
  type: dict
  sample: {"not_after": 1796215200, "measurement": "pcrs-sha256:9f2c...", "profile": "vm",
           "path": "/var/lib/hcp/attester/keyserver-credential/keyserver-credential.pem"}
post_hook_error:
  description: Always null for the module (hooks are an attester feature).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.attestation import attester
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    ATTESTATION_ARGUMENT_SPEC,
    TCTI_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            ATTESTATION_ARGUMENT_SPEC,
            TCTI_ARGUMENT_SPEC,
            install=dict(type="bool", default=True),
            root=dict(type="path", default="/"),
            rules=dict(type="dict", default={}),
            site=dict(type="str"),
            keyserver_credential_dir=dict(type="path"),
        ),
        required_one_of=[("signer_public", "signer_public_file")],
        mutually_exclusive=[("signer_public", "signer_public_file")],
        supports_check_mode=True,
    )
    params = module.params
    credential_dir = params["keyserver_credential_dir"]
    if credential_dir is not None and not os.path.isabs(credential_dir):
        module.fail_json(msg="keyserver_credential_dir must be an absolute path")
    try:
        signer = attest_client.load_signer_public(params["signer_public"], params["signer_public_file"])
        with Tpm(params["tcti"]) as tpm:
            result = attester.run(tpm, params["servers"], signer, ca_file=params["ca_file"], timeout=params["timeout"],
                                  root=params["root"], rules=params["rules"], install=params["install"],
                                  check_mode=module.check_mode, site=params["site"],
                                  state_dir=params["state_dir"] or attest_client.default_state_dir(),
                                  keyserver_credential_dir=credential_dir)
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    except OSError as exc:
        module.fail_json(msg="cannot install the assets: %s" % (exc.strerror or exc))
    if credential_dir is not None and not module.check_mode and result.get("keyserver_credential") is None:
        module.warn("the attestation server issued no key-server credential (it holds no key-server credential CA); "
                    "nothing was written in %s" % credential_dir)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
