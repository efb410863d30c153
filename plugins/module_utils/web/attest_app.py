# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ahcp, the attestation service's HTTP face (Flask): POST /v1/initiate, POST /v1/complete,
GET /healthcheck (snapshot head and age), GET /metrics (Prometheus text format).
Protocol and wire formats: docs/attestation.md. Logic: attestation/server.py; snapshot: attestation/replica.py.

Configuration (JSON file named by $HCP_ATTEST_CONFIG):
``db`` (path of arepl's ``current`` link, or of any enrollment DB), ``arepl_state`` (arepl's
state.json, for lag metrics; default: state.json beside ``db``), ``ticket_key_file``,
``asset_signer_pub`` (PEM file; optional), ``ek_trust`` (vendor_ca | allow_list | tofu, default vendor_ca), ``vendor_ca_dir``, ``ek_allow_list``,
``max_ticket_age``, ``pcr_selection``, ``used_ticket_dir``, ``max_content_length``,
``max_snapshot_age`` (healthcheck reports ``stale`` when the snapshot is older; default 600 s),
``metrics_dir`` (optional: counters shared by the worker processes through one file per process;
without it, each process counts alone), ``metrics_flush_interval`` (seconds, default 1: counters
and freshness are written to ``metrics_dir`` at most this often, at exit and before a read), ``keyserver_credential_ca_key`` and
``keyserver_credential_ca_cert`` (the key-server credential CA: PEM key, 0600, and chain;
optional: without them no credential is issued), ``keyserver_credential_minutes`` (1-60, 10).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils import fileutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.attestation import protocol
from ansible_collections.hcp.core.plugins.module_utils.attestation.replica import read_state, snapshot_db_provider
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError
from ansible_collections.hcp.core.plugins.module_utils.tpm import ek_trust
from ansible_collections.hcp.core.plugins.module_utils.web import attest_monitoring
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    LazyApplication,
    create_app_base,
    health_response,
    json_error,
    load_config,
    request_json,
)

CONFIG_ENV = "HCP_ATTEST_CONFIG"
DEFAULT_MAX_CONTENT_LENGTH = 256 * 1024
DEFAULT_MAX_SNAPSHOT_AGE = 600
DEFAULT_FLUSH_INTERVAL = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RESULTS = ("ok", "bad_request", "bad_ticket", "expired_ticket", "replay", "ek_rejected", "quote_rejected",
           "pcr_policy", "not_enrolled", "unavailable", "error")
RESULT_BY_CLASS = (
    (attest.TicketInvalidError, "bad_ticket"), (attest.TicketExpiredError, "expired_ticket"),
    (attest.ReplayError, "replay"), (attest.EkRejectedError, "ek_rejected"),
    (attest.QuoteRejectedError, "quote_rejected"), (attest.PcrPolicyError, "pcr_policy"),
    (attest.NotEnrolledError, "not_enrolled"), (attest.AttestUnavailableError, "unavailable"),
    (attest.AttestRequestError, "bad_request"),
)


