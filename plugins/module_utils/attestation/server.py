# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ahcp, the attestation server's logic (protocol v1; wire formats: docs/attestation.md).

Two round trips, stateless server: ``initiate`` hands out a nonce, the PCR selection and a
*ticket* (AES-256-GCM under a server key, so any replica holding the key can complete it);
``complete`` checks the ticket, the EK (attributes, EK certificate against vendor CAs), the
quote (restricted AK, signature, nonce, PCR digest, golden values of the host's profile) and
the enrollment, then returns the entry's signed files encrypted under a fresh session key
that is wrapped with MakeCredential(EK, AK name): only the TPM holding both keys can read it.

A ticket is consumed once (``UsedTickets``: in memory, optionally in a directory shared by
replicas), so a replayed ticket or quote is refused.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils.attestation.protocol import (
    DEFAULT_PCR_SELECTION,
    NONCE_BYTES,
    PAYLOAD_FORMAT,
    PROTOCOL_VERSION,
    RESPONSE_FORMAT,
    AttestError,
    AttestRequestError,
    AttestUnavailableError,
    EkRejectedError,
    NotEnrolledError,
    PcrPolicyError,
    QuoteRejectedError,
    ReplayError,
    TicketExpiredError,
    TicketInvalidError,
    b64 as _b64,
    canonical as _canonical,
    normalize_selection,
    require_cryptography as _require_cryptography,
    response_aad,
    unb64 as _unb64,
)
from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm import policy as tpm_policy
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.enrollment.manifest import MANIFEST_FORMAT, verify_entry
from ansible_collections.hcp.core.plugins.module_utils.tpm.ek_trust import DEFAULT_MODE as DEFAULT_EK_TRUST
from ansible_collections.hcp.core.plugins.module_utils.tpm.ek_trust import EkTrust, EkTrustConfigError, load_certificate
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EKPUBHASH_RE
from ansible_collections.hcp.core.plugins.module_utils.errors import (
    HcpError,
    InvalidEkError,
    QuoteVerificationError,
)
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash as compute_ekpubhash

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - reported by _require_cryptography()
    AESGCM = None

TICKET_PREFIX = "hcpt1"
TICKET_AAD = b"hcp.core.attest.ticket.v1|"
DEFAULT_MAX_TICKET_AGE = 120
MAX_CLOCK_SKEW = 5
MAX_TICKET_CHARS = 1024
MAX_EK_CHARS = 16 * 1024
MAX_EVENTLOG_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_USED = 1000000
MIN_PURGE_INTERVAL = 60
EK_CERT_CACHE_SIZE = 65536
EK_CERT_CACHE_TTL = 3600
# key-server credentials (docs/keyserver.md, part 2)
CREDENTIAL_FORMAT = "hcp.core.keyserver-credential"
CREDENTIAL_VERSION = 1
DEFAULT_CREDENTIAL_MINUTES = 10
MAX_CREDENTIAL_MINUTES = pki.MAX_CREDENTIAL_MINUTES
MAX_KEYSERVER_KEY_CHARS = 4096


# -- ticket keys ----------------------------------------------------------------------------

def key_id(key):
    """Short public id of a ticket key (first 4 bytes of SHA-256, hex): tickets name the key
    that sealed them, so a server can hold the new and the previous key during rotation."""
    return hashlib.sha256(b"hcp.core.attest.ticket-key|" + key).hexdigest()[:8]


def load_ticket_keys(path):
    """Ticket keys from a file: one 32-byte key per line (hex or base64); the first line
    issues new tickets, the others are still accepted (rotation)."""
    try:
        with open(path, "r", encoding="ascii") as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise AttestError("cannot read the ticket key file %s: %s" % (path, getattr(exc, "strerror", None) or exc))
    keys = []
    for number, line in enumerate(lines, 1):
        try:
            key = bytes.fromhex(line) if len(line) == 64 else base64.b64decode(line, validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != 32:
            raise AttestError("ticket key file %s line %d is not a 32-byte key (hex or base64)" % (path, number))
        keys.append(key)
    if not keys:
        raise AttestError("ticket key file %s holds no key" % path)
    return keys


def write_ticket_key_file(path):
    """Create a ticket key file (0600) with one fresh key; returns its key id."""
    key = os.urandom(32)
    atomic_write(path, (key.hex() + "\n").encode("ascii"), mode=0o600)
    return key_id(key)


# -- replay protection ----------------------------------------------------------------------

USED_TICKETS_FORMAT = "hcp.core.used-tickets"
USED_TICKETS_VERSION = 1
USED_TICKETS_MARKER = "FORMAT"
TICKET_ID_RE = re.compile(r"[0-9a-f]{32}")


class UsedTickets(object):
    """Tickets already presented to ``complete``, remembered for ``max_age`` (+ clock skew).

    In memory (bounded by ``max_entries``) and, when ``directory`` is set, in the used-ticket
    store shared by replicas and worker processes (docs/attestation-deploy.md, format
    ``hcp.core.used-tickets`` v1): one entry per used ticket, named by its 32-hex ticket id and
    created atomically (an empty directory made with mkdir; earlier versions made an empty file
    with O_CREAT|O_EXCL: each fails with EEXIST on the other, the one atomic test-and-set every
    local file system and NFSv3+ offer), its mtime the time of use; a ``FORMAT`` file names the format and version.
    Replicas sharing that directory refuse a ticket any of them has seen (without it, replicas
    need sticky routing by ekpubhash). A directory of another format or version is refused
    (fail closed) rather than half understood.

    Cost and guarantee: one mkdir per ticket, no fsync (measured against an SQLite WAL table
    with synchronous=NORMAL: about 40 us of CPU and 120 us of wall time per insert, but WAL
    needs shared memory, so it cannot be shared by replicas on other hosts, and SQLite's locking
    is unsafe on the network file systems they share). A name, once created, is seen at once by every
    process and replica (the directory is the one source of truth; the memory list only saves a
    system call for a worker's own replays); it survives a worker or server crash (page cache)
    but not a power loss or kernel crash within the file system's commit interval (ext4: 5 s):
    after such a reboot, a ticket used in those seconds and still younger than ``max_age`` could
    be completed once more; its answer is still encrypted to the TPM that asked for it.

    Files older than the window are removed by each process at most every ``purge_interval``
    (the window, at least 60 s; the first one a random part of it after start, so that workers
    spread their scans): a scan stats every file, so its cost grows with the directory (about
    0.8 s of CPU for 100,000 files); scanning every 1024 tickets cost 0.5 ms per attestation
    at 100,000 files."""

    def __init__(self, max_age, directory=None, max_entries=DEFAULT_MAX_USED):
        self.window = max_age + MAX_CLOCK_SKEW
        self.directory = directory
        self.max_entries = max_entries
        self._seen = collections.OrderedDict()
        self._lock = threading.Lock()
        self.purge_interval = max(float(MIN_PURGE_INTERVAL), float(self.window))
        self._next_purge = time.time() + self.purge_interval * (0.5 + random.random() / 2)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._check_format(directory)

    @staticmethod
    def _check_format(directory):
        """Create the FORMAT marker of an empty (or pre-v1, unmarked) store, or check it."""
        marker = os.path.join(directory, USED_TICKETS_MARKER)
        expected = "%s %d\n" % (USED_TICKETS_FORMAT, USED_TICKETS_VERSION)
        try:
            fd = os.open(marker + ".%d.tmp" % os.getpid(), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, expected.encode("ascii"))
            finally:
                os.close(fd)
            try:
                os.link(marker + ".%d.tmp" % os.getpid(), marker)  # atomic, never replaces another replica's
            except FileExistsError:
                pass
            finally:
                os.unlink(marker + ".%d.tmp" % os.getpid())
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                found = handle.read(256).decode("ascii", "replace")
        except OSError as exc:
            raise AttestError("cannot use the used-ticket directory %s: %s" % (directory, exc.strerror or exc)) from None
        if found != expected:
            raise AttestError("the used-ticket directory %s holds another format (%r; this server writes %s v%d)"
                              % (directory, found.strip()[:80], USED_TICKETS_FORMAT, USED_TICKETS_VERSION))

    def __len__(self):
        return len(self._seen)

    def _expire(self, now):
        while self._seen:
            tid, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[tid]

    def consume(self, ticket_id, issued_at, now=None):
        """Mark ``ticket_id`` used; ReplayError when it already was."""
        now = time.time() if now is None else now
        expiry = issued_at + self.window
        purge = False
        with self._lock:
            self._expire(now)
            if ticket_id in self._seen:
                raise ReplayError("ticket already used (replayed ticket or quote)")
            if len(self._seen) >= self.max_entries:
                raise AttestUnavailableError("replay cache is full: try again later")
            if self.directory:
                try:
                    # mkdir: the same atomic test-and-set as O_CREAT|O_EXCL (EEXIST for any entry of
                    # that name, file or directory, so replicas of either kind refuse each other's
                    # tickets), and it cost 50-140 us of CPU where creating a regular file cost
                    # 700-950 us on the loaded benchmark machine (ext4)
                    os.mkdir(os.path.join(self.directory, ticket_id), 0o700)
                except FileExistsError:
                    raise ReplayError("ticket already used (replayed ticket or quote, seen by a replica)")
                except OSError as exc:
                    raise AttestUnavailableError("cannot record the used ticket: %s" % exc.strerror)
            # tickets arrive in roughly issue order: keep the dict ordered by expiry
            self._seen[ticket_id] = expiry
            if self.directory and now >= self._next_purge:
                self._next_purge = now + self.purge_interval
                purge = True
        if purge:  # outside the lock: the worker's other threads go on meanwhile
            self.purge_directory(now)

    def purge_directory(self, now=None):
        """Remove used-ticket files older than the window; returns how many."""
        if not self.directory:
            return 0
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.directory):
            if not TICKET_ID_RE.fullmatch(entry.name):
                continue  # the FORMAT marker, a replica's temporary file: not a used ticket
            try:
                if entry.stat(follow_symlinks=False).st_mtime < now - self.window:
                    if entry.is_dir(follow_symlinks=False):
                        os.rmdir(entry.path)  # never recursive: a used ticket is an empty directory
                    else:
                        os.unlink(entry.path)  # a used ticket of a replica of an earlier version
                    removed += 1
            except OSError:
                continue
        return removed


# -- snapshot entry cache -------------------------------------------------------------------

class EntryCache(object):
    """Entries read from a snapshot, keyed by (snapshot path, head, ekpubhash).

    A snapshot's content is fixed by its head, so a cached entry is exact until the
    snapshot moves (arepl's swap changes the path, a fetch changes the head): two git
    processes per attestation become one file read. Bounded (least recently used out).

    Misses (TPMs not enrolled in that snapshot) are kept apart, in their own bounded LRU of
    ``negative_size`` keys: anyone can make ``complete`` look up an unknown EK (a software
    EK and a software-signed quote pass every check before the read), so a flood of misses
    must never push the enrolled hosts' entries out (they would all cost git reads again)."""

    def __init__(self, size=4096, negative_size=4096):
        self.size = size
        self.negative_size = negative_size
        self._data = collections.OrderedDict()
        self._missing = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._data)

    @property
    def misses(self):
        """Number of remembered misses (at most ``negative_size``)."""
        return len(self._missing)

    @staticmethod
    def _remember(table, key, value, size):
        table[key] = value
        table.move_to_end(key)
        while len(table) > size:
            table.popitem(last=False)

    def get(self, db, ekpubhash):
        """(files or None, head, cache key) of ``ekpubhash`` in the snapshot ``db``."""
        head = db.head_from_refs() or db.head()
        key = (db.path, head, ekpubhash)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key], head, key
            if key in self._missing:
                self._missing.move_to_end(key)
                return None, head, key
        files = db.get(ekpubhash, rev=head) if head else None
        with self._lock:
            if files is not None and self.size:
                self._remember(self._data, key, files, self.size)
            elif files is None and head and self.negative_size:
                self._remember(self._missing, key, True, self.negative_size)
        return files, head, key


