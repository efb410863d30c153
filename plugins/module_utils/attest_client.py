# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attestation client (runs with the host's TPM): protocol v1 against ahcp.

``attest()`` creates an ephemeral AK under the EK, asks the server for a nonce and ticket,
quotes the requested PCRs over the nonce, sends the evidence, recovers the session key with
ActivateCredential (only this TPM, holding both the EK and the AK, can), decrypts the
entry, verifies it against the trusted asset-signer key, and unseals every sensitive asset
(extending PCR 11 afterwards when an asset carries the one-time policy).
Wire formats: docs/attestation.md.
"""

from __future__ import annotations

import base64
import binascii
import json

from ansible_collections.hcp.core.plugins.module_utils import attest as attest_mod
from ansible_collections.hcp.core.plugins.module_utils import envelope, quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.enroll import verify_entry
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError, TpmError
from ansible_collections.hcp.core.plugins.module_utils.tpm import tss_rc
from ansible_collections.hcp.core.plugins.module_utils.tpm_policy import ONE_TIME_PCR

try:
    import requests
except ImportError:  # pragma: no cover - reported when an URL is used
    requests = None

try:
    from tpm2_pytss import TSS2_Exception
except ImportError:  # pragma: no cover
    TSS2_Exception = None

ONE_TIME_EXTEND_DATA = b"hcp.core one-time unseal"
DEFAULT_TIMEOUT = 30
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class AttestClientError(HcpError):
    """The attestation failed on the client side (server unreachable or unverifiable answer)."""


class AttestServerError(AttestClientError):
    """The server refused the attestation; ``status`` is its HTTP status, the message its error."""

    def __init__(self, status, message):
        super(AttestServerError, self).__init__("attestation server refused (%s): %s" % (status, message))
        self.status = status
        self.server_message = message


def http_transport(url, ca_file=None, timeout=DEFAULT_TIMEOUT, client_cert=None, session=None):
    """A transport ``call(path, body) -> (status, dict)`` POSTing JSON to ``url`` + path.

    ``ca_file``: CA bundle to verify the server (default: the system store);
    ``client_cert``: optional (cert, key) paths."""
    if requests is None:
        raise MissingDependencyError("the Python library 'requests' is required to attest over HTTP")
    base = url.rstrip("/")
    http = session or requests.Session()

    def call(path, body):
        try:
            resp = http.post(base + path, json=body, timeout=timeout, verify=ca_file or True, cert=client_cert)
        except requests.RequestException as exc:
            raise AttestClientError("cannot reach the attestation server %s: %s" % (base, exc))
        if len(resp.content) > MAX_RESPONSE_BYTES:
            raise AttestClientError("attestation server answer is too large")
        try:
            data = resp.json()
        except ValueError:
            data = None
        return resp.status_code, data
    return call


def attestor_transport(attestor):
    """A transport calling an attest.Attestor in process (tests, benchmarks, lookups)."""
    def call(path, body):
        try:
            if path == "/v1/initiate":
                return 200, attestor.initiate((body or {}).get("ekpubhash"))
            if path == "/v1/complete":
                return 200, attestor.complete(body)
        except HcpError as exc:
            return attest_mod.classify(exc), {"error": str(exc)}
        return 404, {"error": "not found"}
    return call


def _post(transport, path, body):
    status, data = transport(path, body)
    if status != 200 or not isinstance(data, dict):
        message = data.get("error") if isinstance(data, dict) else "no JSON body"
        raise AttestServerError(status, message)
    return data


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def run_protocol(tpm, transport, extra=None):
    """Both round trips; returns (payload dict, response header dict). ``extra``: added to the
    complete request (e.g. {"eventlog": ...})."""
    ekhash = tpm.ekpubhash()
    started = _post(transport, "/v1/initiate", {"ekpubhash": ekhash})
    try:
        nonce = base64.b64decode(started["nonce"], validate=True)
        selection = attest_mod.normalize_selection(started["pcrs"])
        ticket = started["ticket"]
    except (KeyError, TypeError, ValueError, binascii.Error, HcpError):
        raise AttestClientError("the attestation server's initiate answer is malformed")
    request = {"ticket": ticket, "ekpub": _b64(tpm.ek_public().marshal())}
    cert = tpm.ek_certificate_der()
    if cert:
        request["ek_cert"] = _b64(cert)
    if extra:
        request.update(extra)
    with quote_mod.ephemeral_ak(tpm) as (ak, ak_public):
        request["quote"] = quote_mod.quote_with_ak(tpm, ak, ak_public, nonce, selection["sha256"], "sha256")
        response = _post(transport, "/v1/complete", request)
        ak_name = quote_mod.parse_ak_public(ak_public.marshal())[0]
        if response.get("format") != attest_mod.RESPONSE_FORMAT or response.get("version") != attest_mod.PROTOCOL_VERSION:
            raise AttestClientError("the attestation response has an unknown format")
        if response.get("ak_name") != ak_name.hex() or response.get("nonce") != started["nonce"] \
                or response.get("ekpubhash") != ekhash:
            raise AttestClientError("the attestation response is not for this exchange (AK, nonce or EK differ)")
        try:
            blob = base64.b64decode(response["credential_blob"], validate=True)
            secret = base64.b64decode(response["encrypted_secret"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise AttestClientError("the attestation response is malformed")
        try:
            session_key = envelope.activate_credential(tpm, ak, blob, secret)
        except TSS2_Exception as exc:
            raise AttestClientError("the TPM refused to recover the session key (response not made for this TPM): "
                                    "%s (rc 0x%x)" % (exc, tss_rc(exc)))
    try:
        payload = attest_mod.decrypt_response(response, session_key)
    except HcpError as exc:
        raise AttestClientError(str(exc))
    if payload.get("ekpubhash") != ekhash:
        raise AttestClientError("the attestation payload is for another TPM")
    return payload, response


def attest(tpm, server, signer_public, ca_file=None, timeout=DEFAULT_TIMEOUT, unseal=True, extend_pcr=True,
           client_cert=None, extra=None):
    """Attest with ``tpm`` (tpm.Tpm) to ``server`` (URL or a transport callable).

    ``signer_public``: PEM (or key) of the trusted asset signer: the entry's manifest must
    verify with it. ``unseal``: unseal sensitive assets (else they stay envelopes).
    ``extend_pcr``: after unsealing, extend PCR 11 when any asset has the one-time policy.

    Returns {hostname, ekpubhash, snapshot, manifest, assets: {name: bytes}, files:
    {stored file: bytes}, pcr_extended}. ``assets`` holds plaintext (secrets included):
    never log it."""
    transport = server if callable(server) else http_transport(server, ca_file, timeout, client_cert)
    payload, response = run_protocol(tpm, transport, extra)
    try:
        files = dict((name, base64.b64decode(data, validate=True)) for name, data in payload["files"].items())
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
        raise AttestClientError("the attestation payload is malformed")
    try:
        manifest = verify_entry(files, signer_public)
    except HcpError as exc:
        raise AttestClientError("the entry does not verify with the trusted asset signer: %s" % exc)
    if manifest.get("ekpubhash") != payload["ekpubhash"]:
        raise AttestClientError("the signed manifest is for another TPM")
    assets = {}
    one_time = False
    for asset in manifest["assets"]:
        data = files[asset["file"]]
        if asset["sensitive"]:
            if not unseal:
                continue
            env = envelope.loads(data)
            one_time = one_time or env["policy"]["type"] == "one_time"
            data = envelope.unseal(tpm, env)
        assets[asset["name"]] = data
    extended = False
    if one_time and extend_pcr:
        try:
            tpm.extend_pcr(ONE_TIME_PCR, ONE_TIME_EXTEND_DATA)
        except TpmError as exc:
            raise AttestClientError("assets unsealed but PCR %d could not be extended: %s" % (ONE_TIME_PCR, exc))
        extended = True
    return {"hostname": manifest.get("hostname"), "ekpubhash": payload["ekpubhash"], "snapshot": response.get("snapshot"),
            "manifest": manifest, "assets": assets, "files": files, "pcr_extended": extended}


def summary(result):
    """A JSON-safe, secret-free view of an attest() result (asset names and sizes)."""
    return json.loads(json.dumps({
        "hostname": result["hostname"], "ekpubhash": result["ekpubhash"], "pcr_extended": result["pcr_extended"],
        "assets": [{"name": a["name"], "sensitive": a["sensitive"], "size": len(result["assets"].get(a["name"], b""))}
                   for a in result["manifest"]["assets"]],
    }))
