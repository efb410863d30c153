# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""This host's protected Shamir share on disk (seed 004), share file format v1.

The share is stored in a JSON document that records how it is protected:

* ``tpm``: encrypted with the persistent AES share key (tpm/share_key.py, EncryptDecrypt2);
  the document records the key's handle and TPM name;
* ``hsm``: encrypted with a PKCS#11 secret key (unseal/hsm.py);
* ``plaintext``: the share bytes as is (the file is 0600 either way).

``protect_with_tpm`` is ``best-effort`` (TPM when usable, else plaintext), ``require``
(refuse on first write when the TPM is unusable; on an already-operational host fall back
to plaintext; both raise the ``tpm-protection-unavailable`` alert) or ``never``.
``inspect_share`` reads only the document (never decrypts): ``protected_with_tpm`` is a
fact about the on-disk format. Layout: docs/shamir-share-format.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import socket

from ansible_collections.hcp.core.plugins.module_utils.tpm import share_key
from ansible_collections.hcp.core.plugins.module_utils.errors import (
    HcpError,
    MissingDependencyError,
    ShareKeyError,
    TpmUnavailableError,
)
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.unseal.shamir import Share, ShareFormatError

FORMAT = "hcp.core.share"
VERSION = 1
MODES = ("best-effort", "require", "never")
ALERT_NAME = "tpm-protection-unavailable"


class ShareStoreError(HcpError):
    """The share file cannot be written or read."""


class ShareFileFormatError(ShareStoreError):
    """The share file is not a well-formed share document of a known version."""


class ProtectionUnavailableError(ShareStoreError):
    """protect_with_tpm=require and no usable TPM on a host that is not operational yet.

    ``alert`` holds the tpm-protection-unavailable alert to raise."""

    def __init__(self, message, alert):
        super().__init__(message)
        self.alert = alert


class ShareUndecryptableError(ShareStoreError):
    """The protected share cannot be decrypted here: the TPM was replaced or cleared
    (share key absent or a different key at the recorded handle) or decryption failed."""


class StoreResult:
    """Outcome of write_share: protection ('tpm'|'hsm'|'plaintext'), handle (int|None),
    alert (dict|None) and reason (why the TPM was not used, or None)."""

    __slots__ = ("protection", "handle", "alert", "reason")

    def __init__(self, protection, handle=None, alert=None, reason=None):
        self.protection = protection
        self.handle = handle
        self.alert = alert
        self.reason = reason

    def __repr__(self):
        return "StoreResult(protection=%r, handle=%r, alert=%r, reason=%r)" % (
            self.protection, self.handle, self.alert, self.reason)


def _default_tpm_factory():
    from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm  # pylint: disable=import-outside-toplevel

    return Tpm()


def _key_name(tpm, handle):
    """TPM name (bytes) of the object at a persistent handle."""
    tr = tpm.ectx.tr_from_tpmpublic(handle)
    try:
        return bytes(tpm.ectx.tr_get_name(tr))
    finally:
        tpm.ectx.tr_close(tr)


def _tpm_protect(tpm_factory, data):
    with (tpm_factory or _default_tpm_factory)() as tpm:
        handle, dummy = share_key.ensure_share_key(tpm)
        return handle, _key_name(tpm, handle), share_key.encrypt(tpm, handle, data)


def make_alert(reason, hostname=None):
    """The tpm-protection-unavailable alert."""
    return {"name": ALERT_NAME, "severity": "major", "kind": "security",
            "hostname": hostname or socket.gethostname(), "reason": reason}


def _document(share, protection, data, tpm_info=None, hsm_info=None):
    return {
        "format": FORMAT,
        "version": VERSION,
        "protection": protection,
        "tpm": tpm_info,
        "hsm": hsm_info,
        "share": {"index": share.index, "threshold": share.threshold, "count": share.count,
                  "set_id": share.set_id.hex(), "secret_length": share.secret_length},
        "data": base64.b64encode(data).decode("ascii"),
    }


