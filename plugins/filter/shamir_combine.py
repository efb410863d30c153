# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.shamir_combine filter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: shamir_combine
short_description: Recover a secret from Shamir shares
version_added: 0.1.0
author: HCP maintainers (@hcp-core)
description:
  - Recovers the secret split by P(hcp.core.shamir_split#filter) from at least the threshold number of shares,
    in any order.
  - A corrupted or truncated share is excluded when enough good shares remain; otherwise, and for a share from
    another share set (site), a duplicated index or too few shares, the filter fails with an error naming the
    share and the cause. A wrong secret is never returned silently (the result is checked against the secret
    commitment carried by every share).
  - The result is secret; use C(no_log) on tasks that handle it.
options:
  _input:
    description: The shares, as C(hcpshare1.) strings (or bytes of the binary form).
    type: list
    elements: raw
    required: true
  encoding:
    description:
      - V(utf-8) returns the secret decoded as UTF-8 (fails if it is not valid UTF-8); V(base64) returns it
        base64-encoded, for binary secrets.
    type: str
    default: utf-8
    choices: [utf-8, base64]
"""

EXAMPLES = r"""
- name: Recover the site token from the shares gathered from the controllers
  ansible.builtin.set_fact:
    site_token: "{{ gathered_shares | hcp.core.shamir_combine }}"
  no_log: true

- name: Recover a binary key as base64
  ansible.builtin.set_fact:
    seal_key_b64: "{{ key_shares[:3] | hcp.core.shamir_combine(encoding='base64') }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: The secret, as a UTF-8 string or base64 according to O(encoding).
  type: str
"""

import base64

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


def shamir_combine(shares, encoding="utf-8"):
    """Combine share strings into the secret string."""
    if encoding not in ("utf-8", "base64"):
        raise AnsibleFilterError("shamir_combine: encoding must be utf-8 or base64, got %r" % (encoding,))
    if isinstance(shares, (str, bytes)) or not hasattr(shares, "__iter__"):
        raise AnsibleFilterError("shamir_combine: expects a list of shares, got %s" % type(shares).__name__)
    try:
        secret = shamir.combine(list(shares))
    except HcpError as exc:
        raise AnsibleFilterError("shamir_combine: %s: %s" % (type(exc).__name__, exc)) from None
    if encoding == "base64":
        return base64.b64encode(secret).decode("ascii")
    try:
        return secret.decode("utf-8")
    except UnicodeDecodeError:
        raise AnsibleFilterError("shamir_combine: the secret is not UTF-8 text; use encoding='base64'") from None


class FilterModule:
    """hcp.core.shamir_combine."""

    def filters(self):
        return {"shamir_combine": shamir_combine}
