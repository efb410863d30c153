# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Share protection with a PKCS#11 secret key (an HSM; SoftHSM2 in tests), via python-pkcs11.

An AES-256 key (sensitive, non-extractable, token object) is found or created by label;
data is encrypted inside the token with CKM_AES_GCM (SoftHSM2 >= 2.0 implements it).
Blob layout: version byte 0x01 | 12-byte random nonce | ciphertext | 16-byte GCM tag, the
AAD being ``b"hcp.core hsm v1"``. The PIN is never part of an error message or repr.
"""

from __future__ import annotations

import os

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11 import exceptions as pkcs11_exceptions
    from pkcs11.mechanisms import GCMParams
except ImportError:  # pragma: no cover
    pkcs11 = None

BLOB_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
AAD = b"hcp.core hsm v1"
MECHANISM_NAME = "CKM_AES_GCM"


class HsmError(HcpError):
    """The HSM cannot be opened or refused an operation."""


class HsmAuthError(HsmError):
    """The token refused the user PIN."""


class HsmIntegrityError(HsmError):
    """A protected blob is malformed or fails GCM authentication (tampered, or another key)."""


def require_pkcs11():
    if pkcs11 is None:
        raise MissingDependencyError("python-pkcs11 is required for HSM share protection (pip install python-pkcs11)")


class Hsm:
    """An open user session on one PKCS#11 token::

        with Hsm("/usr/lib/softhsm/libsofthsm2.so", "hcp", pin) as hsm:
            hsm.ensure_key("hcp-share-key")
            blob = hsm.encrypt(data)
    """

    def __init__(self, module_path, token_label, pin):
        require_pkcs11()
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin
        self._session = None
        self._key = None
        self.key_label = None

    def __repr__(self):
        return "Hsm(module_path=%r, token_label=%r, key_label=%r)" % (self.module_path, self.token_label, self.key_label)

    def __enter__(self):
        try:
            lib = pkcs11.lib(self.module_path)
        except (RuntimeError, OSError) as exc:
            raise HsmError("cannot load the PKCS#11 module %s: %s" % (self.module_path, type(exc).__name__)) from None
        try:
            token = lib.get_token(token_label=self.token_label)
        except pkcs11_exceptions.NoSuchToken:
            raise HsmError("no PKCS#11 token labelled %r in %s" % (self.token_label, self.module_path)) from None
        except pkcs11_exceptions.PKCS11Error as exc:
            raise HsmError("cannot find the token %r: %s" % (self.token_label, type(exc).__name__)) from None
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except (pkcs11_exceptions.PinIncorrect, pkcs11_exceptions.PinLenRange, pkcs11_exceptions.PinInvalid):
            raise HsmAuthError("the token %r refused the user PIN" % self.token_label) from None
        except pkcs11_exceptions.PKCS11Error as exc:
            raise HsmError("cannot open a session on the token %r: %s" % (self.token_label, type(exc).__name__)) from None
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        if self._session is not None:
            try:
                self._session.close()
            finally:
                self._session = None
                self._key = None

    def _require_session(self):
        if self._session is None:
            raise HsmError("the HSM session is not open (use Hsm as a context manager)")

    def ensure_key(self, label):
        """Find the AES key labelled ``label`` or create it (AES-256, sensitive, non-extractable);
        returns True when created."""
        self._require_session()
        created = False
        try:
            key = self._session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
        except pkcs11_exceptions.NoSuchKey:
            try:
                key = self._session.generate_key(KeyType.AES, 256, label=label, store=True, template={
                    Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                })
            except pkcs11_exceptions.PKCS11Error as exc:
                raise HsmError("cannot create the AES key %r: %s" % (label, type(exc).__name__)) from None
            created = True
        except pkcs11_exceptions.MultipleObjectsReturned:
            raise HsmError("several AES keys are labelled %r on the token %r" % (label, self.token_label)) from None
        if key[Attribute.VALUE_LEN] != 32 or key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
            raise HsmError("the key %r is not a sensitive, non-extractable AES-256 key" % label)
        self._key = key
        self.key_label = label
        return created

    def _require_key(self):
        self._require_session()
        if self._key is None:
            raise HsmError("no key selected: call ensure_key(label) first")

    def describe(self):
        """Public facts recorded next to an HSM-protected share."""
        return {"token_label": self.token_label, "key_label": self.key_label, "mechanism": MECHANISM_NAME}

    def encrypt(self, data):
        self._require_key()
        nonce = os.urandom(NONCE_SIZE)
        try:
            sealed = self._key.encrypt(bytes(data), mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, AAD))
        except pkcs11_exceptions.PKCS11Error as exc:
            raise HsmError("HSM encryption failed: %s" % type(exc).__name__) from None
        return bytes([BLOB_VERSION]) + nonce + bytes(sealed)

    def decrypt(self, blob):
        self._require_key()
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE or blob[0] != BLOB_VERSION:
            raise HsmIntegrityError("HSM blob is truncated or of an unknown version")
        nonce, sealed = blob[1:1 + NONCE_SIZE], blob[1 + NONCE_SIZE:]
        try:
            return bytes(self._key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, AAD)))
        except (pkcs11_exceptions.EncryptedDataInvalid, pkcs11_exceptions.EncryptedDataLenRange,
                pkcs11_exceptions.FunctionFailed, pkcs11_exceptions.GeneralError):
            raise HsmIntegrityError("HSM blob fails authentication (tampered, or another key)") from None
        except pkcs11_exceptions.PKCS11Error as exc:
            raise HsmError("HSM decryption failed: %s" % type(exc).__name__) from None
