# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client of the kadmin web API (docs/kerberos.md, wire format v1) over HTTPS with a
service-client certificate, and the idempotent "ensure" logic of hcp.core.kerberos_principal
(no Ansible imports)."""

from __future__ import annotations

import base64
import binascii

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.web.client import DEFAULT_TIMEOUT, HttpsJsonClient

STATES = ("present", "absent", "rotated")


class KadminApiError(HcpError):
    """The kadmin API refused a request (``status``) or could not be reached (0)."""

    status = 0


class KadminClient(object):
    """``url`` e.g. https://kdc1.example.test:8443; TLS verified with ``ca_file``; the
    service-client certificate ``client_cert``/``client_key`` identifies the caller."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT):
        self.http = HttpsJsonClient(url, ca_file, client_cert, client_key, timeout, what="kadmin API",
                                    error_class=KadminApiError)
        self.url = self.http.url

    def _call(self, cmd, body):
        response = self.http.request("POST", "/v1/" + cmd, json_body=body)
        if response.status not in (200, 201) or not isinstance(response.body, dict):
            raise KadminApiError("kadmin API %s: HTTP %d: %s" % (cmd, response.status, response.error_detail()), response.status)
        return response.body

    def add(self, principal, attributes=None, expiration=None):
        body = {"principal": principal, "attributes": list(attributes or [])}
        if expiration is not None:
            body["expiration"] = expiration
        return self._call("add", body)

    def get(self, principal):
        return self._call("get", {"principal": principal})

    def delete(self, principal):
        return self._call("del", {"principal": principal})

    def rotate(self, principal, keep_old=True):
        return self._call("rotate", {"principal": principal, "keep_old": bool(keep_old)})

    def ext_keytab(self, principal):
        """The principal's keytab (bytes, a secret) and its kvno: (keytab, kvno)."""
        body = self._call("ext_keytab", {"principal": principal})
        try:
            return base64.b64decode(body["keytab"], validate=True), body.get("kvno")
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise KadminApiError("kadmin API ext_keytab: the answer holds no keytab", 0) from None


def _summary(info):
    keys = info.get("keys") or []
    return {"principal": info.get("principal"), "kvno": info.get("kvno"), "kvnos": info.get("kvnos") or [],
            "attributes": info.get("attributes") or [], "enctypes": sorted(set(k.get("enctype") for k in keys if isinstance(k, dict)))}


def _current(client, principal):
    try:
        return client.get(principal)
    except KadminApiError as exc:
        if exc.status == 404:
            return None
        raise


def ensure(client, state, principal, attributes=None, expiration=None, keep_old=True, check_mode=False):
    """Bring ``principal`` to ``state``: present (created with random keys when absent; an
    existing principal is left as it is), absent (deleted when present), rotated (new keys,
    always a change; the principal must exist). Returns {changed, action, principal, kvno,
    kvnos, attributes, enctypes}; never key material."""
    if state not in STATES:
        raise KadminApiError("state must be one of %s" % ", ".join(STATES), 400)
    info = _current(client, principal)
    result = dict(_summary(info) if info else {"principal": principal, "kvno": None, "kvnos": [], "attributes": [], "enctypes": []},
                  changed=False, action="none")
    if state == "absent":
        if info is not None:
            result.update(changed=True, action="deleted", kvno=None, kvnos=[], enctypes=[])
            if not check_mode:
                client.delete(principal)
        return result
    if state == "rotated":
        if info is None:
            raise KadminApiError("principal %s does not exist: cannot rotate its keys" % principal, 404)
        result.update(changed=True, action="rotated")
        if not check_mode:
            result.update(_summary(client.rotate(principal, keep_old=keep_old)))
        return result
    if info is None:
        result.update(changed=True, action="created", attributes=sorted(set(attributes or [])))
        if not check_mode:
            result.update(_summary(client.add(principal, attributes=attributes, expiration=expiration)))
    return result
