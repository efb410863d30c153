#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: shamir_share
short_description: Write, read or inspect this host's protected Shamir share
version_added: 0.1.0
description:
  - Manages the site unseal share of one controller host (see C(docs/site-unseal.md) and
    C(docs/shamir-share-format.md)).
  - V(write) protects the share with the host's TPM (a persistent AES-256 key at 0x81000002, or the next free
    handle up to 0x81000005), with a PKCS#11 HSM when O(hsm) is given, or stores it in plaintext, according to
    O(protect_with_tpm). The file is written atomically with mode V(0600).
  - V(read) decrypts the share, and returns it in RV(share) when O(return_content=true) (the result is then hidden
    from the output). A share the TPM or HSM can no longer decrypt (TPM replaced or cleared) is reported with
    RV(reinit_needed=true) instead of a failure. Without O(return_content) V(read) only checks that the share decrypts.
  - V(inspect) reports the protection recorded in the file without decrypting it.
author:
  - HCP maintainers (@hcp-core)
attributes:
  idempotent:
    details: Writing the same share with the same protection changes nothing.
extends_documentation_fragment:
  - hcp.core.attributes
  - hcp.core.tpm.tcti
  - hcp.core.secret
options:
  path:
    description: The share file.
    type: path
    required: true
  state:
    description: V(write), V(read) or V(inspect).
    type: str
    choices: [write, read, inspect]
    default: write
  share:
    description: The share text (C(hcpshare1.)...), required for O(state=write).
    type: str
  protect_with_tpm:
    description:
      - V(best-effort) uses the TPM when usable, else plaintext.
      - V(require) refuses to write when the TPM is unusable on a host that is not O(operational) yet (the host stays
        sealed); on an operational host it falls back to plaintext. Both raise the C(tpm-protection-unavailable) alert
        (RV(alert)).
      - V(never) always stores plaintext.
    type: str
    choices: [best-effort, require, never]
    default: best-effort
  operational:
    description: Whether this host has already been operational (changes the V(require) behaviour).
    type: bool
    default: false
  hsm:
    description: Protect with a PKCS#11 token instead of the TPM (unless O(protect_with_tpm=never)).
    type: dict
    suboptions:
      module:
        description: Path of the PKCS#11 library, for example C(/usr/lib/softhsm/libsofthsm2.so).
        type: path
        required: true
      token_label:
        description: Label of the token.
        type: str
        required: true
      pin:
        description: User PIN of the token.
        type: str
        required: true
      key_label:
        description: Label of the AES-256 key (created when absent).
        type: str
        default: hcp-share-key
  hostname:
    description: Hostname reported in the alert (default the system hostname).
    type: str
notes:
  - O(state=read) with O(return_content=true) returns the share in clear in RV(share); the result is hidden from the
    output, but the registered variable holds the share.
seealso:
  - module: hcp.core.site_unseal
"""

EXAMPLES = r"""
- name: Store this controller's share, TPM-protected when possible
  hcp.core.shamir_share:
    path: /var/lib/hcp/unseal.share
    share: "{{ site_init.shares[inventory_hostname] }}"
    protect_with_tpm: best-effort
  no_log: true

- name: Is the share TPM-protected?
  hcp.core.shamir_share:
    path: /var/lib/hcp/unseal.share
    state: inspect
  register: share_facts

- name: Read the share to hand it to the unsealing controller
  hcp.core.shamir_share:
    path: /var/lib/hcp/unseal.share
    state: read
    return_content: true
  register: my_share  # my_share.share; the task's output is hidden
"""

RETURN = r"""
path:
  description: The share file.
  returned: always
  type: str
exists:
  description: Whether the share file exists.
  returned: always
  type: bool
protection:
  description: V(tpm), V(hsm) or V(plaintext), as recorded in the file.
  returned: when the file exists (or would in check mode)
  type: str
protected_with_tpm:
  description: Whether the on-disk share is protected by the TPM.
  returned: when the file exists
  type: bool
handle:
  description: Persistent handle of the TPM share key (hex string), or null.
  returned: when the file exists
  type: str
alert:
  description: The C(tpm-protection-unavailable) alert (name, severity, kind, hostname, reason), or null.
  returned: always
  type: dict
reason:
  description: Why the TPM was not used, or null.
  returned: always
  type: str