class Metrics(object):
    """Counters of completed attestations by result and a latency histogram (thread-safe).

    With ``directory`` (config ``metrics_dir``) the counters are shared by the worker processes
    of one server: each process counts in memory and rewrites ``<directory>/<pid>.json`` (0640,
    atomically) at most every ``flush_interval`` seconds (config ``metrics_flush_interval``,
    default 1 s; 0: after every observation), at clean exit (atexit) and before it answers
    ``/metrics`` (:meth:`collect`: a read sees its own process's latest counts, the other
    workers' as of their last flush: within one interval of their last request; an idle
    worker's last interval is written at its next request or at exit). :meth:`render` sums all
    the files. A file rewrite per request cost about 4 ms of CPU under load, two per attestation. Files of dead workers are kept so
    that the counters never go backwards when uwsgi respawns a worker; a new process whose pid
    already has a file continues from it. Unreadable or corrupt files are skipped and counted
    in ``hcp_attest_metrics_errors``. This is what prometheus_client's multiprocess mode does;
    that dependency is not worth these few lines.
    """

    def __init__(self, directory=None, flush_interval=DEFAULT_FLUSH_INTERVAL):
        self._lock = threading.Lock()
        self.directory = directory
        self.flush_interval = flush_interval
        self.write_errors = 0
        self._pid = None
        self._dirty = False
        self._flushed = 0.0
        self._reset()
        if directory is not None:
            atexit.register(self.flush)

    def _reset(self):
        self.results = dict((r, 0) for r in RESULTS)
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.count = 0
        self.total = 0.0
        self.initiated = 0

    def _path(self, pid):
        return os.path.join(self.directory, "%d.json" % pid)

    def _own_process(self):
        """Called under the lock: a forked child starts from zero (its parent's counts are in
        the parent's file) or from the file a dead process with the same pid left behind."""
        pid = os.getpid()
        if self.directory is None or self._pid == pid:
            return
        self._pid = pid
        self._reset()
        self._dirty, self._flushed = False, 0.0
        try:
            with open(self._path(pid), "rb") as handle:
                state = _parse_state(handle.read())
        except (OSError, ValueError):
            return
        self.results.update(state["results"])
        self.buckets = state["buckets"]
        self.count, self.total, self.initiated = state["count"], state["sum"], state["initiated"]

    def _state(self):
        return {"results": dict(self.results), "initiated": self.initiated, "buckets": list(self.buckets),
                "count": self.count, "sum": self.total}

    def _persist(self, force=False):
        """Called under the lock (writes of one process never overtake each other): the file
        rewritten when ``force`` or when the last write is ``flush_interval`` old."""
        if self.directory is None:
            return
        self._dirty = True
        now = time.monotonic()
        if not force and now - self._flushed < self.flush_interval:
            return
        self._dirty, self._flushed = False, now
        data = json.dumps(dict(self._state(), pid=self._pid), sort_keys=True).encode("utf-8")
        try:
            # atomic for readers; no fsync: counters need not survive a power loss (and
            # an fsync per request would cost more than the attestation itself)
            fileutil.atomic_write(self._path(self._pid), data, mode=0o640, fsync=False)
        except OSError:
            self.write_errors += 1

    def flush(self):
        """Write this process's pending counts now (at exit, before a read)."""
        with self._lock:
            if self.directory is not None and self._dirty and self._pid == os.getpid():
                self._persist(force=True)

    def initiate(self):
        with self._lock:
            self._own_process()
            self.initiated += 1
            self._persist()

    def observe(self, result, seconds):
        with self._lock:
            self._own_process()
            self.results[result] = self.results.get(result, 0) + 1
            self.count += 1
            self.total += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            self._persist()

    def collect(self):
        """(summed state of all the processes, number of files skipped) - this process's
        in-memory state plus every other ``<pid>.json`` in the directory."""
        with self._lock:
            self._own_process()
            if self._dirty:
                self._persist(force=True)
            total = self._state()
        errors = 0
        if self.directory is None:
            return total, errors
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return total, 1
        for name in names:
            if not name.endswith(".json") or name.startswith(".") or name == "%d.json" % self._pid:
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as handle:
                    state = _parse_state(handle.read())
            except (OSError, ValueError):
                errors += 1
                continue
            for result, value in state["results"].items():
                total["results"][result] = total["results"].get(result, 0) + value
            total["buckets"] = [a + b for a, b in zip(total["buckets"], state["buckets"])]
            for key in ("initiated", "count", "sum"):
                total[key] += state[key]
        return total, errors

    def render(self, snapshot):
        state, errors = self.collect()
        lines = ["# HELP hcp_attest_total Completed attestation requests by result.",
                 "# TYPE hcp_attest_total counter"]
        for result in sorted(state["results"]):
            lines.append('hcp_attest_total{result="%s"} %d' % (result, state["results"][result]))
        lines += ["# HELP hcp_attest_initiate_total Initiated attestations.", "# TYPE hcp_attest_initiate_total counter",
                  "hcp_attest_initiate_total %d" % state["initiated"],
                  "# HELP hcp_attest_complete_seconds Latency of /v1/complete.",
                  "# TYPE hcp_attest_complete_seconds histogram"]
        for bound, count in zip(LATENCY_BUCKETS, state["buckets"]):
            lines.append('hcp_attest_complete_seconds_bucket{le="%s"} %d' % (bound, count))
        lines.append('hcp_attest_complete_seconds_bucket{le="+Inf"} %d' % state["count"])
        lines.append("hcp_attest_complete_seconds_sum %.6f" % state["sum"])
        lines.append("hcp_attest_complete_seconds_count %d" % state["count"])
        if self.directory is not None:
            lines += ["# HELP hcp_attest_metrics_errors Metrics files skipped at this scrape plus failed metrics "
                      "writes of the answering process.",
                      "# TYPE hcp_attest_metrics_errors gauge",
                      "hcp_attest_metrics_errors %d" % (errors + self.write_errors)]
        lines += ["# HELP hcp_attest_snapshot_age_seconds Seconds since arepl last confirmed the snapshot current.",
                  "# TYPE hcp_attest_snapshot_age_seconds gauge"]
        age = snapshot.get("age_seconds")
        lines.append("hcp_attest_snapshot_age_seconds %s" % ("NaN" if age is None else "%.3f" % age))
        lines += ["# HELP hcp_attest_replication_failures Consecutive arepl sync failures.",
                  "# TYPE hcp_attest_replication_failures gauge",
                  "hcp_attest_replication_failures %d" % (snapshot.get("consecutive_failures") or 0)]
        return "\n".join(lines) + "\n"


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("not a counter")
    return value


