# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The security service's key store (docs/identity.md, "Security service"; on-disk format v1).

Layout of ``store_dir`` (0700)::

    store.json                 format, version, key check (HMAC under a key derived from the wrapping key)
    store-key.envelope.json    the 32-byte store wrapping key sealed to this host's TPM (tpm/envelope.py)
    keys/<sha256(namespace)>/<sha256(name)>.key    one record per key, 0600

A record is one JSON object: ``format``, ``version``, ``namespace`` (the caller's SPIFFE id),
``name``, ``type``, ``created``, ``nonce``, ``ciphertext``: the key material (PKCS#8 DER, or raw
bytes for symmetric keys) encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the
wrapping key, with every other field as associated data, so a record moved to another namespace
or name, or edited, fails authentication. Records are created under a temporary name and
hard-linked into place (an existing key is never replaced: 409); a writer killed half-way leaves
no record. Names are per namespace: a key of another namespace is simply not found (the answer
is the one for a missing key).

``backend``: ``{"backend": "tpm", "tcti": ...}`` (production) or ``{"backend": "memory"}``
(a wrapping key in process memory: keys are lost when the process ends; tests and benchmarks only).
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import threading

from ansible_collections.hcp.core.plugins.module_utils import fileutil, jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.identity import trust
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:  # pragma: no cover - reported by KeyStore()
    AESGCM = None

FORMAT = "hcp.core.identity-keystore"
RECORD_FORMAT = "hcp.core.identity-key"
VERSION = 1
STORE_FILE = "store.json"
SEALED_KEY_FILE = "store-key.envelope.json"
KEYS_DIR = "keys"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RECORD_RE = re.compile(r"[0-9a-f]{64}\.key")
MAX_NAMESPACE = 255
MAX_KEYS_PER_NAMESPACE = 1024
MAX_RECORD = 64 * 1024
CACHE_SIZE = 1024

# type -> (family, parameter)
KEY_TYPES = {
    "ecc-p256": ("ecc", "secp256r1"),
    "ecc-p384": ("ecc", "secp384r1"),
    "ed25519": ("ed25519", None),
    "rsa-2048": ("rsa", 2048),
    "rsa-3072": ("rsa", 3072),
    "aes-128-gcm": ("aes", 16),
    "aes-256-gcm": ("aes", 32),
    "chacha20-poly1305": ("chacha", 32),
}
SYMMETRIC = ("aes", "chacha")


def validate_name(name):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise IdentityError(400, "bad-key-name", "key names match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    return name


def validate_type(key_type):
    if key_type not in KEY_TYPES:
        raise IdentityError(400, "bad-key-type", "key type must be one of %s" % ", ".join(sorted(KEY_TYPES)))
    return key_type


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _derive(key, label):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hcp.core identity keystore v1 " + label).derive(key)


def generate_material(key_type):
    """New key material of ``key_type`` (PKCS#8 DER, or raw bytes for symmetric keys)."""
    family, param = KEY_TYPES[validate_type(key_type)]
    if family in SYMMETRIC:
        return os.urandom(param)
    if family == "ecc":
        key = ec.generate_private_key(getattr(ec, param.upper())())
    elif family == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=param)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_material(key_type, material):
    """The usable key object of ``material``; IdentityError 400 when it is not a ``key_type`` key."""
    family, param = KEY_TYPES[validate_type(key_type)]
    if family in SYMMETRIC:
        if len(material) != param:
            raise IdentityError(400, "bad-key", "a %s key is %d bytes" % (key_type, param))
        return AESGCM(material) if family == "aes" else ChaCha20Poly1305(material)
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        raise IdentityError(400, "bad-key", "the key is not an unencrypted PKCS#8 DER private key") from None
    ok = ((family == "ecc" and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == param)
          or (family == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey))
          or (family == "rsa" and isinstance(key, rsa.RSAPrivateKey) and key.key_size == param))
    if not ok:
        raise IdentityError(400, "bad-key", "the key is not a %s key" % key_type)
    return key


class MemoryStoreKey(object):
    """A wrapping key in process memory only (keys die with the process): tests and benchmarks."""

    def __init__(self):
        self._key = None

    def load(self):
        return self._key

    def save(self, secret):
        self._key = secret


def store_key_backend(spec, store_dir):
    """The wrapping key's holder for a ``store_key`` setting."""
    if not isinstance(spec, dict):
        spec = {}
    if spec.get("backend") == "memory" and set(spec) == {"backend"}:
        return MemoryStoreKey()
    if spec.get("backend") == "tpm" and set(spec) <= {"backend", "tcti"} and isinstance(spec.get("tcti"), (str, type(None))):
        return trust.SealedFile(os.path.join(store_dir, SEALED_KEY_FILE), tcti=spec.get("tcti"))
    raise IdentityError(500, "bad-config", 'store_key must be {"backend": "tpm", "tcti": ...} or {"backend": "memory"}')


