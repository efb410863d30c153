# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The policy service (WSGI, Flask), hosted by role hcp.core.webapi.

``POST /run`` decides on ``{hookname, request_uid, params}`` with the policy file named in
the configuration (JSON file named by ``HCP_POLICY_CONFIG``: ``policy_file``, ``audit_log``,
``max_body``, ``service_client_ca``, ``authorized_clients``, ``require_client_cert``); ``GET
/healthcheck`` reports the policy in force. ``/run`` answers only callers with a certificate of
``service_client_ca`` (the site's service-client CA, PEM file; and, with ``authorized_clients``,
one of those common names, shell patterns): 403 for anyone else. Without ``service_client_ca``
the service does not start, unless ``require_client_cert`` is false (anyone may ask). The policy file is reloaded
when it changes, only if it validates. Wire format and audit log: docs/policy-service.md.
"""

from __future__ import annotations

import datetime
import fnmatch

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.auditlog import AuditLog
from ansible_collections.hcp.core.plugins.module_utils.policy.client import LocalPolicy, PolicyUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.policy.engine import MAX_JSON_BYTES, MAX_JSON_DEPTH, PolicyError
from ansible_collections.hcp.core.plugins.module_utils.web import wsgi as common
from ansible_collections.hcp.core.plugins.module_utils.web import metrics

CONFIG_ENV = "HCP_POLICY_CONFIG"
DEFAULT_MAX_BODY = 1024 * 1024


def _caller(environ):
    try:
        identity = common.client_identity(environ)
    except Exception:  # pylint: disable=broad-except
        return None
    return identity["subject"] if identity else None


def _decode(text, what):
    """(value, error_response): the bounded decoder (jsonutil). Text that is not JSON is a 401
    (the reference's status for bad JSON); beyond the size or nesting bound, a 400."""
    try:
        return jsonutil.loads(text, what, max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH), None
    except jsonutil.JsonInputError as exc:
        return None, common.json_error(400 if exc.reason in ("size", "depth") else 401, str(exc))


def _request_fields(request):
    """(hookname, request_uid, params, error_response) from a JSON body or form fields."""
    if request.mimetype == "application/json":
        body, error = _decode(request.get_data(cache=False), "request body")
        if error is not None:
            return None, None, None, error
        if not isinstance(body, dict):
            return None, None, None, common.json_error(400, "request body must be a JSON object")
        hookname, request_uid, params = body.get("hookname"), body.get("request_uid"), body.get("params")
        if isinstance(params, str):
            params, error = _decode(params, "params")
            if error is not None:
                return None, None, None, error
    else:
        form = request.form
        hookname, request_uid, params = form.get("hookname"), form.get("request_uid"), form.get("params")
        if params is None:
            return None, None, None, common.json_error(400, "missing field params")
        params, error = _decode(params, "params")
        if error is not None:
            return None, None, None, error
    if not isinstance(hookname, str) or not hookname:
        return None, None, None, common.json_error(400, "hookname must be a non-empty string")
    if not isinstance(request_uid, str):
        return None, None, None, common.json_error(400, "request_uid must be a string")
    if not isinstance(params, dict):
        return None, None, None, common.json_error(400, "params must be a JSON object")
    return hookname, request_uid, params, None


def create_app(config=None):
    """Build the policy app; ``config`` defaults to the file named by HCP_POLICY_CONFIG.
    Fails (PolicyValidationError, ServiceConfigError) when the policy cannot be loaded."""
    if config is None:
        config = common.load_config(CONFIG_ENV, required=True)
    if not isinstance(config.get("policy_file"), str):
        raise common.ServiceConfigError("policy service configuration needs policy_file")
    max_body = config.get("max_body", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
        raise common.ServiceConfigError("max_body must be a positive integer")
    # fail closed: callers are checked unless the configuration says, explicitly, that nobody is
    require_client_cert = config.get("require_client_cert", True)
    if not isinstance(require_client_cert, bool):
        raise common.ServiceConfigError("require_client_cert must be a boolean")
    if require_client_cert and not config.get("service_client_ca"):
        raise common.ServiceConfigError("policy service configuration needs service_client_ca (or require_client_cert: false)")
    service_cas = common.load_service_client_ca(config["service_client_ca"]) if require_client_cert else None
    authorized = config.get("authorized_clients")
    if authorized is not None and (not isinstance(authorized, list) or not all(isinstance(p, str) and p for p in authorized)):
        raise common.ServiceConfigError("authorized_clients must be a list of non-empty strings")
    store = LocalPolicy(config["policy_file"], limits={"max_data_bytes": max_body})
    audit = AuditLog(config.get("audit_log"))
    app = common.create_app_base("hcp-policy", {"max_content_length": max_body})
    metrics.install(app, "policy", config)
    flask = common.flask

    def record(hookname, request_uid, decision, rule, reason):
        audit.write({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "hookname": hookname, "request_uid": request_uid, "decision": decision, "rule": rule,
            "reason": reason, "caller": _caller(flask.request.environ), "policy_sha256": store.sha256,
        })

    def refused():
        """A 403 response unless the caller is a service of this site (config service_client_ca)."""
        if service_cas is None:
            return None
        identity = common.client_identity(flask.request.environ)
        problem = common.service_client_error(identity, service_cas)
        if problem is None and authorized is not None and not any(
                fnmatch.fnmatchcase(identity.get("cn") or "", pattern) for pattern in authorized):
            problem = "client %r is not authorized for the policy service" % (identity.get("cn"),)
        return common.json_error(403, problem) if problem is not None else None

    @app.post("/run")
    def _run():
        error = refused()
        if error is not None:
            return error
        hookname, request_uid, params, error = _request_fields(flask.request)
        if error is not None:
            return error
        policy = store.refresh()
        try:
            policy.check_data(params)
        except PolicyError as exc:
            record(hookname, request_uid, "bad_request", None, str(exc))
            return common.json_error(400, str(exc))
        try:
            decision = store.decide(hookname, request_uid, params)
        except PolicyUnavailableError as exc:
            record(hookname, request_uid, "error", None, str(exc))
            return common.json_error(500, str(exc), decision="error")
        record(hookname, request_uid, decision.action, decision.rule, decision.reason)
        if decision.accepted:
            return flask.jsonify({"decision": "accept", "rule": decision.rule, "params": params})
        response = flask.jsonify({"decision": "reject", "rule": decision.rule, "reason": decision.reason})
        response.status_code = 403
        return response

    def _healthcheck():
        # status only to callers through nginx; the file, its digest and the reload error
        # to the local probe and the log
        store.refresh()
        details = {"policy_file": store.path, "policy_sha256": store.sha256,
                   "filters": len(store.policy.filter_names)}
        if store.stale_error:
            details["error"] = store.stale_error
        return common.health_response("stale_policy_error" if store.stale_error else "ok", details, logger=app.logger)

    for rule in app.url_map.iter_rules():
        if rule.rule == "/healthcheck":
            app.view_functions[rule.endpoint] = _healthcheck
    app.extensions["hcp_policy_store"] = store
    return app


application = common.LazyApplication(create_app)
