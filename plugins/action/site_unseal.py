# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of module hcp.core.site_unseal: its result is no_log when it holds secret material."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.plugin_utils.action import SecretResultAction


class ActionModule(SecretResultAction):
    """hcp.core.site_unseal."""

    SECRET_KEYS = ("shares",)
