# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The security service (docs/identity.md, "Security service"): TRUSTING the identity provider.

* admin socket (0600 root): ``ping``, ``share_trust_bundle`` (the provider's bundle); peer uid 0.
* client socket (0660 group hcp-identity): the PSA Crypto subset, every call (``ping`` too)
  with a JWT bearer (auth type 1) signed ES256 by the provider's CURRENT intermediate (chaining to
  its pinned root), ``aud`` exactly this service, unexpired. The key namespace is the token's
  ``sub``: one identity never uses, sees or lists another's keys; a name that exists only in
  another namespace gets the very answer of a missing key.

Binary values are base64 strings in the JSON bodies. Operations and their bodies:

=================== ============================================= =================================
operation           request                                       answer
=================== ============================================= =================================
generate_key        name, type (default ecc-p256)                 name, type, public_key (PEM|null)
import_key          name, type, key (PKCS#8 DER / raw symmetric)  name, type, public_key
export_public_key   name                                          public_key (PEM)
destroy_key         name                                          destroyed
list_keys           -                                             keys [{name, type, created}]
sign                name, data | hash (prehashed)                 signature
verify              name, data | hash, signature                  valid (bool)
asymmetric_encrypt  name, plaintext, label?  (RSA-OAEP SHA-256)   ciphertext
asymmetric_decrypt  name, ciphertext, label?                      plaintext
aead_encrypt        name, plaintext, aad?                         nonce, ciphertext
aead_decrypt        name, nonce, ciphertext, aad?                 plaintext
generate_random     size (1..1024)                                random
=================== ============================================= =================================

Signatures: ECDSA with SHA-256 (P-256) / SHA-384 (P-384), DER; Ed25519; RSA-PSS SHA-256
(salt = digest length). Run: ``python3 -s -m
ansible_collections.hcp.core.plugins.module_utils.identity.secsvc CONFIG.json``
(``--check-config CONFIG.json``; ``reset-trust CONFIG.json``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import os
import sys
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.identity import keystore, trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

try:
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
except ImportError:  # pragma: no cover - reported by trust.require_libraries()
    hashes = None

MODULE = "ansible_collections.hcp.core.plugins.module_utils.identity.secsvc"
MAX_RANDOM = 1024
TOKEN_CACHE = 4096
ADMIN_OPS = ("share_trust_bundle",)

FIELDS = {
    "site": (str, wire.REQUIRED),
    "host": (str, wire.REQUIRED),
    "state_dir": (str, "/var/lib/hcp-identity/secsvc"),
    "store_dir": (str, "/var/lib/hcp-identity/secsvc/store"),
    "socket": (str, "/run/hcp-identity/secsvc.sock"),
    "admin_socket": (str, "/run/hcp-identity/secsvc-admin.sock"),
    "socket_group": (str, None),
    "socket_mode": (int, 0o660),
    "audience": (str, None),
    "store_key": (dict, {"backend": "tpm", "tcti": None}),
    "max_body": (int, wire.MAX_BODY),
}


def load_config(path):
    """The security service's validated configuration (docs/identity.md)."""
    from ansible_collections.hcp.core.plugins.module_utils.identity.provider import HOST_RE, SITE_RE
    config = wire.load_config(path, FIELDS)
    for key, regex in (("site", SITE_RE), ("host", HOST_RE)):
        if not regex.fullmatch(config[key]):
            raise IdentityError(500, "bad-config", "%s %r is not a valid name" % (key, config[key]))
    config["audience"] = config["audience"] or "spiffe://%s/%s/hcp-identity-secsvc" % (config["site"], config["host"])
    if not 0 <= config["socket_mode"] <= 0o777 or not 1024 <= config["max_body"] <= wire.MAX_BODY:
        raise IdentityError(500, "bad-config", "socket_mode or max_body out of range")
    keystore.store_key_backend(config["store_key"], config["store_dir"])  # validated here, used at start
    return config


def _bytes(body, key, required=True, limit=wire.MAX_BODY):
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise IdentityError(400, "bad-request", "%s must be a base64 string" % key)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(400, "bad-request", "%s is not valid base64" % key) from None


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _hash_for(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


class SecurityService(object):
    """The service's state and operations (the daemon wraps it in two wire servers)."""

    def __init__(self, config):
        trust.require_libraries()
        self.config = config
        self.idp = trust.TrustingSide(config["state_dir"], name="identity provider")
        self.store = keystore.KeyStore(config["store_dir"], keystore.store_key_backend(config["store_key"], config["store_dir"]))
        self._tokens = collections.OrderedDict()
        self._tokens_lock = threading.Lock()

    # -- authentication ------------------------------------------------------------------------------
    def identity(self, request):
        """The caller's namespace: the ``sub`` of its verified token (401 otherwise)."""
        if request.auth_type != wire.AUTH_JWT or not request.auth:
            raise IdentityError(401, "no-token", "every call needs a token from the identity provider (auth type 1)")
        token = bytes(request.auth)
        kid = self.idp.kid
        now = time.time()
        with self._tokens_lock:
            hit = self._tokens.get(token)
        if hit is not None and hit[1] == kid and hit[2] > now:
            return hit[0]
        claims = self.idp.verify(token, self.config["audience"], max_lifetime=300)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith("spiffe://") or len(sub) > keystore.MAX_NAMESPACE:
            raise IdentityError(401, "bad-token", "the token's subject is not a SPIFFE id")
        with self._tokens_lock:
            self._tokens[token] = (sub, kid, claims["exp"])
            while len(self._tokens) > TOKEN_CACHE:
                self._tokens.popitem(last=False)
        return sub

    # -- operations ------------------------------------------------------------------------------------
    def _key(self, ns, body, families=None):
        key_type, key = self.store.load(ns, body.get("name"))
        family = keystore.KEY_TYPES[key_type][0]
        if families and family not in families:
            raise IdentityError(400, "wrong-key-type", "a %s key cannot do this operation" % key_type)
        return key_type, key

    def op_ping(self, ns, _body):
        return {"component": "secsvc", "identity": ns}

    def op_generate_key(self, ns, body):
        key_type = keystore.validate_type(body.get("type", "ecc-p256"))
        keystore.validate_name(body.get("name"))
        material = keystore.generate_material(key_type)
        result = self.store.create(ns, body["name"], key_type, material)
        key = keystore.load_material(key_type, material)
        result["public_key"] = None if keystore.KEY_TYPES[key_type][0] in keystore.SYMMETRIC else _public_pem(key)
        return result

    def op_import_key(self, ns, body):
        key_type = keystore.validate_type(body.get("type"))
        material = _bytes(body, "key", limit=16 * 1024)
        key = keystore.load_material(key_type, material)
        result = self.store.create(ns, body.get("name"), key_type, material)
        result["public_key"] = None if keystore.KEY_TYPES[key_type][0] in keystore.SYMMETRIC else _public_pem(key)
        return result

    def op_export_public_key(self, ns, body):
        _type, key = self._key(ns, body, ("ecc", "ed25519", "rsa"))
        return {"name": body["name"], "public_key": _public_pem(key)}

    def op_destroy_key(self, ns, body):
        return self.store.destroy(ns, body.get("name"))

    def op_list_keys(self, ns, _body):
        return {"keys": self.store.list(ns)}

    def _message(self, key, body):
        data, digest = _bytes(body, "data", required=False), _bytes(body, "hash", required=False)
        if (data is None) == (digest is None):
            raise IdentityError(400, "bad-request", "give exactly one of data and hash")
        if digest is not None:
            if isinstance(key, ed25519.Ed25519PrivateKey):
                raise IdentityError(400, "bad-request", "Ed25519 signs messages, not hashes")
            algorithm = _hash_for(key)
            if len(digest) != algorithm.digest_size:
                raise IdentityError(400, "bad-request", "hash must be %d bytes" % algorithm.digest_size)
            return digest, Prehashed(algorithm)
        return data, None if isinstance(key, ed25519.Ed25519PrivateKey) else _hash_for(key)

    @staticmethod
    def _pss(algorithm):
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)

    def op_sign(self, ns, body):
        _type, key = self._key(ns, body, ("ecc", "ed25519", "rsa"))
        message, algorithm = self._message(key, body)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(message, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(message, self._pss(algorithm), algorithm)
        else:
            signature = key.sign(message)
        return {"signature": _b64(signature)}

    def op_verify(self, ns, body):
        _type, key = self._key(ns, body, ("ecc", "ed25519", "rsa"))
        message, algorithm = self._message(key, body)
        signature = _bytes(body, "signature", limit=4096)
        public = key.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                public.verify(signature, message, ec.ECDSA(algorithm))
            elif isinstance(key, rsa.RSAPrivateKey):
                public.verify(signature, message, self._pss(algorithm), algorithm)
            else:
                public.verify(signature, message)
            return {"valid": True}
        except (InvalidSignature, ValueError):
            return {"valid": False}

    @staticmethod
    def _oaep(body):
        label = _bytes(body, "label", required=False, limit=1024)
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label or None)

    def op_asymmetric_encrypt(self, ns, body):
        _type, key = self._key(ns, body, ("rsa",))
        try:
            return {"ciphertext": _b64(key.public_key().encrypt(_bytes(body, "plaintext", limit=512), self._oaep(body)))}
        except ValueError:
            raise IdentityError(400, "too-large", "the plaintext is too long for this key") from None

    def op_asymmetric_decrypt(self, ns, body):
        _type, key = self._key(ns, body, ("rsa",))
        try:
            return {"plaintext": _b64(key.decrypt(_bytes(body, "ciphertext", limit=1024), self._oaep(body)))}
        except ValueError:
            raise IdentityError(400, "decrypt-failed", "the ciphertext does not decrypt with this key") from None

    def op_aead_encrypt(self, ns, body):
        _type, key = self._key(ns, body, keystore.SYMMETRIC)
        nonce = os.urandom(12)
        aad = _bytes(body, "aad", required=False, limit=64 * 1024)
        return {"nonce": _b64(nonce), "ciphertext": _b64(key.encrypt(nonce, _bytes(body, "plaintext"), aad))}

    def op_aead_decrypt(self, ns, body):
        _type, key = self._key(ns, body, keystore.SYMMETRIC)
        nonce = _bytes(body, "nonce", limit=64)
        if len(nonce) != 12:
            raise IdentityError(400, "bad-request", "nonce must be 12 bytes")
        try:
            plaintext = key.decrypt(nonce, _bytes(body, "ciphertext"), _bytes(body, "aad", required=False, limit=64 * 1024))
        except InvalidTag:
            raise IdentityError(400, "decrypt-failed", "authentication failed (wrong key, nonce, aad or tampered ciphertext)") from None
        return {"plaintext": _b64(plaintext)}

    def op_generate_random(self, _ns, body):
        size = body.get("size", 32)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_RANDOM:
            raise IdentityError(400, "bad-request", "size must be 1..%d" % MAX_RANDOM)
        return {"random": _b64(os.urandom(size))}

    # -- dispatch ----------------------------------------------------------------------------------------
    def handle_admin(self, request):
        if request.peer.uid != 0:
            raise IdentityError(403, "forbidden", "the admin socket is for root only")
        if request.name == "ping":
            return {"component": "secsvc", "idp_root": self.idp.root_fingerprint, "idp_intermediate": self.idp.kid}
        if request.name == "share_trust_bundle":
            result = self.idp.share_trust_bundle(request.body)
            with self._tokens_lock:
                self._tokens.clear()
            return result
        raise IdentityError(400, "unknown-opcode", "not an operation of the security service's admin socket")

    def handle_client(self, request):
        if request.name in ADMIN_OPS:
            raise IdentityError(403, "forbidden", "admin operations are served on the admin socket only")
        method = getattr(self, "op_%s" % request.name, None) if request.name else None
        if method is None:
            raise IdentityError(400, "unknown-opcode", "not an operation of the security service")
        namespace = self.identity(request)  # authenticate before reading anything else of the request
        return method(namespace, request.body)


def serve(config, service=None):
    """(service, [servers]) listening on the configured sockets."""
    service = service or SecurityService(config)
    servers = [wire.serve(config["admin_socket"], service.handle_admin, mode=0o600, max_body=64 * 1024)]
    try:
        servers.append(wire.serve(config["socket"], service.handle_client, mode=config["socket_mode"],
                                  group=config["socket_group"], max_body=config["max_body"]))
    except Exception:
        servers[0].close()
        raise
    return service, servers


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] in ("--check-config", "reset-trust"):
        mode, path = argv
    elif len(argv) == 1 and not argv[0].startswith("-"):
        mode, path = "serve", argv[0]
    else:
        sys.stderr.write("usage: python3 -m %s [--check-config | reset-trust] CONFIG.json\n" % MODULE)
        return 2
    try:
        config = load_config(path)
        if mode == "--check-config":
            sys.stdout.write("configuration ok: %s\n" % config["audience"])
            return 0
        if mode == "reset-trust":
            old = trust.reset_trust(config["state_dir"])
            sys.stdout.write("identity provider root forgotten (%s); restart hcp-identity-secsvc, then the provider shares "
                             "its root again\n" % (old or "none was pinned"))
            return 0
        _service, servers = serve(config)
    except (HcpError, OSError) as exc:
        sys.stderr.write("hcp-identity-secsvc: %s\n" % exc)
        return 1
    sys.stderr.write("hcp-identity-secsvc: serving %s and %s\n" % (config["socket"], config["admin_socket"]))
    return wire.run_daemon(servers)


if __name__ == "__main__":
    raise SystemExit(main())
