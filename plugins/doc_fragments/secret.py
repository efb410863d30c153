# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Modules that can return secret material (tpm_unseal, shamir_share, site_unseal): the option
    # (argument spec: module_helpers.RETURN_CONTENT_ARGUMENT_SPEC) and the action plugin
    # (plugins/plugin_utils/action.py) that hides a result holding a secret.
    DOCUMENTATION = r"""
options:
  return_content:
    description:
      - Return the secret material the module handles (see the return values marked secret). Without it the secret
        is never returned.
      - Whatever this option says, the secret (its text, base64 and hex) is masked in every message and warning the
        module returns.
      - A result holding the secret is hidden from the output as with C(no_log=true), even when the task does not set
        it; the registered variable holds the secret, so keep it out of C(debug) and other output.
      - Cannot be combined with C(async) (the job's result file on the host would hold the secret).
    type: bool
    default: false
attributes:
  action:
    support: full
    description: An action plugin of the same name runs the module and marks a result holding a secret C(no_log).
  async:
    support: partial
    description: Supports being used with the C(async) keyword.
    details: Not with O(return_content=true).
"""
