# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH host keys: ``ssh_host_<type>_key`` (sensitive, OpenSSH format) and ``.pub``."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import Asset, AssetGenerator, register
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators.common import fail, section, string_list

KEY_KINDS = {"ed25519": "ed25519", "ecdsa": "ec-p256", "rsa": "rsa-3072"}
DEFAULT_TYPES = ["ed25519", "ecdsa"]


@register
class SshHostKeysGenerator(AssetGenerator):
    """Profile ``ssh_host_keys.types`` (default ["ed25519", "ecdsa"]; "rsa" allowed)."""

    name = "ssh-host-keys"

    def generate(self, ctx):
        options = section(ctx, self.name, "ssh_host_keys")
        types = string_list(self.name, "ssh_host_keys.types", options.get("types", DEFAULT_TYPES))
        if not types or len(set(types)) != len(types) or not set(types) <= set(KEY_KINDS):
            raise fail(self.name, "ssh_host_keys.types", "must be distinct entries of %s" % ", ".join(sorted(KEY_KINDS)))
        assets = []
        for key_type in types:
            key = pki.new_private_key(KEY_KINDS[key_type])
            stem = "ssh_host_%s_key" % key_type
            assets.append(Asset(stem, pki.openssh_private_key(key), True,
                                {"category": "ssh", "dest": "/etc/ssh/" + stem, "mode": "0600", "owner": "root"}))
            assets.append(Asset(stem + ".pub", pki.openssh_public_key(key, "root@%s" % ctx.hostname), False,
                                {"category": "ssh", "dest": "/etc/ssh/%s.pub" % stem, "mode": "0644",
                                 "owner": "root"}))
        return assets
