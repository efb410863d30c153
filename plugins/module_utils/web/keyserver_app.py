# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server web API (Flask), hosted by role hcp.core.webapi with client certificates:
POST /v1/request and GET /healthcheck. Wire format v1: docs/keyserver.md. Logic: keyserver/.

Callers: certificates of the site's enrollment CA (``client_ca``) that carry the key-server
client purpose (pki.OID_KP_KEYSERVER_CLIENT): hosts get them by enrollment and attestation.
Every call also proves possession of the certificate's key (auth-challenge, keyserver/auth.py)
or presents the session token such a proof gave. Then the ACL (default deny), the reserved
names, the non-exportable items' measurements and the server's own credentials decide.
One JSON audit line per call (who, what, decision), never data.

Configuration: the JSON file named by $HCP_KEYSERVER_CONFIG: ``store`` (directory made by
keyserver.store.init_store), ``tcti`` (the key-server's TPM, which unseals the master key at
start), ``client_ca`` (PEM bundle of the enrollment CA), ``acl`` (file, keyserver/acl.py),
optional ``audit_log``, ``own_credentials`` (files the server itself holds, e.g. its TLS key:
data equal to one is never stored nor released), ``challenge_ttl`` (60), ``session_ttl`` (300),
``max_item_bytes`` (1 MiB), ``keep_versions`` (16), ``max_content_length`` (2 MiB),
``credential_ca`` (PEM bundle of the attestation servers' key-server credential CA: its
minutes-long certificates are accepted as key-server clients too, and then only they carry a
measurement), ``credential_max_minutes`` (60: longer-lived credentials are refused),
``release_policy`` (file, keyserver/release.py: measurement-keyed release; needs credential_ca).
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import hashlib
import hmac
import os
import threading
import time
import uuid

try:
    import flask
except ImportError:  # pragma: no cover - checked by create_app_base
    flask = None

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.keyserver import auth as ks_auth
from ansible_collections.hcp.core.plugins.module_utils.keyserver import store as ks_store
from ansible_collections.hcp.core.plugins.module_utils.keyserver.acl import load_acl
from ansible_collections.hcp.core.plugins.module_utils.keyserver.audit import AuditLog
from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import AccessDenied, KeyServerError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.release import load_release_policy
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import (
    check_not_reserved,
    validate_measurement,
    validate_name,
    validate_prefix,
)
from ansible_collections.hcp.core.plugins.module_utils.web import metrics
from ansible_collections.hcp.core.plugins.module_utils.web.wsgi import (
    VERIFY_SUCCESS,
    LazyApplication,
    MAX_ERROR_CHARS,
    ServiceConfigError,
    client_identity,
    create_app_base,
    load_config,
    request_json,
)

CONFIG_ENV = "HCP_KEYSERVER_CONFIG"
PROTOCOL = 1
MAX_BODY_DEPTH = 4
DEFAULT_MAX_BODY = 2 * 1024 * 1024
MAX_LIST = 1000
VERIFIED_TTL = 60
VERIFIED_MAX = 4096
COMMON_FIELDS = ("protocol", "action", "credentials")
FIELDS = {
    "store": ("name", "data", "exportable", "measurements", "dry_run"),
    "retrieve": ("name", "item_version"),
    "delete": ("name", "dry_run"),
    "list": ("prefix",),
}


class Fail(KeyServerError):
    """A request refused by the app itself (body shape, caller)."""


class Challenge(Exception):
    """Answer with status auth-challenge (401) and a new challenge; ``reason`` says why."""

    def __init__(self, reason):
        super(Challenge, self).__init__(reason)
        self.reason = reason


def _positive(config, key, default, maximum):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise ServiceConfigError("key-server configuration: %s must be an integer in 1..%d" % (key, maximum))
    return value


class _OwnCredentials(object):
    """MACs of the files the server itself holds, under a random per-process key: data equal to
    one of them is never stored nor released (the server never hands out its own credentials)."""

    def __init__(self, paths):
        self._key = os.urandom(32)
        self._macs = []
        for path in paths:
            try:
                with open(path, "rb") as handle:
                    self._macs.append(self._mac(handle.read(16 * 1024 * 1024)))
            except OSError as exc:
                raise ServiceConfigError("cannot read own credential %s: %s" % (path, exc.strerror)) from None

    def _mac(self, data):
        return hmac.new(self._key, data.strip(), hashlib.sha256).digest()

    def check(self, data):
        mac = self._mac(data)
        if any(hmac.compare_digest(mac, known) for known in self._macs):
            raise AccessDenied("the key-server never stores nor releases its own credentials")


