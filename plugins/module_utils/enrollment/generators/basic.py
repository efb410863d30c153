# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Generators without X.509: hostname, rootfs key, operator secrets, re-enroll hint."""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import Asset, AssetGenerator, register
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators.common import (
    NAME_RE,
    cert_options,
    fail,
    positive_int,
    section,
    string_list,
)

DEFAULT_REENROLL_DAYS = 7
DEFAULT_CERT_DAYS = 30


@register
class HostnameGenerator(AssetGenerator):
    """``etc-hostname`` (public): the enrolled hostname for /etc/hostname. The asset is not
    called ``hostname``: the pipeline reserves that name for the entry's own record."""

    name = "hostname"

    def generate(self, ctx):
        return [Asset("etc-hostname", ctx.hostname + "\n", False,
                      {"category": "hostname", "dest": "/etc/hostname", "mode": "0644", "owner": "root"})]


@register
class RootfsKeyGenerator(AssetGenerator):
    """``rootfs.key`` (sensitive): 64 random bytes for disk encryption."""

    name = "rootfs-key"

    def generate(self, ctx):
        return [Asset("rootfs.key", os.urandom(64), True,
                      {"category": "rootfs", "dest": "/etc/hcp/rootfs.key", "mode": "0600", "owner": "root"})]


@register
class SecretsGenerator(AssetGenerator):
    """``secret-<name>`` (sensitive) for each name in profile ``secrets`` (from ctx.secrets)."""

    name = "secrets"

    def generate(self, ctx):
        names = string_list(self.name, "secrets", section(ctx, self.name, "secrets", list), NAME_RE)
        available = ctx.secrets or {}
        assets = []
        for secret in names:
            value = available.get(secret)
            if value is None:
                raise fail(self.name, "secrets", "secret %r is not available to this enrollment" % secret)
            assets.append(Asset("secret-" + secret, value, True,
                                {"category": "secrets", "dest": "/etc/hcp/secrets/" + secret, "mode": "0600",
                                 "owner": "root"}))
        return assets


@register
class ReenrollHintGenerator(AssetGenerator):
    """``reenroll-hint`` (public JSON {"due": ISO UTC}): when the entry should be regenerated.

    ``reenroll.days`` wins; otherwise min(7 days, half the shortest certificate lifetime)."""

    name = "reenroll-hint"

    def generate(self, ctx):
        options = section(ctx, self.name, "reenroll")
        if "days" in options:
            delta = datetime.timedelta(days=positive_int(self.name, "reenroll.days", options["days"], 3650))
        else:
            shortest = DEFAULT_CERT_DAYS
            for generator in section(ctx, self.name, "certificates"):
                days = cert_options(ctx, generator).get("days", DEFAULT_CERT_DAYS)
                if isinstance(days, int) and not isinstance(days, bool) and days > 0:
                    shortest = min(shortest, days)
            delta = min(datetime.timedelta(days=DEFAULT_REENROLL_DAYS), datetime.timedelta(days=shortest) / 2)
        due = (ctx.now + delta).astimezone(datetime.timezone.utc).replace(microsecond=0)
        data = json.dumps({"due": due.strftime("%Y-%m-%dT%H:%M:%SZ")}, sort_keys=True) + "\n"
        return [Asset("reenroll-hint", data, False, {"category": "reenroll"})]
