#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: site_unseal
short_description: Initialise a site's unseal shares, or unseal the site from gathered shares
version_added: 0.1.0
description:
  - Site unseal (seed 004, C(docs/site-unseal.md)). A site's seal key is recovered by a majority of its controller
    hosts, each holding one Shamir share, and a one-time unwrap at the control tower.
  - O(action=unseal) (on a controller) combines the gathered O(shares), opens the control tower token with the site
    key, fetches the site's bundle from the tower once, opens the seal key and writes it to O(dest) atomically (mode
    V(0600) unless O(mode) says otherwise). With O(unseal_mode=local) (sites initialised with
    O(allow_local_unseal=true)) no tower is contacted.
  - O(action=init) creates the site key and a seal key, registers the site at the tower (operator client certificate),
    gets the site token, stores the sealed seal key at the tower, writes the seal key to O(dest) and makes one share
    per controller, returned in RV(shares) with O(return_content=true) (the result is then hidden from the output).
  - O(action=reinit) recovers the seal key from O(shares) (through the tower this needs an operator's re-allow of the
    unwrap) and initialises the site again with the same seal key and a new site key, giving new RV(shares) for every
    controller, for example after a controller's TPM was replaced.
  - The seal key is never returned; it and the shares are masked in every message.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.attributes
  - hcp.core.service_client
  - ansible.builtin.files
  - hcp.core.secret
attributes:
  check_mode:
    details: Shares are combined and checked; nothing is written and the tower is not contacted.
  idempotent:
    support: partial
    description: O(action=unseal) and O(action=init) do nothing when O(dest) exists (unless O(force)); O(action=reinit)
      always runs.
