# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freshness monitoring of the attestation service (docs/monitoring.md): the hooks
``web/attest_app.py`` calls (a few lines there, the logic here), the per-host and replication
series of its ``/metrics``, ``GET /v1/status`` (``hcp.core.attest.status`` v1, JSON) and
``GET /status`` (the fleet status page, HTML), both for monitoring callers only
(``web.metrics.MonitoringAccess``).

Configuration keys of the attestation service: ``freshness_max_hosts`` (hosts kept, default
10,000), ``freshness_max_series`` (hosts exported as per-host series, default 1,000; the rest
counted), ``stale_after`` (seconds without a success before the page calls a host stale,
default 3600), ``server_name`` (default: the host name), ``monitoring_client_ca`` and
``monitoring_clients`` (web.metrics).
"""

from __future__ import annotations

import socket
import time

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness
from ansible_collections.hcp.core.plugins.module_utils.attestation import status_page
from ansible_collections.hcp.core.plugins.module_utils.attestation.replica import alert_active, read_state
from ansible_collections.hcp.core.plugins.module_utils.web import metrics
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import ServiceConfigError

# failures whose ticket cannot name a host, or that are someone else's attack (a replay)
UNATTRIBUTED = frozenset(["bad_request", "bad_ticket", "expired_ticket", "replay"])


def _bounded_int(config, key, default, maximum):
    value = config.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ServiceConfigError("%s must be an integer in 1..%d" % (key, maximum))
    return value


class AttestMonitoring(object):
    """The attestation app's monitoring: freshness store, request counters, routes."""

    def __init__(self, app, config, attestor, state_path, flush_interval=freshness.DEFAULT_FLUSH_INTERVAL):
        self.attestor = attestor
        self.state_path = state_path
        self.store = freshness.FreshnessStore(config.get("metrics_dir") or None,
                                              _bounded_int(config, "freshness_max_hosts", freshness.DEFAULT_MAX_HOSTS, 1000000),
                                              flush_interval)
        self.max_series = _bounded_int(config, "freshness_max_series", freshness.DEFAULT_MAX_SERIES, 100000)
        self.stale_after = _bounded_int(config, "stale_after", status_page.DEFAULT_STALE_AFTER, 365 * 86400)
        self.name = str(config.get("server_name") or socket.gethostname())[:253]
        self.counters, self.access = metrics.install(app, "attest", config, route=False)
        app.add_url_rule("/v1/status", "monitoring_status", self.status_json, methods=["GET"])
        app.add_url_rule("/status", "monitoring_page", self.status_html, methods=["GET"])

    # -- hooks of /v1/complete ---------------------------------------------------------------
    def success(self, response):
        self.store.success(response.get("ekpubhash"), response.get("hostname"))

    def failure(self, result, reason):
        if result in UNATTRIBUTED:
            return
        try:
            request = jsonutil.loads(flask.request.get_data(cache=True), "request body")
        except (jsonutil.JsonInputError, ValueError):
            return
        freshness.record_failure(self.store, self.attestor, request, result, reason)

    # -- views -------------------------------------------------------------------------------
    def server_info(self, now):
        """This server's replication health for the status document (no paths, no error text)."""
        state = read_state(self.state_path) if self.state_path else {}
        success = state.get("last_success")
        age = max(0.0, now - success) if isinstance(success, (int, float)) and not isinstance(success, bool) else None
        failures = state.get("consecutive_failures") or 0
        return {"name": self.name, "snapshot_head": state.get("head"), "generation": state.get("generation"),
                "snapshot_age_seconds": age, "replication_failures": failures, "rollback_alert": alert_active(state),
                "healthy": age is not None and failures == 0 and not alert_active(state)}

    def document(self):
        now = time.time()
        return freshness.status_document(self.store, self.server_info(now), now)

    def status_json(self):
        refused = self.access.refusal()
        if refused is not None:
            return refused
        response = flask.jsonify(self.document())
        response.headers["Cache-Control"] = "no-store"
        return response

    def status_html(self):
        refused = self.access.refusal()
        if refused is not None:
            return refused
        response = flask.Response(status_page.render([self.document()], stale_after=self.stale_after),
                                  mimetype="text/html")
        response.headers["Content-Security-Policy"] = status_page.CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    def render(self, environ):
        """The series /metrics adds to the attestation counters: request counters and
        replication gauges for any caller (counts only), per-host series (host names) only for
        monitoring callers."""
        out = self.counters.render()
        state = read_state(self.state_path) if self.state_path else {}
        out.family("hcp_attest_snapshot_generation", "gauge", "Enrollment DB generation of the served snapshot (not a number while unknown).")
        generation = state.get("generation")
        out.sample("hcp_attest_snapshot_generation", generation if isinstance(generation, int) else None)
        out.family("hcp_attest_snapshot_head_timestamp_seconds", "gauge", "Commit time of the served snapshot's head.")
        out.sample("hcp_attest_snapshot_head_timestamp_seconds", state.get("head_time") if isinstance(state.get("head_time"), int) else None)
        out.family("hcp_attest_replication_last_success_timestamp_seconds", "gauge",
                   "Unix time arepl last confirmed the snapshot current (not a number before the first).")
        success = state.get("last_success")
        out.sample("hcp_attest_replication_last_success_timestamp_seconds",
                   success if isinstance(success, (int, float)) and not isinstance(success, bool) else None)
        out.family("hcp_attest_replication_rollback_alert", "gauge", "1 while arepl's rollback alert is raised.")
        out.sample("hcp_attest_replication_rollback_alert", 1 if alert_active(state) else 0)
        if self.access.error(environ) is None:
            freshness.render_metrics(self.store, out, self.max_series)
        return out.text()


def install(app, config, attestor, state_path, flush_interval=freshness.DEFAULT_FLUSH_INTERVAL):
    """The AttestMonitoring of ``app`` (kept as ``app.extensions["hcp_attest_monitoring"]``);
    successes reach the shared store at most every ``flush_interval`` seconds (freshness)."""
    monitor = AttestMonitoring(app, config, attestor, state_path, flush_interval)
    app.extensions["hcp_attest_monitoring"] = monitor
    return monitor
