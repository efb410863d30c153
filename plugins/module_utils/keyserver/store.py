# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server's store (on-disk format v1, docs/keyserver.md).

Layout of the store directory (0700, owned by the service user)::

    store.json            format, version, ekpubhash of the key-server's TPM, key check (HMAC)
    master.envelope.json  the 32-byte master key sealed to that TPM's EK (tpm/envelope.py)
    items/<sha256(name)>/v<8 digits>.json   one file per version of an item
    items/<sha256(name)>.lock               the item's writer lock (flock)
    auth/used/                              answered auth-challenge nonces (keyserver/auth.py)

Every version file is two lines of JSON: a header with the item's name, version, creation time, ``exportable``,
``measurements``, ``content_mac`` (HMAC-SHA256 of the data under a key derived from the master
key: the idempotence check, useless without the master key), then ``{"ciphertext": ...}``: the
data encrypted with AES-256-GCM (random 96-bit nonce) under a key derived from the master key (HKDF-SHA256), with
everything but the ciphertext as associated data: a file moved to another item or version, or
edited, fails authentication.

Writes: a temporary file created 0600 with O_EXCL in the item's directory, written, fsynced,
hard-linked to its version name (never replacing one), then the directory fsynced; a writer killed at any point leaves
the previous versions as they were (a temporary file is ignored and removed by the next writer
of that item). ENOSPC/EDQUOT/EFBIG: StoreFullError, nothing changed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import sys

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import EnvelopeError, HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import (
    KeyServerError,
    NotFoundError,
    StoreCorruptError,
    StoreFullError,
    StoreOpenError,
)
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import validate_measurement, validate_name
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:  # pragma: no cover - reported by KeyStore()
    AESGCM = None

STORE_FORMAT = "hcp.core.keyserver-store"
ITEM_FORMAT = "hcp.core.keyserver-item"
VERSION = 1
STORE_FILE = "store.json"
MASTER_FILE = "master.envelope.json"
ITEMS_DIR = "items"
AUTH_DIR = "auth"
MASTER_KEY_BYTES = 32
DEFAULT_MAX_ITEM_BYTES = 1024 * 1024
DEFAULT_KEEP_VERSIONS = 16
MAX_VERSION = 99999999
MAX_MEASUREMENTS = 64
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
VERSION_FILE_RE = re.compile(r"v([0-9]{8})\.json")
ITEM_DIR_RE = re.compile(r"[0-9a-f]{64}")
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _derive(master, label):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hcp.core keyserver v1 " + label).derive(master)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _full(exc, what):
    """StoreFullError for a full file system, else the OSError as a KeyServerError (500)."""
    if exc.errno in FULL_ERRNOS:
        return StoreFullError("the key-server store's file system is full (%s) while writing %s: nothing was stored, "
                              "earlier versions are unchanged" % (os.strerror(exc.errno), what))
    return KeyServerError("cannot write %s in the key-server store: %s" % (what, exc.strerror or exc), 500)


