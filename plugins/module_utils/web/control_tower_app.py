# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control tower's HTTP face (Flask), hosted by role hcp.core.webapi.

Operator routes need a client certificate verified by nginx (``SSL_CLIENT_VERIFY=SUCCESS``)
whose CN is in the configured ``operators`` list (absent or empty: nobody is an operator);
site routes need ``Authorization: Bearer <site token>``. Replacing a stored bundle (which
re-arms the one-time unwrap) needs both the token and an operator certificate. Configuration:
the JSON file named by ``HCP_CONTROL_TOWER_CONFIG`` (``store``: state directory;
``operators``: operator certificate CNs; ``max_content_length``). API table:
docs/site-unseal.md. Logic: unseal/control_tower.py.

=======  ===================================  ========  =========================================
method   path                                 auth      effect
=======  ===================================  ========  =========================================
POST     /v1/sites                            operator  register {site, public_key, replace}
GET      /v1/sites/<site>                     operator  status (404 when unknown)
DELETE   /v1/sites/<site>                     operator  forget the site
POST     /v1/sites/<site>/token               operator  issue the site token (shown once)
POST     /v1/sites/<site>/reallow-unwrap      operator  re-arm the one-time unwrap
PUT      /v1/sites/<site>/bundle              token     store the first {bundle}; replace: +operator
POST     /v1/sites/<site>/unwrap              token     the bundle, once
=======  ===================================  ========  =========================================
"""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import (
    BadRequestError,
    ControlTower,
    ControlTowerError,
)
from ansible_collections.hcp.core.plugins.module_utils.web import wsgi as common
from ansible_collections.hcp.core.plugins.module_utils.web import metrics

CONFIG_ENV = "HCP_CONTROL_TOWER_CONFIG"
DEFAULT_MAX_CONTENT_LENGTH = 128 * 1024


class _Forbidden(ControlTowerError):
    status = 403


class _Unauthenticated(ControlTowerError):
    status = 401


def create_app(config=None):
    """Build the app for ``config`` (dict), default: the JSON file named by $HCP_CONTROL_TOWER_CONFIG."""
    if config is None:
        config = common.load_config(CONFIG_ENV, required=True)
    if not isinstance(config.get("store"), str) or not config["store"]:
        raise common.ServiceConfigError("control tower configuration needs store (a directory)")
    operators = config.get("operators")
    if operators is None:
        operators = []  # no list: no operator (fail closed), never "any certificate of the client CA"
    if not isinstance(operators, list) or not all(isinstance(o, str) and o for o in operators):
        raise common.ServiceConfigError("operators must be a list of certificate common names")
    operators = frozenset(operators)
    app = common.create_app_base("hcp-control-tower", {
        "max_content_length": config.get("max_content_length", DEFAULT_MAX_CONTENT_LENGTH)})
    tower = ControlTower(config["store"])
    metrics.install(app, "control-tower", config)
    flask = common.flask

    def operator():
        identity = common.client_identity(flask.request.environ)
        if identity is None:
            raise _Unauthenticated("operator routes need a verified client certificate")
        if identity["cn"] not in operators:
            raise _Forbidden("client certificate %s is not a control tower operator%s" % (
                identity["subject"], "" if operators else " (no operator is configured)"))
        return identity

    def optional_operator():
        """The CN of a verified operator certificate sent along with a site token, else None."""
        identity = common.client_identity(flask.request.environ)
        return identity["cn"] if identity is not None and identity["cn"] in operators else None

    def bearer():
        header = flask.request.headers.get("Authorization", "")
        scheme, dummy, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Unauthenticated("site routes need Authorization: Bearer <site token>")
        return token.strip()

    def body():
        # any content type; 413 beyond max_content_length; bounded decoding (jsonutil)
        try:
            data = common.request_json()
        except JsonInputError as exc:
            raise BadRequestError(str(exc)) from None
        if not isinstance(data, dict):
            raise BadRequestError("request body must be a JSON object")
        return data

    def run(func):
        try:
            return func()
        except ControlTowerError as exc:
            status = exc.status if 400 <= exc.status < 500 else 500
            return common.json_error(status, str(exc) if status < 500 else "internal error")

    @app.post("/v1/sites")
    def register():
        def op():
            operator()
            data = body()
            replace = data.get("replace", False)
            if not isinstance(replace, bool):
                raise BadRequestError("replace must be a boolean")
            status, changed = tower.register_site(data.get("site"), data.get("public_key"), replace)
            return flask.jsonify({"status": status, "changed": changed}), 201 if changed else 200
        return run(op)

    @app.get("/v1/sites/<site>")
    def status(site):
        def op():
            operator()
            facts = tower.status(site)
            if not facts["registered"]:
                return common.json_error(404, "site %s is not registered at this control tower" % site)
            return flask.jsonify(facts)
        return run(op)

    @app.delete("/v1/sites/<site>")
    def delete(site):
        def op():
            operator()
            return flask.jsonify({"deleted": tower.delete_site(site)})
        return run(op)

    @app.post("/v1/sites/<site>/token")
    def token(site):
        def op():
            operator()
            response = flask.jsonify({"token": tower.issue_token(site)})
            response.headers["Cache-Control"] = "no-store"
            return response, 201
        return run(op)

    @app.post("/v1/sites/<site>/reallow-unwrap")
    def reallow(site):
        def op():
            operator()
            facts, changed = tower.reallow_unwrap(site)
            return flask.jsonify({"status": facts, "changed": changed})
        return run(op)

    @app.put("/v1/sites/<site>/bundle")
    def store(site):
        def op():
            presented = bearer()
            tower.store_bundle(site, presented, body().get("bundle"), operator=optional_operator())
            return flask.jsonify({"stored": True})
        return run(op)

    @app.post("/v1/sites/<site>/unwrap")
    def unwrap(site):
        def op():
            response = flask.jsonify({"bundle": tower.unwrap(site, bearer())})
            response.headers["Cache-Control"] = "no-store"
            return response
        return run(op)

    app.extensions["hcp_control_tower"] = tower
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_CONTROL_TOWER_CONFIG).
application = common.LazyApplication(create_app)