index:
  description: Index of the share.
  returned: when the file exists
  type: int
threshold:
  description: Shares needed to unseal.
  returned: when the file exists
  type: int
count:
  description: Shares in the set.
  returned: when the file exists
  type: int
set_id:
  description: Share-set id (hex), the same on every controller of one site generation.
  returned: when the file exists
  type: str
share:
  description: The share text. Secret; the result holding it is hidden from the output.
  returned: O(state=read) with O(return_content=true), when the share decrypted
  type: str
reinit_needed:
  description: The share cannot be decrypted on this host any more (TPM replaced); the site must re-initialise it.
  returned: O(state=read)
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.unseal.hsm import Hsm
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    RETURN_CONTENT_ARGUMENT_SPEC,
    TCTI_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
    mask_secret,
    unmask_secret,
)
from ansible_collections.hcp.core.plugins.module_utils.unseal.shamir import Share
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import (
    ProtectionUnavailableError,
    ShareUndecryptableError,
    ensure_share,
    read_share,
    share_facts,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


class _NoHsm(object):
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


def _hsm_context(params):
    spec = params["hsm"]
    if not spec:
        return _NoHsm()
    return Hsm(spec["module"], spec["token_label"], spec["pin"])


def _write(module, params, tpm_factory, hsm):
    try:
        wanted = Share.from_text(params["share"], "share")
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    mask_secret(module, params["share"], wanted.to_bytes())
    try:
        return ensure_share(params["path"], wanted, params["protect_with_tpm"], tpm_factory=tpm_factory, hsm=hsm,
                            operational=params["operational"], hostname=params["hostname"], check_mode=module.check_mode)
    except ProtectionUnavailableError as exc:
        fail_on_hcp_error(module, exc, alert=exc.alert)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            TCTI_ARGUMENT_SPEC,
            RETURN_CONTENT_ARGUMENT_SPEC,
            path=dict(type="path", required=True),
            state=dict(type="str", default="write", choices=["write", "read", "inspect"]),
            share=dict(type="str", no_log=True),
            protect_with_tpm=dict(type="str", default="best-effort", choices=["best-effort", "require", "never"]),
            operational=dict(type="bool", default=False),
            hsm=dict(type="dict", options=dict(
                module=dict(type="path", required=True),
                token_label=dict(type="str", required=True, no_log=False),
                pin=dict(type="str", required=True, no_log=True),
                key_label=dict(type="str", default="hcp-share-key", no_log=False),
            )),
            hostname=dict(type="str"),
        ),
        required_if=[("state", "write", ["share"])],
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]

    def tpm_factory():
        return Tpm(params["tcti"])

    try:
        if params["state"] == "inspect":
            if not os.path.exists(path):
                module.exit_json(changed=False, path=path, exists=False, alert=None, reason=None)
            module.exit_json(changed=False, path=path, alert=None, reason=None, **share_facts(path))
        if params["state"] == "read":
            if not os.path.exists(path):
                module.fail_json(msg="no share file at %s" % path, path=path, exists=False)
            with _hsm_context(params) as hsm:
                if hsm is not None:
                    hsm.ensure_key(params["hsm"]["key_label"])
                try:
                    share = read_share(path, tpm_factory=tpm_factory, hsm=hsm)
                except ShareUndecryptableError as exc:
                    module.exit_json(changed=False, path=path, reinit_needed=True, reason=str(exc), alert=None,
                                     **share_facts(path))
            text = share.to_text()
            mask_secret(module, text, share.to_bytes())
            result = dict(changed=False, path=path, reinit_needed=False, reason=None, alert=None, **share_facts(path))
            if params["return_content"]:
                # asked for: released from the mask; the action plugin hides this result from the output
                unmask_secret(module, text)
                result["share"] = text
            module.exit_json(**result)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            module.fail_json(msg="directory %s does not exist" % directory)
        with _hsm_context(params) as hsm:
            if hsm is not None and params["protect_with_tpm"] != "never":
                hsm.ensure_key(params["hsm"]["key_label"])
            elif hsm is not None:
                hsm = None
            result = _write(module, params, tpm_factory, hsm)
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    except OSError as exc:
        module.fail_json(msg="cannot use %s: %s" % (path, exc.strerror or exc))
    module.exit_json(path=path, **result)


if __name__ == "__main__":
    main()
