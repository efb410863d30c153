# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-host attestation freshness of one attestation server: last success, last result and its
reason, per EK (ekpubhash), bounded (docs/monitoring.md).

Stored in SQLite (the standard library's, a well-kept engine): ``<metrics_dir>/freshness.sqlite``
when the server has a ``metrics_dir`` (shared by its uwsgi workers: WAL, no fsync: freshness need
not survive a power loss), else in memory (per process). Successes (every attestation) are kept in
the worker's memory and written in one transaction at most every ``flush_interval`` seconds, before
any read (status, metrics) or failure write of the worker, and at clean exit: a read sees its own
worker's latest data, other workers' as of their last flush (within one interval of their last
request). Failures (rare, and needing the table for their checks) are written at once.

Bounds: at most ``max_hosts`` rows (default 10,000); a new host beyond that evicts the least
recently updated one (counted in ``evicted``). Successes are always recorded (the host name
comes from the enrolled entry). A failure is recorded only for an EK named by an authentic
ticket of this server and only when the EK is already known (it succeeded before) or the
failure proves it enrolled (``pcr_policy``: raised after the entry was found), so a flood of
unknown EKs never fills the table nor evicts real hosts. Anyone can get a ticket for any EK, so
a failure row is a claim ("someone failed to attest as this EK"), never a success: the
last-success time only moves on a completed attestation.
"""

from __future__ import annotations

import atexit
import os
import re
import sqlite3
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

STATUS_FORMAT = "hcp.core.attest.status"
STATUS_VERSION = 1
DEFAULT_MAX_HOSTS = 10000
DEFAULT_MAX_SERIES = 1000
DEFAULT_FLUSH_INTERVAL = 1.0
MAX_REASON_CHARS = 200
MAX_HOSTNAME_CHARS = 253
DB_NAME = "freshness.sqlite"
EKPUBHASH_RE = re.compile(r"[0-9a-f]{64}")
# failures that prove the EK enrolled in the served snapshot (the entry was read)
ENROLLED_RESULTS = frozenset(["pcr_policy"])
SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    ekpubhash TEXT PRIMARY KEY, hostname TEXT, last_success REAL, last_attempt REAL NOT NULL,
    last_result TEXT NOT NULL, reason TEXT);
CREATE INDEX IF NOT EXISTS hosts_attempt ON hosts (last_attempt);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class FreshnessError(HcpError):
    """The freshness store cannot be opened."""


def _clean_text(value, limit):
    """``value`` as a bounded one-line string (None stays None)."""
    if value is None:
        return None
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def host_key(hostname, ekpubhash):
    """The status document's key of a host: its name, or ``tpm-<32 hex>`` when it has none."""
    return hostname or "tpm-" + ekpubhash[:32]


class FreshnessStore(object):
    """Per-host last success / last result (thread-safe; safe across processes with a file)."""

    def __init__(self, directory=None, max_hosts=DEFAULT_MAX_HOSTS, flush_interval=DEFAULT_FLUSH_INTERVAL):
        if isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or not 1 <= max_hosts <= 1000000:
            raise FreshnessError("freshness_max_hosts must be an integer in 1..1000000")
        self.max_hosts = max_hosts
        self.path = os.path.join(directory, DB_NAME) if directory else None
        self._lock = threading.Lock()
        self._conn = None
        self._pid = None
        self._seen = set()
        self._pending = {}
        self._owner = os.getpid()
        self._flushed = 0.0
        self.flush_interval = flush_interval
        self.write_errors = 0
        atexit.register(self.flush)

    def _db(self):
        """This process's connection (a forked worker opens its own), under the lock."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            conn = sqlite3.connect(self.path or ":memory:", timeout=5.0, isolation_level=None, check_same_thread=False)
            if self.path:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise FreshnessError("cannot open the freshness store %s: %s" % (self.path or ":memory:", exc)) from None
        if self.path:
            try:
                os.chmod(self.path, 0o640)
            except OSError:
                pass
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _write(self, ekpubhash, hostname, result, reason, now, success, require_known):
        if success:
            return self._write_success(ekpubhash, hostname, now)
        with self._lock:
            # pending successes first: the failure's checks and ordering see them
            self._flush_locked()
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT hostname FROM hosts WHERE ekpubhash = ?", (ekpubhash,)).fetchone()
                if row is None and require_known:
                    conn.execute("ROLLBACK")
                    return False
                if row is None:
                    conn.execute("INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?)",
                                 (ekpubhash, hostname, None, now, result, reason))
                    self._evict(conn)
                else:
                    # never overwrite a newer attempt another worker flushed meanwhile
                    conn.execute("UPDATE hosts SET last_attempt = ?, last_result = ?, reason = ?, hostname = COALESCE(?, hostname) "
                                 "WHERE ekpubhash = ? AND last_attempt <= ?", (now, result, reason, hostname, ekpubhash, now))
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
        return True

    def _write_success(self, ekpubhash, hostname, now):
        """The hot path (every attestation): kept in this process's memory (one dict entry per
        EK, at most ``max_hosts``) and written by :meth:`flush` at most every ``flush_interval``
        seconds, before any read or failure write of this process, and at clean exit. Another
        worker's reads see it within one interval of this worker's last request."""
        with self._lock:
            self._own_pending()
            previous = self._pending.get(ekpubhash)
            if previous is None or previous[1] <= now:
                self._pending[ekpubhash] = (hostname, now)
            if len(self._pending) >= self.max_hosts or time.monotonic() - self._flushed >= self.flush_interval:
                self._flush_locked()
        return True

    def _own_pending(self):
        """Under the lock: a forked worker starts with nothing pending (its parent's rows are
        the parent's to write)."""
        if self._owner != os.getpid():
            self._owner = os.getpid()
            self._pending.clear()
            self._flushed = 0.0

    def flush(self):
        """Write the pending successes now (never raises: an error is counted)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self):
        """Under the lock: :meth:`_flush_rows`, an error counted (a monitoring write never fails
        an attestation nor a read)."""
        try:
            self._flush_rows()
        except (sqlite3.Error, FreshnessError, OSError):
            self.write_errors += 1

    def _flush_rows(self):
        """Under the lock: the pending successes in one transaction. A row's fields move only
        forward: the last success is the latest of both, the last attempt (result, reason, host
        name) the store's when a worker wrote a newer one meanwhile. The eviction check runs
        when an EK this process has not written yet is among them."""
        self._own_pending()
        self._flushed = time.monotonic()
        if not self._pending:
            return
        rows = [(ekpubhash, hostname, now, now) for ekpubhash, (hostname, now) in self._pending.items()]
        new = [ekpubhash for ekpubhash in self._pending if ekpubhash not in self._seen]
        self._pending.clear()
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO hosts VALUES (?, ?, ?, ?, 'ok', NULL) ON CONFLICT(ekpubhash) DO UPDATE SET "
                "last_success = MAX(COALESCE(last_success, 0), excluded.last_success), "
                "hostname = CASE WHEN excluded.last_attempt >= last_attempt THEN excluded.hostname ELSE hostname END, "
                "last_result = CASE WHEN excluded.last_attempt >= last_attempt THEN 'ok' ELSE last_result END, "
                "reason = CASE WHEN excluded.last_attempt >= last_attempt THEN NULL ELSE reason END, "
                "last_attempt = MAX(last_attempt, excluded.last_attempt)", rows)
            if new:
                if len(self._seen) + len(new) > self.max_hosts:
                    self._seen.clear()
                self._seen.update(new)
                self._evict(conn)
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise

    def _evict(self, conn):
        over = conn.execute("SELECT COUNT(*) FROM hosts").fetchone()[0] - self.max_hosts
        if over > 0:
            conn.execute("DELETE FROM hosts WHERE ekpubhash IN (SELECT ekpubhash FROM hosts ORDER BY last_attempt LIMIT ?)", (over,))
            conn.execute("INSERT INTO meta VALUES ('evicted', ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                         (over,))

    def success(self, ekpubhash, hostname, now=None):
        """Record a completed attestation of ``ekpubhash`` (host name from the enrolled entry)."""
        if not isinstance(ekpubhash, str) or not EKPUBHASH_RE.fullmatch(ekpubhash):
            return False
        return self._safe_write(ekpubhash, _clean_text(hostname or None, MAX_HOSTNAME_CHARS), "ok", None,
                                time.time() if now is None else now, True, False)

    def failure(self, ekpubhash, result, reason, now=None):
        """Record a failed attestation claimed for ``ekpubhash`` (see the module's bounds)."""
        if not isinstance(ekpubhash, str) or not EKPUBHASH_RE.fullmatch(ekpubhash):
            return False
        return self._safe_write(ekpubhash, None, _clean_text(result, 40), _clean_text(reason, MAX_REASON_CHARS),
                                time.time() if now is None else now, False, result not in ENROLLED_RESULTS)

    def _safe_write(self, *args):
        """A monitoring write never fails an attestation: an error is counted, not raised."""
        try:
            return self._write(*args)
        except (sqlite3.Error, FreshnessError, OSError):
            with self._lock:
                self.write_errors += 1
            return False

    def hosts(self):
        """Every host row as a dict, stalest success first (never-succeeded first of all)."""
        with self._lock:
            self._flush_locked()
            rows = self._db().execute(
                "SELECT ekpubhash, hostname, last_success, last_attempt, last_result, reason FROM hosts "
                "ORDER BY last_success IS NOT NULL, last_success, ekpubhash").fetchall()
        keys = ("ekpubhash", "hostname", "last_success", "last_attempt", "last_result", "reason")
        return [dict(zip(keys, row)) for row in rows]

    def evicted(self):
        with self._lock:
            self._flush_locked()
            row = self._db().execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
        return row[0] if row else 0


def record_failure(store, attestor, request, result, reason, now=None):
    """Record a failed ``complete`` for the EK its ticket names, when the ticket is authentic
    (opened by ``attestor``; an expired or forged ticket names nobody). Never raises."""
    try:
        ticket = request.get("ticket") if isinstance(request, dict) else None
        if not isinstance(ticket, str):
            return False
        opened = attestor.open_ticket(ticket, now=now)
        return store.failure(opened.get("ekpubhash"), result, reason, now=now)
    except (HcpError, ValueError, TypeError, KeyError, AttributeError):
        return False


def status_document(store, server, now=None):
    """The ``hcp.core.attest.status`` v1 document of this server (docs/monitoring.md)."""
    now = time.time() if now is None else now
    hosts = {}
    for row in store.hosts():
        key = host_key(row["hostname"], row["ekpubhash"])
        previous = hosts.get(key)
        if previous is not None and (previous["last_attempt"] or 0) >= row["last_attempt"]:
            continue
        hosts[key] = {"ekpubhash": row["ekpubhash"], "last_success": row["last_success"], "last_attempt": row["last_attempt"],
                      "last_result": row["last_result"], "reason": row["reason"]}
    return {"format": STATUS_FORMAT, "version": STATUS_VERSION, "generated": now, "server": server,
            "evicted": store.evicted(), "hosts": hosts}


def render_metrics(store, exposition, max_series=DEFAULT_MAX_SERIES):
    """Per-host series into ``exposition`` (web.metrics.Exposition): at most ``max_series``
    hosts, stalest first, the rest counted in ``hcp_attest_host_series_dropped``."""
    rows = store.hosts()
    shown, dropped = rows[:max_series], max(0, len(rows) - max_series)
    exposition.family("hcp_attest_host_last_success_timestamp_seconds", "gauge",
                      "Unix time of the host's last completed attestation on this server (not a number before the first).")
    for row in shown:
        exposition.sample("hcp_attest_host_last_success_timestamp_seconds", row["last_success"],
                          (("ekpubhash", row["ekpubhash"]), ("hostname", row["hostname"] or "")))
    exposition.family("hcp_attest_host_last_attempt_timestamp_seconds", "gauge",
                      "Unix time of the host's last attestation attempt on this server.")
    for row in shown:
        exposition.sample("hcp_attest_host_last_attempt_timestamp_seconds", row["last_attempt"],
                          (("ekpubhash", row["ekpubhash"]), ("hostname", row["hostname"] or "")))
    exposition.family("hcp_attest_host_last_ok", "gauge", "1 when the host's last attestation attempt on this server succeeded.")
    for row in shown:
        exposition.sample("hcp_attest_host_last_ok", 1 if row["last_result"] == "ok" else 0,
                          (("ekpubhash", row["ekpubhash"]), ("hostname", row["hostname"] or "")))
    exposition.family("hcp_attest_hosts", "gauge", "Hosts this server keeps freshness for (all, not only those exported).")
    exposition.sample("hcp_attest_hosts", len(rows))
    exposition.family("hcp_attest_host_series_dropped", "gauge",
                      "Hosts left out of the per-host series (over freshness_max_series).")
    exposition.sample("hcp_attest_host_series_dropped", dropped)
    exposition.family("hcp_attest_hosts_evicted_total", "counter",
                      "Hosts dropped from the freshness store (over freshness_max_hosts).")
    exposition.sample("hcp_attest_hosts_evicted_total", store.evicted())
    return exposition
