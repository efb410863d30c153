#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tpm_unseal
short_description: Unseal an hcp.core envelope with the host's TPM
version_added: 0.1.0
description:
  - Recovers data sealed by M(hcp.core.tpm_seal) on the host whose TPM owns the envelope's EK, after the TPM checked
    the envelope's policy (ActivateCredential under the EK and the policy bound into the well-known key).
  - Writes the plaintext to O(dest) atomically (mode V(0600) unless O(mode) says otherwise), or returns it when
    O(return_content=true); the result is then hidden from the output (see O(return_content)).
  - Idempotent. When the envelope carries a fingerprint and O(dest) already holds the sealed data, nothing is
    unsealed and nothing changes; otherwise the file is only rewritten when its content differs.
  - For a V(one_time) envelope PCR 11 is extended after unsealing (O(extend_pcr)), so it cannot be unsealed again
    until the next boot.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.tpm.tcti
  - hcp.core.tpm
  - ansible.builtin.files
  - hcp.core.attributes
  - hcp.core.secret
attributes:
  check_mode:
    details: In check mode a one-time envelope is not unsealed and PCR 11 is not extended.
options:
  src:
    description: Path of the envelope on the host. Exactly one of O(src) and O(envelope) is required.
    type: path
  envelope:
    description: The envelope itself (its JSON text).
    type: str
  dest:
    description:
      - Where to write the plaintext. Its directory must exist.
      - At least one of O(dest) and O(return_content=true) is required.
    type: path
  extend_pcr:
    description: After unsealing a V(one_time) envelope, extend PCR 11 so it cannot be unsealed again this boot.
    type: bool
    default: true
seealso:
  - module: hcp.core.tpm_seal
  - module: hcp.core.tpm_info
"""

EXAMPLES = r"""
- name: Unseal a key file delivered to the host
  hcp.core.tpm_unseal:
    src: /var/lib/hcp/sealed/disk.key.env
    dest: /etc/hcp/disk.key
    owner: root
    group: root
    mode: "0600"

- name: Unseal into a variable
  hcp.core.tpm_unseal:
    src: /var/lib/hcp/sealed/db-password.env
    return_content: true
    tcti: swtpm:host=127.0.0.1,port=2321
  register: db_password  # db_password.content; the task's output is hidden
"""

RETURN = r"""
dest:
  description: Path of the plaintext file.
  returned: when O(dest) is set
  type: str
ekpubhash:
  description: The EK hash the envelope is sealed to.
  returned: always
  type: str
policy:
  description: The envelope's policy description.
  returned: always
  type: dict
  sample: {"type": "pcr", "bank": "sha256", "pcrs": {"7": "00...00"}}
unsealed:
  description: Whether the TPM was asked to unseal (false when the fingerprint proved O(dest) current).
  returned: always
  type: bool
pcr_extended:
  description: Whether PCR 11 was extended after unsealing a one-time envelope.
  returned: always
  type: bool
content:
  description: The plaintext, when it is UTF-8 text. Secret; the result holding it is hidden from the output.
  returned: when O(return_content=true)
  type: str
content_b64:
  description: The plaintext in base64, when it is not UTF-8. Secret; the result holding it is hidden from the output.
  returned: when O(return_content=true)
  type: str
"""

import base64
import hmac

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope as env_mod
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import read_if_exists
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    RETURN_CONTENT_ARGUMENT_SPEC,
    TPM_ARGUMENT_SPEC,
    apply_file_attributes,
    argument_spec,
    fail_on_hcp_error,
    mask_secret,
    unmask_secret,
    write_private_file,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            TPM_ARGUMENT_SPEC,
            RETURN_CONTENT_ARGUMENT_SPEC,
            src=dict(type="path"),
            envelope=dict(type="str"),
            dest=dict(type="path"),
            extend_pcr=dict(type="bool", default=True),
        ),
        required_one_of=[("src", "envelope")],
        mutually_exclusive=[("src", "envelope")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    dest = params["dest"]
    if not dest and not params["return_content"]:
        module.fail_json(msg="nothing to do: set dest, or return_content=true")
    raw = params["envelope"]
    if raw is None:
        try:
            with open(params["src"], "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            module.fail_json(msg="cannot read envelope %s: %s" % (params["src"], exc.strerror or exc))

    result = dict(changed=False, unsealed=False, pcr_extended=False)
    try:
        envelope = env_mod.loads(raw)
        result.update(ekpubhash=envelope["ekpubhash"], policy=envelope["policy"])
        one_time = envelope["policy"]["type"] == "one_time"
        current = read_if_exists(dest) if dest else None
        mask_secret(module, current)  # the plaintext already in dest
        current_ok = current is not None and env_mod.fingerprint_matches(envelope, current) is True
        plaintext = None
        if not current_ok or params["return_content"]:
            if module.check_mode and one_time:
                result["changed"] = dest is not None
            else:
                with Tpm(params["tcti"], ek_type=params["ek_type"]) as tpm:
                    plaintext, result["pcr_extended"] = env_mod.unseal_once(
                        tpm, envelope, extend_pcr=params["extend_pcr"] and not module.check_mode)
                    mask_secret(module, plaintext)
                    result["unsealed"] = True
    except (HcpError, ValueError) as exc:
        fail_on_hcp_error(module, exc)
    except OSError as exc:
        module.fail_json(msg="cannot read %s: %s" % (dest, exc.strerror or exc))

    if dest:
        result["dest"] = dest
        if plaintext is not None and (current is None or not hmac.compare_digest(current, plaintext)):
            result["changed"] = write_private_file(module, dest, plaintext, True)
        else:
            result["changed"] = apply_file_attributes(module, dest, result["changed"])
    if params["return_content"] and plaintext is not None:
        try:
            result["content"] = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            result["content_b64"] = base64.b64encode(plaintext).decode("ascii")
        # asked for: released from the mask; the action plugin hides this result from the output
        unmask_secret(module, result.get("content", result.get("content_b64")))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
