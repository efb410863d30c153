#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible face of identity/appdef.py: declare (or remove) an application's identity definition."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_identity
short_description: Declare which systemd service is an application with its own identity on this host
description:
  - Writes (or removes) the definition file C(<apps_dir>/<name>.json) (format v1, C(docs/identity.md)) that the
    orchestrator adapter of role P(hcp.core.identity#role) reads. When the unit O(unit) runs as user O(user), the adapter
    vouches for it to the identity provider (AddClient, ProveClient with the process's uid/gid from C(/proc) and the
    host's attestation result), and the application's processes can fetch tokens for
    C(spiffe://<site>/<host>/<name>) and use their own keys in the security service.
  - The user must also be in group C(hcp-identity) to reach the sockets (the role's C(identity_app_users), or
    C(SupplementaryGroups=hcp-identity) in the unit).
  - The file holds names only, never a secret. It is written atomically, root's, mode 0644; the same definition
    is the same bytes, so a second run changes nothing.
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
attributes:
  check_mode:
    details: Reports whether the file would be written or removed; changes nothing.
  diff_mode:
    support: full
    details: The definition before and after (names only).
extends_documentation_fragment:
  - hcp.core.attributes
options:
  name:
    description:
      - The application's name, the last segment of its identity C(spiffe://<site>/<host>/<name>).
      - Lower-case letters, digits, C(_) and C(-), starting with a letter or digit, at most 63 characters (no dot).
    type: str
    required: true
  unit:
    description:
      - The systemd service running the application (C(billing.service); an instance of a template such as
        C(worker@1.service) is a unit of its own). Required with O(state=present).
    type: str
  user:
    description:
      - The user the unit runs as (C(User=)). The adapter proves the application only when the unit's main process
        has that user's uid. Required with O(state=present).
    type: str
  state:
    description: V(present) writes the definition, V(absent) removes it (the adapter then removes the client).
    type: str
    choices: [present, absent]
    default: present
  apps_dir:
    description: The adapter's definitions directory (role P(hcp.core.identity#role), C(identity_apps_dir)); created 0755 when missing.
    type: path
    default: /etc/hcp/identity/apps
"""

EXAMPLES = r"""
- name: Give the billing service its own identity and keys
  hcp.core.app_identity:
    name: billing
    unit: billing.service
    user: billing

- name: Withdraw it
  hcp.core.app_identity:
    name: billing
    state: absent
"""

RETURN = r"""
path:
  description: The definition file.
  returned: always
  type: str
  sample: /etc/hcp/identity/apps/billing.json
definition:
  description: The definition written (format v1), or V(null) with O(state=absent).
  returned: always
  type: dict
  sample: {"app": "billing", "unit": "billing.service", "user": "billing", "version": 1}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write, read_nofollow
from ansible_collections.hcp.core.plugins.module_utils.identity import appdef
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import fail_on_hcp_error

_MODE = 0o644


def _current(path):
    """(bytes or None, mode or None) of the existing file; a link or oversized file is refused."""
    info, data = read_nofollow(path, appdef.MAX_DEFINITION_BYTES)
    if info is None:
        return None, None
    if data is None:
        raise appdef.DefinitionError("%s is larger than %d bytes: not a definition, remove it" % (path, appdef.MAX_DEFINITION_BYTES))
    return data, info.st_mode & 0o7777


def _text(data):
    return data.decode("utf-8", "replace") if data is not None else ""


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            unit=dict(type="str"),
            user=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            apps_dir=dict(type="path", default=appdef.DEFAULT_APPS_DIR),
        ),
        required_if=[("state", "present", ["unit", "user"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        path = appdef.path_of(p["apps_dir"], p["name"])
        wanted = appdef.make(p["name"], p["unit"], p["user"]) if p["state"] == "present" else None
        data, mode = _current(path)
    except HcpError as exc:
        fail_on_hcp_error(module, exc)
    new = appdef.encode(wanted) if wanted is not None else None
    changed = data != new or (new is not None and mode != _MODE)
    if changed and not module.check_mode:
        try:
            if new is None:
                os.unlink(path)
            else:
                if not os.path.isdir(p["apps_dir"]):
                    os.makedirs(p["apps_dir"], 0o755)
                atomic_write(path, new, _MODE)
        except OSError as exc:
            module.fail_json(msg="cannot %s %s: %s" % ("remove" if new is None else "write", path, exc.strerror or exc))
    result = dict(changed=changed, path=path, definition=wanted)
    if module._diff:
        result["diff"] = dict(before=_text(data), after=_text(new), before_header=path, after_header=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
