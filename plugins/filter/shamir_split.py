# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.shamir_split filter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: shamir_split
short_description: Split a secret into Shamir shares
version_added: 0.1.0
author: HCP maintainers (@hcp-core)
description:
  - Splits a secret into O(shares) Shamir shares over GF(2^8), any O(threshold) of which recover it with
    P(hcp.core.shamir_combine#filter).
  - Every share is a C(hcpshare1.) text string carrying its index, the threshold, the share count, a random
    share-set id, a secret commitment and an integrity tag (see C(docs/shamir-share-format.md)), so a corrupted,
    foreign or duplicated share is identified when combining.
  - The shares are secret material; use C(no_log) on tasks that handle them.
options:
  _input:
    description:
      - The secret. A string is encoded as UTF-8 unless O(encoding=base64); bytes are used as is.
    type: raw
    required: true
  shares:
    description: Number of shares, 1 to 255.
    type: int
    required: true
  threshold:
    description: Shares needed to recover the secret, 1 to O(shares). Default is a majority, O(shares) // 2 + 1.
    type: int
  encoding:
    description:
      - How a string input is turned into bytes. V(base64) splits the decoded bytes of a base64 string, for
        binary secrets; pass the same value to P(hcp.core.shamir_combine#filter).
    type: str
    default: utf-8
    choices: [utf-8, base64]
"""

EXAMPLES = r"""
- name: Split the site token across three controllers, two needed
  ansible.builtin.set_fact:
    token_shares: "{{ site_token | hcp.core.shamir_split(shares=3, threshold=2) }}"
  no_log: true

- name: Split a binary key given as base64, majority threshold
  ansible.builtin.set_fact:
    key_shares: "{{ seal_key_b64 | hcp.core.shamir_split(shares=5, encoding='base64') }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: The shares as C(hcpshare1.<base64url>) strings, ordered by index 1..O(shares).
  type: list
  elements: str
"""

import base64
import binascii

from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


def secret_bytes(secret, encoding):
    """The bytes a filter input stands for."""
    if encoding not in ("utf-8", "base64"):
        raise AnsibleFilterError("shamir_split: encoding must be utf-8 or base64, got %r" % (encoding,))
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    if not isinstance(secret, str):
        raise AnsibleFilterError("shamir_split: the secret must be a string or bytes, got %s" % type(secret).__name__)
    if encoding == "base64":
        try:
            return base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise AnsibleFilterError("shamir_split: the secret is not valid base64") from None
    return secret.encode("utf-8")


def shamir_split(secret, shares, threshold=None, encoding="utf-8"):
    """Split ``secret`` into share text strings."""
    data = secret_bytes(secret, encoding)
    try:
        return [share.to_text() for share in shamir.split(data, shares, threshold)]
    except HcpError as exc:
        raise AnsibleFilterError("shamir_split: %s" % exc) from None


class FilterModule:
    """hcp.core.shamir_split."""

    def filters(self):
        return {"shamir_split": shamir_split}
