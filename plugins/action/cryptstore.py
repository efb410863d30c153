# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of module hcp.core.cryptstore: its result is no_log when it holds an item's data."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.plugin_utils.action import SecretResultAction


class ActionModule(SecretResultAction):
    """hcp.core.cryptstore."""

    SECRET_KEYS = ("content", "content_b64")
