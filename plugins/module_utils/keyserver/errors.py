# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's errors, each with the HTTP status the app answers (never a secret in a message)."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


class KeyServerError(HcpError):
    """Base class of the key-server's errors (client and server side)."""

    status = 400


class ResourceNameError(KeyServerError):
    """A resource name is not ``<domain>/<name>`` within the documented bounds."""

    status = 400


class NotFoundError(KeyServerError):
    """The resource (or the requested version of it) does not exist."""

    status = 404


class AccessDenied(KeyServerError):
    """The ACL (default deny), a non-exportable item's measurements or the reserved names refuse the caller."""

    status = 403


class AuthError(KeyServerError):
    """The caller's certificate or auth-challenge answer is not acceptable."""

    status = 403


class StoreOpenError(KeyServerError):
    """The store cannot be opened (missing, another TPM, tampered master key): nothing is changed."""

    status = 503


class StoreFullError(KeyServerError):
    """The store's file system is full (or over quota): the write was abandoned, nothing changed."""

    status = 507


class StoreCorruptError(KeyServerError):
    """A stored item failed authentication or is malformed."""

    status = 500


class AclError(KeyServerError):
    """The ACL file is malformed (the server refuses to start)."""

    status = 500
