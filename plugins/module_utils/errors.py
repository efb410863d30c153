# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions of the hcp.core library.

Every failure the library can diagnose is an HcpError subclass whose message names the
cause and never contains secret material, so faces (modules, lookups, services) can show
``str(exc)`` to an operator as is.
"""

from __future__ import annotations


class HcpError(Exception):
    """Base class of every error raised on purpose by hcp.core.

    ``status``: the HTTP status a service answered or a face should answer (0: the service could
    not be reached or read; None: not an HTTP matter). Always the second argument."""

    status = None

    def __init__(self, message="", status=None):
        super(HcpError, self).__init__(message)
        if status is not None:
            self.status = status


class MissingDependencyError(HcpError):
    """A Python library the operation needs (tpm2-pytss, cryptography) is not importable."""


class TpmUnavailableError(HcpError):
    """The TPM cannot be reached through the configured TCTI."""


class TpmError(HcpError):
    """The TPM refused a command for a reason not covered by a more specific error."""


class InvalidEkError(HcpError):
    """An EK public key (or certificate) is malformed or lacks the EK attributes."""


class EnvelopeError(HcpError):
    """A sealed envelope cannot be used."""


class EnvelopeFormatError(EnvelopeError):
    """The envelope is not well-formed JSON of the documented layout."""


class EnvelopeVersionError(EnvelopeError):
    """The envelope's format version is not one this library understands."""


class EnvelopeIntegrityError(EnvelopeError):
    """The envelope was tampered with: AEAD authentication or credential integrity failed."""


class WrongTpmError(EnvelopeError):
    """The envelope was sealed to another TPM's EK."""


class PolicyNotSatisfiedError(EnvelopeError):
    """The TPM's current state (PCR values) does not satisfy the envelope's policy."""


class QuoteVerificationError(HcpError):
    """A TPM quote failed verification (signature, nonce, PCR digest or AK attributes)."""


class ShareKeyError(HcpError):
    """The persistent AES share-protection key cannot be created, found or used."""
