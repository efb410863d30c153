#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tpm_seal
short_description: Seal data to a TPM's endorsement key, without that TPM
version_added: 0.1.0
description:
  - Encrypts data so that only the TPM owning O(ekpub) can decrypt it, and only while the TPM satisfies O(policy).
    Runs anywhere (typically on the controller with C(delegate_to=localhost)); no TPM is needed to seal.
  - A random 32-byte key encrypts the data with AES-256-GCM; the key is wrapped with TPM2_MakeCredential to the EK
    under the name of a well-known key whose authPolicy is the policy digest, so the TPM enforces the policy when
    M(hcp.core.tpm_unseal) runs. The envelope layout is versioned and documented in C(docs/envelope-format.md).
  - The envelope is written atomically with mode V(0600) unless O(mode) says otherwise.
  - Idempotent through a salted scrypt fingerprint of the data stored in the envelope, so an existing envelope for
    the same EK, policy and data is left alone. Set O(fingerprint=false) to omit it; the envelope is then rewritten
    on every run.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - ansible.builtin.files
  - hcp.core.attributes
attributes:
  idempotent:
    support: partial
    description: With O(fingerprint=true) (the default) an envelope for the same EK, policy and data is left alone;
      with O(fingerprint=false) it is rewritten on every run.
options:
  ekpub:
    description:
      - The EK public key of the target TPM.
      - Base64 TPM2B_PUBLIC (RV(hcp.core.tpm_info#module:ekpub_tpm2b)), a PEM public key
        (RV(hcp.core.tpm_info#module:ekpub)) or a PEM EK certificate. A PEM key or certificate is mapped through
        the TCG default EK template.
      - Exactly one of O(ekpub) and O(ekpub_path) is required.
    type: str
  ekpub_path:
    description: Path of a file holding the EK public key in one of the forms O(ekpub) accepts (or raw TPM2B_PUBLIC).
    type: path
  content:
    description:
      - The data to seal, as a string. Exactly one of O(content) and O(src) is required.
    type: str
  src:
    description: Path of a file, on the host running the module, whose bytes are sealed.
    type: path
  dest:
    description: Where to write the envelope (JSON).
    type: path
    required: true
  policy:
    description: The condition the TPM checks before it releases the data.
    type: dict
    default: {type: none}
    suboptions:
      type:
        description:
          - V(none) unseals whenever the TPM holding the EK asks.
          - V(pcr) requires the PCRs in O(policy.pcrs) to hold exactly the given values.
          - V(one_time) requires PCR 11 to be zero; M(hcp.core.tpm_unseal) then extends PCR 11, so the data unseals
            once per boot.
        type: str
        choices: [none, pcr, one_time]
        default: none
      bank:
        description: PCR bank of O(policy.pcrs).
        type: str
        choices: [sha1, sha256, sha384, sha512]
        default: sha256
      pcrs:
        description:
          - Mapping of PCR index to the required value in hex, for example taken from
            RV(hcp.core.tpm_info#module:pcrs).
        type: dict
  fingerprint:
    description: Store a salted scrypt fingerprint of the data in the envelope, used for idempotence.
    type: bool
    default: true
  force:
    description: Seal again even if O(dest) already holds an equivalent envelope.
    type: bool
    default: false
notes:
  - The fingerprint lets anyone holding the envelope test guesses of the data at scrypt cost; for low-entropy
    secrets such as passwords set O(fingerprint=false).
seealso:
  - module: hcp.core.tpm_info
  - module: hcp.core.tpm_unseal
"""

EXAMPLES = r"""
- name: Read the node's EK
  hcp.core.tpm_info:
  register: tpm

- name: Seal a secret to the node on the controller
  hcp.core.tpm_seal:
    ekpub: "{{ tpm.ekpub_tpm2b }}"
    content: "{{ app_db_password }}"
    fingerprint: false
    dest: "/srv/sealed/{{ inventory_hostname }}/db-password.env"
  delegate_to: localhost
  no_log: true

- name: Seal a file so it only unseals with the current PCR 7 (Secure Boot state)
  hcp.core.tpm_seal:
    ekpub: "{{ tpm.ekpub_tpm2b }}"
    src: files/disk.key
    dest: "/srv/sealed/{{ inventory_hostname }}/disk.key.env"
    policy:
      type: pcr
      pcrs:
        "7": "{{ tpm.pcrs.sha256['7'] }}"
  delegate_to: localhost
"""

RETURN = r"""
dest:
  description: Path of the envelope.
  returned: always
  type: str
ekpubhash:
  description: The EK hash the envelope is sealed to.
  returned: always
  type: str
policy_digest:
  description: The TPM policy digest bound into the envelope (hex).
  returned: always
  type: str
envelope_version:
  description: Format version of the envelope written.
  returned: always
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope as env_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import EnvelopeError, HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import read_if_exists
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    apply_file_attributes,
    fail_on_hcp_error,
    mask_secret,
    write_private_file,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import normalize_policy, policy_digest


def _read(module, path, what):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        module.fail_json(msg="cannot read %s %s: %s" % (what, path, exc.strerror or exc))


def _policy(params):
    policy = dict((k, v) for k, v in (params or {}).items() if v is not None)
    if policy.get("type", "none") != "pcr":
        policy.pop("bank", None)
    return policy


def _up_to_date(existing, public, policy, data):
    """True when ``existing`` is an envelope of this data for this EK and policy."""
    try:
        current = env_mod.loads(existing)
    except EnvelopeError:
        return False
    if current["ekpubhash"] != ekpubhash(public) or current["policy"] != policy:
        return False
    return env_mod.fingerprint_matches(current, data) is True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ekpub=dict(type="str"),
            ekpub_path=dict(type="path"),
            content=dict(type="str", no_log=True),
            src=dict(type="path"),
            dest=dict(type="path", required=True),
            policy=dict(
                type="dict",
                default={"type": "none"},
                options=dict(
                    type=dict(type="str", default="none", choices=["none", "pcr", "one_time"]),
                    bank=dict(type="str", default="sha256", choices=["sha1", "sha256", "sha384", "sha512"]),
                    pcrs=dict(type="dict"),
                ),
            ),
            fingerprint=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
        ),
        required_one_of=[("ekpub", "ekpub_path"), ("content", "src")],
        mutually_exclusive=[("ekpub", "ekpub_path"), ("content", "src")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    dest = params["dest"]
    ek_data = params["ekpub"] if params["ekpub"] is not None else _read(module, params["ekpub_path"], "EK public key")
    data = params["content"].encode("utf-8") if params["content"] is not None else _read(module, params["src"], "source")
    mask_secret(module, data)  # never returned; masked in any message all the same
    try:
        policy = normalize_policy(_policy(params["policy"]))
        public = load_ek_public(ek_data)
        existing = read_if_exists(dest)
        changed = params["force"] or existing is None or not _up_to_date(existing, public, policy, data)
        blob = None
        if changed and not module.check_mode:
            blob = env_mod.dumps(env_mod.seal(public, data, policy, fingerprint=params["fingerprint"]))
    except (HcpError, ValueError) as exc:
        fail_on_hcp_error(module, exc)
    except OSError as exc:
        module.fail_json(msg="cannot read %s: %s" % (dest, exc.strerror or exc))
    if blob is not None:
        changed = write_private_file(module, dest, blob, changed)
    else:
        changed = apply_file_attributes(module, dest, changed)
    module.exit_json(
        changed=changed,
        dest=dest,
        ekpubhash=ekpubhash(public),
        policy_digest=policy_digest(policy).hex(),
        envelope_version=env_mod.VERSION,
    )


if __name__ == "__main__":
    main()
