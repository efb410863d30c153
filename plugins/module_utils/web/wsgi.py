# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the hcp.core WSGI applications.

Role hcp.core.webapi runs every app behind nginx, which terminates TLS and passes the
client certificate (when the site requires one) as WSGI environ entries:

* ``SSL_CLIENT_VERIFY``: ``SUCCESS`` only when nginx verified the certificate against the
  configured CA bundle; anything else (empty, ``NONE``, ``FAILED:...``) is unauthenticated.
* ``SSL_CLIENT_CERT``: the URL-escaped PEM certificate (nginx ``$ssl_client_escaped_cert``).

Services whose callers are other services (enrollment API, policy service) also check, with
``service_client_error``, that the certificate nginx verified comes from the site's
service-client CA, not from the enrollment CA that issues host and user certificates.

The third authentication mode, Kerberos (SPNEGO, ``web/spnego.py``), is the app's own: with
``"auth": "kerberos"`` and ``"kerberos": {"keytab", "service", "realm"}`` in its configuration or
in the file named by ``$HCP_WEBAPI_AUTH_CONFIG`` (role hcp.core.webapi), ``create_app_base``
refuses every request but ``/healthcheck`` without an accepted ``Authorization: Negotiate``
token (401, ``WWW-Authenticate: Negotiate``), and ``request_identity()`` gives the client
principal.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import unquote

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.web import spnego

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - exercised by the sanity import test only
    x509 = None
    hashes = None
    NameOID = None

try:
    import flask
    from werkzeug.exceptions import HTTPException
except ImportError:  # pragma: no cover - exercised by the sanity import test only
    flask = None
    HTTPException = None

VERIFY_SUCCESS = "SUCCESS"
# uwsgi variable set by role hcp.core.webapi's health probe (files/uwsgi_probe.py), which talks
# to the app's own socket (root, the service user and nginx's group only). No HTTP client can
# set it through nginx: nginx passes request headers as HTTP_* variables only.
LOCAL_PROBE_VAR = "HCP_LOCAL_PROBE"
DEFAULT_MAX_CONTENT_LENGTH = 1024 * 1024
MAX_ERROR_CHARS = 400
# Authentication modes of an app's configuration (key "auth"; role hcp.core.webapi's webapi_auth):
# none and clientcert are nginx's business (the app reads SSL_CLIENT_* per route), kerberos the app's.
AUTH_MODES = ("none", "clientcert", "clientcert-optional", "kerberos")
KERBEROS_KEYS = frozenset(["keytab", "service", "realm", "rcache", "max_token_chars"])
# JSON file of role hcp.core.webapi ({"auth": "kerberos", "kerberos": {...}}) for any app built on
# create_app_base, so the role needs no app-specific configuration key.
AUTH_CONFIG_ENV = "HCP_WEBAPI_AUTH_CONFIG"
KERBEROS_REFUSED = "Kerberos (Negotiate) authentication required"


class ServiceConfigError(HcpError):
    """A service configuration file is missing, unreadable or not a JSON object."""


def _require_cryptography():
    if x509 is None:
        raise MissingDependencyError("the Python library 'cryptography' is required to read client certificates")


def _require_flask():
    if flask is None:
        raise MissingDependencyError("the Python library 'flask' is required to run hcp.core web services")


def client_identity(environ):
    """Return the verified client certificate identity from a WSGI environ, or None.

    None unless nginx reported ``SSL_CLIENT_VERIFY == "SUCCESS"`` and passed a parsable
    certificate. The result is a dict: ``subject`` (RFC 4514 string), ``cn`` (first common
    name or None), ``emails`` and ``dns`` (subjectAltName entries), ``pem`` (the certificate,
    public) and ``fingerprint_sha256`` (lowercase hex of the DER).
    """
    if environ.get("SSL_CLIENT_VERIFY") != VERIFY_SUCCESS:
        return None
    escaped = environ.get("SSL_CLIENT_CERT") or ""
    if not escaped:
        return None
    _require_cryptography()
    pem = unquote(escaped)
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        emails = []
        dns = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            emails = san.get_values_for_type(x509.RFC822Name)
            dns = san.get_values_for_type(x509.DNSName)
        return {
            "subject": cert.subject.rfc4514_string(),
            "cn": str(cns[0].value) if cns else None,
            "emails": list(emails),
            "dns": list(dns),
            "pem": pem,
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        }
    # cryptography parses lazily and raises several types: any failure is "no identity"
    except Exception:  # pylint: disable=broad-except
        return None


def load_service_client_ca(path):
    """The certificates of the service-client CA bundle at ``path`` (PEM); ServiceConfigError
    when it cannot be read or holds no certificate (a service never runs without it)."""
    try:
        with open(path, "rb") as handle:
            return pki.load_certificates(handle.read())
    except OSError as exc:
        raise ServiceConfigError("cannot read the service-client CA %s: %s" % (path, exc.strerror)) from None
    except pki.PkiError:
        raise ServiceConfigError("service-client CA %s holds no PEM certificate" % path) from None


