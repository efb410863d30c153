# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's cryptstore (on-disk format v1, docs/cryptstore.md).

A directory (mode 0700, owned by the process that uses it: root on a host) holding
``cryptstore.json`` (the store's id and its 32-byte master key, sealed to this host's TPM EK as
an hcp.core envelope, policy ``none``) and ``items/<name>.item``, one file per item (mode 0600):
a JSON header (name, type, exportable, times) in clear and the item's data encrypted with
AES-256-GCM under a key derived from the master key (HKDF-SHA256), the header being the AAD.

Opening the store unseals the master key on the TPM: on another TPM (TPM swapped) the store
refuses to open, names both EKs and changes nothing. Every path is walked from "/" with
openat(O_NOFOLLOW) (``fileutil``): a symbolic link anywhere on the way, a directory owned by
another user or writable by everyone, or a store directory readable by others is refused.
Items are written with ``fileutil.safe_install`` (temporary file, fsync, rename, fsync of the
directory): a crash during a write leaves the previous value. Writers hold an flock on
``.lock``; readers need no lock (a rename is atomic).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hmac
import json
import os
import re
import stat
import time

from ansible_collections.hcp.core.plugins.module_utils import fileutil
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.errors import (
    CryptStoreError,
    InvalidItemError,
    ItemNotFoundError,
    StoreFormatError,
    StoreNotFoundError,
    StoreTpmMismatchError,
)
from ansible_collections.hcp.core.plugins.module_utils.errors import EnvelopeError, TpmError, WrongTpmError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import loads as json_loads
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope as env_mod

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:  # pragma: no cover
    AESGCM = None

FORMAT = "hcp.core.cryptstore"
ITEM_FORMAT = "hcp.core.cryptstore.item"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
ITEM_TYPES = ("key", "x509", "binary-blob", "other")
AEAD_ALG = "AES-256-GCM"
META_FILE = "cryptstore.json"
ITEMS_DIR = "items"
LOCK_FILE = ".lock"
ITEM_SUFFIX = ".item"
MAX_NAME = 128
# One path component: no "/", no NUL, no leading "." (temporary files start with one), no "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,%d}" % (MAX_NAME - 1))
_STALE_SUFFIX = re.compile(r"[0-9a-f]{16}")  # fileutil.safe_install's temporary names: .<file>.<16 hex>
MAX_ITEM_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 4096
MAX_META_BYTES = 64 * 1024
MAX_ITEM_FILE_BYTES = MAX_ITEM_BYTES * 4 // 3 + 64 * 1024
_AAD_PREFIX = b"hcp.core/cryptstore/v1/item\0"
_KDF_PREFIX = b"hcp.core/cryptstore/v1/"


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(value, what, size=None):
    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None or (size is not None and len(data) != size):
        raise StoreFormatError("%s is not valid base64%s" % (what, "" if size is None else " of %d bytes" % size))
    return data


def canonical(value):
    """Canonical JSON bytes (sorted keys, no spaces): AAD and MAC input."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _dumps(value):
    return (json.dumps(value, sort_keys=True, indent=1) + "\n").encode("utf-8")


def validate_name(name):
    """``name`` when it is a valid item name (a whole-string match), else InvalidItemError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        shown = repr(name)[:80] if isinstance(name, str) else "a %s" % type(name).__name__
        raise InvalidItemError("invalid item name %s: 1-%d characters of A-Z a-z 0-9 . _ @ + -, starting with a letter or "
                               "digit, without '..'" % (shown, MAX_NAME))
    return name


def validate_item(name, kind, data):
    """Check an item before it is stored: name, type, size, and an x509 item is a certificate."""
    validate_name(name)
    if kind not in ITEM_TYPES:
        raise InvalidItemError("item %s: unknown type %r (expected one of %s)" % (name, kind, ", ".join(ITEM_TYPES)))
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidItemError("item %s: data must be bytes" % name)
    if len(data) > MAX_ITEM_BYTES:
        raise InvalidItemError("item %s: %d bytes exceed the %d-byte limit" % (name, len(data), MAX_ITEM_BYTES))
    if kind == "x509":
        try:
            if bytes(data).lstrip().startswith(b"-----BEGIN"):
                x509.load_pem_x509_certificate(bytes(data))
            else:
                x509.load_der_x509_certificate(bytes(data))
        except ValueError:
            raise InvalidItemError("item %s of type x509 is not an X.509 certificate (PEM or DER)" % name) from None


def _owners():
    return frozenset((0, os.geteuid()))


def _check_private_dir(fd, path):
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise CryptStoreError("%s belongs to uid %d, not to this process (uid %d): refused" % (path, info.st_uid, os.geteuid()))
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise CryptStoreError("%s has mode %04o: a cryptstore directory must be 0700 (refused)" % (path, stat.S_IMODE(info.st_mode)))