def _parse_state(data):
    """A process's metrics file, validated (ValueError when corrupt)."""
    state = json.loads(data.decode("utf-8"))
    if not isinstance(state, dict) or not isinstance(state.get("results"), dict):
        raise ValueError("not a metrics file")
    buckets = state.get("buckets")
    if not isinstance(buckets, list) or len(buckets) != len(LATENCY_BUCKETS):
        raise ValueError("histogram buckets differ")
    total = state.get("sum")
    if isinstance(total, bool) or not isinstance(total, (int, float)) or not total >= 0:
        raise ValueError("bad sum")
    return {"results": dict((str(k), _count(v)) for k, v in state["results"].items()),
            "buckets": [_count(v) for v in buckets], "initiated": _count(state.get("initiated")),
            "count": _count(state.get("count")), "sum": float(total)}


def flush_interval(config):
    """``metrics_flush_interval`` of ``config`` (seconds, 0..60, default 1): how long counts
    and freshness may wait in a worker's memory before they reach ``metrics_dir``."""
    value = config.get("metrics_flush_interval")
    value = DEFAULT_FLUSH_INTERVAL if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 60:
        raise attest.AttestError("metrics_flush_interval must be a number of seconds in 0..60")
    return float(value)


def _result_of(exc):
    for cls, name in RESULT_BY_CLASS:
        if isinstance(exc, cls):
            return name
    return "error"


def _read_file(path, what):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise attest.AttestError("cannot read %s %s: %s" % (what, path, exc.strerror))


def build_attestor(config):
    """An attest.Attestor from the service configuration dict."""
    if not config.get("db") or not config.get("ticket_key_file"):
        raise attest.AttestError("the attestation service needs 'db' and 'ticket_key_file'")
    signer = config.get("asset_signer_pub")
    try:
        mode, vendor_dir, allow_list = ek_trust.trust_from_config(config)
    except ek_trust.EkTrustConfigError as exc:
        raise attest.AttestError("EK trust configuration refused: %s" % exc) from None
    return attest.Attestor(
        snapshot_db_provider(config["db"]),
        attest.load_ticket_keys(config["ticket_key_file"]),
        signer_pub=_read_file(signer, "asset signer key") if signer else None,
        vendor_cas=vendor_dir,
        ek_trust=mode,
        ek_allow_list=allow_list,
        max_ticket_age=int(config.get("max_ticket_age", attest.DEFAULT_MAX_TICKET_AGE)),
        pcr_selection=config.get("pcr_selection"),
        used_dir=config.get("used_ticket_dir"),
        credential_issuer=_credential_issuer(config),
        credential_minutes=config.get("keyserver_credential_minutes", attest.DEFAULT_CREDENTIAL_MINUTES),
    )


def _credential_issuer(config):
    """The key-server credential CA (pki.Issuer) from ``keyserver_credential_ca_key`` (PEM, a
    private file) and ``keyserver_credential_ca_cert`` (PEM chain), or None when neither is set."""
    key_path, cert_path = config.get("keyserver_credential_ca_key"), config.get("keyserver_credential_ca_cert")
    if not key_path and not cert_path:
        return None
    if not key_path or not cert_path:
        raise attest.AttestError("keyserver_credential_ca_key and keyserver_credential_ca_cert go together")
    try:
        info = os.stat(key_path)
    except OSError as exc:
        raise attest.AttestError("cannot read the key-server credential CA key %s: %s" % (key_path, exc.strerror))
    if info.st_mode & 0o077:
        raise attest.AttestError("the key-server credential CA key %s must not be readable by group or others" % key_path)
    try:
        return pki.Issuer.from_pem(_read_file(key_path, "key-server credential CA key"),
                                   _read_file(cert_path, "key-server credential CA certificate"))
    except HcpError as exc:
        raise attest.AttestError("the key-server credential CA is unusable: %s" % exc) from None