def service_client_error(identity, anchors):
    """None when the verified client ``identity`` (from client_identity) holds a service client
    certificate of ``anchors`` (the service-client CA: directly issued, valid now, clientAuth);
    otherwise the reason, for a 403. Never raises."""
    if identity is None:
        return "a verified service client certificate is required"
    try:
        pki.verify_service_client(identity["pem"], anchors)
    except HcpError:
        return "client certificate %s is not a service identity of this site (not from its service-client CA)" % (
            identity.get("subject"),)
    # cryptography parses lazily and raises several types: any failure is a refusal
    except Exception:  # pylint: disable=broad-except
        return "client certificate is not a service identity of this site"
    return None


def request_identity():
    """The identity of the current request's caller, or None: with auth kerberos the client
    principal the app's hook accepted (``{"auth": "kerberos", "principal", "subject", "cn", ...}``),
    otherwise ``client_identity`` of the certificate nginx verified."""
    _require_flask()
    identity = flask.g.get("hcp_identity")
    if identity is not None:
        return identity
    if flask.current_app.config.get("HCP_AUTH") == "kerberos":
        return None
    return client_identity(flask.request.environ)


def _kerberos_acceptor(settings):
    if not isinstance(settings, dict) or not settings:
        raise ServiceConfigError("auth kerberos needs a 'kerberos' object {keytab, service, realm}")
    unknown = sorted(set(settings) - KERBEROS_KEYS)
    if unknown:
        raise ServiceConfigError("unknown keys in 'kerberos': %s" % ", ".join(ascii(key)[:40] for key in unknown[:5]))
    missing = [key for key in ("keytab", "service", "realm") if key not in settings]
    if missing:
        raise ServiceConfigError("'kerberos' lacks %s" % ", ".join(missing))
    try:
        return spnego.KerberosAcceptor(settings["keytab"], settings["realm"], settings["service"], rcache=settings.get("rcache"),
                                       max_token_chars=settings.get("max_token_chars", spnego.DEFAULT_MAX_TOKEN_CHARS))
    except spnego.SpnegoConfigError as exc:
        raise ServiceConfigError(str(exc)) from None


def _auth_settings(config):
    """(auth mode, kerberos settings) of the app: from the role's file ($HCP_WEBAPI_AUTH_CONFIG)
    when set (the app's own configuration may then not say otherwise), else from ``config``."""
    role = load_config(AUTH_CONFIG_ENV)
    if role:
        unknown = sorted(set(role) - set(["auth", "kerberos"]))
        if unknown:
            raise ServiceConfigError("unknown keys in $%s: %s" % (AUTH_CONFIG_ENV, ", ".join(ascii(key)[:40] for key in unknown[:5])))
        if "auth" in config and config["auth"] != role.get("auth"):
            raise ServiceConfigError("the app's auth %s contradicts $%s" % (ascii(config["auth"])[:40], AUTH_CONFIG_ENV))
        config = role
    auth = config.get("auth", "none")
    if auth not in AUTH_MODES:
        raise ServiceConfigError("auth must be one of %s" % ", ".join(AUTH_MODES))
    return auth, config.get("kerberos")


def _install_kerberos(app, settings):
    """Every request but /healthcheck (status only, the local probe's) needs an accepted
    Negotiate token: before_request refuses with 401 + ``WWW-Authenticate: Negotiate`` (the
    reason goes to the log only), after_request adds the mutual-authentication token."""
    acceptor = _kerberos_acceptor(settings)
    logger = logging.getLogger(app.name)

    @app.before_request
    def _kerberos_authenticate():
        request = flask.request
        if request.endpoint == "_healthcheck":
            return None
        headers = request.headers.getlist("Authorization")
        if len(headers) > 1:
            identity, result = None, "more than one Authorization header"
        else:
            identity, result = acceptor.accept(headers[0] if headers else "")
        if identity is None:
            logger.warning("kerberos: %s %s refused: %s", request.method, ascii(request.path)[:100], result)
            response = json_error(401, KERBEROS_REFUSED)
            response.headers["WWW-Authenticate"] = spnego.CHALLENGE
            return response
        flask.g.hcp_identity = identity
        flask.g.hcp_negotiate_token = result
        return None

    @app.after_request
    def _kerberos_mutual(response):
        token = flask.g.get("hcp_negotiate_token")
        if token:
            response.headers["WWW-Authenticate"] = "%s %s" % (spnego.CHALLENGE, token)
        return response


