# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible lookup face of attest_client: the controller attests with its TPM and returns assets."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: attested_secret
short_description: Assets of this controller's enrollment entry, obtained by attesting with its TPM
description:
  - Attests to an hcp.core attestation server with a TPM the controller can reach (O(tcti)), verifies the entry
    against the trusted asset-signer key, unseals the named assets with that TPM and returns their plaintext,
    one string per term. A deploy controller thus gets its secrets only by proving its TPM.
  - "Per-run cache: one playbook run attests once. Lookups run in forked worker processes, so the cache is a
    file: the verified entry with its sensitive assets still SEALED to the TPM (no plaintext secret touches the
    disk), mode V(0600) in a V(0700) per-user directory (C($XDG_RUNTIME_DIR) or the temporary directory),
    named after the C(ansible-playbook) process (the workers' parent) and its start time. Every later lookup of
    the run re-verifies the entry and unseals locally, without contacting the server. Files of finished runs
    are removed on the next use."
  - An asset sealed with the one-time policy can be looked up once per boot of the TPM.
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
extends_documentation_fragment:
  - hcp.core.tpm.tcti
  - hcp.core.attestation
options:
  _terms:
    description: Asset names of the entry (for example V(secret-db-password), V(rootfs.key)).
    required: true
  encoding:
    description:
      - How to return the bytes. V(utf-8) fails for an asset that is not valid UTF-8; use V(base64) for binary
        assets such as keys.
    type: str
    choices: [utf-8, base64]
    default: utf-8
  cache:
    description: Use the per-run cache described above.
    type: bool
    default: true
notes:
  - The lookup never puts a secret in an error message, a warning or a verbose line. The value it returns is a
    secret, printed by any task that prints it (C(ansible.builtin.debug), C(ansible.builtin.set_fact) with C(-v));
    such tasks need C(no_log=true).
"""

EXAMPLES = r"""
- name: Database password of this deploy controller, released only to its TPM
  ansible.builtin.set_fact:
    db_password: "{{ lookup('hcp.core.attested_secret', 'secret-db-password', servers=attest_servers,
                      ca_file='/etc/hcp/trust/ca.pem', signer_public_file='/etc/hcp/trust/signer.pub.pem') }}"
  no_log: true

- name: Disk key in base64
  ansible.builtin.set_fact:
    rootfs_key_b64: "{{ lookup('hcp.core.attested_secret', 'rootfs.key', encoding='base64', servers=attest_servers,
                         signer_public_file=signer, tcti='swtpm:host=127.0.0.1,port=2321') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One plaintext string per term (base64 when O(encoding=base64)).
  type: list
  elements: str
"""

import base64


from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm
from ansible_collections.hcp.core.plugins.plugin_utils.lookup import HcpLookupBase


class LookupModule(HcpLookupBase):
    """hcp.core.attested_secret lookup."""

    NAME = "hcp.core.attested_secret"

    def run(self, terms, variables=None, **kwargs):
        self.load_options(variables, kwargs)
        names = [str(t) for t in terms]
        try:
            signer = attest_client.load_signer_public(self.get_option("signer_public"), self.get_option("signer_public_file"))
        except HcpError as exc:
            self.fail(exc)
        servers = self.get_option("servers")
        tcti = self.get_option("tcti")
        cache = None
        if self.get_option("cache"):
            cache = attest_client.PayloadCache({"servers": servers, "signer": signer.decode("utf-8", "replace"),
                                                "tcti": tcti, "ca_file": self.get_option("ca_file")})
        try:
            with Tpm(tcti) as tpm:
                assets = attest_client.attest_cached(tpm, servers, signer, names, ca_file=self.get_option("ca_file"),
                                                     timeout=self.get_option("timeout"), cache=cache,
                                                     state_dir=self.get_option("state_dir") or attest_client.default_state_dir())
        except HcpError as exc:
            self.fail(exc)
        results = []
        for name in names:
            data = assets[name]
            if self.get_option("encoding") == "base64":
                results.append(base64.b64encode(data).decode("ascii"))
                continue
            try:
                results.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                self.fail("asset %s is not UTF-8 text; use encoding=base64" % name)
        return results
