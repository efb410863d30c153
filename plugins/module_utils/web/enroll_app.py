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
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    client_identity,
    LazyApplication,
    create_app_base,
    json_error,
    load_config,
)

CONFIG_ENV = "HCP_ENROLL_CONFIG"


def create_app(config=None):
    """The Flask app for ``config`` (dict), default: the JSON file named by $HCP_ENROLL_CONFIG.
    ``require_client_cert`` (default true) refuses requests without a verified client cert."""
    config = config if config is not None else load_config(CONFIG_ENV, required=True)
    app = create_app_base("hcp-enroll", config)
    app.config["HCP_CONFIG"] = config
    service = EnrollmentService(config)
    require_cert = config.get("require_client_cert", True)
    # Enrolled hosts may hold client certificates from the same CA: only these common
    # names (shell patterns) may use the API. None = any verified certificate.
    authorized = config.get("authorized_clients")

    def caller():
        ident = client_identity(flask.request.environ)
        if ident is None and require_cert:
            raise ServiceError("a verified client certificate is required", 403)
        if ident is not None and authorized is not None and not any(
                fnmatch.fnmatchcase(ident.get("cn") or "", pattern) for pattern in authorized):
            raise ServiceError("client %r is not authorized for the enrollment API" % (ident.get("cn"),), 403)
        return dict((k, v) for k, v in (ident or {}).items() if k != "pem")

    def run(func):
        try:
            return func()
        except HcpError as exc:
            status = classify(exc)
            return json_error(status, str(exc) if status < 500 else "internal error")

    def form(name, default=None):
        value = flask.request.values.get(name)
        if value is None and flask.request.is_json:
            body = flask.request.get_json(silent=True)
            if isinstance(body, dict):
                value = body.get(name)
        return default if value is None else value

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
            summary = service.add(ekpub_input(), form("hostname"), form("profile", {}), caller=who)
            return flask.jsonify(summary), 201
        return run(op)

    @app.get("/v1/query")
    def query():
        def op():
            caller()
            return flask.jsonify(service.query(form("ekpubhash", ""), nofiles=form("nofiles") not in (None, "", "0", "false")))
        return run(op)

    @app.post("/v1/delete")
    def delete():
        def op():
            return flask.jsonify(service.delete(form("ekpubhash", ""), caller=caller()))
        return run(op)

    @app.post("/v1/reenroll")
    def reenroll():
        def op():
            return flask.jsonify(service.reenroll(form("ekpubhash", ""), caller=caller())), 201
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
            return flask.Response(service.asset_signer(), mimetype="application/x-pem-file")
        return run(op)

    def health():
        return run(lambda: flask.jsonify(service.health()))

    app.view_functions["_healthcheck"] = health
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_ENROLL_CONFIG).
application = LazyApplication(create_app)
