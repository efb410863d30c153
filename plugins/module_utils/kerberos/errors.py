# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the Kerberos library (kadmin driver, principal names, kadmin API client).

Each carries the HTTP status the kadmin web API answers for it (``status``, as in
``plugins/module_utils/errors.py``); messages name the cause and never hold key material."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError


class KadminError(HcpError):
    """kadmin failed for a reason not covered below (500)."""

    status = 500


class KadminUnavailableError(KadminError):
    """kadmin cannot run: binary missing, timeout, database or configuration unusable (503)."""

    status = 503


class PrincipalNameError(KadminError):
    """A principal or realm name is malformed or outside the managed realm (400)."""

    status = 400


class ReservedPrincipalError(KadminError):
    """The principal belongs to the realm itself (krbtgt, kadmin, changepw, ...): never
    created, changed, extracted or deleted through this library's managed operations (403)."""

    status = 403


class PrincipalNotFoundError(KadminError):
    """The principal does not exist (404)."""

    status = 404


class PrincipalExistsError(KadminError):
    """The principal (or the realm, for init_realm) already exists (409)."""

    status = 409