def write_share(path, share, mode="best-effort", tpm_factory=None, hsm=None, operational=False, hostname=None):
    """Protect ``share`` and write it to ``path`` (atomically, 0600); return a StoreResult.

    ``hsm`` (an open hsm.Hsm, or any object with encrypt/decrypt/describe) takes precedence
    over the TPM unless mode is 'never'. ``tpm_factory`` returns a context-managed tpm.Tpm
    (default: the TCTI from the environment)."""
    if mode not in MODES:
        raise ShareStoreError("protect_with_tpm must be one of %s, got %r" % (", ".join(MODES), mode))
    if not isinstance(share, Share):
        raise ShareStoreError("write_share needs a shamir.Share, got %s" % type(share).__name__)
    raw = share.to_bytes()
    if mode != "never" and hsm is not None:
        doc = _document(share, "hsm", hsm.encrypt(raw), hsm_info=hsm.describe())
        atomic_write(path, json.dumps(doc, indent=1).encode("utf-8"))
        return StoreResult("hsm")
    alert = reason = None
    if mode != "never":
        try:
            handle, name, blob = _tpm_protect(tpm_factory, raw)
        except (TpmUnavailableError, ShareKeyError, MissingDependencyError) as exc:
            reason = "no usable TPM: %s" % exc
        else:
            doc = _document(share, "tpm", blob, tpm_info={"handle": "0x%08x" % handle, "key_name": name.hex()})
            atomic_write(path, json.dumps(doc, indent=1).encode("utf-8"))
            return StoreResult("tpm", handle=handle)
        if mode == "require":
            alert = make_alert(reason, hostname)
            if not operational:
                raise ProtectionUnavailableError(
                    "protect_with_tpm=require and %s; refusing to store the share (host stays sealed)" % reason, alert)
    else:
        reason = "protect_with_tpm=never"
    atomic_write(path, json.dumps(_document(share, "plaintext", raw), indent=1).encode("utf-8"))
    return StoreResult("plaintext", alert=alert, reason=reason)


