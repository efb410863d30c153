# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the cryptstore library. Messages name the store, the item and the cause, never
item data or key material (item names and types are not secret)."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


class CryptStoreError(HcpError):
    """The cryptstore cannot do what was asked, for a reason not covered below."""


class InvalidItemError(CryptStoreError):
    """An item name, type or value is not acceptable (bad name, unknown type, too large, an
    x509 item that is not a certificate)."""

    status = 400


class ItemNotFoundError(CryptStoreError):
    """No item of that name in the store."""

    status = 404


class StoreNotFoundError(CryptStoreError):
    """No cryptstore at that path (and creating one was not asked for)."""

    status = 404


class StoreFormatError(CryptStoreError):
    """A store or item file is malformed, of an unknown version, or fails authentication."""


class StoreTpmMismatchError(CryptStoreError):
    """The store's master key is sealed to another TPM than the one given (TPM swapped): the
    store is not opened and nothing is changed."""


class NotExportableError(CryptStoreError):
    """An export asked for an item created without ``exportable``."""

    status = 403


class BundleError(CryptStoreError):
    """An export bundle cannot be imported: malformed, unknown version, tampered with, or sealed
    to another TPM."""

    status = 400
