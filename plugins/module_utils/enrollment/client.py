# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client of the enrollment API (docs/enrollment-service.md) over HTTPS with a client
certificate, and the idempotent "ensure" logic the module uses (no Ansible imports)."""

from __future__ import annotations

import json

from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash as compute_ekpubhash
from ansible_collections.hcp.core.plugins.module_utils.web.client import DEFAULT_TIMEOUT, HttpsJsonClient


class EnrollmentApiError(HcpError):
    """The enrollment service refused a request (``status``) or could not be reached (0)."""

    status = 0


class EnrollmentClient(object):
    """``url`` e.g. https://enroll.example.test:8443; TLS verified with ``ca_file``."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT):
        self.http = HttpsJsonClient(url, ca_file, client_cert, client_key, timeout,
                                    what="enrollment service", error_class=EnrollmentApiError)
        self.url = self.http.url

    def _call(self, method, path, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if path == "/v1/get-asset-signer" and response.status == 200:
            return response.content
        if response.status not in (200, 201) or not isinstance(response.body, dict):
            raise EnrollmentApiError("enrollment service %s %s: HTTP %d: %s" % (
                method, path, response.status, response.error_detail()), response.status)
        return response.body

    def add(self, ekpub, hostname, profile):
        return self._call("POST", "/v1/add", data={"ekpub": ekpub, "hostname": hostname, "profile": json.dumps(profile or {})})

    def query(self, prefix="", nofiles=False):
        return self._call("GET", "/v1/query", params={"ekpubhash": prefix, "nofiles": "1" if nofiles else ""})["entries"]

    def find(self, regex):
        return self._call("GET", "/v1/find", params={"hostname_regex": regex})["entries"]

    def delete(self, prefix):
        return self._call("POST", "/v1/delete", data={"ekpubhash": prefix})["entries"]

    def reenroll(self, ekpubhash):
        return self._call("POST", "/v1/reenroll", data={"ekpubhash": ekpubhash})

    def asset_signer(self):
        return self._call("GET", "/v1/get-asset-signer")


def ensure(client, state, ekpub, hostname=None, profile=None, check_mode=False):
    """Bring the enrollment of ``ekpub`` to ``state`` (present | absent | reenrolled).
    Idempotent: present with the same hostname and client profile changes nothing; a
    different profile re-enrolls (delete + add, one operation each); a different hostname
    is refused (delete first). Returns {changed, ekpubhash, hostname, assets, action}."""
    ek = ekpub.encode() if isinstance(ekpub, str) else ekpub
    ekhash = compute_ekpubhash(load_ek_public(ek))
    current = [e for e in client.query(ekhash) if e["ekpubhash"] == ekhash]
    entry = current[0] if current else None
    result = {"changed": False, "ekpubhash": ekhash, "hostname": entry["hostname"] if entry else hostname,
              "assets": entry["files"] if entry else [], "action": "none"}
    if state == "absent":
        if entry:
            result.update(changed=True, action="deleted", assets=[])
            if not check_mode:
                client.delete(ekhash)
        return result
    if state == "reenrolled":
        if not entry:
            raise EnrollmentApiError("TPM %s is not enrolled: cannot re-enroll" % ekhash, 404)
        result.update(changed=True, action="reenrolled")
        if not check_mode:
            client.reenroll(ekhash)
            result["assets"] = client.query(ekhash)[0]["files"]
        return result
    if entry and entry["hostname"] != (hostname or "").strip().lower().rstrip("."):
        raise EnrollmentApiError("TPM %s is enrolled as %s, not %s: remove that enrollment first" % (
            ekhash, entry["hostname"], hostname), 409)
    if entry and entry.get("clientprofile") == (profile or {}):
        return result
    result.update(changed=True, action="reenrolled" if entry else "added")
    if not check_mode:
        if entry:
            client.delete(ekhash)
        client.add(ekpub if isinstance(ekpub, str) else ekpub.decode(), hostname, profile or {})
        fresh = client.query(ekhash)[0]
        result.update(hostname=fresh["hostname"], assets=fresh["files"])
    return result