def _load_anchors(path):
    try:
        with open(path, "rb") as handle:
            return pki.load_certificates(handle.read())
    except OSError as exc:
        raise ServiceConfigError("cannot read the key-server client CA %s: %s" % (path, exc.strerror)) from None
    except pki.PkiError:
        raise ServiceConfigError("key-server client CA %s holds no PEM certificate" % path) from None


def _open_store(config):
    from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm  # pylint: disable=import-outside-toplevel

    with Tpm(config.get("tcti")) as tpm:
        return ks_store.open_store(config["store"], tpm, max_item_bytes=config["max_item_bytes"],
                                   keep_versions=config["keep_versions"])


def create_app(config=None, store=None, clock=None):
    """The Flask app for ``config`` (dict; default: the file named by $HCP_KEYSERVER_CONFIG).
    ``store``: an open KeyStore (else opened with the TPM of ``tcti``: the master key is unsealed
    here, at start; a swapped TPM stops the service with the reason). ``clock``: for tests."""
    config = dict(config if config is not None else load_config(CONFIG_ENV, required=True))
    for key in ("store", "client_ca", "acl"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise ServiceConfigError("key-server configuration needs %s (a path)" % key)
    config["max_item_bytes"] = _positive(config, "max_item_bytes", ks_store.DEFAULT_MAX_ITEM_BYTES, 16 * 1024 * 1024)
    config["keep_versions"] = _positive(config, "keep_versions", ks_store.DEFAULT_KEEP_VERSIONS, 1000)
    max_body = _positive(config, "max_content_length", max(DEFAULT_MAX_BODY, config["max_item_bytes"] * 2), 64 * 1024 * 1024)
    challenge_ttl = _positive(config, "challenge_ttl", ks_auth.DEFAULT_CHALLENGE_TTL, 3600)
    session_ttl = _positive(config, "session_ttl", ks_auth.DEFAULT_SESSION_TTL, 24 * 3600)
    anchors = _load_anchors(config["client_ca"])
    credential_anchors = None
    if config.get("credential_ca") is not None:
        if not isinstance(config["credential_ca"], str) or not config["credential_ca"]:
            raise ServiceConfigError("key-server configuration: credential_ca must be a path")
        credential_anchors = _load_anchors(config["credential_ca"])
    credential_max_minutes = _positive(config, "credential_max_minutes", pki.MAX_CREDENTIAL_MINUTES, pki.MAX_CREDENTIAL_MINUTES)
    acl = load_acl(config["acl"])
    own = config.get("own_credentials", [])
    if not isinstance(own, list) or not all(isinstance(p, str) and p for p in own):
        raise ServiceConfigError("key-server configuration: own_credentials must be a list of paths")
    own = _OwnCredentials(own)
    if store is None:
        store = _open_store(config)
    release = None
    if config.get("release_policy") is not None:
        if credential_anchors is None:
            raise ServiceConfigError("key-server configuration: release_policy needs credential_ca (the attestation "
                                     "servers' key-server credential CA): measurements are released only to attested hosts")
        release = load_release_policy(config["release_policy"], store)
    options = {"challenge_ttl": challenge_ttl, "session_ttl": session_ttl}
    if clock is not None:
        options["clock"] = clock
    authenticator = ks_auth.Authenticator(store.auth_key, os.path.join(store.auth_dir, "used"), **options)
    audit = AuditLog(config.get("audit_log"))
    app = create_app_base("hcp-keyserver", {"max_content_length": max_body})
    metrics.install(app, "keyserver", config)

    def answer(http_status, status, **fields):
        body = {"protocol": PROTOCOL, "status": status}
        body.update(fields)
        response = flask.jsonify(body)
        response.status_code = http_status
        response.headers["Cache-Control"] = "no-store"
        return response

    now = clock or time.time
    verified = collections.OrderedDict()  # sha256(escaped PEM) -> (identity, good until)
    verified_lock = threading.Lock()

    def caller():
        """The verified key-server identity of the request's certificate; Fail(403) otherwise.
        Verified identities are kept VERIFIED_TTL seconds (never past the certificate's
        notAfter), at most VERIFIED_MAX of them: the chain check was half of a retrieve's cost."""
        environ = flask.request.environ
        escaped = environ.get("SSL_CLIENT_CERT") or ""
        if environ.get("SSL_CLIENT_VERIFY") != VERIFY_SUCCESS or not escaped or not isinstance(escaped, str):
            raise Fail("a verified client certificate is required", 403)
        key = hashlib.sha256(escaped.encode("utf-8", "surrogatepass")).digest()
        moment = now()
        with verified_lock:
            hit = verified.get(key)
            if hit is not None and moment < hit[1]:
                return hit[0]
        ident = client_identity(environ)
        if ident is None:
            raise Fail("a verified client certificate is required", 403)
        try:
            who = pki.verify_keyserver_client(ident["pem"], anchors,
                                              now=datetime.datetime.fromtimestamp(moment, datetime.timezone.utc),
                                              credential_anchors=credential_anchors,
                                              max_credential_minutes=credential_max_minutes)
            if credential_anchors is not None and not who["attested"]:
                # With a credential CA, a measurement counts only when an attestation server
                # certified it minutes ago from a verified quote: the enrollment-time one in a
                # host certificate may be stale (the host's boot state changed since).
                who = dict(who, measurement=None)
        except HcpError as exc:
            raise Fail("client certificate %s is not a key-server client of this site: %s" % (
                ascii(ident.get("subject", "")[:96]), exc), 403) from None
        # cryptography parses lazily and raises several types: any failure is a refusal
        except Exception:  # pylint: disable=broad-except
            raise Fail("client certificate is not a key-server client of this site", 403) from None
        with verified_lock:
            verified[key] = (who, min(moment + VERIFIED_TTL, who["not_after"]))
            while len(verified) > VERIFIED_MAX:
                verified.popitem(last=False)
        return who

    def parse_body():
        data = request_json(max_depth=MAX_BODY_DEPTH)
        if not isinstance(data, dict):
            raise Fail("request body must be a JSON object")
        if data.get("protocol") != PROTOCOL:
            raise Fail("protocol must be %d (this key-server speaks wire format v%d)" % (PROTOCOL, PROTOCOL))
        action = data.get("action")
        if not isinstance(action, str) or action not in FIELDS:
            raise Fail("action must be one of %s" % ", ".join(FIELDS))
        unknown = sorted(set(data) - set(COMMON_FIELDS) - set(FIELDS[action]))
        if unknown:
            raise Fail("unknown field %s for %s" % (ascii(unknown[0][:64]), action))
        request = {"action": action}
        if action == "list":
            request["prefix"] = validate_prefix(data.get("prefix"))
        else:
            request["name"] = validate_name(data.get("name"))
        if action == "store":
            encoded = data.get("data")
            if not isinstance(encoded, str):
                raise Fail("store needs data (base64 text)")
            if len(encoded) > 4 * (store.max_item_bytes // 3 + 1):
                raise Fail("item data exceeds the %d-byte limit" % store.max_item_bytes, 413)
            try:
                request["data"] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise Fail("data is not base64") from None
            exportable = data.get("exportable", True)
            if not isinstance(exportable, bool):
                raise Fail("exportable must be a boolean")
            measurements = data.get("measurements", [])
            if not isinstance(measurements, list) or len(measurements) > ks_store.MAX_MEASUREMENTS:
                raise Fail("measurements must be a list of at most %d measurements" % ks_store.MAX_MEASUREMENTS)
            request["measurements"] = [validate_measurement(m) for m in measurements]
            request["exportable"] = exportable
            if not exportable and not request["measurements"]:
                raise Fail("a non-exportable item needs measurements (the hosts it may be released to)")
        if action in ("store", "delete"):
            dry_run = data.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise Fail("dry_run must be a boolean")
            request["dry_run"] = dry_run
        if action == "retrieve":
            version = data.get("item_version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                        or not 1 <= version <= ks_store.MAX_VERSION):
                raise Fail("item_version must be an integer in 1..%d" % ks_store.MAX_VERSION)
            request["item_version"] = version
        credentials = data.get("credentials")
        if credentials is not None and not isinstance(credentials, dict):
            raise Fail("credentials must be an object")
        request["credentials"] = credentials or {}
        return request

    def authenticate(who, credentials):
        """None (a valid session) or a new session token (a valid answer); Challenge or AuthError otherwise."""
        unknown = sorted(set(credentials) - {"session", "challenge", "signature"})
        if unknown:
            raise Fail("unknown credentials field %s" % ascii(unknown[0][:32]))
        if "challenge" in credentials or "signature" in credentials:
            signature = credentials.get("signature")
            if not isinstance(signature, str) or len(signature) > 2 * ks_auth.MAX_SIGNATURE_BYTES:
                raise Fail("credentials.signature must be base64 text", 400)
            try:
                raw = base64.b64decode(signature, validate=True)
            except (binascii.Error, ValueError):
                raise Fail("credentials.signature is not base64") from None
            return authenticator.answer(who["fingerprint_sha256"], who["public_key"], credentials.get("challenge"), raw)
        if "session" in credentials:
            try:
                authenticator.session(who["fingerprint_sha256"], credentials["session"])
            except ks_auth.SessionExpired as exc:
                raise Challenge(str(exc)) from None
            return None
        raise Challenge("proof of possession of the client certificate's key is required")

    def releasable(who, meta, data=None):
        if not meta["exportable"] and who.get("measurement") not in meta["measurements"]:
            raise AccessDenied("%s is not exportable: it is released only to hosts whose measurement matches, "
                               "and this host's (%s) does not" % (meta["name"], who.get("measurement") or "none"))
        if data is not None:
            own.check(data)

    def perform(who, request):
        action = request["action"]
        if action == "list":
            check_not_reserved(request["prefix"])
            items = []
            for record in store.names(request["prefix"], limit=MAX_LIST):
                meta = store.meta(record)
                if not acl.allowed(who, "list", meta["name"]):
                    continue
                if not meta["exportable"] and who.get("measurement") not in meta["measurements"]:
                    continue  # a non-exportable item is listed only to the hosts it may be released to
                items.append(dict((k, meta[k]) for k in ("name", "item_version", "created", "exportable")))
            return {"prefix": request["prefix"], "items": items}
        name = request["name"]
        check_not_reserved(name)
        if action == "retrieve" and release is not None and release.manages(name):
            # measurement-keyed release (docs/keyserver.md, part 2): the release policy, not the ACL
            data, meta = release.release(who, name, request["item_version"])
            if "measurements" in meta:
                releasable(who, meta, data)
            else:
                own.check(data)
            return {"name": name, "item_version": meta["item_version"], "created": meta["created"],
                    "exportable": meta["exportable"], "data": base64.b64encode(data).decode("ascii")}
        acl.check(who, action, name)
        if action == "retrieve":
            data, meta = store.retrieve(name, request["item_version"])
            releasable(who, meta, data)
            return {"name": name, "item_version": meta["item_version"], "created": meta["created"],
                    "exportable": meta["exportable"], "data": base64.b64encode(data).decode("ascii")}
        if action == "store":
            own.check(request["data"])
            result = store.store(name, request["data"], exportable=request["exportable"],
                                 measurements=request["measurements"], dry_run=request["dry_run"])
            return dict((k, result[k]) for k in ("name", "item_version", "exportable", "changed"))
        return {"name": name, "deleted": store.delete(name, dry_run=request["dry_run"])}

    @app.post("/v1/request")
    def handle():
        uid = uuid.uuid4().hex
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                  "request_uid": uid}
        session = None
        try:
            who = caller()
            record.update(caller=who["cn"], caller_fingerprint=who["fingerprint_sha256"], profile=who["profile"],
                          measurement=who["measurement"], attested=who["attested"])
            request = parse_body()
            record.update(action=request["action"], name=request.get("name") or request.get("prefix"))
            session = authenticate(who, request["credentials"])
            data = perform(who, request)
        except Challenge as exc:
            record.update(decision="challenge", status=401, reason=exc.reason)
            audit.write(record)
            return answer(401, "auth-challenge", data={"challenge": authenticator.challenge(record["caller_fingerprint"]),
                                                       "expires_in": authenticator.challenge_ttl},
                          reason=exc.reason, request_uid=uid)
        except HcpError as exc:
            status = exc.status if isinstance(exc.status, int) and 400 <= exc.status < 600 else 500
            message = str(exc)
            if len(message) > MAX_ERROR_CHARS:
                message = message[:MAX_ERROR_CHARS] + "... (cut)"
            record.update(decision="deny" if status < 500 else "error", status=status, reason=message)
            audit.write(record)
            if status >= 500:
                app.logger.error("key-server %s: %s", record.get("action"), message)
            return answer(status, "fail", error=message, request_uid=uid)
        record.update(decision="allow", status=200, item_version=data.get("item_version"))
        audit.write(record)
        extra = {}
        if session is not None:
            extra["session"] = {"token": session, "expires_in": authenticator.session_ttl}
        return answer(200, "success", data=data, request_uid=uid, **extra)

    app.extensions["hcp_keyserver"] = {"store": store, "acl": acl, "authenticator": authenticator, "release": release}
    return app


# WSGI entry point for uwsgi (built on the first request from $HCP_KEYSERVER_CONFIG).
application = LazyApplication(create_app)
