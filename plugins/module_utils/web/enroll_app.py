# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment service's HTTP face (Flask): /v1/add, /v1/query, /v1/delete,
/v1/reenroll, /v1/find, /v1/janitor, /v1/get-asset-signer, /healthcheck.
Wire format: docs/enrollment-service.md. Logic: enrollment/service.py."""

from __future__ import annotations

import fnmatch

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils.enrollment.service import EnrollmentService, ServiceError, classify
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError
from ansible_collections.hcp.core.plugins.module_utils.web import metrics
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    client_identity,
    LazyApplication,
    ServiceConfigError,
    create_app_base,
    health_response,
    json_error,
    load_config,
    load_service_client_ca,
    request_json,
    service_client_error,
)

CONFIG_ENV = "HCP_ENROLL_CONFIG"
KIND_NAMES = {str: "a string", dict: "a JSON object", bool: "a boolean"}


def create_app(config=None):
    """The Flask app for ``config`` (dict), default: the JSON file named by $HCP_ENROLL_CONFIG.
    ``require_client_cert`` (default true) refuses requests without a verified client cert;
    ``service_client_ca`` (PEM file, required with it) is the site's service-client CA: a
    certificate nginx verified but that CA did not issue (a host's or user's, from the
    enrollment CA) is refused."""
    config = config if config is not None else load_config(CONFIG_ENV, required=True)
    app = create_app_base("hcp-enroll", config)
    metrics.install(app, "enroll", config)
    app.config["HCP_CONFIG"] = config
    service = EnrollmentService(config)
    require_cert = config.get("require_client_cert", True)
    if config.get("service_client_ca"):
        service_cas = load_service_client_ca(config["service_client_ca"])
    elif require_cert:
        raise ServiceConfigError("the enrollment API needs service_client_ca with require_client_cert")
    else:
        service_cas = None
    # Service names only (shell patterns); None = any certificate of the service-client CA.
    authorized = config.get("authorized_clients")

    def caller():
        ident = client_identity(flask.request.environ)
        if ident is None and require_cert:
            raise ServiceError("a verified client certificate is required", 403)
        if ident is not None and service_cas is not None:
            problem = service_client_error(ident, service_cas)
            if problem is not None:
                raise ServiceError(problem, 403)
        if ident is not None and authorized is not None and not any(
                fnmatch.fnmatchcase(ident.get("cn") or "", pattern) for pattern in authorized):
            raise ServiceError("client %r is not authorized for the enrollment API" % (ident.get("cn"),), 403)
        return dict((k, v) for k, v in (ident or {}).items() if k != "pem")

    def run(func):
        try:
            return func()
        except JsonInputError as exc:
            return json_error(400, str(exc))
        except HcpError as exc:
            status = classify(exc)
            if status >= 500:
                app.logger.error("enrollment request failed: %s", exc)
            return json_error(status, str(exc) if status < 500 or status == 503 else "internal error")

    def body():
        """The JSON object of a JSON request (decoded once, bounded), None for form requests."""
        if not flask.request.is_json:
            return None
        if "hcp_body" not in flask.g:
            data = request_json()
            if not isinstance(data, dict):
                raise ServiceError("request body must be a JSON object", 400)
            flask.g.hcp_body = data
        return flask.g.hcp_body

    def form(name, default=None, kinds=(str,)):
        """Field ``name`` from the query string or form, else from a JSON body; a value of
        another type than ``kinds`` is a 400 (never a 500 further down)."""
        value = flask.request.values.get(name)
        if value is None and body() is not None:
            value = body().get(name)
        if value is None:
            return default
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ServiceError("%s must be %s" % (name, " or ".join(KIND_NAMES[k] for k in kinds)), 400)
        return value

    def ekpub_input():
        upload = flask.request.files.get("ekpub")
        if upload is not None:
            data = upload.read(16 * 1024 + 1)
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                import base64  # pylint: disable=import-outside-toplevel

                text = base64.b64encode(data).decode()
            return text
        return form("ekpub")

    @app.post("/v1/add")
    def add():
        def op():
            who = caller()
            summary = service.add(ekpub_input(), form("hostname"), form("profile", {}, (str, dict)), caller=who)
            return flask.jsonify(summary), 201
        return run(op)

    @app.get("/v1/query")
    def query():
        def op():
            caller()
            nofiles = form("nofiles", None, (str, bool))
            return flask.jsonify(service.query(form("ekpubhash", ""), nofiles=nofiles not in (None, False, "", "0", "false")))
        return run(op)

    @app.post("/v1/delete")
    def delete():
        def op():
            who = caller()
            return flask.jsonify(service.delete(form("ekpubhash", ""), caller=who))
        return run(op)

    @app.post("/v1/reenroll")
    def reenroll():
        def op():
            who = caller()
            return flask.jsonify(service.reenroll(form("ekpubhash", ""), caller=who)), 201
        return run(op)

    @app.get("/v1/find")
    def find():
        def op():
            caller()
            return flask.jsonify(service.find(form("hostname_regex", "")))
        return run(op)

    @app.get("/v1/janitor")
    def janitor():
        def op():
            caller()
            return flask.jsonify(service.janitor())
        return run(op)

    @app.get("/v1/get-asset-signer")
    def get_asset_signer():
        def op():
            caller()
            return flask.Response(service.asset_signer(), mimetype="application/x-pem-file")
        return run(op)

    def health():
        # status only to callers through nginx; the DB head (or the error, with its path)
        # to the local probe and the log
        try:
            details = service.health()
        except HcpError as exc:
            return health_response("unavailable", {"error": str(exc)}, 503, app.logger)
        return health_response(details.pop("status", "ok"), details)

    app.view_functions["_healthcheck"] = health
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_ENROLL_CONFIG).
application = LazyApplication(create_app)
