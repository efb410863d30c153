#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tpm_info
short_description: Read a TPM's identity (EK, EK certificate), PCR values and capabilities
version_added: 0.1.0
description:
  - Reads the endorsement key (EK) public key of the host's TPM, its SHA-256 O(ek_type) hash (RV(ekpubhash), the
    identity hcp.core enrolls), the EK certificate from NV, the PCR values and the capabilities that other
    hcp.core features need.
  - The EK is used from its TCG persistent handle when present, otherwise derived from the endorsement seed; nothing
    is persisted and nothing in the TPM changes.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.tpm.tcti
  - hcp.core.tpm
  - hcp.core.attributes
options:
  pcr_bank:
    description: The PCR bank to read.
    type: str
    choices: [sha1, sha256, sha384, sha512]
    default: sha256
  pcrs:
    description: PCR indices to read (0-23). All 24 by default.
    type: list
    elements: int
seealso:
  - module: hcp.core.tpm_seal
  - module: hcp.core.tpm_unseal
"""

EXAMPLES = r"""
- name: Read the TPM identity through the kernel resource manager
  hcp.core.tpm_info:
  register: tpm

- name: Read a software TPM and only PCRs 0 and 7
  hcp.core.tpm_info:
    tcti: swtpm:host=127.0.0.1,port=2321
    pcrs: [0, 7]
  register: tpm

- name: Show the host's enrollment identity
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} EK {{ tpm.ekpubhash }}"
"""

RETURN = r"""
tcti:
  description: The TCTI used.
  returned: always
  type: str
  sample: swtpm:host=127.0.0.1,port=2321
ekpubhash:
  description: SHA-256 of the EK public area in TPM2B_PUBLIC form, 64 lowercase hex characters.
  returned: always
  type: str
  sample: 1f13d633d20d14751299a6e9d3699e970317af4b24f7353c8fffaf1c89a706a4
ekpub:
  description: The EK public key as PEM (SubjectPublicKeyInfo).
  returned: always
  type: str
ekpub_tpm2b:
  description: The EK public area as base64 of the marshalled TPM2B_PUBLIC; the exact form to seal to.
  returned: always
  type: str
ek_cert:
  description: The EK certificate from NV, or V(null) when the TPM has none.
  returned: always
  type: dict
  contains:
    pem:
      description: The certificate in PEM.
      type: str
    subject:
      description: Subject DN (RFC 4514; often empty for EK certificates).
      type: str
    issuer:
      description: Issuer DN (the TPM vendor CA).
      type: str
    serial:
      description: Serial number, hex.
      type: str
    not_before:
      description: Start of validity, ISO 8601.
      type: str
    not_after:
      description: End of validity, ISO 8601.
      type: str
pcrs:
  description: PCR values by bank and index, lowercase hex.
  returned: always
  type: dict
  sample: {"sha256": {"0": "0000000000000000000000000000000000000000000000000000000000000000"}}
encrypt_decrypt2:
  description: Whether the TPM implements TPM2_EncryptDecrypt2 (needed to protect Shamir shares).
  returned: always
  type: bool
manufacturer:
  description: TPM manufacturer ID (4 ASCII characters, trailing blanks removed).
  returned: always
  type: str
  sample: IBM
firmware_version:
  description: TPM firmware version as four dot-separated numbers.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import (
    describe_certificate,
    ek_public_b64,
    ek_public_pem,
)
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import TPM_ARGUMENT_SPEC, fail_on_hcp_error
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def main():
    argument_spec = dict(
        pcr_bank=dict(type="str", default="sha256", choices=["sha1", "sha256", "sha384", "sha512"]),
        pcrs=dict(type="list", elements="int"),
    )
    argument_spec.update(TPM_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        with Tpm(params["tcti"], ek_type=params["ek_type"]) as tpm:
            public = tpm.ek_public()
            cert = tpm.ek_certificate_der()
            pcrs = tpm.read_pcrs(params["pcr_bank"], params["pcrs"])
            result = dict(
                changed=False,
                tcti=tpm.tcti,
                ekpubhash=tpm.ekpubhash(),
                ekpub=ek_public_pem(public),
                ekpub_tpm2b=ek_public_b64(public),
                ek_cert=describe_certificate(cert) if cert else None,
                pcrs={params["pcr_bank"]: dict((str(i), v.hex()) for i, v in sorted(pcrs.items()))},
                encrypt_decrypt2=tpm.supports_encrypt_decrypt2(),
                manufacturer=tpm.manufacturer(),
                firmware_version=tpm.firmware_version(),
            )
    except (HcpError, ValueError) as exc:
        fail_on_hcp_error(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
