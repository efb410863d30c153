# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # The TPM's EK choice and the requirements of every plugin that opens a TPM (argument spec:
    # module_helpers.TPM_ARGUMENT_SPEC, with the tcti option of section TCTI below).
    DOCUMENTATION = r"""
options:
  ek_type:
    description:
      - Which endorsement key to use, following the TCG EK credential profile.
      - V(rsa) is the RSA-2048 EK (template L-1, certificate at NV index 0x01c00002).
      - V(ecc) is the NIST P-256 EK (template L-2, certificate at NV index 0x01c0000a).
    type: str
    choices: [rsa, ecc]
    default: rsa
requirements:
  - tpm2-pytss >= 3.0 and the libtss2 runtime libraries on the host running the module
  - cryptography
"""

    # How to reach the TPM: every plugin that opens one, with or without O(ek_type)
    # (argument spec: module_helpers.TCTI_ARGUMENT_SPEC).
    TCTI = r"""
options:
  tcti:
    description:
      - How to reach the TPM, as a TCTI string.
      - V(device:/dev/tpmrm0) for the kernel resource manager, V(swtpm:host=127.0.0.1,port=2321) for a software
        TPM over TCP (the control port is O(tcti) port + 1), V(swtpm:path=/run/hcp/swtpm.sock) over a Unix socket,
        V(tabrmd:bus_type=system) for tpm2-abrmd.
      - When not set, the environment variables E(HCP_TCTI), E(TPM2TOOLS_TCTI) and E(TCTI) are tried in that
        order, then V(device:/dev/tpmrm0).
    type: str
"""
