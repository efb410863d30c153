# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The persistent AES-256-CFB key that protects Shamir shares on a host (seed 004).

A primary key under the owner hierarchy from a fixed template, made persistent at
0x81000002 (or the next free handle up to 0x81000005 when a foreign object holds it).
"Ours" is recognised by name: a primary derived from the same template and owner seed
always has the same name. Encryption uses TPM2_EncryptDecrypt2 over a salted HMAC
session with parameter encryption, so neither plaintext nor ciphertext crosses the bus
in clear.
"""

from __future__ import annotations

import hmac
import os

from ansible_collections.hcp.core.plugins.module_utils.errors import ShareKeyError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import require_tpm2_pytss, tss_rc

try:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMS_SYMCIPHER_PARMS,
        TPMT_PUBLIC,
        TPMT_SYM_DEF_OBJECT,
        TPMU_PUBLIC_PARMS,
    )
except ImportError:  # pragma: no cover
    TSS2_Exception = None

SHARE_KEY_HANDLES = (0x81000002, 0x81000003, 0x81000004, 0x81000005)
IV_SIZE = 16
MAX_CHUNK = 1024  # MAX_DIGEST_BUFFER on common TPMs


def share_key_template():
    attrs = (
        TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA
    )
    sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES)
    sym.keyBits.aes = 256
    sym.mode.aes = TPM2_ALG.CFB
    return TPM2B_PUBLIC(
        publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.SYMCIPHER,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=attrs,
            parameters=TPMU_PUBLIC_PARMS(symDetail=TPMS_SYMCIPHER_PARMS(sym=sym)),
        )
    )


def _expected_name(tpm):
    """Name of our key on this TPM: create the primary transiently and read its name."""
    handle = None
    try:
        handle, _pub, _cd, _ch, _tk = tpm.ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), share_key_template(), ESYS_TR.OWNER
        )
        return handle, bytes(tpm.ectx.tr_get_name(handle))
    except TSS2_Exception as exc:
        tpm.flush(handle)
        raise ShareKeyError("cannot derive the share key under the owner hierarchy: %s (rc 0x%x)" % (exc, tss_rc(exc)))


def _scan(tpm, name):
    """({handle: 'ours'|'foreign'|'free'}) over the candidate persistent handles."""
    out = {}
    for handle in SHARE_KEY_HANDLES:
        try:
            tr = tpm.ectx.tr_from_tpmpublic(handle)
        except TSS2_Exception:
            out[handle] = "free"
            continue
        try:
            out[handle] = "ours" if hmac.compare_digest(bytes(tpm.ectx.tr_get_name(tr)), name) else "foreign"
        finally:
            tpm.ectx.tr_close(tr)
    return out


def find_share_key(tpm):
    """The persistent handle (int) holding our share key, or None."""
    require_tpm2_pytss()
    transient, name = _expected_name(tpm)
    tpm.flush(transient)
    return next((h for h, state in _scan(tpm, name).items() if state == "ours"), None)


def ensure_share_key(tpm, create=True):
    """Return (handle, created): find our persistent key or persist a new one at the first free handle."""
    require_tpm2_pytss()
    if not tpm.supports_encrypt_decrypt2():
        raise ShareKeyError("this TPM does not implement TPM2_EncryptDecrypt2 (command 0x193)")
    transient, name = _expected_name(tpm)
    try:
        states = _scan(tpm, name)
        for handle, state in states.items():
            if state == "ours":
                return handle, False
        free = [h for h, state in states.items() if state == "free"]
        if not free:
            raise ShareKeyError(
                "no free persistent handle for the share key: 0x%x-0x%x hold foreign objects"
                % (SHARE_KEY_HANDLES[0], SHARE_KEY_HANDLES[-1])
            )
        if not create:
            return free[0], True
        try:
            persisted = tpm.ectx.evict_control(ESYS_TR.OWNER, transient, free[0])
            tpm.ectx.tr_close(persisted)
        except TSS2_Exception as exc:
            raise ShareKeyError("cannot persist the share key at 0x%x: %s" % (free[0], exc))
        return free[0], True
    finally:
        tpm.flush(transient)


def _crypt(tpm, handle, data, iv, decrypt):
    key = tpm.ectx.tr_from_tpmpublic(handle)
    out = b""
    try:
        with tpm.salted_session() as session:
            for start in range(0, len(data), MAX_CHUNK) or [0]:
                chunk = data[start:start + MAX_CHUNK]
                result, iv_out = tpm.ectx.encrypt_decrypt_2(
                    key, decrypt, TPM2_ALG.CFB, iv, chunk, session1=session
                )
                out += bytes(result)
                iv = bytes(iv_out)
    except TSS2_Exception as exc:
        raise ShareKeyError("TPM EncryptDecrypt2 failed: %s (rc 0x%x)" % (exc, tss_rc(exc)))
    finally:
        tpm.ectx.tr_close(key)
    return out


def encrypt(tpm, handle, plaintext):
    """AES-256-CFB encrypt with the share key at ``handle``; returns IV || ciphertext."""
    iv = os.urandom(IV_SIZE)
    return iv + _crypt(tpm, handle, bytes(plaintext), iv, False)


def decrypt(tpm, handle, blob):
    """Inverse of encrypt(). CFB has no integrity: callers authenticate the plaintext."""
    if len(blob) < IV_SIZE:
        raise ShareKeyError("protected blob is shorter than its IV")
    return _crypt(tpm, handle, bytes(blob[IV_SIZE:]), bytes(blob[:IV_SIZE]), True)
