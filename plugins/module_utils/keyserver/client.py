# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server client (module hcp.core.keyserver_item, lookup hcp.core.keyserver) over
web/client.py: mTLS with the host's key-server client certificate, the auth-challenge answered
with its key, the session token reused (optionally across the forked workers of one playbook
run: SessionCache). Wire format v1: docs/keyserver.md."""

from __future__ import annotations

import base64
import json

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils import runcache
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.auth import SIGNING_CONTEXT
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import KeyServerError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import validate_measurement, validate_name, validate_prefix
from ansible_collections.hcp.core.plugins.module_utils.web.client import HttpsJsonClient

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
except ImportError:  # pragma: no cover - pki reports it
    hashes = None

PROTOCOL = 1
DEFAULT_TIMEOUT = 30
CACHE_FORMAT = "hcp.core.keyserver-session-cache"


class KeyServerClientError(KeyServerError):
    """The key-server refused a call or could not be reached (``status``: HTTP status, 0 unreachable)."""


def _cache_error(message):
    return KeyServerClientError(message, 0)


def _read(path, what):
    try:
        with open(path, "rb") as handle:
            return handle.read(1024 * 1024)
    except OSError as exc:
        raise KeyServerClientError("cannot read the %s %s: %s" % (what, path, exc.strerror), 0) from None


def sign_challenge(key, challenge):
    """The signature (bytes) of a challenge token with the private ``key`` (the server's
    verification: pki.verify_signature, over SIGNING_CONTEXT + the decoded challenge)."""
    if not isinstance(challenge, str) or len(challenge) > 256:
        raise KeyServerClientError("the key-server sent a malformed challenge", 0)
    try:
        raw = base64.urlsafe_b64decode(challenge + "==")
    except ValueError:
        raise KeyServerClientError("the key-server sent a malformed challenge", 0) from None
    message = SIGNING_CONTEXT + raw
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    raise KeyServerClientError("unsupported client key type %s" % type(key).__name__, 0)


def default_cache_dir():
    """Per-user 0700 directory: $XDG_RUNTIME_DIR (a tmpfs) when set, else the temp dir."""
    return runcache.user_cache_dir("keyserver-cache")


class SessionCache(object):
    """The session token of one (server, certificate) pair, shared by the forked workers of one
    run (the ansible-playbook process, as attested_secret's PayloadCache): a runcache.RunFile
    (0600 in a 0700 per-user directory) named after the run's pid, its start time and a hash of
    the server URL and certificate. A token is useless without the certificate's key (the server
    binds it to the certificate's fingerprint and every call is mTLS). Files of finished runs are
    removed."""

    def __init__(self, url, cert_fingerprint, run_pid=None, directory=None):
        self.file = runcache.RunFile(directory or default_cache_dir(), "%s\0%s" % (url, cert_fingerprint), run_pid=run_pid,
                                     what="key-server session cache", error_class=_cache_error, max_bytes=4096)
        self.run_pid, self.directory, self.start, self.path = self.file.run_pid, self.file.directory, self.file.start, self.file.path

    def load(self):
        """The cached token or None."""
        data = self.file.read()
        if data is None:
            return None
        try:
            record = json.loads(data)
            if record.get("format") == CACHE_FORMAT and isinstance(record.get("token"), str):
                return record["token"]
        except (ValueError, AttributeError):
            pass
        return None

    def save(self, token):
        self.file.write(json.dumps({"format": CACHE_FORMAT, "token": token}).encode())

    def lock(self):
        """An open file holding an exclusive flock for one authentication at a time (close to release)."""
        return self.file.lock()


def preferred_credential(credential_dir):
    """(certificate, key) paths of the key-server credential the attestation client stored in
    ``credential_dir`` (attestation/client.store_credential) while it is valid, else None."""
    if not credential_dir:
        return None
    # imported here: the attestation client is needed only with a credential directory
    from ansible_collections.hcp.core.plugins.module_utils.attestation.client import load_credential  # pylint: disable=import-outside-toplevel
    return load_credential(credential_dir)


class KeyServerClient(object):
    """Client of the key-server at ``url`` with the key-server client certificate ``client_cert``
    (PEM; its key in ``client_key`` or in the same file). ``credential_dir``: where the
    attestation client keeps the short-lived key-server credential the attestation server issued
    after the quote matched: preferred over ``client_cert`` while it is valid (``using_credential``).
    ``cache``: True for a per-run SessionCache, or a SessionCache, or None (the session lives as
    long as this object)."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=DEFAULT_TIMEOUT, cache=None,
                 credential_dir=None):
        preferred = preferred_credential(credential_dir)
        self.using_credential = preferred is not None
        if preferred is not None:
            client_cert, client_key = preferred
        if not client_cert:
            raise KeyServerClientError("the key-server needs a client certificate (client_cert) or a key-server "
                                       "credential from the attestation server (credential_dir)", 0)
        cert_pem = _read(client_cert, "client certificate")
        key_pem = _read(client_key or client_cert, "client key")
        try:
            self._key = pki.load_private_key(key_pem)
            cert = pki.load_certificates(cert_pem)[0]
        except HcpError as exc:
            raise KeyServerClientError("the client certificate or key is unusable: %s" % exc, 0) from None
        if pki.public_key_pem(self._key) != pki.public_key_pem(cert.public_key()):
            raise KeyServerClientError("client_key is not the key of client_cert", 0)
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        self.http = HttpsJsonClient(url, ca_file=ca_file, client_cert=client_cert, client_key=client_key, timeout=timeout,
                                    what="key-server", error_class=KeyServerClientError)
        if cache is True:
            cache = SessionCache(self.http.url, fingerprint)
        self.cache = cache or None
        self._session = None
        self.authentications = 0

    def _post(self, body):
        return self.http.request("POST", "/v1/request", json_body=body)

    def _session_token(self):
        if self._session is None and self.cache is not None:
            self._session = self.cache.load()
        return self._session

    def _authenticate(self, body, challenge):
        """Answer ``challenge`` with the key, performing ``body``; the response."""
        signature = base64.b64encode(sign_challenge(self._key, challenge)).decode("ascii")
        self.authentications += 1
        response = self._post(dict(body, credentials={"challenge": challenge, "signature": signature}))
        if response.status == 200 and isinstance(response.body, dict) and isinstance(response.body.get("session"), dict):
            token = response.body["session"].get("token")
            if isinstance(token, str):
                self._session = token
                if self.cache is not None:
                    self.cache.save(token)
        return response

    def call(self, action, **fields):
        """One call; its ``data`` (dict). Answers a challenge once (a session token is then reused)."""
        body = dict(fields, protocol=PROTOCOL, action=action)
        token = self._session_token()
        response = self._post(dict(body, credentials={"session": token}) if token else body)
        if response.status == 401 and isinstance(response.body, dict) and response.body.get("status") == "auth-challenge":
            self._session = None
            challenge = (response.body.get("data") or {}).get("challenge") if isinstance(response.body.get("data"), dict) else None
            if self.cache is not None:
                with self.cache.lock():
                    cached = self.cache.load()
                    if cached and cached != token:  # another worker authenticated meanwhile
                        self._session = cached
                        response = self._post(dict(body, credentials={"session": cached}))
                    else:
                        response = self._authenticate(body, challenge)
            else:
                response = self._authenticate(body, challenge)
        if response.status != 200 or not isinstance(response.body, dict) or response.body.get("status") != "success":
            raise KeyServerClientError("key-server %s refused %s (HTTP %d): %s" % (
                self.http.url, action, response.status, response.error_detail()), response.status)
        data = response.body.get("data")
        if not isinstance(data, dict):
            raise KeyServerClientError("key-server %s answered %s without data" % (self.http.url, action), 0)
        return data

    # -- actions -------------------------------------------------------------------------------
    def store(self, name, data, exportable=True, measurements=None, dry_run=False):
        """Store ``data`` (bytes) as a new version of ``name`` (none when the latest has the same
        content: ``changed`` false). Returns {"name", "item_version", "exportable", "changed"}."""
        validate_name(name)
        if isinstance(data, str):
            data = data.encode("utf-8")
        fields = {"name": name, "data": base64.b64encode(data).decode("ascii"), "exportable": bool(exportable),
                  "dry_run": bool(dry_run)}
        if measurements:
            fields["measurements"] = [validate_measurement(m) for m in measurements]
        return self.call("store", **fields)

    def retrieve(self, name, item_version=None):
        """{"name", "item_version", "created", "exportable", "data": bytes}."""
        validate_name(name)
        fields = {"name": name}
        if item_version is not None:
            fields["item_version"] = item_version
        result = self.call("retrieve", **fields)
        try:
            result["data"] = base64.b64decode(result.get("data"), validate=True)
        except (TypeError, ValueError):
            raise KeyServerClientError("key-server answered retrieve with malformed data", 0) from None
        return result

    def delete(self, name, dry_run=False):
        """{"name", "deleted": bool}."""
        validate_name(name)
        return self.call("delete", name=name, dry_run=bool(dry_run))

    def list(self, prefix):
        """[{"name", "item_version", "created", "exportable"}] the caller may list under ``prefix``."""
        validate_prefix(prefix)
        return self.call("list", prefix=prefix)["items"]


def ensure_item(client, name, state="present", data=None, exportable=True, measurements=None, check_mode=False):
    """The idempotent step of hcp.core.keyserver_item: {"changed", "name", "item_version", "deleted"?}.
    present: stores a new version only when the content (a keyed hash on the server), the
    exportable flag or the measurements differ; absent: deletes every version if any."""
    if state == "absent":
        result = client.delete(name, dry_run=check_mode)
        return {"changed": bool(result.get("deleted")), "name": name, "deleted": bool(result.get("deleted"))}
    if data is None:
        raise KeyServerClientError("state=present needs data", 0)
    result = client.store(name, data, exportable=exportable, measurements=measurements, dry_run=check_mode)
    return {"changed": bool(result.get("changed")), "name": name, "item_version": result.get("item_version"),
            "exportable": result.get("exportable")}