def write_durable(directory, name, data, mode=0o600):
    """Create ``directory/name`` atomically and durably (see the module docstring); the name
    must not exist yet (versions are never rewritten: 409). OSError is mapped by ``_full``."""
    tmp = os.path.join(directory, ".tmp-%s" % os.urandom(8).hex())
    fd = None
    try:
        fd = os.open(tmp, _O_NEW, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = None
        # link, not rename: an existing version is never replaced, even by a writer without the lock
        os.link(tmp, os.path.join(directory, name))
        _fsync_dir(directory)
    except FileExistsError:
        raise KeyServerError("%s already exists: versions are never rewritten" % name, 409) from None
    except OSError as exc:
        raise _full(exc, name) from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read_small(path, limit=MAX_FILE_BYTES):
    fd = os.open(path, _O_READ)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise StoreCorruptError("%s is larger than %d bytes" % (os.path.basename(path), limit))
    return data


def _read_header(path):
    """The first line of an item file (its header), at most MAX_HEADER_BYTES: listing never reads data."""
    fd = os.open(path, _O_READ)
    with os.fdopen(fd, "rb") as handle:
        line = handle.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES or not line.endswith(b"\n"):
        raise StoreCorruptError("%s has no v1 header line" % os.path.basename(path))
    return line


def init_store(path, ek_public, policy=None):
    """Create a new, empty store at ``path`` whose master key is sealed to the TPM owning
    ``ek_public`` (anything envelope.seal accepts; ``policy``: an envelope unseal policy).
    Refuses (KeyServerError 409) when ``path`` already holds a store. Needs no TPM."""
    if AESGCM is None:
        raise MissingDependencyError("the Python library 'cryptography' is required by the key-server store")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.listdir(path):
            raise KeyServerError("%s is not empty: a key-server store is never re-initialised over data" % path, 409) from None
    os.chmod(path, 0o700)
    master = os.urandom(MASTER_KEY_BYTES)
    sealed = envelope.seal(ek_public, master, policy=policy, fingerprint=False)
    for sub in (ITEMS_DIR, AUTH_DIR):
        os.mkdir(os.path.join(path, sub), 0o700)
    write_durable(path, MASTER_FILE, envelope.dumps(sealed))
    record = {"format": STORE_FORMAT, "version": VERSION, "ekpubhash": sealed["ekpubhash"],
              "key_check": hmac.new(_derive(master, b"key check"), b"hcp.core keyserver key check",
                                    hashlib.sha256).hexdigest()}
    write_durable(path, STORE_FILE, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("ascii"))
    return {"path": path, "ekpubhash": sealed["ekpubhash"]}


def _load_store_record(path):
    try:
        record = jsonutil.loads(_read_small(os.path.join(path, STORE_FILE), 64 * 1024), STORE_FILE)
    except FileNotFoundError:
        raise StoreOpenError("%s is not a key-server store (no %s): create it with init_store" % (path, STORE_FILE)) from None
    except OSError as exc:
        raise StoreOpenError("cannot read %s: %s" % (os.path.join(path, STORE_FILE), exc.strerror)) from None
    except HcpError as exc:
        raise StoreOpenError("%s is unreadable: %s" % (STORE_FILE, exc)) from None
    if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
        raise StoreOpenError("%s is not a key-server store record" % STORE_FILE)
    if record.get("version") != VERSION:
        raise StoreOpenError("key-server store format version %r is not supported (this hcp.core reads %d)" % (
            record.get("version"), VERSION))
    return record


def open_store(path, tpm, **options):
    """The KeyStore at ``path``, its master key unsealed with ``tpm`` (tpm/device.Tpm). Refuses
    with StoreOpenError, changing nothing, when the master key is sealed to another TPM (the
    key-server's TPM was swapped or the store copied to another host), the TPM refuses the
    unseal policy, or the key does not match the store. ``options``: see KeyStore."""
    record = _load_store_record(path)
    try:
        sealed = envelope.loads(_read_small(os.path.join(path, MASTER_FILE), 1024 * 1024))
    except OSError as exc:
        raise StoreOpenError("cannot read the store's sealed master key %s: %s" % (MASTER_FILE, exc.strerror)) from None
    except EnvelopeError as exc:
        raise StoreOpenError("the store's sealed master key is unusable: %s" % exc) from None
    local = tpm.ekpubhash()
    if not hmac.compare_digest(local, sealed["ekpubhash"]) or not hmac.compare_digest(local, str(record.get("ekpubhash"))):
        raise StoreOpenError(
            "the store's master key is sealed to the TPM with EK %s... but this host's TPM has EK %s...: the key-server's "
            "TPM was replaced or the store was copied from another host. Nothing was changed; put the original TPM back, "
            "or restore the store from a backup re-sealed to this TPM (docs/keyserver.md)" % (
                sealed["ekpubhash"][:16], local[:16]))
    try:
        master = envelope.unseal(tpm, sealed)
    except EnvelopeError as exc:
        raise StoreOpenError("the TPM did not release the store's master key: %s. Nothing was changed" % exc) from None
    return KeyStore(path, master, record=record, **options)


class KeyStore(object):
    """An open store. ``max_item_bytes``: largest item; ``keep_versions``: versions kept per
    item (older ones are removed after a store)."""

    def __init__(self, path, master_key, record=None, max_item_bytes=DEFAULT_MAX_ITEM_BYTES,
                 keep_versions=DEFAULT_KEEP_VERSIONS):
        if AESGCM is None:
            raise MissingDependencyError("the Python library 'cryptography' is required by the key-server store")
        record = record or _load_store_record(path)
        expected = hmac.new(_derive(master_key, b"key check"), b"hcp.core keyserver key check", hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(record.get("key_check"))):
            raise StoreOpenError("the unsealed master key does not belong to this store (key check failed): refused, nothing changed")
        self.path = path
        self.items = os.path.join(path, ITEMS_DIR)
        self.auth_dir = os.path.join(path, AUTH_DIR)
        self.max_item_bytes = max_item_bytes
        self.keep_versions = keep_versions
        self._aead = AESGCM(_derive(master_key, b"items"))
        self._mac_key = _derive(master_key, b"content mac")
        self.auth_key = _derive(master_key, b"auth")
        self.ekpubhash = record.get("ekpubhash")

    def __repr__(self):
        return "KeyStore(%r)" % self.path

    # -- paths and files ---------------------------------------------------------------------
    def _item_dir(self, name):
        return os.path.join(self.items, hashlib.sha256(name.encode("utf-8")).hexdigest())

    @staticmethod
    def _versions(directory):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        versions = []
        for entry in names:
            match = VERSION_FILE_RE.fullmatch(entry)
            if match:
                versions.append(int(match.group(1)))
        return sorted(versions)

    def content_mac(self, name, data):
        return hmac.new(self._mac_key, name.encode("utf-8") + b"\0" + data, hashlib.sha256).hexdigest()

    def _read_version(self, name, directory, version):
        path = os.path.join(directory, "v%08d.json" % version)
        try:
            raw = _read_small(path)
        except FileNotFoundError:
            raise NotFoundError("%s has no version %d" % (name, version)) from None
        except OSError as exc:
            raise KeyServerError("cannot read %s version %d: %s" % (name, version, exc.strerror), 500) from None
        try:
            header, body, rest = (raw.split(b"\n", 2) + [b"", b""])[:3]
            record = jsonutil.loads(header, "item file", max_bytes=MAX_HEADER_BYTES)
            sealed = jsonutil.loads(body, "item file", max_bytes=MAX_FILE_BYTES)
            if rest or not isinstance(record, dict) or not isinstance(sealed, dict) or set(sealed) != {"ciphertext"}:
                raise StoreCorruptError("layout")
            record["ciphertext"] = sealed["ciphertext"]
        except (HcpError, ValueError):
            raise StoreCorruptError("%s version %d is not a v1 item file: the store was damaged" % (name, version)) from None
        if (not isinstance(record, dict) or record.get("format") != ITEM_FORMAT or record.get("version") != VERSION
                or record.get("name") != name or record.get("item_version") != version):
            raise StoreCorruptError("%s version %d does not belong there (moved or edited file): refused" % (name, version))
        return record

    def _aad(self, record):
        header = dict((k, v) for k, v in record.items() if k != "ciphertext")
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def _decrypt(self, record):
        try:
            nonce = base64.b64decode(record["nonce"], validate=True)
            ciphertext = base64.b64decode(record["ciphertext"], validate=True)
            return self._aead.decrypt(nonce, ciphertext, self._aad(record))
        except (InvalidTag, KeyError, TypeError, ValueError):
            raise StoreCorruptError("%s version %s failed authentication (edited, moved or not of this store's key)" % (
                record.get("name"), record.get("item_version"))) from None

    @staticmethod
    def meta(record):
        """The public metadata of an item version (never its data)."""
        return {"name": record["name"], "item_version": record["item_version"], "created": record["created"],
                "exportable": record["exportable"], "measurements": list(record["measurements"])}

    # -- operations ----------------------------------------------------------------------------
    def latest(self, name):
        """The record (header + ciphertext) of the latest version of ``name``; NotFoundError."""
        name = validate_name(name)
        directory = self._item_dir(name)
        versions = self._versions(directory)
        if not versions:
            raise NotFoundError("no item %s" % name)
        return self._read_version(name, directory, versions[-1])

    def record(self, name, item_version=None):
        """The record of ``item_version`` of ``name`` (latest when None); NotFoundError."""
        if item_version is None:
            return self.latest(name)
        name = validate_name(name)
        directory = self._item_dir(name)
        if not self._versions(directory):
            raise NotFoundError("no item %s" % name)
        return self._read_version(name, directory, item_version)

    def retrieve(self, name, item_version=None):
        """(data bytes, metadata) of a version of ``name`` (latest when None)."""
        record = self.record(name, item_version)
        return self._decrypt(record), self.meta(record)

    def store(self, name, data, exportable=True, measurements=(), if_changed=True, dry_run=False):
        """Store ``data`` as the next version of ``name``. With ``if_changed`` a latest version
        with the same data, ``exportable`` and ``measurements`` is kept (changed false). Returns
        the metadata plus ``changed``."""
        name = validate_name(name)
        if not isinstance(data, bytes):
            raise KeyServerError("item data must be bytes")
        if len(data) > self.max_item_bytes:
            raise KeyServerError("item data of %d bytes exceeds the %d-byte limit" % (len(data), self.max_item_bytes), 413)
        if not isinstance(exportable, bool):
            raise KeyServerError("exportable must be a boolean")
        measurements = sorted(set(validate_measurement(m) for m in measurements or ()))
        if len(measurements) > MAX_MEASUREMENTS:
            raise KeyServerError("at most %d measurements per item" % MAX_MEASUREMENTS)
        if not exportable and not measurements:
            raise KeyServerError("a non-exportable item needs the measurements of the hosts it may be released to")
        mac = self.content_mac(name, data)
        directory = self._item_dir(name)
        with self._lock(name):
            versions = self._versions(directory)
            if versions and if_changed:
                current = self._read_version(name, directory, versions[-1])
                if (hmac.compare_digest(str(current.get("content_mac")), mac) and current["exportable"] == exportable
                        and sorted(current["measurements"]) == measurements):
                    return dict(self.meta(current), changed=False)
            version = versions[-1] + 1 if versions else 1
            if version > MAX_VERSION:
                raise KeyServerError("%s has reached the last version number" % name, 409)
            record = {"format": ITEM_FORMAT, "version": VERSION, "name": name, "item_version": version, "created": _now(),
                      "exportable": exportable, "measurements": measurements, "content_mac": mac,
                      "nonce": _b64(os.urandom(12))}
            if dry_run:
                return dict(self.meta(record), changed=True)
            ciphertext = _b64(self._aead.encrypt(base64.b64decode(record["nonce"]), data, self._aad(record)))
            # line 1: the header (listing reads only this line), line 2: the ciphertext
            blob = (json.dumps(record, sort_keys=True) + "\n" + json.dumps({"ciphertext": ciphertext}) + "\n").encode("utf-8")
            self._clean_temporaries(directory)
            if not os.path.isdir(directory):
                try:
                    os.mkdir(directory, 0o700)
                    _fsync_dir(self.items)
                except OSError as exc:
                    raise _full(exc, "the directory of %s" % name) from None
            write_durable(directory, "v%08d.json" % version, blob)
            for old in versions[:max(0, len(versions) + 1 - self.keep_versions)]:
                try:
                    os.unlink(os.path.join(directory, "v%08d.json" % old))
                except OSError:
                    pass
            return dict(self.meta(record), changed=True)

    def delete(self, name, dry_run=False):
        """Remove every version of ``name``; True when it existed."""
        name = validate_name(name)
        directory = self._item_dir(name)
        with self._lock(name):
            if not self._versions(directory):
                return False
            if dry_run:
                return True
            # rename first (atomic): a crash mid-removal leaves a hidden directory, never half an item
            grave = os.path.join(self.items, ".deleted-%s-%s" % (os.path.basename(directory), os.urandom(4).hex()))
            os.rename(directory, grave)
            _fsync_dir(self.items)
            shutil.rmtree(grave, ignore_errors=True)
            return True

    def names(self, prefix, limit=1000):
        """The latest records of the items whose names start with ``prefix`` (sorted by name, at most ``limit``)."""
        found = []
        try:
            entries = sorted(os.listdir(self.items))
        except OSError as exc:
            raise KeyServerError("cannot list the key-server store: %s" % exc.strerror, 500) from None
        for entry in entries:
            if not ITEM_DIR_RE.fullmatch(entry):
                continue
            directory = os.path.join(self.items, entry)
            versions = self._versions(directory)
            if not versions:
                continue
            try:
                record = jsonutil.loads(_read_header(os.path.join(directory, "v%08d.json" % versions[-1])), "item header",
                                        max_bytes=MAX_HEADER_BYTES)
                name = record["name"]
                if (not isinstance(name, str) or self._item_dir(name) != directory or record.get("format") != ITEM_FORMAT
                        or record.get("item_version") != versions[-1]):
                    continue
            except (OSError, HcpError, KeyError, TypeError):
                continue
            if name.startswith(prefix):
                found.append(record)
        found.sort(key=lambda r: r["name"])
        return found[:limit]

    @contextlib.contextmanager
    def _lock(self, name):
        """The item's writer lock (flock on ``items/<hash>.lock``, across processes)."""
        try:
            fd = os.open(self._item_dir(name) + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _full(exc, "the lock of %s" % name) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _clean_temporaries(directory):
        """Remove temporary files a killed writer left (called under the item's lock)."""
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.startswith(".tmp-"):
                path = os.path.join(directory, entry)
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        os.unlink(path)
                except OSError:
                    pass


def main(argv=None):
    """``python -m ansible_collections.hcp.core.plugins.module_utils.keyserver.store init STORE
    (--tcti TCTI | --ek-public FILE) [--policy JSON]`` creates an empty store whose master key is
    sealed to that TPM (the key-server host's; ``--ek-public``: its EK public key or certificate
    in any form envelope.seal accepts, so the store can be prepared off the host), and prints
    ``{"path", "ekpubhash"}``; ``check STORE [--tcti TCTI]`` opens it (the master key unsealed by
    the TPM) and prints the same. Exit 0, or 1 with the reason on stderr."""
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="hcp-keyserver-store")
    parser.add_argument("command", choices=["init", "check"])
    parser.add_argument("store")
    parser.add_argument("--tcti")
    parser.add_argument("--ek-public")
    parser.add_argument("--policy", help="envelope unseal policy (JSON), default none")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            if args.ek_public:
                with open(args.ek_public, "rb") as handle:
                    ek_public = handle.read()
            else:
                from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm  # pylint: disable=import-outside-toplevel

                with Tpm(args.tcti) as tpm:
                    ek_public = tpm.ek_public()
            policy = json.loads(args.policy) if args.policy else None
            result = init_store(args.store, ek_public, policy=policy)
        else:
            from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm  # pylint: disable=import-outside-toplevel

            with Tpm(args.tcti) as tpm:
                store = open_store(args.store, tpm)
            result = {"path": store.path, "ekpubhash": store.ekpubhash}
    except (OSError, ValueError, HcpError) as exc:
        sys.stderr.write("hcp-keyserver-store: %s\n" % exc)
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a program
    raise SystemExit(main())
