# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Demo WSGI application for role hcp.core.webapi (tests and smoke checks).

Routes: ``GET /healthcheck`` -> ``{"status": "ok"}``; ``GET /whoami`` ->
``{"authenticated": bool, "subject": <CN of the verified client certificate or null>}``, and with
Kerberos authentication ``{"authenticated": true, "subject": <principal>, "principal": <principal>}``.
Optional JSON configuration file named by ``HCP_HELLO_CONFIG`` (``max_content_length``, ``auth``
and ``kerberos``: see ``web/wsgi.py`` create_app_base).
"""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.web import wsgi as common

CONFIG_ENV = "HCP_HELLO_CONFIG"


def create_app(config=None):
    """Build the hello app; ``config`` defaults to the file named by HCP_HELLO_CONFIG."""
    if config is None:
        config = common.load_config(CONFIG_ENV)
    app = common.create_app_base("hcp-hello", config)

    @app.get("/whoami")
    def _whoami():
        identity = common.request_identity()
        answer = {
            "authenticated": identity is not None,
            "subject": identity["cn"] if identity else None,
        }
        if identity is not None and identity.get("principal"):
            answer["principal"] = identity["principal"]
        return common.flask.jsonify(answer)

    return app


# Built at import when Flask is there, so uwsgi (need-app) refuses to start on a bad
# configuration; without Flask importing still works (ansible-test import sanity) and the
# first request reports the missing dependency.
application = create_app() if common.flask is not None else common.LazyApplication(create_app)
