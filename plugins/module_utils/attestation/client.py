# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attestation client (runs with the host's TPM): protocol v1 against ahcp.

``attest()`` creates an ephemeral AK under the EK, asks the server for a nonce and ticket,
quotes the requested PCRs over the nonce, sends the evidence, recovers the session key with
ActivateCredential (only this TPM, holding both the EK and the AK, can), decrypts the
entry, verifies it against the trusted asset-signer key, and unseals every sensitive asset
(extending PCR 11 afterwards when an asset carries the one-time policy).
With a ``state_dir``, the client remembers the highest manifest generation it accepted per
server set and TPM (``GenerationMemory``) and refuses an older, validly signed entry: a server
or replica serving a rolled-back enrollment DB.
Wire formats: docs/attestation.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time

from ansible_collections.hcp.core.plugins.module_utils.attestation import protocol
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment.manifest import generation as manifest_generation, verify_entry
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, TpmError
from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils import runcache
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import tss_rc
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import ONE_TIME_PCR, close_one_time, one_time_used
from ansible_collections.hcp.core.plugins.module_utils.web.client import HttpsJsonClient

try:
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC
except ImportError:  # pragma: no cover
    TSS2_Exception = None

try:
    from cryptography import x509
except ImportError:  # pragma: no cover - pki reports it
    x509 = None

DEFAULT_TIMEOUT = 30
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class AttestClientError(HcpError):
    """The attestation failed on the client side (server unreachable or unverifiable answer)."""


class AttestServerError(AttestClientError):
    """The server refused the attestation; ``status`` is its HTTP status, the message its error."""

    def __init__(self, message, status):
        super(AttestServerError, self).__init__("attestation server refused (%s): %s" % (status, message), status)
        self.server_message = message


def load_signer_public(text=None, path=None):
    """The trusted asset-signer public key (PEM bytes) from ``text`` or the file ``path``: exactly one."""
    if (text is None) == (path is None):
        raise AttestClientError("exactly one of signer_public and signer_public_file is required")
    if text is not None:
        return text.encode("utf-8") if isinstance(text, str) else bytes(text)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise AttestClientError("cannot read the asset signer key %s: %s" % (path, exc.strerror or exc))


def http_transport(url, ca_file=None, timeout=DEFAULT_TIMEOUT, client_cert=None):
    """A transport ``call(path, body) -> (status, JSON value or None)`` POSTing JSON to ``url`` + path.

    ``ca_file``: CA bundle to verify the server (default: the system store);
    ``client_cert``: optional (cert, key) paths."""
    cert, key = client_cert if isinstance(client_cert, (tuple, list)) else (client_cert, None)
    # http:// stays accepted (as before): the answer is encrypted to this TPM and its files are
    # checked against the signed manifest, whatever carries them.
    http = HttpsJsonClient(url, ca_file, cert, key, timeout, max_response_bytes=MAX_RESPONSE_BYTES,
                           what="attestation server", error_class=AttestClientError, allow_http=True)

    def call(path, body):
        response = http.request("POST", path, json_body=body)
        return response.status, response.body
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
            return protocol.classify(exc), {"error": str(exc)}
        return 404, {"error": "not found"}
    return call


def _post(transport, path, body):
    status, data = transport(path, body)
    if status != 200 or not isinstance(data, dict):
        message = data.get("error") if isinstance(data, dict) else "no JSON body"
        raise AttestServerError(message, status)
    return data


def _b64(data):
    return base64.b64encode(data).decode("ascii")


# --- the attestation key of this boot ------------------------------------------------------------

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
AK_CACHE_FORMAT = "hcp.core.attest-ak"
AK_CACHE_VERSION = 1
AK_CACHE_FILE = "ak.json"
MAX_AK_CACHE_BYTES = 16 * 1024
_AK_MEMORY = {}


def boot_id():
    """This boot's id (the kernel's random boot_id), or None when unreadable (no AK caching then)."""
    try:
        with open(BOOT_ID_PATH, "r", encoding="ascii") as handle:
            text = handle.read(128).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