options:
  action:
    description: What to do.
    type: str
    choices: [unseal, init, reinit]
    default: unseal
  site:
    description: Name of the site (lowercase letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  dest:
    description: File receiving the seal key.
    type: path
    required: true
  key_format:
    description: Encoding of the seal key in O(dest).
    type: str
    choices: [raw, hex, base64]
    default: raw
  force:
    description: Unseal or initialise even when O(dest) exists. O(action=init) with O(force=true) replaces the site's
      key, token and bundle at the tower.
    type: bool
    default: false
  shares:
    description: The gathered share texts (at least the threshold), for O(action=unseal) and O(action=reinit).
    type: list
    elements: str
  unseal_mode:
    description: V(tower), V(local) or V(auto) (tower when the site has a token and O(url) is given, else local).
    type: str
    choices: [auto, tower, local]
    default: auto
  controllers:
    description: Names of the site's controllers, one share each, for O(action=init) and O(action=reinit).
    type: list
    elements: str
  threshold:
    description: Shares needed to unseal (default a majority of O(controllers)).
    type: int
  allow_local_unseal:
    description: Also split the sealed seal key so the site can unseal without the tower.
    type: bool
    default: false
  url:
    description:
      - Base URL of the control tower, for example V(https://tower.example.test:8443).
      - Without it, the module works without a tower (O(unseal_mode=local)).
    type: str
    required: false
  client_cert:
    description: Operator client certificate (PEM), needed for O(action=init) and O(action=reinit).
    type: path
notes:
  - O(action=init) and O(action=reinit) return the shares in clear in RV(shares) only with O(return_content=true) (the
    result is then hidden from the output, but the registered variable holds them); give each controller only its own
    share (M(hcp.core.shamir_share)). These actions refuse to run without O(return_content=true), as the new shares would
    be lost.
seealso:
  - module: hcp.core.shamir_share
  - module: hcp.core.control_tower_site
"""

EXAMPLES = r"""
- name: Initialise the site (once)
  hcp.core.site_unseal:
    action: init
    site: site-a
    controllers: "{{ groups['controllers'] }}"
    dest: /var/lib/hcp/seal.key
    url: https://tower.example.test:8443
    ca_file: /etc/hcp/tower-ca.pem
    client_cert: /etc/hcp/operator.pem
    client_key: /etc/hcp/operator.key
    return_content: true
  register: site_init  # site_init.shares; the task's output is hidden
  run_once: true

- name: Unseal from the shares gathered from the controllers
  hcp.core.site_unseal:
    site: site-a
    shares: "{{ gathered_shares }}"
    dest: /var/lib/hcp/seal.key
    url: https://tower.example.test:8443
    ca_file: /etc/hcp/tower-ca.pem
  no_log: true
"""

RETURN = r"""
dest:
  description: The seal key file.
  returned: always
  type: str
unsealed:
  description: Whether the seal key was recovered in this run.
  returned: always
  type: bool
via:
  description: V(tower) or V(local), how the seal key was obtained.
  returned: when unsealed
  type: str
used:
  description: Indexes of the shares used.
  returned: when shares were combined
  type: list
  elements: int
excluded:
  description: Shares left out, each with C(share) (position), C(index) and C(reason).
  returned: when shares were combined
  type: list
  elements: dict
valid:
  description: Number of valid shares, when there were too few.
  returned: failure for too few shares
  type: int
needed:
  description: Shares needed, when there were too few.
  returned: failure for too few shares
  type: int
shares:
  description: Share text per controller. Secret; the result holding it is hidden from the output.
  returned: O(action=init) or O(action=reinit) with O(return_content=true), when changed and not in check mode
  type: dict
threshold:
  description: Shares needed to unseal.
  returned: O(action=init) or O(action=reinit), when changed and not in check mode
  type: int
set_id:
  description: Share-set id (hex) of the new shares.
  returned: O(action=init) or O(action=reinit), when changed and not in check mode
  type: str
public_key:
  description: The site public key (PEM).
  returned: O(action=init) or O(action=reinit), when changed and not in check mode
  type: str
"""

import base64
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils.unseal import site_unseal as su
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    RETURN_CONTENT_ARGUMENT_SPEC,
    SERVICE_CLIENT_ARGUMENT_SPEC,
    apply_file_attributes,
    argument_spec,
    fail_on_hcp_error,
    mask_secret,
    service_client_args,
    unmask_secret,
    write_private_file,
)


def _encode(key, key_format):
    if key_format == "hex":
        return key.hex().encode("ascii") + b"\n"
    if key_format == "base64":
        return base64.b64encode(key) + b"\n"
    return key


def _tower(module, params, operator):
    if not params["url"]:
        return None
    if operator and not params["client_cert"]:
        module.fail_json(msg="action=%s needs the operator client_cert (and client_key) for the control tower"
                         % params["action"])
    return su.ControlTowerClient(*service_client_args(params))


def _combined(result):
    return dict(used=result.used, excluded=result.excluded)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            SERVICE_CLIENT_ARGUMENT_SPEC,
            RETURN_CONTENT_ARGUMENT_SPEC,
            action=dict(type="str", default="unseal", choices=["unseal", "init", "reinit"]),
            site=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            key_format=dict(type="str", default="raw", choices=["raw", "hex", "base64"]),
            force=dict(type="bool", default=False),
            shares=dict(type="list", elements="str", no_log=True),
            unseal_mode=dict(type="str", default="auto", choices=["auto", "tower", "local"]),
            controllers=dict(type="list", elements="str"),
            threshold=dict(type="int"),
            allow_local_unseal=dict(type="bool", default=False),
            url=dict(type="str"),
        ),
        required_if=[("action", "unseal", ["shares"]), ("action", "reinit", ["shares", "controllers"]),
                     ("action", "init", ["controllers"])],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    p = module.params
    dest, action = p["dest"], p["action"]
    out = dict(dest=dest, unsealed=False)
    seal_key = new_shares = None
    if action != "unseal" and not p["return_content"]:
        module.fail_json(msg="action=%s makes new shares, returned only with return_content=true: set it (the result is "
                         "hidden from the output)" % action)
    exists = os.path.exists(dest)
    if action != "reinit" and exists and not p["force"]:
        module.exit_json(changed=apply_file_attributes(module, dest, False), **out)
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        module.fail_json(msg="destination directory %s does not exist" % os.path.dirname(os.path.abspath(dest)))
    try:
        if module.check_mode:
            if action != "init":
                dummy, result = su.combine_shares(p["shares"], p["site"])
                out.update(_combined(result))
            module.exit_json(changed=True, **out)
        if action == "unseal":
            result = su.unseal(p["shares"], tower=_tower(module, p, False), site=p["site"], mode=p["unseal_mode"])
            seal_key = result.seal_key
            mask_secret(module, seal_key, _encode(seal_key, p["key_format"]))
            out.update(_combined(result), unsealed=True, via=result.via)
        else:
            tower = _tower(module, p, True)
            if action == "init":
                fresh = su.init_site(p["site"], p["controllers"], tower=tower, threshold=p["threshold"],
                                     allow_local_unseal=p["allow_local_unseal"], replace=p["force"])
            else:
                fresh, result = su.reinit_site(p["site"], p["shares"], p["controllers"], tower=tower,
                                               threshold=p["threshold"], allow_local_unseal=p["allow_local_unseal"],
                                               mode=p["unseal_mode"])
                out.update(_combined(result), unsealed=True, via=result.via)
            seal_key, new_shares = fresh.seal_key, fresh.shares
            mask_secret(module, seal_key, _encode(seal_key, p["key_format"]), *new_shares.values())
            out.update(threshold=fresh.threshold, set_id=fresh.set_id, public_key=fresh.public_key)
    except su.InsufficientSharesError as exc:
        module.fail_json(msg=str(exc), valid=exc.valid, needed=exc.needed, excluded=exc.excluded,
                         error=type(exc).__name__)
    except HcpError as exc:  # MissingDependencyError names cryptography or requests itself
        fail_on_hcp_error(module, exc)
    changed = write_private_file(module, dest, _encode(seal_key, p["key_format"]), True)
    if new_shares is not None:
        # asked for (return_content): released from the mask; the action plugin hides this result from the output
        unmask_secret(module, *new_shares.values())
        out["shares"] = new_shares
    module.exit_json(changed=changed, **out)


if __name__ == "__main__":
    main()
