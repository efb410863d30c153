# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The asset generators: importing this package registers every one of them in
``asset_contract.REGISTRY``. Profile keys: docs/enrollment-assets.md."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators import basic, certs, keytab, krb5conf, ssh  # noqa: F401

__all__ = ["basic", "certs", "keytab", "krb5conf", "ssh"]
