# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The identity provider (docs/identity.md, "Identity provider"): TRUSTING the orchestrator,
TRUSTED by the security service.

* admin socket (0600 root): ``ping``, ``share_trust_bundle`` (the orchestrator's bundle),
  ``add_client`` / ``prove_client`` / ``remove_client`` (signed by the orchestrator's current
  intermediate, ``aud`` = this provider's name, bound to the opcode, each ``jti`` used once);
  every call also needs peer uid 0 (SO_PEERCRED).
* client socket (0660 group hcp-identity): ``ping``, ``fetch_token``: the caller's SO_PEERCRED
  pid (or the nearest ancestor of it, same process start time) must be a proven instance of an
  application whose uid is the caller's uid; the answer is a JWT (ES256, this provider's current
  intermediate) with ``sub`` = ``spiffe://<site>/<host>/<app>``, ``aud`` = the security service.

Clients and proven instances are kept in ``state_dir/clients.json`` (0600, no secret), so a
restarted provider keeps serving; its intermediate is new after a restart and shared with the
security service at start, on rotation, every ``reshare_interval`` seconds and when a client
reports a 401 from the security service (``fetch_token`` with ``{"refresh": true}``).

Run: ``python3 -s -m ansible_collections.hcp.core.plugins.module_utils.identity.provider CONFIG.json``
(``--check-config CONFIG.json``; ``reset-trust CONFIG.json``: forget the orchestrator's pinned root).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time

from ansible_collections.hcp.core.plugins.module_utils import fileutil, jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

MODULE = "ansible_collections.hcp.core.plugins.module_utils.identity.provider"
CLIENTS_FILE = "clients.json"
CLIENTS_FORMAT = "hcp.core.identity-clients"
MAX_CLIENTS = 4096
MAX_INSTANCES = 65536
MAX_ANCESTRY = 64
APP_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SITE_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
UNIT_RE = re.compile(r"[A-Za-z0-9:_.@\\-]{1,247}\.service")
IMAGE_RE = re.compile(r"sha256:[0-9a-f]{64}")
ATTESTED = ("ok", "success")
MAX_ID = 2 ** 31 - 1

FIELDS = {
    "site": (str, wire.REQUIRED),
    "host": (str, wire.REQUIRED),
    "state_dir": (str, "/var/lib/hcp-identity/provider"),
    "socket": (str, "/run/hcp-identity/provider.sock"),
    "admin_socket": (str, "/run/hcp-identity/provider-admin.sock"),
    "socket_group": (str, None),
    "socket_mode": (int, 0o660),
    "secsvc_admin_socket": (str, "/run/hcp-identity/secsvc-admin.sock"),
    "name": (str, None),
    "audience": (str, None),
    "orchestrator_audience": (str, None),
    "token_lifetime": (int, 300),
    "intermediate_period": (int, 3600),
    "reshare_interval": (int, 10),
    "root_key": (dict, {"backend": "memory"}),
    "require_host_attestation": (bool, False),
    "max_body": (int, 64 * 1024),
}


def load_config(path):
    """The provider's validated configuration (docs/identity.md)."""
    config = wire.load_config(path, FIELDS)
    for key, regex in (("site", SITE_RE), ("host", HOST_RE)):
        if not regex.fullmatch(config[key]):
            raise IdentityError(500, "bad-config", "%s %r is not a valid name" % (key, config[key]))
    base = "spiffe://%s/%s/" % (config["site"], config["host"])
    config["name"] = config["name"] or base + "hcp-identity-provider"
    config["audience"] = config["audience"] or base + "hcp-identity-secsvc"
    config["orchestrator_audience"] = config["orchestrator_audience"] or config["name"]
    if not 10 <= config["token_lifetime"] <= 300:
        raise IdentityError(500, "bad-config", "token_lifetime must be 10..300 seconds")
    if config["intermediate_period"] < 2 or config["reshare_interval"] < 1:
        raise IdentityError(500, "bad-config", "intermediate_period must be >= 2, reshare_interval >= 1")
    if not 0 <= config["socket_mode"] <= 0o777 or not 1024 <= config["max_body"] <= wire.MAX_BODY:
        raise IdentityError(500, "bad-config", "socket_mode or max_body out of range")
    config["root_key_store"] = root_key_store(config["root_key"])
    return config


def root_key_store(spec):
    """trust.SealedFile for ``{"backend": "tpm", "path": ABS, "tcti": ...}``, trust.MemoryRootKey for ``{"backend": "memory"}``."""
    backend = spec.get("backend")
    if backend == "memory" and set(spec) == {"backend"}:
        return trust.MemoryRootKey()
    if backend == "tpm" and set(spec) <= {"backend", "path", "tcti"} and isinstance(spec.get("path"), str) and \
            os.path.isabs(spec["path"]) and isinstance(spec.get("tcti"), (str, type(None))):
        return trust.SealedFile(spec["path"], tcti=spec.get("tcti"))
    raise IdentityError(500, "bad-config", 'root_key must be {"backend": "memory"} or {"backend": "tpm", "path": ABS, "tcti": ...}')


# -- /proc: the kernel's word on a process --------------------------------------------------------
def proc_stat(pid):
    """(ppid, start_time, uid) of ``pid`` from /proc, or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat_line = handle.read(4096)
        with open("/proc/%d/status" % pid, "rb") as handle:
            status = handle.read(16384)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        fields = stat_line[stat_line.rindex(b")") + 2:].split()
        ppid, start = int(fields[1]), int(fields[19])
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith(b"Uid:"))
    except (ValueError, IndexError, StopIteration):
        return None
    return ppid, start, uid


def _int(value, what, low=0, high=MAX_ID):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise IdentityError(400, "bad-request", "%s must be an integer %d..%d" % (what, low, high))
    return value


def _selectors(value):
    if not isinstance(value, dict) or set(value) - {"uid", "unit", "image"} or "uid" not in value or \
            ("unit" in value) == ("image" in value):
        raise IdentityError(400, "bad-definition", 'selectors are {"uid": int, "unit": "x.service"} or {"uid": int, "image": "sha256:..."}')
    selectors = {"uid": _int(value["uid"], "selectors.uid")}
    if "unit" in value:
        if not isinstance(value["unit"], str) or not UNIT_RE.fullmatch(value["unit"]):
            raise IdentityError(400, "bad-definition", "selectors.unit must be a systemd service unit name")
        selectors["unit"] = value["unit"]
    else:
        if not isinstance(value["image"], str) or not IMAGE_RE.fullmatch(value["image"]):
            raise IdentityError(400, "bad-definition", "selectors.image must be sha256:<64 hex>")
        selectors["image"] = value["image"]
    return selectors


def _app(value):
    if not isinstance(value, str) or not APP_RE.fullmatch(value):
        raise IdentityError(400, "bad-definition", "app must match [a-z0-9][a-z0-9_.-]{0,62}")
    return value


class Provider(object):
    """The provider's state and operations (the daemon wraps it in two wire servers)."""

    def __init__(self, config):
        trust.require_libraries()
        self.config = config
        self.lock = threading.RLock()
        trust.prepare_state_dir(config["state_dir"])
        self.orchestrator = trust.TrustingSide(config["state_dir"], name="orchestrator")
        self.trusted = trust.TrustedSide(config["name"], root_key_store=config["root_key_store"],
                                         intermediate_period=config["intermediate_period"])
        self.clients = {}
        self.instances = {}
        self._jtis = {}
        self._last_share = 0.0
        self._share_ok = False
        self._share_lock = threading.Lock()
        self._load()

    # -- persistence -----------------------------------------------------------------------------
    @property
    def clients_path(self):
        return os.path.join(self.config["state_dir"], CLIENTS_FILE)

    def _load(self):
        try:
            fd = os.open(self.clients_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(32 * 1024 * 1024)
        try:
            record = jsonutil.loads(raw, CLIENTS_FILE, max_bytes=32 * 1024 * 1024)
            if record.get("format") != CLIENTS_FORMAT or record.get("version") != 1:
                raise ValueError("format")
            self.clients = dict(record["clients"])
            self.instances = dict((int(pid), value) for pid, value in record["instances"].items())
        except (HcpError, ValueError, KeyError, TypeError, AttributeError):
            raise IdentityError(500, "bad-state", "%s is damaged: refusing to start (remove it: the orchestrator "
                                "adds its clients again)" % self.clients_path) from None

    def _save(self):
        record = {"format": CLIENTS_FORMAT, "version": 1, "clients": self.clients,
                  "instances": dict((str(pid), value) for pid, value in self.instances.items())}
        fileutil.atomic_write(self.clients_path, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"), mode=0o600)

    # -- trust with the security service ---------------------------------------------------------
    def share_with_secsvc(self, force=False):
        """Share this provider's root and current intermediate with the security service;
        False (logged) when it is down or refuses."""
        with self._share_lock:
            now = time.monotonic()
            if not force and self._share_ok and now - self._last_share < self.config["reshare_interval"]:
                return True
            if force and now - self._last_share < 1.0 and self._share_ok:
                return True  # at most once a second on clients' demand
            self._last_share = now
            try:
                trust.share(self.trusted, self.config["secsvc_admin_socket"])
                self._share_ok = True
            except IdentityError as exc:
                self._share_ok = False
                wire._log("provider: cannot share the trust bundle with the security service: %s" % exc)
            return self._share_ok

    def tick(self):
        if self.trusted.maybe_rotate():
            self._share_ok = False
        self.share_with_secsvc()
        self.prune()
        now = time.time()
        with self.lock:
            for jti in [j for j, exp in self._jtis.items() if exp < now - 60]:
                del self._jtis[jti]

    def prune(self):
        """Forget instances whose process exited (or whose pid was reused)."""
        with self.lock:
            dead = [pid for pid, inst in self.instances.items() if (proc_stat(pid) or (0, None, 0))[1] != inst["start_time"]]
            for pid in dead:
                del self.instances[pid]
            if dead:
                self._save()

    # -- admin operations --------------------------------------------------------------------------
    def _signed(self, request):
        claims = trust.verify_signed_request(self.orchestrator, request, self.config["orchestrator_audience"], max_lifetime=300)
        with self.lock:
            if not isinstance(claims["jti"], str) or len(claims["jti"]) > 128 or claims["jti"] in self._jtis:
                raise IdentityError(401, "replayed", "this signed request was already used")
            if len(self._jtis) > 100000:
                raise IdentityError(503, "busy", "too many signed requests in flight")
            self._jtis[claims["jti"]] = claims["exp"]
        return claims

    def add_client(self, claims):
        app = _app(claims.get("app"))
        host = claims.get("host")
        if host != self.config["host"]:
            raise IdentityError(403, "wrong-host", "the definition is for another host")
        definition = {"app": app, "host": host, "selectors": _selectors(claims.get("selectors"))}
        spiffe_id = "spiffe://%s/%s/%s" % (self.config["site"], host, app)
        with self.lock:
            old = self.clients.get(app)
            if old is None and len(self.clients) >= MAX_CLIENTS:
                raise IdentityError(503, "busy", "too many client definitions")
            changed = old is None or old["definition"] != definition
            if changed:
                self.clients[app] = {"definition": definition, "spiffe_id": spiffe_id}
                for pid in [p for p, inst in self.instances.items() if inst["app"] == app]:
                    del self.instances[pid]  # a changed definition must be proven again
                self._save()
        return {"spiffe_id": spiffe_id, "changed": changed}

    def prove_client(self, claims):
        app = _app(claims.get("app"))
        pid = _int(claims.get("pid"), "pid", 2, 2 ** 22)
        uid = _int(claims.get("uid"), "uid")
        gid = _int(claims.get("gid"), "gid")
        attestation = claims.get("host_attestation")
        if not isinstance(attestation, dict) or not isinstance(attestation.get("result"), str) or len(json.dumps(attestation)) > 4096:
            raise IdentityError(400, "bad-proof", "host_attestation must be an object with a result")
        with self.lock:
            client = self.clients.get(app)
            if client is None:
                raise IdentityError(404, "no-such-client", "no client definition for this application: AddClient first")
            selectors = client["definition"]["selectors"]
            if uid != selectors["uid"] or any(claims.get(k) != selectors[k] for k in ("unit", "image") if k in selectors):
                raise IdentityError(403, "selector-mismatch", "the proof does not match the client definition")
            if self.config["require_host_attestation"] and attestation["result"] not in ATTESTED:
                raise IdentityError(403, "host-not-attested", "this host's attestation result is not ok")
            info = proc_stat(pid)
            if info is None:
                raise IdentityError(400, "no-such-process", "the proven process does not exist")
            if info[2] != uid:  # the kernel's word over the orchestrator's
                raise IdentityError(403, "selector-mismatch", "the proven process does not run as the defined uid")
            if pid not in self.instances and len(self.instances) >= MAX_INSTANCES:
                raise IdentityError(503, "busy", "too many proven instances")
            self.instances[pid] = {"app": app, "uid": uid, "gid": gid, "start_time": info[1], "proven_at": int(time.time()),
                                   "host_attestation": {"result": attestation["result"]}}
            self._save()
        return {"spiffe_id": client["spiffe_id"], "pid": pid}

    def remove_client(self, claims):
        app = _app(claims.get("app"))
        pid = claims.get("pid")
        with self.lock:
            if pid is not None:
                pid = _int(pid, "pid", 2, 2 ** 22)
                removed = self.instances.get(pid, {}).get("app") == app
                if removed:
                    del self.instances[pid]
            else:
                removed = self.clients.pop(app, None) is not None
                for p in [p for p, inst in self.instances.items() if inst["app"] == app]:
                    del self.instances[p]
            if removed:
                self._save()
        return {"removed": removed}

    # -- client operations -------------------------------------------------------------------------
    def find_instance(self, peer):
        """(pid, instance) of the proven process ``peer`` is (or descends from, same uid), or None."""
        pid = peer.pid
        for _step in range(MAX_ANCESTRY):
            if pid <= 1:
                return None
            info = proc_stat(pid)
            if info is None:
                return None
            inst = self.instances.get(pid)
            if inst is not None and inst["start_time"] == info[1]:
                return pid, inst
            pid = info[0]
        return None

    def fetch_token(self, request):
        if request.body.get("refresh") is True:
            self.share_with_secsvc(force=True)
        with self.lock:
            found = self.find_instance(request.peer)
            if found is None or found[1]["uid"] != request.peer.uid:
                raise IdentityError(403, "not-proven", "this process is not a proven instance of any application")
            app = found[1]["app"]
            client = self.clients.get(app)
            if client is None:
                raise IdentityError(403, "not-proven", "this process is not a proven instance of any application")
        wanted = request.body.get("app")
        if wanted is not None and wanted != app:
            raise IdentityError(403, "forbidden", "this process may not act as another application")
        lifetime = self.config["token_lifetime"]
        token = self.trusted.sign({"sub": client["spiffe_id"], "iss": self.config["name"]}, audience=self.config["audience"],
                                  lifetime=lifetime)
        return {"token": token, "spiffe_id": client["spiffe_id"], "expires_in": lifetime}

    # -- dispatch ----------------------------------------------------------------------------------
    def handle_admin(self, request):
        if request.peer.uid != 0:
            raise IdentityError(403, "forbidden", "the admin socket is for root only")
        if request.name == "ping":
            return {"component": "provider", "name": self.config["name"], "orchestrator_root": self.orchestrator.root_fingerprint}
        if request.name == "share_trust_bundle":
            return self.orchestrator.share_trust_bundle(request.body)
        if request.name in ("add_client", "prove_client", "remove_client"):
            claims = self._signed(request)
            return getattr(self, request.name)(claims)
        raise IdentityError(400, "unknown-opcode", "not an operation of the provider's admin socket")

    def handle_client(self, request):
        if request.name == "ping":  # root's health check, or a proven instance; nobody else learns anything
            if request.peer.uid != 0:
                with self.lock:
                    found = self.find_instance(request.peer)
                if found is None or found[1]["uid"] != request.peer.uid:
                    raise IdentityError(403, "not-proven", "this process is not a proven instance of any application")
            return {"component": "provider"}
        if request.name == "fetch_token":
            return self.fetch_token(request)
        if request.name in ("share_trust_bundle", "add_client", "prove_client", "remove_client"):
            raise IdentityError(403, "forbidden", "admin operations are served on the admin socket only")
        raise IdentityError(400, "unknown-opcode", "not an operation of the identity provider")


def serve(config, provider=None):
    """(provider, [servers]) listening on the configured sockets."""
    provider = provider or Provider(config)
    servers = [wire.serve(config["admin_socket"], provider.handle_admin, mode=0o600, max_body=config["max_body"])]
    try:
        servers.append(wire.serve(config["socket"], provider.handle_client, mode=config["socket_mode"],
                                  group=config["socket_group"], max_body=config["max_body"]))
    except Exception:
        servers[0].close()
        raise
    return provider, servers


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python3 -m %s [--check-config | reset-trust] CONFIG.json" % MODULE
    if len(argv) == 2 and argv[0] in ("--check-config", "reset-trust"):
        mode, path = argv
    elif len(argv) == 1 and not argv[0].startswith("-"):
        mode, path = "serve", argv[0]
    else:
        sys.stderr.write(usage + "\n")
        return 2
    try:
        config = load_config(path)
        if mode == "--check-config":
            sys.stdout.write("configuration ok: %s\n" % config["name"])
            return 0
        if mode == "reset-trust":
            old = trust.reset_trust(config["state_dir"])
            sys.stdout.write("orchestrator root forgotten (%s); restart hcp-identity-provider, then the orchestrator shares "
                             "its root again\n" % (old or "none was pinned"))
            return 0
        provider, servers = serve(config)
    except (HcpError, OSError) as exc:
        sys.stderr.write("hcp-identity-provider: %s\n" % exc)
        return 1
    provider.share_with_secsvc(force=True)
    sys.stderr.write("hcp-identity-provider: serving %s and %s\n" % (config["socket"], config["admin_socket"]))
    return wire.run_daemon(servers, tick=provider.tick, interval=1.0)


if __name__ == "__main__":
    raise SystemExit(main())
