# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Python client library of the identity components (docs/identity.md, "Client library").

    from ansible_collections.hcp.core.plugins.module_utils.identity.client import Client
    client = Client()
    signature = client.sign(b"message")          # key "default" (ECDSA P-256), made on first use
    ok = client.verify(b"message", signature)    # True
    box = client.encrypt(b"secret")              # AES-256-GCM key "default-aead", made on first use
    plain = client.decrypt(box)                  # b"secret"

Smart defaults: sockets from ``$HCP_IDENTITY_PROVIDER_SOCKET`` / ``$HCP_IDENTITY_SECSVC_SOCKET``
(else /run/hcp-identity/{provider,secsvc}.sock); the token is fetched from the identity provider
on first use and again when it is within ``refresh_margin`` seconds of expiry or the security
service answers 401 (a restarted provider has a new intermediate: the call is retried once with
a new token, the provider being asked to share its bundle again). One connection per socket per
thread, reused. Binary values in, binary values out; failures are IdentityError.
"""

from __future__ import annotations

import base64
import os
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils.identity import wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

DEFAULT_PROVIDER_SOCKET = "/run/hcp-identity/provider.sock"
DEFAULT_SECSVC_SOCKET = "/run/hcp-identity/secsvc.sock"
DEFAULT_KEY = "default"
DEFAULT_AEAD_KEY = "default-aead"


def _b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(value):
    return base64.b64decode(value)


class Client(object):
    """A caller of the security service with the identity the provider gives this process."""

    def __init__(self, provider_socket=None, secsvc_socket=None, timeout=5.0, refresh_margin=30):
        self.provider_socket = provider_socket or os.environ.get("HCP_IDENTITY_PROVIDER_SOCKET") or DEFAULT_PROVIDER_SOCKET
        self.secsvc_socket = secsvc_socket or os.environ.get("HCP_IDENTITY_SECSVC_SOCKET") or DEFAULT_SECSVC_SOCKET
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self._local = threading.local()
        self._lock = threading.Lock()
        self._token = None
        self._expires = 0.0
        self.spiffe_id = None

    # -- plumbing ------------------------------------------------------------------------------------
    def _conn(self, which):
        conn = getattr(self._local, which, None)
        if conn is None:
            conn = wire.Connection(self.provider_socket if which == "provider" else self.secsvc_socket, timeout=self.timeout)
            setattr(self._local, which, conn)
        return conn

    def close(self):
        for which in ("provider", "secsvc"):
            conn = getattr(self._local, which, None)
            if conn is not None:
                conn.close()
                setattr(self._local, which, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def token(self, refresh=False):
        """This process's current token (fetched when missing, near expiry or ``refresh``)."""
        with self._lock:
            if not refresh and self._token and time.monotonic() < self._expires - self.refresh_margin:
                return self._token
        answer = self._conn("provider").call("fetch_token", {"refresh": True} if refresh else {})
        token, lifetime = answer.get("token"), answer.get("expires_in")
        if not isinstance(token, str) or not isinstance(lifetime, int):
            raise IdentityError(0, "bad-answer", "the identity provider's answer has no token")
        with self._lock:
            self._token, self._expires, self.spiffe_id = token, time.monotonic() + lifetime, answer.get("spiffe_id")
        return token

    def call(self, operation, body=None):
        """One security service operation (its name), the answer body; a 401 is retried once with a new token."""
        token = self.token()
        try:
            return self._conn("secsvc").call(operation, body or {}, auth=token, auth_type=wire.AUTH_JWT)
        except IdentityError as exc:
            if exc.status != 401:
                raise
        token = self.token(refresh=True)
        return self._conn("secsvc").call(operation, body or {}, auth=token, auth_type=wire.AUTH_JWT)

    def _ensure(self, name, key_type):
        try:
            self.call("generate_key", {"name": name, "type": key_type})
        except IdentityError as exc:
            if exc.status != 409:  # made meanwhile by another thread or process: fine
                raise

    def _with_default(self, name, key_type, operation, body):
        body = dict(body, name=name)
        try:
            return self.call(operation, body)
        except IdentityError as exc:
            if exc.status != 404 or name not in (DEFAULT_KEY, DEFAULT_AEAD_KEY):
                raise
        self._ensure(name, key_type)
        return self.call(operation, body)

    # -- the application's API -----------------------------------------------------------------------------
    def whoami(self):
        """This process's SPIFFE id."""
        return self.call("ping")["identity"]

    def generate_key(self, name, key_type="ecc-p256"):
        """Make a key; returns its public key (PEM bytes) or None for a symmetric key."""
        pem = self.call("generate_key", {"name": name, "type": key_type}).get("public_key")
        return pem.encode("ascii") if pem else None

    def import_key(self, name, key_type, material):
        """Import a key (PKCS#8 DER private key, or raw symmetric key bytes)."""
        pem = self.call("import_key", {"name": name, "type": key_type, "key": _b64(material)}).get("public_key")
        return pem.encode("ascii") if pem else None

    def export_public_key(self, name=DEFAULT_KEY):
        return self._with_default(name, "ecc-p256", "export_public_key", {})["public_key"].encode("ascii")

    def destroy_key(self, name):
        self.call("destroy_key", {"name": name})

    def list_keys(self):
        return self.call("list_keys")["keys"]

    def sign(self, data, key=DEFAULT_KEY):
        """The signature (bytes) of ``data`` with ``key`` (``default``: ECDSA P-256, made on first use)."""
        return _unb64(self._with_default(key, "ecc-p256", "sign", {"data": _b64(data)})["signature"])

    def sign_hash(self, digest, key=DEFAULT_KEY):
        return _unb64(self._with_default(key, "ecc-p256", "sign", {"hash": _b64(digest)})["signature"])

    def verify(self, data, signature, key=DEFAULT_KEY):
        """True when ``signature`` is ``key``'s over ``data``."""
        return bool(self._with_default(key, "ecc-p256", "verify", {"data": _b64(data), "signature": _b64(signature)})["valid"])

    def asymmetric_encrypt(self, name, plaintext, label=None):
        body = {"name": name, "plaintext": _b64(plaintext)}
        if label:
            body["label"] = _b64(label)
        return _unb64(self.call("asymmetric_encrypt", body)["ciphertext"])

    def asymmetric_decrypt(self, name, ciphertext, label=None):
        body = {"name": name, "ciphertext": _b64(ciphertext)}
        if label:
            body["label"] = _b64(label)
        return _unb64(self.call("asymmetric_decrypt", body)["plaintext"])

    def encrypt(self, plaintext, aad=None, key=DEFAULT_AEAD_KEY):
        """AEAD: ``nonce || ciphertext`` (bytes) with ``key`` (``default-aead``: AES-256-GCM, made on first use)."""
        body = {"plaintext": _b64(plaintext)}
        if aad is not None:
            body["aad"] = _b64(aad)
        answer = self._with_default(key, "aes-256-gcm", "aead_encrypt", body)
        return _unb64(answer["nonce"]) + _unb64(answer["ciphertext"])

    def decrypt(self, box, aad=None, key=DEFAULT_AEAD_KEY):
        """The plaintext of ``encrypt``'s ``nonce || ciphertext``."""
        if len(box) < 12:
            raise IdentityError(400, "bad-request", "the box is shorter than a nonce")
        body = {"name": key, "nonce": _b64(box[:12]), "ciphertext": _b64(box[12:])}
        if aad is not None:
            body["aad"] = _b64(aad)
        return _unb64(self.call("aead_decrypt", body)["plaintext"])

    def random(self, size=32):
        return _unb64(self.call("generate_random", {"size": size})["random"])