def _store_path(path):
    if not isinstance(path, str) or not path.startswith("/"):
        raise CryptStoreError("the cryptstore path must be absolute, not %r" % (path,))
    return path.rstrip("/") or "/"


@contextlib.contextmanager
def _private_dir(path):
    """A descriptor of the existing store directory ``path`` (or a directory in it), walked from
    "/" without following links; it must be ours and 0700 (FileNotFoundError when missing)."""
    fd = fileutil.open_dir_nofollow(path, None, _owners())
    try:
        _check_private_dir(fd, path)
        yield fd
    finally:
        os.close(fd)


def _parse_meta(path, raw):
    what = "%s/%s" % (path, META_FILE)
    try:
        meta = json_loads(raw, what, MAX_META_BYTES, max_depth=8)
    except JsonInputError as exc:
        raise StoreFormatError(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreFormatError("%s is not a cryptstore file (format must be %r)" % (what, FORMAT))
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise StoreFormatError("%s has cryptstore format version %r; this hcp.core reads version(s) %s"
                               % (what, meta.get("version"), ", ".join(map(str, SUPPORTED_VERSIONS))))
    _unb64(meta.get("store_id"), "%s store_id" % what, 16)
    try:
        meta["master_key"] = env_mod.loads(meta.get("master_key"))
    except EnvelopeError as exc:
        raise StoreFormatError("%s: the sealed master key is unusable: %s" % (what, exc)) from None
    return meta


def _read_meta(path):
    """The parsed store file, or None when there is no store at ``path``."""
    try:
        with _private_dir(path):
            pass
    except FileNotFoundError:
        return None
    info, raw = fileutil.read_nofollow("%s/%s" % (path, META_FILE), MAX_META_BYTES)
    if info is None:
        return None
    if raw is None:
        raise StoreFormatError("%s/%s is larger than %d bytes" % (path, META_FILE, MAX_META_BYTES))
    meta = _parse_meta(path, raw)
    try:
        with _private_dir("%s/%s" % (path, ITEMS_DIR)):
            pass
    except FileNotFoundError:
        raise StoreFormatError("cryptstore %s has no %s directory" % (path, ITEMS_DIR)) from None
    return meta


def store_exists(path):
    """Whether ``path`` holds a cryptstore (its file is checked, nothing is unsealed)."""
    return _read_meta(_store_path(path)) is not None


def _derive(master, store_id, label):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=store_id.encode("ascii"),
                info=_KDF_PREFIX + label).derive(master)


class Item(object):
    """One decrypted item. ``data`` is secret; ``info()`` is not."""

    __slots__ = ("name", "type", "exportable", "created", "updated", "data")

    def __init__(self, name, kind, exportable, created, updated, data):
        self.name, self.type, self.exportable = name, kind, exportable
        self.created, self.updated, self.data = created, updated, data

    def info(self):
        """The item's metadata (no data): safe to log and return."""
        return {"name": self.name, "type": self.type, "exportable": self.exportable, "created": self.created,
                "updated": self.updated, "size": len(self.data)}


