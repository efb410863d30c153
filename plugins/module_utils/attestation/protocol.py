# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attestation protocol (v1), shared by the server and the host-side client.

Wire formats: docs/attestation.md. What both sides must agree on lives here once: the version
and format names, the refusal classes and their HTTP statuses, the PCR selection's normal form,
the response's authenticated header (AAD) and its decryption. The client imports this module,
never the server (``attestation/server.py``) nor the enrollment generators.
"""

from __future__ import annotations

import base64
import binascii
import json

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, InvalidEkError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import PCR_BANKS, parse_pcr_indices

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - reported by require_cryptography()
    AESGCM = None

PROTOCOL_VERSION = 1
RESPONSE_FORMAT = "hcp.core.attest.response"
PAYLOAD_FORMAT = "hcp.core.attest.payload"
NONCE_BYTES = 16
DEFAULT_PCR_SELECTION = {"sha256": list(range(24))}


class AttestError(HcpError):
    """An attestation request is refused; ``status`` is the HTTP status the face returns."""

    status = 400


class AttestRequestError(AttestError):
    """The request is malformed (missing/oversized/undecodable field)."""

    status = 400


class TicketInvalidError(AttestError):
    """The ticket is not one this server (or a replica sharing its key) issued."""

    status = 401


class TicketExpiredError(AttestError):
    """The ticket is older than the maximum age (or dated in the future)."""

    status = 403


class ReplayError(AttestError):
    """The ticket (hence its nonce and any quote over it) was already used."""

    status = 409


class EkRejectedError(AttestError):
    """The EK does not match the ticket, lacks EK attributes, or its certificate is missing/untrusted."""

    status = 403


class QuoteRejectedError(AttestError):
    """The quote failed verification (AK attributes, signature, nonce, PCR digest, selection)."""

    status = 403


class PcrPolicyError(AttestError):
    """The quoted PCR values differ from the golden values in the host's profile."""

    status = 403


class NotEnrolledError(AttestError):
    """The EK is not enrolled in the current snapshot."""

    status = 404


class AttestUnavailableError(AttestError):
    """The server cannot decide now (no DB snapshot, replay cache full)."""

    status = 503


def require_cryptography():
    if AESGCM is None:
        raise MissingDependencyError("the Python library 'cryptography' is required for attestation")


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(value, what, max_len=None, exc=AttestRequestError):
    if not isinstance(value, str) or (max_len is not None and len(value) > max_len):
        raise exc("%s is missing, not a string or too long" % what)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise exc("%s is not base64" % what)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def normalize_selection(selection):
    """{bank: sorted indices} from e.g. {"sha256": [0, 7]} or {"sha256": "0,7"}."""
    if not isinstance(selection, dict) or not selection:
        raise AttestError("PCR selection must be a non-empty object {bank: [indices]}")
    out = {}
    for bank, indices in selection.items():
        if bank not in PCR_BANKS:
            raise AttestError("unsupported PCR bank %r" % (bank,))
        try:
            out[bank] = parse_pcr_indices(indices)
        except ValueError as exc:
            raise AttestError("bad PCR selection: %s" % exc)
        if not out[bank]:
            raise AttestError("PCR selection for %s is empty" % bank)
    if list(out) != ["sha256"]:
        raise AttestError("the quote format supports one PCR bank: sha256")
    return out


MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


def response_aad(response):
    """The AEAD associated data of a response: canonical JSON of its authenticated header."""
    keys = ("format", "version", "ekpubhash", "ak_name", "nonce", "snapshot", "credential_blob", "encrypted_secret", "iv")
    return canonical(dict((k, response.get(k)) for k in keys))


def decrypt_response(response, session_key):
    """The payload dict of a response under ``session_key`` (AttestError on tampering)."""
    require_cryptography()
    try:
        iv = base64.b64decode(response["iv"], validate=True)
        ciphertext = base64.b64decode(response["ciphertext"], validate=True)
        plaintext = AESGCM(session_key).decrypt(iv, ciphertext, response_aad(response))
    except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
        raise AttestError("attestation response failed authentication (tampered or not for this TPM)")
    try:
        # Authenticated, but by whoever answered: bounded like any input (a payload carries the
        # sealed assets, so its size bound is the client's response bound).
        payload = jsonutil.loads(plaintext, what="the attestation payload", max_bytes=MAX_PAYLOAD_BYTES)
    except jsonutil.JsonInputError as exc:
        raise AttestError(str(exc))
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT or payload.get("version") != PROTOCOL_VERSION:
        raise AttestError("attestation payload has an unknown format")
    return payload


def classify(exc):
    """HTTP status of an exception raised by Attestor (500 for anything unexpected)."""
    if isinstance(exc, AttestError):
        return exc.status
    if isinstance(exc, (InvalidEkError,)):
        return 403
    return 500
