# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text exposition (format 0.0.4) for every hcp.core web app, request/error counters
and the caller check of the monitoring endpoints (docs/monitoring.md).

* :class:`Exposition` writes families and samples with escaped label values (a host name or a
  reason can hold ``"``, ``\\`` or a newline: written raw it would forge series). Written by hand:
  prometheus_client's registry model (global collectors, its own multiprocess mode) does not fit
  apps that already share counters through files, and the format is these few rules.
* :class:`RequestCounters` + :func:`install`: one ``after_request`` hook per app counts requests
  by Flask endpoint (the app's own route names, or ``unmatched``: bounded) and status code, and a
  ``GET /metrics`` answers them to callers :class:`MonitoringAccess` accepts.
* :class:`MonitoringAccess`: the local probe (uwsgi socket, ``web.wsgi.local_probe``) or a
  certificate nginx verified that is a service identity of the site (``monitoring_client_ca``,
  default the app's ``service_client_ca``) and, with ``monitoring_clients``, whose common name
  matches one of those shell patterns. Without a CA: only the local probe (fail closed).
"""

from __future__ import annotations

import fnmatch
import math
import threading

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    ServiceConfigError,
    client_identity,
    json_error,
    load_service_client_ca,
    local_probe,
    service_client_error,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
KINDS = ("counter", "gauge", "histogram", "untyped")


def escape_label(value):
    """A label value as the text format wants it: backslash, double quote and line feed escaped
    (the only three escapes of format 0.0.4); any other character passes (UTF-8)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value):
    """A sample value: integers as such, floats with repr precision, None/NaN as NaN."""
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return "%d" % value
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Exposition(object):
    """A text exposition built family by family: ``family(name, kind, help)`` then ``sample(...)``."""

    def __init__(self):
        self.lines = []
        self._names = set()

    def family(self, name, kind, text):
        if kind not in KINDS:
            raise ValueError("unknown metric type %r" % (kind,))
        if name in self._names:
            raise ValueError("metric family %s written twice" % name)
        self._names.add(name)
        self.lines.append("# HELP %s %s" % (name, text.replace("\\", "\\\\").replace("\n", "\\n")))
        self.lines.append("# TYPE %s %s" % (name, kind))
        return self

    def sample(self, name, value, labels=None):
        if labels:
            text = ",".join('%s="%s"' % (key, escape_label(val)) for key, val in labels)
            self.lines.append("%s{%s} %s" % (name, text, format_value(value)))
        else:
            self.lines.append("%s %s" % (name, format_value(value)))
        return self

    def text(self):
        return "\n".join(self.lines) + "\n" if self.lines else ""


class RequestCounters(object):
    """Requests and errors (status >= 400) of one app by endpoint and status code (thread-safe,
    per process). Label values are bounded: the endpoint is one of the app's route names or
    ``unmatched``, the code a 3-digit HTTP status."""

    def __init__(self, service):
        self.service = service
        self._lock = threading.Lock()
        self.requests = {}

    def observe(self, endpoint, status):
        code = status if isinstance(status, int) and 100 <= status <= 599 else 0
        key = (endpoint or UNMATCHED, code)
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    def render(self, exposition=None):
        out = exposition or Exposition()
        with self._lock:
            items = sorted(self.requests.items())
        out.family("hcp_http_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
        for (endpoint, code), count in items:
            out.sample("hcp_http_requests_total", count, (("service", self.service), ("endpoint", endpoint), ("code", code)))
        out.family("hcp_http_requests_failed_total", "counter", "HTTP requests answered with a status of 400 or more, by endpoint.")
        errors = {}
        for (endpoint, code), count in items:
            if code >= 400 or code == 0:
                errors[endpoint] = errors.get(endpoint, 0) + count
        for endpoint in sorted(errors):
            out.sample("hcp_http_requests_failed_total", errors[endpoint], (("service", self.service), ("endpoint", endpoint)))
        return out


class MonitoringAccess(object):
    """Who may read monitoring endpoints (metrics with host names, status JSON, status page)."""

    def __init__(self, config):
        ca_path = config.get("monitoring_client_ca") or config.get("service_client_ca")
        self.anchors = load_service_client_ca(ca_path) if ca_path else None
        patterns = config.get("monitoring_clients")
        if patterns is not None and (not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns)):
            raise ServiceConfigError("monitoring_clients must be a list of common-name patterns")
        self.patterns = patterns

    def error(self, environ):
        """None when the request may read monitoring data, else the reason (for a 403)."""
        if local_probe(environ):
            return None
        if self.anchors is None:
            return "monitoring endpoints answer the local probe only (no monitoring_client_ca configured)"
        identity = client_identity(environ)
        problem = service_client_error(identity, self.anchors)
        if problem is not None:
            return problem
        if self.patterns is not None and not any(fnmatch.fnmatchcase(identity.get("cn") or "", p) for p in self.patterns):
            return "client %s is not a monitoring client of this service" % ascii(identity.get("cn") or "")[:80]
        return None

    def refusal(self):
        """A 403 JSON response for the current request, or None when it is allowed."""
        problem = self.error(flask.request.environ)
        return None if problem is None else json_error(403, problem)


def install(app, service, config, route=True):
    """Count every request of ``app`` (after_request) and, with ``route``, answer ``GET /metrics``
    (the counters) to callers :class:`MonitoringAccess` of ``config`` accepts. Returns the
    (RequestCounters, MonitoringAccess) pair; the app keeps them as ``app.extensions["hcp_metrics"]``."""
    counters = RequestCounters(service)
    access = MonitoringAccess(config)

    @app.after_request
    def _count_request(response):
        rule = flask.request.url_rule
        counters.observe(rule.endpoint if rule is not None else None, response.status_code)
        return response

    if route:
        @app.get("/metrics")
        def _metrics():
            refused = access.refusal()
            if refused is not None:
                return refused
            return flask.Response(counters.render().text(), mimetype=CONTENT_TYPE)

    app.extensions["hcp_metrics"] = (counters, access)
    return counters, access