class AkCache(object):
    """The AK of this boot, so an attestation loads it instead of creating one (TPM2_Create of an
    ECC key is the client's costliest TPM command, with its EK authorisation).

    Why this is sound: the AK's private part is wrapped by the TPM under the EK: only this TPM can
    load it, and only as the restricted, fixedTPM signing key its public area says (the TPM checks
    the blob's integrity on load, so a planted file yields a refused load, never another key). The
    server checks the AK's attributes and a fresh nonce in every quote, and every attestation
    proves again that this AK lives next to this EK (ActivateCredential of a credential made for
    the AK's name). Reusing it within a boot reveals nothing new (the EK is sent every time).
    Invalidation: the entry is for one (EK, boot id) -- a reboot has a new
    /proc/sys/kernel/random/boot_id, another EK another key -- and it records the TPM's
    resetCount/restartCount from the signed clockInfo of its first quote: a quote showing others
    (a TPM reset or restart without a reboot) drops it, so the next attestation creates a new AK.
    A load the TPM refuses drops it too. In memory per process, and in ``state_dir``/ak.json
    (format ``hcp.core.attest-ak`` v1, 0600, written atomically; anything unreadable or foreign
    is ignored: a cache miss)."""

    def __init__(self, state_dir=None):
        self.path = os.path.join(os.path.abspath(state_dir), AK_CACHE_FILE) if state_dir else None
        self.state_dir = state_dir

    @staticmethod
    def _key(tpm, ekhash, boot):
        # not the TCTI: the EK names the TPM (a restarted simulator listens elsewhere, same TPM)
        del tpm
        return hashlib.sha256(json.dumps([ekhash, boot]).encode("utf-8")).hexdigest()

    def get(self, tpm, ekhash, boot):
        """{private, public, counters} (bytes, bytes, [reset, restart]) or None."""
        key = self._key(tpm, ekhash, boot)
        entry = _AK_MEMORY.get(key)
        if entry is None and self.path:
            entry = self._read(key)
        return entry

    def _read(self, key):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                data = handle.read(MAX_AK_CACHE_BYTES + 1)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077 \
                    or len(data) > MAX_AK_CACHE_BYTES:
                return None
            doc = jsonutil.loads(data)
            if doc.get("format") != AK_CACHE_FORMAT or doc.get("version") != AK_CACHE_VERSION or doc.get("key") != key:
                return None
            counters = doc["counters"]
            if not isinstance(counters, list) or len(counters) != 2 or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in counters):
                return None
            return {"private": base64.b64decode(doc["private"], validate=True),
                    "public": base64.b64decode(doc["public"], validate=True), "counters": counters}
        except (OSError, jsonutil.JsonInputError, KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            return None

    def put(self, tpm, ekhash, boot, entry):
        key = self._key(tpm, ekhash, boot)
        _AK_MEMORY.clear()  # one TPM per host: keep the one entry in use
        _AK_MEMORY[key] = entry
        if self.path:
            doc = {"format": AK_CACHE_FORMAT, "version": AK_CACHE_VERSION, "key": key,
                   "private": _b64(entry["private"]), "public": _b64(entry["public"]), "counters": entry["counters"]}
            try:
                GenerationMemory(self.state_dir)._check_directory()  # pylint: disable=protected-access
                atomic_write(self.path, (json.dumps(doc, sort_keys=True) + "\n").encode("ascii"), 0o600)
            except (OSError, AttestClientError):
                pass  # a cache: the next attestation creates an AK again

    def drop(self, tpm, ekhash, boot):
        _AK_MEMORY.pop(self._key(tpm, ekhash, boot), None)
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


@contextlib.contextmanager
def attestation_ak(tpm, ekhash, state_dir=None):
    """(AK handle, TPM2B_PUBLIC, check(attest bytes)) of this boot's AK (AkCache), loaded under the
    EK for the block and flushed after it; created when there is none (or the TPM refuses the
    cached one). ``check``: call with the first quote's TPMS_ATTEST (records or checks the TPM's
    reset/restart counters)."""
    cache = AkCache(state_dir)
    boot = boot_id()
    entry = cache.get(tpm, ekhash, boot) if boot else None
    ak = public = None
    try:
        if entry is not None:
            try:
                public = TPM2B_PUBLIC.unmarshal(entry["public"])[0]
                quote_mod.parse_ak_public(entry["public"])  # what the server would accept
                ak = quote_mod.load_ak(tpm, TPM2B_PRIVATE.unmarshal(entry["private"])[0], public)
            except Exception:  # pylint: disable=broad-except  # any refusal (TPM, unmarshal, attributes) is a miss
                cache.drop(tpm, ekhash, boot)
                entry = None
        if entry is None:
            priv, public = quote_mod.create_ak(tpm)
            try:
                ak = quote_mod.load_ak(tpm, priv, public)
            except TSS2_Exception as exc:
                raise TpmError("TPM failed to load the attestation key: %s (rc 0x%x)" % (exc, tss_rc(exc)))

        def check(attest_raw):
            counters = list(quote_mod.attest_counters(attest_raw))
            if entry is None:
                if boot:
                    cache.put(tpm, ekhash, boot, {"private": priv.marshal(), "public": public.marshal(), "counters": counters})
            elif entry["counters"] != counters:
                cache.drop(tpm, ekhash, boot)  # the TPM was reset or restarted since: a new AK next time
        yield ak, public, check
    finally:
        tpm.flush(ak)


def run_protocol(tpm, transport, extra=None, state_dir=None):
    """Both round trips; returns (payload dict, response header dict). ``extra``: added to the
    complete request (e.g. {"eventlog": ...}). The AK is this boot's (attestation_ak(); also kept
    in ``state_dir`` when given); the EK authorisations share one policy session."""
    ekhash = tpm.ekpubhash()
    started = _post(transport, "/v1/initiate", {"ekpubhash": ekhash})
    try:
        nonce = base64.b64decode(started["nonce"], validate=True)
        selection = protocol.normalize_selection(started["pcrs"])
        ticket = started["ticket"]
    except (KeyError, TypeError, ValueError, binascii.Error, HcpError):
        raise AttestClientError("the attestation server's initiate answer is malformed")
    request = {"ticket": ticket, "ekpub": _b64(tpm.ek_public().marshal())}
    cert = tpm.ek_certificate_der()
    if cert:
        request["ek_cert"] = _b64(cert)
    if extra:
        request.update(extra)
    with tpm.keep_ek_session(), attestation_ak(tpm, ekhash, state_dir) as (ak, ak_public, check_ak):
        request["quote"] = quote_mod.quote_with_ak(tpm, ak, ak_public, nonce, selection["sha256"], "sha256")
        check_ak(base64.b64decode(request["quote"]["attest"]))
        response = _post(transport, "/v1/complete", request)
        ak_name = quote_mod.parse_ak_public(ak_public.marshal())[0]
        if response.get("format") != protocol.RESPONSE_FORMAT or response.get("version") != protocol.PROTOCOL_VERSION:
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
        payload = protocol.decrypt_response(response, session_key)
    except HcpError as exc:
        raise AttestClientError(str(exc))
    if payload.get("ekpubhash") != ekhash:
        raise AttestClientError("the attestation payload is for another TPM")
    return payload, response


ONE_TIME_UNSEAL = "unseal"          # unseal one-time assets (the TPM refuses after PCR 11 was extended)
ONE_TIME_SKIP_IF_USED = "skip_used"  # skip them when PCR 11 is already extended (re-attestation)
ONE_TIME_SKIP = "skip"               # never unseal them (check mode)
ONE_TIME_MODES = (ONE_TIME_UNSEAL, ONE_TIME_SKIP_IF_USED, ONE_TIME_SKIP)
SKIP_USED_REASON = "one-time asset already unsealed this boot (PCR %d extended)" % ONE_TIME_PCR
SKIP_CHECK_REASON = "one-time asset not unsealed in check mode"


class AllServersFailedError(AttestClientError):
    """Every server of a failover list failed; ``causes`` is [(server label, exception)]."""

    def __init__(self, causes):
        super(AllServersFailedError, self).__init__(
            "all %d attestation servers failed: %s" % (len(causes), "; ".join("%s: %s" % c for c in causes)))
        self.causes = causes


def server_label(server, index=0):
    """How a server is named in reports: its URL, or ``transport #<n>`` for a callable."""
    return server if isinstance(server, str) else "transport #%d" % (index + 1)


def _servers(server):
    if callable(server) or isinstance(server, str):
        return [server]
    servers = list(server or [])
    if not servers or not all(callable(s) or (isinstance(s, str) and s) for s in servers):
        raise AttestClientError("servers must be a non-empty list of URLs")
    return servers


def fetch(tpm, server, signer_public, ca_file=None, timeout=DEFAULT_TIMEOUT, client_cert=None, extra=None,
          state_dir=None, check_only=False):
    """Both round trips and the manifest check, trying ``server`` (URL, transport, or a list of
    them in failover order; one server serves both round trips) until one answers with an
    entry that verifies with ``signer_public`` (and, with ``state_dir``, is not older than the
    newest this client accepted from this server set: RollbackError; ``check_only``: check but
    record nothing, for check mode). Nothing is unsealed:
    sensitive assets are still envelopes sealed to the TPM. Returns {hostname, ekpubhash,
    snapshot, manifest, generation, files: {stored file: bytes}, server}. A single server's
    failure is raised as is; with several, AllServersFailedError lists every cause."""
    servers = _servers(server)
    memory = GenerationMemory(state_dir) if state_dir else None
    causes = []
    for index, one in enumerate(servers):
        try:
            transport = one if callable(one) else http_transport(one, ca_file, timeout, client_cert)
            # check mode writes nothing: not even this boot's AK
            payload, response = run_protocol(tpm, transport, extra, state_dir=None if check_only else state_dir)
            files, manifest = verify_payload(payload, signer_public)
            generation = manifest_generation(manifest)
            if memory is not None:
                memory.accept([server_label(s, i) for i, s in enumerate(servers)], payload["ekpubhash"], generation,
                              record=not check_only)
        except AttestClientError as exc:
            if len(servers) == 1:
                raise
            causes.append((server_label(one, index), exc))
            continue
        return {"hostname": manifest.get("hostname"), "ekpubhash": payload["ekpubhash"],
                "snapshot": response.get("snapshot"), "manifest": manifest, "generation": generation, "files": files,
                "server": server_label(one, index), "keyserver_credential": payload.get("keyserver_credential")}
    raise AllServersFailedError(causes)


# --- the highest manifest generation accepted, per server set and TPM (rollback refusal) ----------

GENERATIONS_FORMAT = "hcp.core.attest-generations"
GENERATIONS_VERSION = 1
GENERATIONS_FILE = "generations.json"
MAX_GENERATIONS_BYTES = 1024 * 1024
MAX_GENERATION_RECORDS = 1024


class RollbackError(AttestClientError):
    """A server showed a validly signed entry older than one this client already accepted
    (a rolled-back enrollment DB, or a replica serving an old snapshot)."""


def default_state_dir():
    """Where the generation memory lives when the caller names no directory: the attester's
    ``/var/lib/hcp/attester`` for root (module, timer and lookup then share one memory), else
    ``$XDG_STATE_HOME/hcp/attest`` (``~/.local/state/hcp/attest``)."""
    if os.geteuid() == 0:
        return "/var/lib/hcp/attester"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hcp", "attest")


class GenerationMemory(object):
    """``<state_dir>/generations.json`` (format ``hcp.core.attest-generations`` v1, 0600, written
    atomically under ``generations.lock``): for each (server set, ekpubhash) the highest manifest
    generation accepted. ``accept`` refuses a lower one; a v1 manifest (no generation) counts as 0,
    so it is accepted only while nothing newer was (docs/attestation-client.md). The file holds
    no secret; it is refused (fail closed) when it is not a private regular file of this user or
    is corrupt: removing it re-trusts the next answer."""

    def __init__(self, state_dir):
        self.directory = os.path.abspath(state_dir)
        self.path = os.path.join(self.directory, GENERATIONS_FILE)

    def __repr__(self):
        return "GenerationMemory(%r)" % self.path

    @staticmethod
    def key(servers, ekpubhash):
        """The record key of a server set (order and duplicates do not matter) and a TPM."""
        doc = json.dumps({"servers": sorted(set(servers)), "ekpubhash": ekpubhash}, sort_keys=True)
        return hashlib.sha256(doc.encode("utf-8")).hexdigest()

    def _check_directory(self):
        try:
            os.makedirs(os.path.dirname(self.directory), 0o755, exist_ok=True)
            os.mkdir(self.directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise AttestClientError("cannot create the attestation state directory %s: %s" % (self.directory, exc.strerror or exc))
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o022:
            raise AttestClientError("the attestation state directory %s is not a directory only this user (or root) "
                                    "can write" % self.directory)

    def _load(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise AttestClientError("cannot read the generation memory %s: %s" % (self.path, exc.strerror or exc))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(MAX_GENERATIONS_BYTES + 1)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise AttestClientError("the generation memory %s is not a private file of this user" % self.path)
        try:
            if len(data) > MAX_GENERATIONS_BYTES:
                raise ValueError("too large")
            doc = jsonutil.loads(data)
            if doc.get("format") != GENERATIONS_FORMAT or doc.get("version") != GENERATIONS_VERSION:
                raise ValueError("unknown format")
            records = doc["generations"]
            for name, record in records.items():
                value, when = record["generation"], record["time"]
                if len(name) != 64 or isinstance(value, bool) or not isinstance(value, int) or value < 0 \
                        or isinstance(when, bool) or not isinstance(when, int):
                    raise ValueError("bad record")
        except (jsonutil.JsonInputError, ValueError, TypeError, KeyError, AttributeError):
            raise AttestClientError("the generation memory %s is corrupt (remove it to reset; the next answer is then "
                                    "trusted)" % self.path)
        return records

    @staticmethod
    def _refusal(generation, known):
        offered = "a v1 manifest (no generation)" if generation == 0 else "generation %d" % generation
        return ("the attestation server offered an entry of %s, older than generation %d this client already accepted "
                "from this server set: refusing a rolled-back enrollment DB" % (offered, known))

    def highest(self, servers, ekpubhash):
        """The highest generation accepted for the server set and TPM, or None."""
        record = self._load().get(self.key(servers, ekpubhash))
        return None if record is None else record["generation"]

    def accept(self, servers, ekpubhash, generation, record=True):
        """Record ``generation`` for the server set and TPM; RollbackError when a higher one was
        accepted before (nothing is written then). ``record=False``: the check only."""
        if not record:
            known = self.highest(servers, ekpubhash)
            if known is not None and generation < known:
                raise RollbackError(self._refusal(generation, known))
            return
        self._check_directory()
        key = self.key(servers, ekpubhash)
        try:
            # O_NOFOLLOW: the lock file never follows a link planted in the state directory.
            fd = os.open(os.path.join(self.directory, "generations.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise AttestClientError("cannot lock the generation memory in %s: %s" % (self.directory, exc.strerror or exc))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._load()
            known = records.get(key, {}).get("generation")
            if known is not None and generation < known:
                raise RollbackError(self._refusal(generation, known))
            if known == generation:
                return
            records[key] = {"generation": generation, "time": int(time.time())}
            if len(records) > MAX_GENERATION_RECORDS:
                for old in sorted(records, key=lambda k: records[k]["time"])[:len(records) - MAX_GENERATION_RECORDS]:
                    if old != key:
                        del records[old]
            doc = {"format": GENERATIONS_FORMAT, "version": GENERATIONS_VERSION, "generations": records}
            try:
                atomic_write(self.path, (json.dumps(doc, sort_keys=True) + "\n").encode("ascii"), 0o600)
            except OSError as exc:
                raise AttestClientError("cannot write the generation memory %s: %s" % (self.path, exc.strerror or exc))
        finally:
            os.close(fd)


def verify_payload(payload, signer_public):
    """(files, manifest) of a decrypted payload, checked against the trusted asset signer."""
    try:
        files = dict((name, base64.b64decode(data, validate=True)) for name, data in payload["files"].items())
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error):
        raise AttestClientError("the attestation payload is malformed")
    try:
        manifest = verify_entry(files, signer_public)
    except HcpError as exc:
        raise AttestClientError("the entry does not verify with the trusted asset signer: %s" % exc)
    if manifest.get("ekpubhash") != payload.get("ekpubhash"):
        raise AttestClientError("the signed manifest is for another TPM")
    return files, manifest


def open_assets(tpm, manifest, files, unseal=True, extend_pcr=True, one_time=ONE_TIME_UNSEAL):
    """Plaintext of the entry's assets: (assets {name: bytes}, skipped [{name, reason}], pcr_extended).

    ``one_time``: ONE_TIME_UNSEAL, ONE_TIME_SKIP_IF_USED (skip one-time envelopes when PCR 11 is
    already extended) or ONE_TIME_SKIP (never unseal them, never extend). ``extend_pcr``: extend
    PCR 11 after unsealing any one-time envelope."""
    if one_time not in ONE_TIME_MODES:
        raise AttestClientError("one_time must be one of %s" % ", ".join(ONE_TIME_MODES))
    assets, skipped = {}, []
    one_time_unsealed = False
    used = None
    for asset in manifest["assets"]:
        data = files[asset["file"]]
        if asset["sensitive"]:
            if not unseal:
                continue
            env = envelope.loads(data)
            if env["policy"]["type"] == "one_time":
                if one_time == ONE_TIME_SKIP:
                    skipped.append({"name": asset["name"], "reason": SKIP_CHECK_REASON})
                    continue
                if one_time == ONE_TIME_SKIP_IF_USED:
                    if used is None:
                        used = one_time_used(tpm)
                    if used:
                        skipped.append({"name": asset["name"], "reason": SKIP_USED_REASON})
                        continue
                one_time_unsealed = True
            data = envelope.unseal(tpm, env)
        assets[asset["name"]] = data
    extended = False
    if one_time_unsealed and extend_pcr:
        try:
            close_one_time(tpm)
        except TpmError as exc:
            raise AttestClientError("assets unsealed but PCR %d could not be extended: %s" % (ONE_TIME_PCR, exc))
        extended = True
    return assets, skipped, extended


def attest(tpm, server, signer_public, ca_file=None, timeout=DEFAULT_TIMEOUT, unseal=True, extend_pcr=True,
           client_cert=None, extra=None, one_time=ONE_TIME_UNSEAL, state_dir=None, check_only=False,
           keyserver_credential_dir=None):
    """Attest with ``tpm`` (tpm.Tpm) to ``server`` (URL, transport callable, or a failover list).

    ``signer_public``: PEM (or key) of the trusted asset signer: the entry's manifest must
    verify with it. ``unseal``: unseal sensitive assets (else they stay envelopes).
    ``extend_pcr``: after unsealing, extend PCR 11 when any asset has the one-time policy.
    ``one_time``: see open_assets(). ``state_dir``: where the highest accepted manifest generation
    is remembered (see fetch(); None: no rollback check); ``check_only``: check it, record nothing.

    Returns {hostname, ekpubhash, snapshot, manifest, generation, assets: {name: bytes}, files:
    {stored file: bytes}, pcr_extended, skipped: [{name, reason}], server}. ``assets`` holds
    plaintext (secrets included): never log it.

    ``keyserver_credential_dir``: ask the server for a key-server credential for a fresh key and
    store both there (0600, see store_credential); ``keyserver_credential`` in the result is then
    its secret-free summary (None when the server issued none), else absent. Not in check mode."""
    key = None
    if keyserver_credential_dir and not check_only:
        key = pki.new_private_key("ec-p256")
        extra = dict(extra or {}, keyserver_key=pki.public_key_pem(key).decode("ascii"))
    with tpm.keep_ek_session():  # one EK policy session for the AK, ActivateCredential and every unseal
        fetched = fetch(tpm, server, signer_public, ca_file, timeout, client_cert, extra, state_dir=state_dir,
                        check_only=check_only)
        credential = fetched.pop("keyserver_credential", None)
        assets, skipped, extended = open_assets(tpm, fetched["manifest"], fetched["files"], unseal, extend_pcr, one_time)
    result = dict(fetched, assets=assets, skipped=skipped, pcr_extended=extended)
    if key is not None:
        result["keyserver_credential"] = None
        if credential is not None:
            cert_pem, info = accept_credential(credential, key)
            result["keyserver_credential"] = dict(info, path=store_credential(keyserver_credential_dir, key, cert_pem))
    return result


# --- key-server credentials (docs/keyserver.md, part 2) --------------------------------------

CREDENTIAL_FORMAT = "hcp.core.keyserver-credential"
CREDENTIAL_VERSION = 1
CREDENTIAL_CERT_FILE = "keyserver-credential.pem"
CREDENTIAL_KEY_FILE = "keyserver-credential.key"
MAX_CREDENTIAL_CHARS = 64 * 1024


def accept_credential(credential, key, now=None):
    """(certificate chain PEM bytes, {"not_after", "measurement", "profile"}) of the key-server
    credential an attestation answer carried (authenticated: inside the payload encrypted to this
    TPM), checked: format, the leaf certifies ``key`` (the fresh key this client sent), carries
    the key-server client purpose and is valid now. AttestClientError otherwise."""
    if not isinstance(credential, dict) or credential.get("format") != CREDENTIAL_FORMAT \
            or credential.get("version") != CREDENTIAL_VERSION:
        raise AttestClientError("the key-server credential in the attestation answer has an unknown format")
    text = credential.get("certificate")
    if not isinstance(text, str) or len(text) > MAX_CREDENTIAL_CHARS:
        raise AttestClientError("the key-server credential in the attestation answer is malformed")
    try:
        leaf = pki.load_certificates(text)[0]
        binding = pki.keyserver_binding(leaf)
        usages = [u.dotted_string for u in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except (HcpError, ValueError, x509.ExtensionNotFound):
        raise AttestClientError("the key-server credential in the attestation answer is not a key-server certificate") from None
    if pki.public_key_pem(leaf.public_key()) != pki.public_key_pem(key) or pki.OID_KP_KEYSERVER_CLIENT not in usages:
        raise AttestClientError("the key-server credential in the attestation answer is not for this client's key")
    moment = time.time() if now is None else now
    if not leaf.not_valid_before_utc.timestamp() - 300 <= moment < leaf.not_valid_after_utc.timestamp():
        raise AttestClientError("the key-server credential in the attestation answer is not valid now")
    return text.encode("ascii"), {"not_after": int(leaf.not_valid_after_utc.timestamp()),
                                  "measurement": binding["measurement"], "profile": binding["profile"]}


def store_credential(directory, key, cert_pem):
    """Write the credential's key and certificate chain into ``directory`` (0700, created; not a
    link) as CREDENTIAL_KEY_FILE and CREDENTIAL_CERT_FILE, each 0600 and atomic; returns the
    certificate's path. A reader that sees a new key beside an old certificate (or the reverse)
    finds they do not match and ignores both (load_credential)."""
    runcache.private_dir(directory, "key-server credential directory", AttestClientError)
    try:
        atomic_write(os.path.join(directory, CREDENTIAL_KEY_FILE), pki.private_key_pem(key), 0o600)
        atomic_write(os.path.join(directory, CREDENTIAL_CERT_FILE), cert_pem, 0o600)
    except OSError as exc:
        raise AttestClientError("cannot write the key-server credential in %s: %s" % (directory, exc.strerror or exc))
    return os.path.join(directory, CREDENTIAL_CERT_FILE)


def load_credential(directory, now=None, margin=5):
    """(certificate path, key path) of the stored key-server credential when it is usable: both
    files private to this user, the key the certificate's, valid for ``margin`` more seconds;
    else None (missing, expired, torn write, foreign files)."""
    if not directory:
        return None
    paths = (os.path.join(directory, CREDENTIAL_CERT_FILE), os.path.join(directory, CREDENTIAL_KEY_FILE))
    data = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            content = handle.read(MAX_CREDENTIAL_CHARS + 1)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077 \
                or len(content) > MAX_CREDENTIAL_CHARS:
            return None
        data.append(content)
    try:
        leaf = pki.load_certificates(data[0])[0]
        key = pki.load_private_key(data[1])
    except HcpError:
        return None
    moment = time.time() if now is None else now
    if pki.public_key_pem(key) != pki.public_key_pem(leaf.public_key()) or moment + margin >= leaf.not_valid_after_utc.timestamp():
        return None
    return paths


def summary(result):
    """A JSON-safe, secret-free view of an attest() result (asset names and sizes)."""
    return json.loads(json.dumps({
        "hostname": result["hostname"], "ekpubhash": result["ekpubhash"], "pcr_extended": result["pcr_extended"],
        "assets": [{"name": a["name"], "sensitive": a["sensitive"], "size": len(result["assets"].get(a["name"], b""))}
                   for a in result["manifest"]["assets"]],
    }))


# --- per-run cache of sealed attestation payloads (the attested_secret lookup) ---------------

CACHE_FORMAT = "hcp.core.attest-cache"
CACHE_VERSION = 1


# the run identity and the cache files: module_utils/runcache.py (shared with the key-server client)
process_start_time = runcache.process_start_time
run_process = runcache.run_process


def default_cache_dir():
    """Per-user 0700 directory: $XDG_RUNTIME_DIR (a tmpfs) when set, else the temp dir."""
    return runcache.user_cache_dir("attest-cache")


class PayloadCache(object):
    """The verified but still SEALED entry files of one attestation, kept for the lifetime of
    one process (the ansible-playbook run: lookups run in forked workers whose parent it is;
    see runcache.run_process()).

    A runcache.RunFile named after ``run_pid``, its start time and a hash of the attestation
    options: 0600 in a 0700 per-user directory, holding no plaintext secret (sensitive assets
    are envelopes only the TPM can open). Files of runs that ended are removed on the next use."""

    def __init__(self, options, run_pid=None, directory=None):
        self.file = runcache.RunFile(directory or default_cache_dir(), json.dumps(options, sort_keys=True, default=str),
                                     run_pid=run_pid, what="attestation cache", error_class=AttestClientError)
        self.run_pid, self.directory, self.start, self.path = self.file.run_pid, self.file.directory, self.file.start, self.file.path

    def get_or_fetch(self, fetcher):
        """(fetched dict as attest_client.fetch returns it, hit: bool). ``fetcher()`` runs at most
        once per run and options: concurrent workers wait on a lock and then read the cache."""
        with self.file.lock():
            cached = self._load()
            if cached is not None:
                return cached, True
            fetched = fetcher()
            record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "server": fetched["server"],
                      "snapshot": fetched["snapshot"], "ekpubhash": fetched["ekpubhash"],
                      "files": dict((n, _b64(d)) for n, d in fetched["files"].items())}
            self.file.write(json.dumps(record, sort_keys=True).encode())
            return fetched, False

    def _load(self):
        data = self.file.read()
        if data is None:
            return None
        try:
            record = json.loads(data)
            if record.get("format") != CACHE_FORMAT or record.get("version") != CACHE_VERSION:
                return None
            return {"server": record["server"], "snapshot": record["snapshot"], "ekpubhash": record["ekpubhash"],
                    "files": record["files"]}
        except (ValueError, KeyError, AttributeError):
            return None


def attest_cached(tpm, server, signer_public, names, ca_file=None, timeout=DEFAULT_TIMEOUT, cache=None, state_dir=None):
    """Plaintext of the assets ``names`` ({name: bytes}), attesting at most once per ``cache``
    (a PayloadCache, or None for no cache). A cache hit re-verifies the manifest with
    ``signer_public`` and unseals locally. Unknown names raise AttestClientError naming them.
    ``state_dir``: see fetch()."""
    if cache is None:
        fetched = fetch(tpm, server, signer_public, ca_file, timeout, state_dir=state_dir)
    else:
        fetched, hit = cache.get_or_fetch(lambda: fetch(tpm, server, signer_public, ca_file, timeout, state_dir=state_dir))
        if hit:
            payload = {"ekpubhash": fetched["ekpubhash"], "files": fetched["files"]}
            files, manifest = verify_payload(payload, signer_public)
            if fetched["ekpubhash"] != tpm.ekpubhash():
                raise AttestClientError("the cached attestation is for another TPM")
            fetched = dict(fetched, files=files, manifest=manifest)
    listed = dict((a["name"], a) for a in fetched["manifest"]["assets"])
    missing = [n for n in names if n not in listed]
    if missing:
        raise AttestClientError("the entry of %s has no asset %s (it has: %s)" % (
            fetched["manifest"].get("hostname"), ", ".join(missing), ", ".join(sorted(listed))))
    wanted = dict(fetched["manifest"], assets=[listed[n] for n in dict.fromkeys(names)])
    assets, _skipped, _extended = open_assets(tpm, wanted, fetched["files"])
    return assets