def create_app(config=None, attestor=None):
    """The Flask app for ``config`` (dict; default: the JSON file named by $HCP_ATTEST_CONFIG)."""
    config = config if config is not None else load_config(CONFIG_ENV, required=True)
    config = dict(config)
    config.setdefault("max_content_length", DEFAULT_MAX_CONTENT_LENGTH)
    interval = flush_interval(config)
    app = create_app_base("hcp-attest", config)
    attestor = attestor or build_attestor(config)
    metrics = Metrics(config.get("metrics_dir") or None, interval)
    db_link = config.get("db")
    state_path = config.get("arepl_state") or (os.path.join(os.path.dirname(os.path.abspath(db_link)), "state.json")
                                               if db_link else None)
    max_age = float(config.get("max_snapshot_age", DEFAULT_MAX_SNAPSHOT_AGE))
    monitor = attest_monitoring.install(app, config, attestor, state_path, interval)

    def snapshot():
        """Head and age of the snapshot served (age from arepl's state; None if unknown)."""
        info = {"head": None, "age_seconds": None, "consecutive_failures": None, "last_error": None}
        try:
            info["head"] = attestor.db_provider().head()
        except HcpError:
            pass
        if state_path:
            state = read_state(state_path)
            try:
                if state.get("last_success") is not None:
                    info["age_seconds"] = max(0.0, time.time() - float(state["last_success"]))
            except (TypeError, ValueError, OverflowError):
                pass
            if state.get("last_attempt") is not None:
                info["consecutive_failures"] = state.get("consecutive_failures")
                info["last_error"] = state.get("last_error")
        return info

    def body():
        """The JSON object body (Content-Type application/json), decoded within the size and
        nesting bounds."""
        if not flask.request.is_json:
            raise attest.AttestRequestError("request body must be a JSON object (Content-Type: application/json)")
        try:
            data = request_json()
        except JsonInputError as exc:
            raise attest.AttestRequestError(str(exc)) from None
        if not isinstance(data, dict):
            raise attest.AttestRequestError("request body must be a JSON object")
        return data

    @app.post("/v1/initiate")
    def initiate():
        try:
            result = attestor.initiate(body().get("ekpubhash"))
        except HcpError as exc:
            status = protocol.classify(exc)
            return json_error(status, str(exc) if status < 500 else "internal error")
        metrics.initiate()
        return flask.jsonify(result)

    @app.post("/v1/complete")
    def complete():
        started = time.monotonic()
        try:
            result = attestor.complete(body())
        except HcpError as exc:
            metrics.observe(_result_of(exc), time.monotonic() - started)
            status = protocol.classify(exc)
            monitor.failure(_result_of(exc), str(exc) if status < 500 or status == 503 else "internal error")
            app.logger.warning("attestation refused (%d): %s", status, exc)
            return json_error(status, str(exc) if status < 500 or status == 503 else "internal error")
        metrics.observe("ok", time.monotonic() - started)
        monitor.success(result)
        return flask.jsonify(result)

    def health():
        # A stale snapshot still serves attestations (a dead erepl must not stop them):
        # it is reported ("stale") for alerting, but only a missing snapshot is a 503.
        # Anonymous callers get the status only; head, age and arepl's last error go to
        # the local probe and the log.
        info = snapshot()
        stale = info["age_seconds"] is not None and info["age_seconds"] > max_age
        status = "unavailable" if info["head"] is None else ("stale" if stale else "ok")
        return health_response(status, info, 503 if info["head"] is None else 200, app.logger)

    app.view_functions["_healthcheck"] = health

    @app.get("/metrics")
    def prometheus():
        return flask.Response(metrics.render(snapshot()) + monitor.render(flask.request.environ), mimetype="text/plain; version=0.0.4")

    app.config["HCP_METRICS"] = metrics
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_ATTEST_CONFIG).
application = LazyApplication(create_app)