class KeyStore(object):
    """An open key store (see the module docstring); thread-safe."""

    def __init__(self, store_dir, key_holder):
        if AESGCM is None:
            raise MissingDependencyError("the Python library 'cryptography' is required by the security service")
        trust.prepare_state_dir(store_dir)
        self.path = store_dir
        self.keys_dir = os.path.join(store_dir, KEYS_DIR)
        os.makedirs(self.keys_dir, mode=0o700, exist_ok=True)
        record = self._read_json(os.path.join(store_dir, STORE_FILE))
        wrapping = key_holder.load()
        if record is None:
            if wrapping is None:
                wrapping = secrets.token_bytes(32)
                key_holder.save(wrapping)
            record = {"format": FORMAT, "version": VERSION, "key_check": self._check(wrapping)}
            fileutil.atomic_write(os.path.join(store_dir, STORE_FILE), (json.dumps(record, sort_keys=True) + "\n").encode("ascii"))
        if record.get("format") != FORMAT or record.get("version") != VERSION:
            raise IdentityError(500, "bad-store", "%s is not a v1 identity key store" % store_dir)
        if wrapping is None or not hmac.compare_digest(self._check(wrapping), str(record.get("key_check"))):
            raise IdentityError(500, "bad-store", "the store wrapping key does not open %s (another TPM, or lost): refused, "
                                "nothing changed" % store_dir)
        self._aead = AESGCM(_derive(wrapping, b"records"))
        self._ns_key = _derive(wrapping, b"namespace names")
        self._lock = threading.Lock()
        self._cache = collections.OrderedDict()

    @staticmethod
    def _check(wrapping):
        return hmac.new(_derive(wrapping, b"key check"), b"hcp.core identity keystore", hashlib.sha256).hexdigest()

    @staticmethod
    def _read_json(path, limit=MAX_RECORD):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(limit + 1)
        try:
            value = jsonutil.loads(raw, os.path.basename(path), max_bytes=limit)
        except HcpError:
            raise IdentityError(500, "bad-store", "%s is damaged" % os.path.basename(path)) from None
        if not isinstance(value, dict):
            raise IdentityError(500, "bad-store", "%s is damaged" % os.path.basename(path))
        return value

    # -- paths ----------------------------------------------------------------------------------
    @staticmethod
    def _namespace(namespace):
        if not isinstance(namespace, str) or not namespace or len(namespace) > MAX_NAMESPACE:
            raise IdentityError(401, "bad-token", "the token's subject is not a usable identity")
        return namespace

    def _ns_dir(self, namespace):
        return os.path.join(self.keys_dir, hashlib.sha256(namespace.encode("utf-8")).hexdigest())

    def _record_path(self, namespace, name):
        return os.path.join(self._ns_dir(namespace), hashlib.sha256(name.encode("utf-8")).hexdigest() + ".key")

    @staticmethod
    def _aad(record):
        header = dict((k, v) for k, v in record.items() if k not in ("nonce", "ciphertext"))
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _missing(name):
        # the same answer whether the name exists in another namespace or nowhere
        return IdentityError(404, "no-such-key", "no key named %s" % name)

    # -- operations ------------------------------------------------------------------------------
    def create(self, namespace, name, key_type, material):
        """Store a new key (``material`` checked first); 409 when the name exists in this namespace."""
        namespace, name, key_type = self._namespace(namespace), validate_name(name), validate_type(key_type)
        load_material(key_type, material)
        directory = self._ns_dir(namespace)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # whatever the umask was
        if len(os.listdir(directory)) >= MAX_KEYS_PER_NAMESPACE:
            raise IdentityError(409, "too-many-keys", "this identity holds %d keys already" % MAX_KEYS_PER_NAMESPACE)
        record = {"format": RECORD_FORMAT, "version": VERSION, "namespace": namespace, "name": name, "type": key_type,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        nonce = os.urandom(12)
        record["nonce"] = _b64(nonce)
        record["ciphertext"] = _b64(self._aead.encrypt(nonce, material, self._aad(record)))
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        try:
            fileutil.create_new(self._record_path(namespace, name), data)  # never replaces an existing key
        except FileExistsError:
            raise IdentityError(409, "key-exists", "a key named %s exists already" % name) from None
        return {"name": name, "type": key_type}

    def _record(self, namespace, name):
        record = self._read_json(self._record_path(namespace, name))
        if record is None:
            raise self._missing(name)
        if record.get("format") != RECORD_FORMAT or record.get("version") != VERSION or record.get("namespace") != namespace \
                or record.get("name") != name or record.get("type") not in KEY_TYPES:
            raise IdentityError(500, "bad-store", "the record of key %s is damaged or misplaced" % name)
        return record

    def load(self, namespace, name):
        """(type, key object) of ``name`` in ``namespace``; 404 ``no-such-key``."""
        namespace, name = self._namespace(namespace), validate_name(name)
        slot = (namespace, name)
        with self._lock:
            hit = self._cache.get(slot)
            if hit is not None:
                self._cache.move_to_end(slot)
                return hit
        record = self._record(namespace, name)
        try:
            material = self._aead.decrypt(base64.b64decode(record["nonce"], validate=True),
                                          base64.b64decode(record["ciphertext"], validate=True), self._aad(record))
        except (InvalidTag, ValueError, TypeError, KeyError):
            raise IdentityError(500, "bad-store", "the record of key %s failed authentication" % name) from None
        value = (record["type"], load_material(record["type"], material))
        with self._lock:
            if os.path.exists(self._record_path(namespace, name)):  # not destroyed meanwhile
                self._cache[slot] = value
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return value

    def destroy(self, namespace, name):
        namespace, name = self._namespace(namespace), validate_name(name)
        with self._lock:
            self._cache.pop((namespace, name), None)
            try:
                os.unlink(self._record_path(namespace, name))
            except FileNotFoundError:
                raise self._missing(name) from None
        return {"name": name, "destroyed": True}

    def list(self, namespace):
        """[{"name", "type", "created"}] of this namespace's keys, sorted by name."""
        namespace = self._namespace(namespace)
        try:
            entries = os.listdir(self._ns_dir(namespace))
        except FileNotFoundError:
            return []
        keys = []
        for entry in entries[:MAX_KEYS_PER_NAMESPACE]:
            if not RECORD_RE.fullmatch(entry):
                continue
            record = self._read_json(os.path.join(self._ns_dir(namespace), entry))
            if record and record.get("namespace") == namespace and isinstance(record.get("name"), str):
                keys.append({"name": record["name"], "type": record.get("type"), "created": record.get("created")})
        return sorted(keys, key=lambda k: k["name"])