def _load(path):
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise ShareStoreError("no share file at %s" % path) from None
    except (ValueError, UnicodeDecodeError):
        raise ShareFileFormatError("%s is not a JSON share document" % path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ShareFileFormatError("%s is not an %s document" % (path, FORMAT))
    if doc.get("version") != VERSION:
        raise ShareFileFormatError("%s: unsupported share file version %r (this library reads %d)"
                                   % (path, doc.get("version"), VERSION))
    protection = doc.get("protection")
    if protection not in ("tpm", "hsm", "plaintext"):
        raise ShareFileFormatError("%s: unknown protection %r" % (path, protection))
    try:
        doc["_data"] = base64.b64decode(doc["data"], validate=True)
        if protection == "tpm":
            doc["_handle"] = int(doc["tpm"]["handle"], 16)
            doc["_key_name"] = bytes.fromhex(doc["tpm"]["key_name"])
        meta = doc["share"]
        doc["_meta"] = (int(meta["index"]), int(meta["threshold"]), int(meta["count"]), bytes.fromhex(meta["set_id"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ShareFileFormatError("%s: missing or malformed members" % path) from None
    return doc


def inspect_share(path):
    """Protection facts from the document alone (never decrypts)."""
    doc = _load(path)
    meta = doc["share"]
    return {
        "protection": doc["protection"],
        "protected_with_tpm": doc["protection"] == "tpm",
        "handle": doc["tpm"]["handle"] if doc["protection"] == "tpm" else None,
        "key_name": doc["tpm"]["key_name"] if doc["protection"] == "tpm" else None,
        "hsm": doc["hsm"] if doc["protection"] == "hsm" else None,
        "index": meta["index"], "threshold": meta["threshold"], "count": meta["count"], "set_id": meta["set_id"],
    }


def _tpm_unprotect(tpm_factory, doc, path):
    with (tpm_factory or _default_tpm_factory)() as tpm:
        handle = share_key.find_share_key(tpm)
        if handle is None:
            raise ShareUndecryptableError("%s: this TPM holds no share key (TPM replaced or cleared)" % path)
        if handle != doc["_handle"]:
            raise ShareUndecryptableError("%s: the share was protected by the key at 0x%08x; this TPM's share key "
                                          "is at 0x%08x (TPM replaced)" % (path, doc["_handle"], handle))
        if not hmac.compare_digest(_key_name(tpm, handle), doc["_key_name"]):
            raise ShareUndecryptableError("%s: the key at 0x%08x is not the one that protected the share "
                                          "(TPM replaced)" % (path, handle))
        try:
            return share_key.decrypt(tpm, handle, doc["_data"])
        except ShareKeyError as exc:
            raise ShareUndecryptableError("%s: TPM decryption failed: %s" % (path, exc)) from None


def read_share(path, tpm_factory=None, hsm=None):
    """Read and unprotect the share at ``path``.

    TpmUnavailableError when the TPM cannot be reached; ShareUndecryptableError when the
    TPM or HSM key cannot decrypt it; ShareFormatError for a corrupted plaintext share."""
    doc = _load(path)
    if doc["protection"] == "plaintext":
        share = Share.from_bytes(doc["_data"], "share file %s" % path)
    else:
        if doc["protection"] == "tpm":
            raw = _tpm_unprotect(tpm_factory, doc, path)
        else:
            if hsm is None:
                raise ShareUndecryptableError("%s is HSM-protected and no HSM was given" % path)
            try:
                raw = hsm.decrypt(doc["_data"])
            except HcpError as exc:
                raise ShareUndecryptableError("%s: HSM decryption failed: %s" % (path, exc)) from None
        try:
            share = Share.from_bytes(raw, "share file %s" % path)
        except ShareFormatError:
            raise ShareUndecryptableError("%s: decrypted share fails its integrity check (wrong key or altered file)"
                                          % path) from None
    if (share.index, share.threshold, share.count, share.set_id) != doc["_meta"]:
        raise ShareFileFormatError("%s: share metadata does not match the stored share" % path)
    return share


def tpm_usable(tpm_factory):
    """(usable, reason): can a share key be found or created on the TPM ``tpm_factory()`` opens?"""
    try:
        with tpm_factory() as tpm:
            share_key.ensure_share_key(tpm, create=False)
    except HcpError as exc:
        return False, "no usable TPM: %s" % exc
    return True, None


def share_facts(path):
    """What a share file says about itself (no secret): protection, handle, index, threshold, count, set id."""
    facts = inspect_share(path)
    return dict(exists=True, protection=facts["protection"], protected_with_tpm=facts["protected_with_tpm"],
                handle=facts["handle"], index=facts["index"], threshold=facts["threshold"], count=facts["count"],
                set_id=facts["set_id"])


def ensure_share(path, share, mode="best-effort", tpm_factory=None, hsm=None, operational=False, hostname=None,
                 check_mode=False):
    """Keep ``share`` at ``path`` with the protection ``mode`` asks for (what module hcp.core.shamir_share does).

    Rewrites only when the content differs or a better protection became available (a plaintext share
    upgraded once the TPM is usable). Returns dict(changed, alert, reason, **share_facts) (in check mode
    only ``changed``, ``exists``, ``alert``, ``reason``). ProtectionUnavailableError as write_share."""
    tpm_factory = tpm_factory or _default_tpm_factory
    current = facts = None
    exists = os.path.exists(path)
    if exists:
        try:
            facts = inspect_share(path)
            current = read_share(path, tpm_factory=tpm_factory, hsm=hsm)
        except HcpError:
            current = None
    alert = reason = None
    if current == share:
        protection = facts["protection"]
        if mode == "never":
            up_to_date = protection == "plaintext"
        elif hsm is not None:
            up_to_date = protection == "hsm"
        elif protection == "tpm":
            up_to_date = True
        else:  # plaintext now, TPM wanted: rewrite only when the TPM became usable
            usable, reason = tpm_usable(tpm_factory)
            up_to_date = not usable
            if up_to_date and mode == "require":
                alert = make_alert(reason, hostname)
        if up_to_date:
            return dict(changed=False, alert=alert, reason=reason, **share_facts(path))
    if check_mode:
        return dict(changed=True, exists=exists, alert=None, reason=None)
    result = write_share(path, share, mode, tpm_factory=tpm_factory, hsm=hsm, operational=operational, hostname=hostname)
    return dict(changed=True, alert=result.alert, reason=result.reason, **share_facts(path))