class CryptStore(object):
    """An open cryptstore (master key unsealed). Use :meth:`open`."""

    def __init__(self, path, meta, master_key):
        if len(master_key) != 32:
            raise StoreFormatError("cryptstore %s: the unsealed master key is not 32 bytes" % path)
        self.path = path
        self.store_id = meta["store_id"]
        self.ekpubhash = meta["master_key"]["ekpubhash"]
        self.created = meta.get("created")
        self._item_key = AESGCM(_derive(master_key, self.store_id, b"item-encryption"))
        self._mac_key = _derive(master_key, self.store_id, b"export-fingerprint")

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path, tpm, create=False):
        """Open the store at ``path`` with ``tpm`` (a tpm.device.Tpm); with ``create`` make a new
        store there when there is none (its master key sealed to ``tpm``'s EK)."""
        path = _store_path(path)
        meta = _read_meta(path)
        if meta is None:
            if not create:
                raise StoreNotFoundError("no cryptstore at %s" % path)
            return cls._create(path, tpm)
        return cls._unseal(path, meta, tpm)

    @classmethod
    def _unseal(cls, path, meta, tpm):
        sealed_to, local = meta["master_key"]["ekpubhash"], tpm.ekpubhash()
        if not hmac.compare_digest(sealed_to, local):
            raise StoreTpmMismatchError(
                "cryptstore %s is sealed to the TPM with EK %s…, but this TPM's EK is %s… (TPM replaced, the store copied "
                "from another host, or another ek_type): refusing to open it; nothing was changed. Restore that TPM, or make a new store and "
                "import the items from an export bundle" % (path, sealed_to[:16], local[:16]))
        try:
            master = env_mod.unseal(tpm, meta["master_key"])
        except WrongTpmError as exc:  # pragma: no cover - caught by the comparison above
            raise StoreTpmMismatchError("cryptstore %s: %s" % (path, exc)) from None
        except (EnvelopeError, TpmError) as exc:
            raise StoreFormatError("cannot unseal the master key of cryptstore %s: %s; nothing was changed" % (path, exc)) from None
        return cls(path, meta, master)

    @classmethod
    def _create(cls, path, tpm):
        with _private_dir_created(path, path) as fd:
            with _flock(fd, path):
                meta = _read_meta(path)
                if meta is not None:  # made meanwhile by another process
                    return cls._unseal(path, meta, tpm)
                try:
                    with _private_dir("%s/%s" % (path, ITEMS_DIR)) as items_fd:
                        if CryptStore._entries(items_fd):
                            raise StoreFormatError("%s holds items but no %s (lost or removed): refusing to make a new store "
                                                   "over them" % (path, META_FILE))
                except FileNotFoundError:
                    pass
                master = os.urandom(32)
                sealed = env_mod.seal(tpm.ek_public(), master, None, fingerprint=False)
                # prove the TPM can open it before anything depends on it
                if not hmac.compare_digest(env_mod.unseal(tpm, sealed), master):  # pragma: no cover
                    raise CryptStoreError("cryptstore %s: the TPM did not return the sealed master key" % path)
                meta = {"format": FORMAT, "version": VERSION, "store_id": _b64(os.urandom(16)),
                        "created": int(time.time()), "master_key": sealed}
                with _private_dir_created("%s/%s" % (path, ITEMS_DIR), path):
                    pass
                fileutil.safe_install("%s/%s" % (path, META_FILE), _dumps(meta), 0o600)
        return cls(path, meta, master)

    # -- locking and files -----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with _private_dir(self.path) as fd:
            with _flock(fd, self.path):
                yield

    def _item_path(self, name):
        return "%s/%s/%s%s" % (self.path, ITEMS_DIR, name, ITEM_SUFFIX)

    def _aad(self, header):
        return _AAD_PREFIX + self.store_id.encode("ascii") + b"\0" + canonical(header)

    def _load(self, name):
        """The Item ``name``, or None when it does not exist."""
        info, raw = fileutil.read_nofollow(self._item_path(name), MAX_ITEM_FILE_BYTES)
        if info is None:
            return None
        what = "cryptstore %s item %s" % (self.path, name)
        if raw is None:
            raise StoreFormatError("%s is larger than %d bytes" % (what, MAX_ITEM_FILE_BYTES))
        try:
            doc = json_loads(raw, what, MAX_ITEM_FILE_BYTES, max_depth=4)
        except JsonInputError as exc:
            raise StoreFormatError(str(exc)) from None
        if not isinstance(doc, dict) or doc.get("format") != ITEM_FORMAT:
            raise StoreFormatError("%s is not a cryptstore item (format must be %r)" % (what, ITEM_FORMAT))
        if doc.get("version") not in SUPPORTED_VERSIONS:
            raise StoreFormatError("%s has item format version %r; this hcp.core reads version(s) %s"
                                   % (what, doc.get("version"), ", ".join(map(str, SUPPORTED_VERSIONS))))
        if doc.get("name") != name:
            raise StoreFormatError("%s holds another item's data (it was renamed or replaced): refused" % what)
        aead = doc.get("aead")
        if (doc.get("type") not in ITEM_TYPES or not isinstance(doc.get("exportable"), bool) or not isinstance(aead, dict)
                or aead.get("alg") != AEAD_ALG or any(not isinstance(doc.get(k), int) for k in ("created", "updated"))):
            raise StoreFormatError("%s has a malformed header" % what)
        nonce = _unb64(aead.get("nonce"), "%s nonce" % what, 12)
        ciphertext = _unb64(doc.get("ciphertext"), "%s ciphertext" % what)
        header = dict((k, v) for k, v in doc.items() if k != "ciphertext")
        try:
            data = self._item_key.decrypt(nonce, ciphertext, self._aad(header))
        except InvalidTag:
            raise StoreFormatError("%s failed authentication (AES-GCM): it was modified, or belongs to another store" % what) from None
        return Item(name, doc["type"], doc["exportable"], doc["created"], doc["updated"], data)

    def _remove_stale(self, fd, name):
        """Remove temporary files a writer killed mid-write left for item ``name`` (under the lock)."""
        prefix = ".%s%s." % (name, ITEM_SUFFIX)
        for entry in os.listdir(fd):
            if entry.startswith(prefix) and _STALE_SUFFIX.fullmatch(entry[len(prefix):]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry, dir_fd=fd)

    def _write(self, name, data, kind, exportable, current):
        now = int(time.time())
        nonce = os.urandom(12)
        header = {"format": ITEM_FORMAT, "version": VERSION, "name": name, "type": kind, "exportable": bool(exportable),
                  "created": current.created if current is not None else now, "updated": now,
                  "aead": {"alg": AEAD_ALG, "nonce": _b64(nonce)}}
        doc = dict(header, ciphertext=_b64(self._item_key.encrypt(nonce, bytes(data), self._aad(header))))
        with _private_dir("%s/%s" % (self.path, ITEMS_DIR)) as fd:
            self._remove_stale(fd, name)
            if current is None and self._count(fd) >= MAX_ITEMS:
                raise InvalidItemError("cryptstore %s holds %d items, the limit" % (self.path, MAX_ITEMS))
        fileutil.safe_install(self._item_path(name), _dumps(doc), 0o600)

    @staticmethod
    def _entries(fd):
        return [entry[:-len(ITEM_SUFFIX)] for entry in os.listdir(fd)
                if entry.endswith(ITEM_SUFFIX) and not entry.startswith(".")]

    def _count(self, fd):
        return len(self._entries(fd))

    @staticmethod
    def _decide(current, data, kind, exportable):
        if current is None:
            return "created"
        same = current.type == kind and current.exportable == bool(exportable) and hmac.compare_digest(current.data, bytes(data))
        return "unchanged" if same else "updated"

    # -- the operations --------------------------------------------------------------------
    def names(self):
        """The item names, sorted."""
        with _private_dir("%s/%s" % (self.path, ITEMS_DIR)) as fd:
            names = self._entries(fd)
        return sorted(name for name in names if _NAME.fullmatch(name) and ".." not in name)

    def get(self, name):
        """The Item ``name`` (ItemNotFoundError when absent)."""
        item = self._load(validate_name(name))
        if item is None:
            raise ItemNotFoundError("no item %s in cryptstore %s" % (name, self.path))
        return item

    def list(self):
        """Metadata of every item (each one decrypted, so each is authenticated)."""
        return [self.get(name).info() for name in self.names()]

    def put(self, name, data, kind="other", exportable=False, dry_run=False):
        """Store ``data`` (bytes) as item ``name``: "created", "updated" or "unchanged" (then
        nothing is written). ``dry_run``: decide only."""
        validate_item(name, kind, data)
        with self._locked():
            current = self._load(name)
            action = self._decide(current, data, kind, exportable)
            if action != "unchanged" and not dry_run:
                self._write(name, data, kind, exportable, current)
        return action

    def delete(self, name, dry_run=False):
        """Delete item ``name``: True when it existed."""
        validate_name(name)
        with self._locked():
            with _private_dir("%s/%s" % (self.path, ITEMS_DIR)) as fd:
                filename = name + ITEM_SUFFIX
                try:
                    os.stat(filename, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                if not dry_run:
                    self._remove_stale(fd, name)
                    os.unlink(filename, dir_fd=fd)
                    os.fsync(fd)
        return True

    def put_many(self, items, exportable=False, force=False, dry_run=False):
        """Store several (name, type, data) under one lock, e.g. an imported bundle's:
        {name: action}. An existing item with other content is replaced only with ``force``;
        otherwise nothing at all is written (InvalidItemError naming the items)."""
        for name, kind, data in items:
            validate_item(name, kind, data)
        with self._locked():
            plan = []
            for name, kind, data in items:
                current = self._load(name)
                plan.append((name, kind, data, current, self._decide(current, data, kind, exportable)))
            conflicts = [name for name, _k, _d, _c, action in plan if action == "updated"]
            if conflicts and not force:
                raise InvalidItemError("cryptstore %s already holds other content for: %s (force replaces it); nothing was "
                                       "written" % (self.path, ", ".join(conflicts)))
            if not dry_run:
                for name, kind, data, current, action in plan:
                    if action != "unchanged":
                        self._write(name, data, kind, exportable, current)
        return dict((name, action) for name, _k, _d, _c, action in plan)

    def fingerprint(self, value):
        """HMAC-SHA256 of ``canonical(value)`` under a key derived from the master key: only
        this store can compute it (export idempotence)."""
        mac = crypto_hmac.HMAC(self._mac_key, hashes.SHA256())
        mac.update(canonical(value))
        return mac.finalize()


@contextlib.contextmanager
def _private_dir_created(path, store):
    """Like _private_dir(path, create=True), the store ``store`` and what is in it made 0700."""
    def make(dir_path):
        return (0o700 if dir_path == store or dir_path.startswith(store + "/") else 0o755, -1, -1)
    fd = fileutil.open_dir_nofollow(path, make, _owners())
    try:
        _check_private_dir(fd, path)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(dir_fd, path):
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise CryptStoreError("cannot open the lock file of cryptstore %s (it must be a regular file): %s"
                              % (path, exc.strerror or exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