def json_error(status, message, **extra):
    """Flask JSON error response ``{"error": message, **extra}`` with the given status. The
    message is cut at MAX_ERROR_CHARS: a message quoting a request's value never echoes a
    large input back."""
    _require_flask()
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "... (cut)"
    body = {"error": message}
    body.update(extra)
    response = flask.jsonify(body)
    response.status_code = status
    return response


def load_config(env_var, required=False):
    """Read the JSON object named by environment variable ``env_var``.

    Returns {} when the variable is unset and ``required`` is false.
    """
    path = os.environ.get(env_var)
    if not path:
        if required:
            raise ServiceConfigError("environment variable %s (configuration file path) is not set" % env_var)
        return {}
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ServiceConfigError("cannot read configuration file %s: %s" % (path, exc.strerror)) from None
    except ValueError:
        raise ServiceConfigError("configuration file %s is not valid JSON" % path) from None
    if not isinstance(data, dict):
        raise ServiceConfigError("configuration file %s must hold a JSON object" % path)
    return data


def request_json(what="request body", max_depth=jsonutil.DEFAULT_MAX_DEPTH):
    """The JSON value of the current request's body, whatever its content type, decoded by
    ``jsonutil.loads`` within the app's MAX_CONTENT_LENGTH (413 beyond, from werkzeug) and
    ``max_depth``; JsonInputError (400 through the app's handler) when it is not acceptable."""
    _require_flask()
    data = flask.request.get_data(cache=True)
    limit = flask.current_app.config.get("MAX_CONTENT_LENGTH") or DEFAULT_MAX_CONTENT_LENGTH
    return jsonutil.loads(data, what, max_bytes=limit, max_depth=max_depth)


def _http_error(exc):
    """werkzeug's HTTP errors (400 from the form parser, 404, 405, 413, ...) as JSON with a
    fixed text, never the description; redirects (308 to a trailing slash) pass unchanged."""
    if exc.code is None or exc.code < 400:
        return exc
    response = json_error(exc.code, HTTP_ERROR_TEXTS.get(exc.code) or (exc.name or "error").lower())
    for name, value in exc.get_headers():
        if name.lower() != "content-type":  # e.g. Allow of a 405
            response.headers[name] = value
    return response


def local_probe(environ):
    """True when the request came over the app's uwsgi socket from the local health probe,
    not through nginx: only such a caller sees health details (paths, errors, heads)."""
    return environ.get(LOCAL_PROBE_VAR) == "1"


def health_response(status, details=None, http_status=None, logger=None):
    """The /healthcheck answer: ``{"status": status}`` for every caller, plus ``details`` (a
    dict: paths, heads, error texts) only for the local probe (:func:`local_probe`). Anything
    but ``ok`` is logged with its details (``logger``), so an operator finds them in the
    journal. ``http_status``: 200 unless given."""
    _require_flask()
    details = details or {}
    if status != "ok" and logger is not None:
        logger.warning("healthcheck: %s %s", status, json.dumps(details, sort_keys=True, default=str))
    body = {"status": status}
    if local_probe(flask.request.environ):
        body.update(details)
        body["status"] = status
    response = flask.jsonify(body)
    response.status_code = http_status or 200
    return response


HTTP_ERROR_TEXTS = {400: "bad request", 404: "not found", 405: "method not allowed", 413: "request body too large",
                    500: "internal error"}


def create_app_base(name, config=None):
    """Flask app with JSON error handlers (werkzeug's HTTP errors, JsonInputError as 400,
    anything unexpected as 500), MAX_CONTENT_LENGTH and GET /healthcheck.

    ``config`` may set ``max_content_length`` (bytes, default 1 MiB) and ``auth`` (AUTH_MODES;
    with ``kerberos`` the ``kerberos`` object: ServiceConfigError when its keytab holds no key of
    the service, so the app never starts open).
    """
    _require_flask()
    config = config or {}
    auth, kerberos = _auth_settings(config)
    app = flask.Flask(name)
    app.config["HCP_AUTH"] = auth
    app.config["MAX_CONTENT_LENGTH"] = int(config.get("max_content_length", DEFAULT_MAX_CONTENT_LENGTH))
    app.json.sort_keys = True

    # Flask's own errors as JSON, with fixed texts (never the exception's)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(500, lambda exc: json_error(500, "internal error"))
    app.register_error_handler(jsonutil.JsonInputError, lambda exc: json_error(400, str(exc)))

    @app.get("/healthcheck")
    def _healthcheck():
        return flask.jsonify({"status": "ok"})

    if auth == "kerberos":
        _install_kerberos(app, kerberos)
    return app


class LazyApplication(object):
    """WSGI callable building its app with ``factory()`` on the first request, so a service
    module imports without its configuration (or without Flask: import sanity)."""

    def __init__(self, factory):
        self._factory = factory
        self._app = None

    def __call__(self, environ, start_response):
        if self._app is None:
            self._app = self._factory()
        return self._app(environ, start_response)