# -- the attestor ---------------------------------------------------------------------------

def golden_pcrs(files):
    """The golden PCR values of an entry: ``attest.pcrs`` of its signed client profile
    (``{"attest": {"pcrs": {"sha256": {"7": "<hex>"}}}}``), or {} when absent."""
    raw = files.get("clientprofile")
    if not raw:
        return {}
    try:
        profile = jsonutil.loads(raw, what="the entry's clientprofile")
    except jsonutil.JsonInputError:
        raise AttestUnavailableError("the entry's clientprofile is not JSON")
    section = profile.get("attest") if isinstance(profile, dict) else None
    pcrs = section.get("pcrs") if isinstance(section, dict) else None
    if pcrs and not isinstance(pcrs, dict):
        raise PcrPolicyError("the host's profile attest.pcrs is not an object")
    try:
        # the one walk over golden values (tpm/policy.golden_pcr_values), as enrollment uses it
        return tpm_policy.golden_pcr_values(pcrs, where="the host's profile attest.pcrs")
    except ValueError as exc:
        raise PcrPolicyError(str(exc)) from None


class Attestor(object):
    """Stateless attestation server logic.

    ``db_provider()``: returns the EnrollmentDb snapshot to read (e.g.
    arepl.snapshot_db_provider). ``ticket_key``: 32-byte key or list (first issues).
    ``signer_pub``: the asset signer's public key: when set, an entry whose manifest does
    not verify is never released. ``vendor_cas``: x509 certificates or a directory path.
    ``ek_trust``: vendor_ca (default: a client must send an EK certificate chaining to
    ``vendor_cas``), allow_list (the EK's hash must be in ``ek_allow_list``) or tofu
    (tpm/ek_trust.py); AttestError here when the combination cannot work.
    ``used_dir``: directory of used tickets shared by replicas (None: memory only).
    ``credential_issuer``: a pki.Issuer of the key-server credential CA (None: no credentials);
    a request carrying ``keyserver_key`` then gets, once everything verified, a key-server
    client certificate valid ``credential_minutes`` inside the encrypted payload.
    """

    def __init__(self, db_provider, ticket_key, signer_pub=None, vendor_cas=None, ek_trust=DEFAULT_EK_TRUST,
                 max_ticket_age=DEFAULT_MAX_TICKET_AGE, pcr_selection=None, used_dir=None, max_used=DEFAULT_MAX_USED,
                 entry_cache_size=4096, negative_cache_size=4096, ek_allow_list=None, credential_issuer=None,
                 credential_minutes=DEFAULT_CREDENTIAL_MINUTES):
        _require_cryptography()
        if isinstance(credential_minutes, bool) or not isinstance(credential_minutes, int) \
                or not 1 <= credential_minutes <= MAX_CREDENTIAL_MINUTES:
            raise AttestError("keyserver_credential_minutes must be an integer in 1..%d" % MAX_CREDENTIAL_MINUTES)
        self.credential_issuer = credential_issuer
        self.credential_minutes = credential_minutes
        keys = [ticket_key] if isinstance(ticket_key, (bytes, bytearray)) else list(ticket_key or [])
        if not keys or any(len(k) != 32 for k in keys):
            raise AttestError("ticket keys must be 32 bytes")
        self._keys = collections.OrderedDict((key_id(bytes(k)), AESGCM(bytes(k))) for k in keys)
        self._issue_kid = next(iter(self._keys))
        self.db_provider = db_provider
        self.signer_pub = signer_pub
        try:
            self.ek_trust = EkTrust(ek_trust, vendor_cas, ek_allow_list, cache_size=EK_CERT_CACHE_SIZE,
                                    cache_ttl=EK_CERT_CACHE_TTL)
        except EkTrustConfigError as exc:
            raise AttestError("EK trust configuration refused: %s" % exc) from None
        self.vendor_cas = self.ek_trust.vendor_cas
        self.require_ek_cert = self.ek_trust.require_ek_cert
        self.max_ticket_age = int(max_ticket_age)
        self.pcr_selection = normalize_selection(pcr_selection or DEFAULT_PCR_SELECTION)
        self.used = UsedTickets(self.max_ticket_age, used_dir, max_used)
        self.entries = EntryCache(entry_cache_size, negative_cache_size)
        self._cache_size = max(1, entry_cache_size)
        self._prepared = {}
        self._goldens = {}
        self._ek_parsed = collections.OrderedDict()
        self._ek_trusted = collections.OrderedDict()
        # parsed AK public keys by their exact bytes (sound: a pure function of the bytes, see
        # quote.AkCache); remembered only once an attestation got through, like _ek_parsed
        self.aks = quote_mod.AkCache(self._cache_size)
        self._lock = threading.Lock()

    def __repr__(self):
        return "Attestor(%d ticket keys, %d vendor CAs)" % (len(self._keys), len(self.vendor_cas))

    # -- round trip 1 ---------------------------------------------------------------------
    def initiate(self, ekpubhash, now=None):
        """{version, nonce (b64), pcrs (selection), ticket} for the EK ``ekpubhash``."""
        if not isinstance(ekpubhash, str) or not EKPUBHASH_RE.fullmatch(ekpubhash):
            raise AttestRequestError("ekpubhash must be 64 lowercase hex characters")
        now = int(time.time() if now is None else now)
        nonce = os.urandom(NONCE_BYTES)
        body = {"v": PROTOCOL_VERSION, "ekpubhash": ekpubhash, "nonce": _b64(nonce), "iat": now,
                "pcrs": self.pcr_selection}
        iv = os.urandom(12)
        sealed = self._keys[self._issue_kid].encrypt(iv, _canonical(body), TICKET_AAD + self._issue_kid.encode())
        ticket = "%s.%s.%s" % (TICKET_PREFIX, self._issue_kid, base64.urlsafe_b64encode(iv + sealed).decode("ascii"))
        return {"version": PROTOCOL_VERSION, "nonce": _b64(nonce), "pcrs": self.pcr_selection, "ticket": ticket}

    def open_ticket(self, ticket, now=None):
        """The ticket's content after authenticity and age checks (TicketInvalid/ExpiredError)."""
        if not isinstance(ticket, str) or len(ticket) > MAX_TICKET_CHARS:
            raise TicketInvalidError("ticket is missing or malformed")
        parts = ticket.split(".")
        if len(parts) != 3 or parts[0] != TICKET_PREFIX:
            raise TicketInvalidError("ticket is malformed (unknown ticket version)")
        aead = self._keys.get(parts[1])
        if aead is None:
            raise TicketInvalidError("ticket was sealed with an unknown key")
        try:
            raw = base64.urlsafe_b64decode(parts[2])
            body = json.loads(aead.decrypt(raw[:12], raw[12:], TICKET_AAD + parts[1].encode()))
        except (binascii.Error, ValueError, InvalidTag):
            raise TicketInvalidError("ticket is forged or corrupted")
        if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
            raise TicketInvalidError("unsupported ticket version")
        now = time.time() if now is None else now
        age = now - body["iat"]
        if age > self.max_ticket_age:
            raise TicketExpiredError("ticket expired (%d s old, maximum %d s)" % (age, self.max_ticket_age))
        if age < -MAX_CLOCK_SKEW:
            raise TicketExpiredError("ticket is dated in the future")
        return body

    # -- round trip 2 ---------------------------------------------------------------------
    def _ek(self, request, ticket_hash, now):
        """((TPM2B_PUBLIC, ekpubhash, marshalled, PEM, envelope.CredentialTarget), certificate bytes
        or None) of the EK in the request after attribute, hash and certificate checks."""
        ekpub = request.get("ekpub")
        if not isinstance(ekpub, str) or not ekpub or len(ekpub) > MAX_EK_CHARS:
            raise AttestRequestError("ekpub is missing or too long")
        cert_data = None
        if "-----BEGIN CERTIFICATE" in ekpub:
            cert_data = ekpub.encode("ascii", "replace")
        ek_cert = request.get("ek_cert")
        if ek_cert:
            if not isinstance(ek_cert, str) or len(ek_cert) > MAX_EK_CHARS:
                raise AttestRequestError("ek_cert is not a string or too long")
            cert_data = ek_cert.encode("ascii", "replace") if "-----BEGIN" in ek_cert else _unb64(ek_cert, "ek_cert")
        # parsing with tpm2-pytss costs more than the quote's ECDSA verify: once per enrolled EK
        # (remembered by _remember_ek once the enrollment matched, so unknown EKs never evict them)
        with self._lock:
            parsed = self._ek_parsed.get(ekpub)
            if parsed is not None:
                self._ek_parsed.move_to_end(ekpub)
        if parsed is None:
            try:
                public = load_ek_public(ekpub)
            except InvalidEkError as exc:
                raise EkRejectedError(str(exc))
            marshalled = public.marshal()
            try:
                target = envelope.credential_target(marshalled)
            except HcpError as exc:
                raise EkRejectedError(str(exc))
            parsed = (public, compute_ekpubhash(public), marshalled, public.to_pem(), target)
        if not hmac.compare_digest(parsed[1], ticket_hash):
            raise EkRejectedError("the EK does not match the ticket's ekpubhash")
        self._check_ek_trust(parsed[1], parsed[3], cert_data, now)
        return parsed, cert_data

    def _check_ek_trust(self, ekhash, pem, cert_data, now):
        """EkRejectedError unless the EK ``ekhash`` (PEM ``pem``) with its certificate ``cert_data``
        (bytes or None) is trusted (ek_trust.check_attestation), the verdict remembered per
        (ekhash, certificate bytes): parsing the certificate and comparing its key cost more than
        the quote's signature check.

        Why the cache is sound: the verdict depends only on the EK, the certificate bytes, the
        trust configuration and time. The key holds the first two (a re-enrolled host or a new
        certificate is checked afresh); the configuration is fixed for an Attestor's life (the
        service restarts when the vendor CAs, mode or allow list change); time is bounded: a
        verdict lasts at most EK_CERT_CACHE_TTL and never past the certificate's notAfter (as
        the chain cache of EkTrust). Only verdicts of completed attestations are remembered
        (``_remember_ek_trust``), so unknown EKs cannot evict the fleet's."""
        key = (ekhash, cert_data)
        with self._lock:
            until = self._ek_trusted.get(key)
        if until is not None and until > now:
            return
        try:
            self.ek_trust.check_attestation(ekhash, pem, cert_data, now)
        except InvalidEkError as exc:
            raise EkRejectedError(str(exc))

    def _remember_ek_trust(self, ekhash, cert_data, now):
        """Remember a positive EK trust verdict (see _check_ek_trust) until the TTL or notAfter,
        counted from the check itself: a verdict in use is not extended (no sliding window)."""
        with self._lock:
            if self._ek_trusted.get((ekhash, cert_data), 0) > now:
                return
        until = now + EK_CERT_CACHE_TTL
        if cert_data is not None:
            cert = load_certificate(cert_data)
            if cert is None:
                return
            until = min(until, cert.not_valid_after_utc.timestamp())
        with self._lock:
            self._ek_trusted[(ekhash, cert_data)] = until
            self._ek_trusted.move_to_end((ekhash, cert_data))
            while len(self._ek_trusted) > self._cache_size:
                self._ek_trusted.popitem(last=False)

    def _remember_ek(self, ekpub, parsed):
        """Keep the parsed EK of an enrolled TPM (bounded, least recently used out)."""
        with self._lock:
            self._ek_parsed[ekpub] = parsed
            self._ek_parsed.move_to_end(ekpub)
            while len(self._ek_parsed) > self._cache_size:
                self._ek_parsed.popitem(last=False)

    @staticmethod
    def check_request_format(request):
        """Sizes and types of the request's fields: the cheapest checks, before any key is used."""
        if not isinstance(request, dict):
            raise AttestRequestError("request body must be a JSON object")
        ticket = request.get("ticket")
        if not isinstance(ticket, str) or not ticket or len(ticket) > MAX_TICKET_CHARS:
            raise TicketInvalidError("ticket is missing or malformed")
        ekpub = request.get("ekpub")
        if not isinstance(ekpub, str) or not ekpub or len(ekpub) > MAX_EK_CHARS:
            raise AttestRequestError("ekpub is missing or too long")
        ek_cert = request.get("ek_cert")
        if ek_cert and (not isinstance(ek_cert, str) or len(ek_cert) > MAX_EK_CHARS):
            raise AttestRequestError("ek_cert is not a string or too long")
        eventlog = request.get("eventlog")
        if eventlog is not None and (not isinstance(eventlog, str) or len(eventlog) > MAX_EVENTLOG_BYTES * 4 // 3 + 4):
            raise AttestRequestError("eventlog is not a string or too large")
        if not isinstance(request.get("quote"), dict):
            raise QuoteRejectedError("quote is missing or not a quote bundle")
        ks_key = request.get("keyserver_key")
        if ks_key is not None and (not isinstance(ks_key, str) or len(ks_key) > MAX_KEYSERVER_KEY_CHARS):
            raise AttestRequestError("keyserver_key must be a PEM public key of at most %d characters" % MAX_KEYSERVER_KEY_CHARS)

    def complete(self, request, now=None):
        """Check a completion request and return the encrypted response (dict, JSON-ready).

        ``request``: {ticket, ekpub, ek_cert?, quote (bundle), eventlog?}. Raises an
        AttestError subclass (``status``) on any failure; nothing is released then.

        Cheapest checks first: field sizes and types; the ticket (one AES-GCM decryption) and
        its one use; the EK (parsed, matched to the ticket, certificate); the quote's ECDSA
        signature; only then the snapshot read (cached, misses apart from entries)."""
        self.check_request_format(request)
        credential_key = self._credential_key(request)
        now = time.time() if now is None else now
        ticket = self.open_ticket(request.get("ticket"), now)
        nonce = _unb64(ticket["nonce"], "ticket nonce", exc=TicketInvalidError)
        # consumed before any other check of its content: a ticket gets exactly one try
        self.used.consume(hashlib.sha256(nonce).hexdigest()[:32], ticket["iat"], now)
        parsed, cert_data = self._ek(request, ticket["ekpubhash"], now)
        _public, ekhash, ek_marshalled, _pem, target = parsed
        bundle = request.get("quote")
        proof = {}
        try:
            proven = quote_mod.verify_quote(bundle, nonce, ak_cache=self.aks, proof=proof)
        except QuoteVerificationError as exc:
            raise QuoteRejectedError(str(exc))
        for bank, indices in ticket["pcrs"].items():
            missing = [i for i in indices if str(i) not in proven["pcrs"].get(bank, {})]
            if missing:
                raise QuoteRejectedError("quote does not cover the requested %s PCRs %s" % (bank, missing))
        try:
            db = self.db_provider()
            files, head, key = self.entries.get(db, ticket["ekpubhash"])
        except HcpError as exc:
            raise AttestUnavailableError("enrollment DB snapshot unavailable: %s" % exc)
        if files is None:
            raise NotEnrolledError("TPM %s is not enrolled" % ticket["ekpubhash"])
        if not hmac.compare_digest(files.get("ek.pub", b""), ek_marshalled):
            raise EkRejectedError("the enrolled EK differs from the presented one")
        self._remember_ek(request["ekpub"], parsed)
        self.aks.remember(proof["ak_raw"], proof["ak"])
        self._remember_ek_trust(ekhash, cert_data, now)
        golden = self._golden(key, files)
        bad = []
        for bank, values in golden.items():
            for idx, value in sorted(values.items(), key=lambda kv: int(kv[0])):
                got = proven["pcrs"].get(bank, {}).get(idx)
                if got is None:
                    raise PcrPolicyError("golden %s PCR %s is not covered by the quote" % (bank, idx))
                if not hmac.compare_digest(got, value):
                    bad.append(int(idx))
        if bad:
            raise PcrPolicyError("PCR policy not satisfied: %s PCR(s) %s differ from the golden values"
                                 % ("sha256", ", ".join(map(str, bad))))
        payload, hostname = self._payload(key, files, ekhash)
        if credential_key is not None:
            # only here: the ticket, the EK, the quote and every golden PCR value verified
            credential = self._credential(credential_key, files, golden, proven, hostname, ekhash, now)
            payload = _canonical(dict(json.loads(payload), keyserver_credential=credential))
        return self._response(target, ekhash, payload, hostname, proven["ak_name"], nonce, head)

    def _credential_key(self, request):
        """The public key the request asks a key-server credential for (``keyserver_key``, PEM),
        or None (no such field, or this server issues no credentials). AttestRequestError on a
        malformed or weak key: checked before the ticket is consumed."""
        pem = request.get("keyserver_key")
        if pem is None or self.credential_issuer is None:
            return None
        if not isinstance(pem, str) or len(pem) > MAX_KEYSERVER_KEY_CHARS:
            raise AttestRequestError("keyserver_key must be a PEM public key of at most %d characters" % MAX_KEYSERVER_KEY_CHARS)
        try:
            key = pki.load_public_key(pem)
        except (pki.PkiError, ValueError, TypeError, UnicodeError):
            raise AttestRequestError("keyserver_key is not a PEM public key") from None
        if not pki.is_credential_key(key):
            raise AttestRequestError("keyserver_key must be an EC P-256/P-384, Ed25519 or RSA (2048 bits or more) key")
        return key

    def _credential(self, public_key, files, golden, proven, hostname, ekhash, now):
        """A key-server client certificate for ``public_key``, issued by the key-server credential
        CA, valid ``credential_minutes``, whose binding names the measurement the quote proved
        (the quoted values of the golden PCRs; none when the profile has no golden values) and the
        profile label the enrollment CA certified in the entry's https-client certificate."""
        quoted = dict((bank, dict((idx, proven["pcrs"][bank][idx]) for idx in values)) for bank, values in golden.items())
        measurement = measurement_of(quoted) if quoted else None
        label = None
        if files.get("https-client.pem"):
            try:
                label = pki.keyserver_binding(files["https-client.pem"])["profile"]
            except (HcpError, ValueError):
                label = None
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        common_name = hostname or ("tpm-" + ekhash[:32])
        try:
            cert = self.credential_issuer.issue(public_key, "https-client", common_name, now=moment,
                                                keyserver_binding={"profile": label, "measurement": measurement},
                                                lifetime=datetime.timedelta(minutes=self.credential_minutes))
        except HcpError as exc:
            raise AttestUnavailableError("cannot issue the key-server credential: %s" % exc) from None
        return {"format": CREDENTIAL_FORMAT, "version": CREDENTIAL_VERSION,
                "certificate": (pki.certificate_pem(cert) + self.credential_issuer.chain_pem()).decode("ascii"),
                "not_after": int(cert.not_valid_after_utc.timestamp()), "measurement": measurement, "profile": label}

    def _golden(self, key, files):
        """golden_pcrs(files), once per (snapshot, head, entry): the snapshot is immutable per head
        (a moved snapshot or re-enrolled host is another key). Read only, never mutated by callers."""
        golden = self._goldens.get(key)
        if golden is None:
            golden = golden_pcrs(files)
            with self._lock:
                if len(self._goldens) >= self._cache_size:
                    self._goldens.clear()
                self._goldens[key] = golden
        return golden

    def _payload(self, key, files, ekhash):
        """(payload bytes, hostname) of an entry: its signed files (manifest.json, manifest.sig and
        every file the manifest lists), checked against the asset signer when configured.
        Prepared once per (snapshot, head, entry): the snapshot is immutable per head."""
        prepared = self._prepared.get(key)
        if prepared is not None:
            return prepared
        try:
            manifest = json.loads(files["manifest.json"])
            names = sorted(set(manifest["files"]) | {"manifest.json", "manifest.sig"})
        except (KeyError, ValueError, TypeError):
            raise AttestUnavailableError("the enrolled entry has no readable manifest")
        if manifest.get("format") != MANIFEST_FORMAT:
            raise AttestUnavailableError("the enrolled entry's manifest has an unknown format")
        released = dict((n, files[n]) for n in names if n in files)
        if self.signer_pub is not None:
            try:
                verify_entry(released, self.signer_pub)
            except HcpError as exc:
                raise AttestUnavailableError("the enrolled entry does not verify with the asset signer: %s" % exc)
        hostname = files.get("hostname", b"").decode("utf-8", "replace").strip()
        payload = _canonical({"format": PAYLOAD_FORMAT, "version": PROTOCOL_VERSION, "ekpubhash": ekhash,
                              "hostname": hostname, "files": dict((n, _b64(d)) for n, d in released.items())})
        with self._lock:
            if len(self._prepared) >= self._cache_size:
                self._prepared.clear()
            self._prepared[key] = (payload, hostname)
        return payload, hostname

    @staticmethod
    def _response(target, ekhash, payload, hostname, ak_name_hex, nonce, head):
        """The response: ``payload`` under a fresh AES-256-GCM session key wrapped with
        MakeCredential(EK ``target``, AK name)."""
        session_key = os.urandom(32)
        blob, secret = envelope.make_credential_fast(target, session_key, bytes.fromhex(ak_name_hex))
        iv = os.urandom(12)
        header = {"format": RESPONSE_FORMAT, "version": PROTOCOL_VERSION, "ekpubhash": ekhash,
                  "ak_name": ak_name_hex, "nonce": _b64(nonce), "snapshot": head,
                  "credential_blob": _b64(blob), "encrypted_secret": _b64(secret), "iv": _b64(iv)}
        header["ciphertext"] = _b64(AESGCM(session_key).encrypt(iv, payload, response_aad(header)))
        header["hostname"] = hostname
        return header
