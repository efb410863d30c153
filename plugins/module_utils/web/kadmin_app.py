# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kadmin web API (Flask) on the primary KDC, hosted by role hcp.core.webapi:
POST /v1/add, /v1/get, /v1/del, /v1/ext_keytab, /v1/rotate and GET /healthcheck.
Wire format v1: docs/kerberos.md. Logic: kerberos/kadmin.py.

Every call needs a caller whose verified client certificate (nginx, web.wsgi.client_identity)
has a common name in ``authorized_clients`` AND was issued by the service-client CA
(``service_client_ca``): an enrolled host's certificate from the enrollment CA never qualifies,
whatever its CN. Each call is then decided by the policy (hook ``kdcsvc::<cmd>``, params
``principal`` and ``caller``) and fails closed: policy unreachable or failing → 503, reject → 403.
One JSON line per call goes to ``audit_log`` (caller, cmd, principal, result; never key material).

Configuration: the JSON file named by $HCP_KADMIN_CONFIG: ``realm``, ``kdc_conf``,
``authorized_clients`` (list of CNs), ``service_client_ca``, ``policy`` ({"url": "https://...",
"ca_file", "client_cert", "client_key", "timeout"} or {"file": path}), optional ``audit_log``,
``kadmin`` (binary), ``kadmin_timeout``, ``max_content_length`` (default 64 KiB).
"""

from __future__ import annotations

import base64
import datetime
import os
import uuid

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils.auditlog import AuditLog
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import (
    KadminError,
    KadminUnavailableError,
    PrincipalNameError,
)
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import validate_principal, validate_realm
from ansible_collections.hcp.core.plugins.module_utils.policy.client import LocalPolicy, PolicyClient, PolicyUnavailableError
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    LazyApplication,
    ServiceConfigError,
    client_identity,
    create_app_base,
    json_error,
    load_config,
    load_service_client_ca,
    request_json,
    service_client_error,
)

CONFIG_ENV = "HCP_KADMIN_CONFIG"
DEFAULT_MAX_BODY = 64 * 1024
MAX_BODY_DEPTH = 4
HOOK_PREFIX = "kdcsvc::"
# The fields each command accepts; anything else in a request body is a 400.
FIELDS = {
    "add": ("principal", "attributes", "expiration"),
    "get": ("principal",),
    "del": ("principal",),
    "ext_keytab": ("principal",),
    "rotate": ("principal", "keep_old"),
}
CHANGES = frozenset(["add", "del", "rotate", "ext_keytab"])


class Refused(HcpError):
    """A request refused by the app itself (caller, body shape, policy)."""


def _policy_from_config(conf):
    """LocalPolicy ({"file"}) or PolicyClient ({"url", ...}); ServiceConfigError otherwise (no policy = no service)."""
    if not isinstance(conf, dict) or not (conf.get("file") or conf.get("url")):
        raise ServiceConfigError("kadmin API configuration needs policy: {\"url\": \"https://...\"} or {\"file\": path}")
    try:
        if conf.get("file"):
            return LocalPolicy(conf["file"])
        timeout = conf.get("timeout", 5)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ServiceConfigError("policy.timeout must be a number of seconds in (0, 600]")
        return PolicyClient(conf["url"], ca_file=conf.get("ca_file"), client_cert=conf.get("client_cert"),
                            client_key=conf.get("client_key"), timeout=timeout)
    except ServiceConfigError:
        raise
    except HcpError as exc:
        raise ServiceConfigError("kadmin API policy refused: %s" % exc) from None


def _check_config(config):
    realm = validate_realm(config.get("realm"))
    if not isinstance(config.get("kdc_conf"), str) or not os.path.isabs(config["kdc_conf"]):
        raise ServiceConfigError("kadmin API configuration needs kdc_conf (absolute path)")
    authorized = config.get("authorized_clients")
    if (not isinstance(authorized, list) or not authorized
            or not all(isinstance(name, str) and name for name in authorized)):
        raise ServiceConfigError("kadmin API configuration needs authorized_clients (a non-empty list of common names)")
    max_body = config.get("max_content_length", DEFAULT_MAX_BODY)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or not 0 < max_body <= 1024 * 1024:
        raise ServiceConfigError("max_content_length must be a positive integer of at most 1 MiB")
    return realm, frozenset(authorized)


def create_app(config=None, kadmin=None):
    """The Flask app for ``config`` (dict; default: the JSON file named by $HCP_KADMIN_CONFIG).
    ``kadmin``: a Kadmin to use instead of one built from ``kdc_conf``. Refuses to build
    (ServiceConfigError, PrincipalNameError) when the configuration is incomplete."""
    config = config if config is not None else load_config(CONFIG_ENV, required=True)
    realm, authorized = _check_config(config)
    if not isinstance(config.get("service_client_ca"), str) or not config["service_client_ca"]:
        raise ServiceConfigError("kadmin API configuration needs service_client_ca (the service-client CA)")
    service_cas = load_service_client_ca(config["service_client_ca"])
    policy = _policy_from_config(config.get("policy"))
    if kadmin is None:
        kadmin = Kadmin(config["kdc_conf"], realm, kadmin=config.get("kadmin"), timeout=config.get("kadmin_timeout", 30))
    audit = AuditLog(config.get("audit_log"))
    app = create_app_base("hcp-kadmin", {"max_content_length": config.get("max_content_length", DEFAULT_MAX_BODY)})

    def caller():
        """The verified service caller: {"cn", "subject", "fingerprint_sha256"}; Refused(403) otherwise."""
        ident = client_identity(flask.request.environ)
        if ident is None:
            raise Refused("a verified client certificate is required", 403)
        if ident.get("cn") not in authorized or service_client_error(ident, service_cas) is not None:
            raise Refused("client %s is not authorized for the kadmin API" % ascii((ident.get("cn") or "")[:64]), 403)
        return {"cn": ident["cn"], "subject": ident["subject"], "fingerprint_sha256": ident["fingerprint_sha256"]}

    def body(cmd):
        data = request_json(max_depth=MAX_BODY_DEPTH)
        if not isinstance(data, dict):
            raise Refused("request body must be a JSON object", 400)
        unknown = sorted(set(data) - set(FIELDS[cmd]))
        if unknown:
            raise Refused("unknown field %s for %s" % (ascii(unknown[0][:64]), cmd), 400)
        return data

    def decide(cmd, uid, principal, who):
        try:
            result = policy.check(HOOK_PREFIX + cmd, uid, {"principal": principal, "caller": who["cn"]})
        except PolicyUnavailableError as exc:
            app.logger.error("kadmin API: policy unavailable for %s: %s", cmd, exc)
            raise Refused("policy service unavailable: request refused", 503) from None
        if not result.accepted:
            raise Refused("refused by policy (rule %s)" % ascii(str(result.rule)[:64]), 403)

    def perform(cmd, data, principal):
        if cmd == "add":
            attributes = data.get("attributes", [])
            if not isinstance(attributes, list):
                raise PrincipalNameError("attributes must be a list of attribute names")
            return kadmin.add(principal, attributes=attributes, expiration=data.get("expiration")), 201
        if cmd == "get":
            return kadmin.get(principal), 200
        if cmd == "del":
            kadmin.delete(principal)
            return {"principal": principal, "deleted": True}, 200
        if cmd == "rotate":
            keep_old = data.get("keep_old", True)
            if not isinstance(keep_old, bool):
                raise Refused("keep_old must be a boolean", 400)
            return kadmin.rotate(principal, keep_old=keep_old), 200
        info = kadmin.get(principal)
        keytab = kadmin.ext_keytab(principal)
        # SECRET: the keytab holds the principal's keys; it is returned to the caller only,
        # never logged (the audit line records kvno and kvnos).
        return {"principal": principal, "kvno": info["kvno"], "kvnos": info["kvnos"], "secret": True,
                "keytab": base64.b64encode(keytab).decode("ascii")}, 200

    def handle(cmd):
        uid = uuid.uuid4().hex
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                  "request_uid": uid, "cmd": cmd, "caller": None, "caller_subject": None, "caller_fingerprint": None,
                  "principal": None}
        try:
            who = caller()
            record.update(caller=who["cn"], caller_subject=who["subject"], caller_fingerprint=who["fingerprint_sha256"])
            data = body(cmd)
            principal = validate_principal(data.get("principal"), realm)
            record["principal"] = principal
            decide(cmd, uid, principal, who)
            answer, status = perform(cmd, data, principal)
        except HcpError as exc:
            status = exc.status if isinstance(exc.status, int) and 400 <= exc.status < 600 else 500
            if isinstance(exc, KadminError) and status >= 500:
                app.logger.error("kadmin API %s %s failed: %s", cmd, record["principal"], exc)
                message = "kadmin unavailable" if isinstance(exc, KadminUnavailableError) else "internal error"
            else:
                message = str(exc)
            record.update(result="refused" if status < 500 or isinstance(exc, Refused) else "error", status=status,
                          error=message)
            audit.write(record)
            return json_error(status, message, request_uid=uid)
        record.update(result="ok", status=status, kvno=answer.get("kvno"))
        audit.write(record)
        response = flask.jsonify(dict(answer, request_uid=uid))
        response.status_code = status
        if cmd == "ext_keytab":
            response.headers["Cache-Control"] = "no-store"
        return response

    for command in FIELDS:
        app.add_url_rule("/v1/" + command, "kadmin_" + command, lambda command=command: handle(command), methods=["POST"])

    def health():
        """Anonymous callers learn up or down, nothing else; a service caller also gets the realm and the cause."""
        try:
            who = caller()
        except Refused:
            who = None
        try:
            kadmin.database()
            if who is not None:
                kadmin.exists("krbtgt/%s@%s" % (realm, realm), allow_reserved=True)
        except HcpError as exc:
            body_ = {"status": "unavailable"}
            if who is not None:
                body_.update(realm=realm, error=str(exc)[:400])
            response = flask.jsonify(body_)
            response.status_code = 503
            return response
        return flask.jsonify({"status": "ok", "realm": realm} if who is not None else {"status": "ok"})

    app.view_functions["_healthcheck"] = health
    app.extensions["hcp_kadmin"] = kadmin
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_KADMIN_CONFIG).
application = LazyApplication(create_app)
