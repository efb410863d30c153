# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The orchestrator adapter for systemd (docs/identity.md, "Orchestrator adapter").

The host's orchestrator is systemd: it starts and stops the applications' units. This daemon is
its adapter towards the identity provider, the TRUSTED side of that relationship (seed 001):

- at start it makes (or, with its root key sealed to the TPM, reloads) its root and shares the root
  certificate once and its current intermediate with the provider (``share_trust_bundle`` on the
  provider's admin socket, 0600 root); every ``intermediate_period`` a new intermediate, shared at
  once (the provider drops the previous one); a call refused with 401 ``unknown-intermediate``
  (the provider lost it) re-shares and retries once;
- every ``poll_interval`` seconds it reads the definitions (``apps_dir``, module
  hcp.core.app_identity; identity/appdef.py) and asks systemd for their units' state
  (``systemctl show -p Id,ActiveState,MainPID``, one call for all units: polling, no D-Bus
  subscription, so a restart of the adapter or of systemd's bus loses nothing - the next poll sees
  the truth);
- for a unit that is active with a main process, it reads the process's uid/gid from the inode of
  ``/proc/<pid>`` held open (fstat of the directory descriptor: a path the process cannot change,
  and the same descriptor then reads ``cgroup`` to check the process is the unit's), refuses a
  process whose uid is not the definition's user, and calls AddClient (the signed definition) and
  ProveClient (signed proofs: pid, uid, gid, unit, the host's attestation result) - once per main
  process;
- when the unit stops (or its main process changes, or the definition goes) it calls RemoveClient;
- when the provider restarts (its admin socket is a new inode: number and change time) it adds and proves every running
  application again: the provider keeps proofs in memory only.

CLI (the role's unit and health check)::

    python3 -s -m ansible_collections.hcp.core.plugins.module_utils.identity.orchestrator CONFIG.json
    python3 -s -m ... orchestrator --check-config CONFIG.json
    python3 -s -m ... orchestrator health CONFIG.json
    python3 -s -m ... orchestrator reset-trust CONFIG.json   (forget the sealed root: a NEW root,
                                                              which the provider refuses until its
                                                              own reset-trust)

No Ansible imports."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import read_nofollow
from ansible_collections.hcp.core.plugins.module_utils.identity import appdef, trust, wire
from ansible_collections.hcp.core.plugins.module_utils.identity.errors import IdentityError

CONFIG_FORMAT = "hcp.core.identity-orchestrator"
MAX_CONFIG_BYTES = 64 * 1024
MAX_ATTESTATION_BYTES = 64 * 1024
MAX_SYSTEMCTL_OUTPUT = 4 * 1024 * 1024
MAX_CGROUP_BYTES = 64 * 1024
ROOT_KEY_FILE = "root-key.sealed"
# the identity provider's rule for the host segment (provider.HOST_RE)
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_CONFIG_KEYS = {
    # key: (required, type check, description)
    "format": (True, lambda v: v == CONFIG_FORMAT, "the string %s" % CONFIG_FORMAT),
    "version": (True, lambda v: v == 1 and not isinstance(v, bool), "1"),
    "provider_admin_socket": (True, lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path"),
    "apps_dir": (True, lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path"),
    "host": (True, lambda v: isinstance(v, str) and HOST_NAME.fullmatch(v) is not None, "a host name"),
    "state_dir": (True, lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path"),
    "tcti": (False, lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 512), "a TCTI string or null"),
    "intermediate_period": (False, lambda v: isinstance(v, int) and not isinstance(v, bool) and 10 <= v <= 30 * 86400,
                            "seconds, 10 to 2592000"),
    "poll_interval": (False, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.05 <= v <= 60,
                      "seconds, 0.05 to 60"),
    "attestation_result_file": (False, lambda v: v is None or (isinstance(v, str) and os.path.isabs(v)),
                                "an absolute path or null"),
    "provider_audience": (False, lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a string"),
    "timeout": (False, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 60, "seconds, up to 60"),
}
DEFAULTS = {"tcti": None, "intermediate_period": 3600, "poll_interval": 2.0, "attestation_result_file": None, "timeout": 5.0,
            "provider_audience": "hcp-identity-provider"}


class ConfigError(HcpError):
    """The adapter's configuration is invalid (exit 2)."""


def _log(message):
    sys.stderr.write("hcp-identity-orchestrator: %s\n" % message)
    sys.stderr.flush()


# --- configuration ---------------------------------------------------------------------------

def parse_config(data):
    """The validated configuration (dict with defaults) from JSON bytes."""
    try:
        value = jsonutil.loads(data, what="orchestrator configuration", max_bytes=MAX_CONFIG_BYTES, max_depth=3)
    except HcpError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(value, dict):
        raise ConfigError("the configuration is not a JSON object")
    unknown = sorted(set(value) - set(_CONFIG_KEYS))
    if unknown:
        raise ConfigError("unknown configuration keys: %s" % ", ".join(k[:40] for k in unknown[:5]))
    config = dict(DEFAULTS)
    for key, (required, check, description) in _CONFIG_KEYS.items():
        if key not in value:
            if required:
                raise ConfigError("%s is required" % key)
            continue
        if not check(value[key]):
            raise ConfigError("%s must be %s" % (key, description))
        config[key] = value[key]
    config["poll_interval"] = float(config["poll_interval"])
    return config


def load_config(path):
    """The validated configuration from the file ``path`` (read without following links)."""
    try:
        info, data = read_nofollow(os.path.abspath(path), MAX_CONFIG_BYTES)
    except (HcpError, OSError) as exc:
        raise ConfigError("cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None
    if info is None:
        raise ConfigError("%s does not exist" % path)
    if data is None:
        raise ConfigError("%s is larger than %d bytes" % (path, MAX_CONFIG_BYTES))
    return parse_config(data)


# --- what systemd and /proc say --------------------------------------------------------------

def parse_systemctl_show(text, units):
    """``{unit: (active_state, main_pid)}`` from ``systemctl show -p Id,ActiveState,MainPID U1 U2...``
    output (one block per unit, in the order asked, separated by an empty line)."""
    blocks = text.strip("\n").split("\n\n") if text.strip() else []
    if len(blocks) != len(units):
        raise HcpError("systemctl show answered %d blocks for %d units" % (len(blocks), len(units)))
    states = {}
    for unit, block in zip(units, blocks):
        fields = {}
        for line in block.split("\n"):
            key, _sep, value = line.partition("=")
            fields[key] = value
        try:
            pid = int(fields.get("MainPID", "0"))
        except ValueError:
            pid = 0
        states[unit] = (fields.get("ActiveState", "unknown"), pid if pid > 0 else 0)
    return states


def systemd_states(units, timeout=10):
    """``{unit: (active_state, main_pid)}`` of the units, from systemd (one ``systemctl show``)."""
    if not units:
        return {}
    argv = ["systemctl", "show", "--no-pager", "-p", "Id,ActiveState,MainPID", "--"] + list(units)
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "SYSTEMD_PAGER": ""})
    if result.returncode != 0 or len(result.stdout) > MAX_SYSTEMCTL_OUTPUT:
        raise HcpError("systemctl show failed (%d): %s" % (result.returncode, result.stderr.decode("utf-8", "replace")[:200]))
    return parse_systemctl_show(result.stdout.decode("utf-8", "replace"), units)


def process_identity(pid, unit=None, proc="/proc"):
    """``(uid, gid)`` of process ``pid``: the owner of its ``/proc/<pid>`` directory, read with fstat
    on a descriptor (the kernel sets it from the process's credentials; a process cannot make it a
    link or change it). With ``unit``, the same descriptor's ``cgroup`` must name ``<unit>`` as the
    process's last cgroup component: the pid is the unit's process, not a recycled pid. None when
    the process is gone or is not the unit's."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        fd = os.open("%s/%d" % (proc, pid), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if unit is not None:
            try:
                cfd = os.open("cgroup", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return None
            with os.fdopen(cfd, "rb") as handle:
                data = handle.read(MAX_CGROUP_BYTES)
            paths = [line.split(b":", 2)[-1] for line in data.splitlines() if line.count(b":") >= 2]
            wanted = ("/" + unit).encode()
            if not any(path.endswith(wanted) for path in paths):
                return None
        return info.st_uid, info.st_gid
    finally:
        os.close(fd)


def attestation_result(path):
    """The host's attestation result for proofs: ``{"result", "time", "generation"}`` from the
    attester's success file (hcp.core.attestation_client), or ``{"result": "none"}``."""
    if not path:
        return {"result": "none", "time": None, "generation": None}
    try:
        info, data = read_nofollow(path, MAX_ATTESTATION_BYTES)
        value = jsonutil.loads(data, what="attestation result", max_bytes=MAX_ATTESTATION_BYTES) if data is not None else None
    except (HcpError, OSError):
        value = None
        info = None
    if info is None or not isinstance(value, dict):
        return {"result": "none", "time": None, "generation": None}
    when = value.get("time") if isinstance(value.get("time"), str) and len(value.get("time")) <= 64 else None
    generation = value.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool):
        generation = None
    return {"result": "success", "time": when, "generation": generation}


# --- the adapter -----------------------------------------------------------------------------

class Adapter(object):
    """One adapter: ``poll()`` once per ``poll_interval``. ``side``: the trusted side (trust.TrustedSide),
    ``states``: a function ``units -> {unit: (active_state, main_pid)}`` (systemd_states),
    ``users``: a function ``user name -> uid`` (pwd)."""

    def __init__(self, config, side, states=systemd_states, users=None, proc="/proc"):
        self.config = config
        self.side = side
        self.states = states
        self.users = users or (lambda name: pwd.getpwnam(name).pw_uid)
        self.proc = proc
        self.socket = config["provider_admin_socket"]
        self.proven = {}  # app -> (pid, uid, gid, unit)
        self.provider_inode = None
        self.reported = set()  # problems already logged (each once while it lasts)
        self.check_cgroup = True  # the pid must be in the unit's cgroup (off only where there is no systemd)

    # -- trust --
    def share_trust(self):
        """Share the root (the provider accepts the same root again and refuses another: 409, which
        needs the operator's reset-trust on the provider) and the current intermediate."""
        try:
            trust.share(self.side, self.socket, timeout=self.config["timeout"])
        except IdentityError as exc:
            if exc.status == 409:
                self._report(("root", exc.error), "the provider refuses this adapter's trust bundle (%s): if the adapter's "
                             "root was lost on purpose, run the provider's reset-trust (docs/identity.md)" % exc)
            raise

    def _signed_call(self, opcode, payload):
        """An admin call carrying ``payload`` signed by the current intermediate (trust.signed_call:
        a 401 ``unknown-intermediate`` re-shares the bundle and retries once)."""
        return trust.signed_call(self.side, self.socket, opcode, payload, self.config["provider_audience"],
                                 timeout=self.config["timeout"])

    # -- clients --
    def _report(self, key, message):
        if key not in self.reported:
            self.reported.add(key)
            _log(message)

    def _add_and_prove(self, app, definition, pid, uid, gid):
        unit = definition["unit"]
        self._signed_call("add_client", {"app": app, "host": self.config["host"], "selectors": {"uid": uid, "unit": unit}})
        self._signed_call("prove_client", {"app": app, "pid": pid, "uid": uid, "gid": gid, "unit": unit,
                                           "host_attestation": attestation_result(self.config["attestation_result_file"])})
        self.proven[app] = (pid, uid, gid, unit)
        _log("proved %s (unit %s, pid %d, uid %d)" % (app, unit, pid, uid))

    def _remove(self, app, whole=False):
        """RemoveClient: the proven instance (its main process stopped or changed), or with ``whole``
        the client itself (its definition is gone)."""
        pid = self.proven.pop(app)[0] if app in self.proven else None
        self._signed_call("remove_client", {"app": app} if whole or pid is None else {"app": app, "pid": pid})
        _log("removed %s%s" % (app, "" if whole or pid is None else " (pid %d)" % pid))

    def poll(self):
        """One look: rotation, provider restart, definitions and units; AddClient/ProveClient for new
        main processes, RemoveClient for gone ones. Problems of one application never stop the others."""
        if self.side.maybe_rotate() and self.provider_inode is not None:
            self.share_trust()
            _log("shared a new intermediate")
        try:
            info = os.stat(self.socket)
            # a new bind is a new inode; its number may be recycled, its change time is not
            inode = (info.st_dev, info.st_ino, info.st_ctime_ns)
        except OSError:
            inode = None
        if inode != self.provider_inode:
            if self.provider_inode is not None or inode is None:
                self.proven.clear()  # a new provider knows nobody
            if inode is not None:
                self.share_trust()
            self.provider_inode = inode
        definitions, errors = appdef.load_all(self.config["apps_dir"])
        for message in errors:
            self._report(("definition", message), "definition refused: %s" % message)
        units = sorted(set(d["unit"] for d in definitions.values()))
        states = self.states(units) if units else {}
        for app in sorted(set(self.proven) - set(definitions)):
            self._remove(app, whole=True)
        for app, definition in sorted(definitions.items()):
            try:
                self._sync(app, definition, states.get(definition["unit"], ("unknown", 0)))
            except (IdentityError, HcpError, OSError, KeyError) as exc:
                self._report(("sync", app, str(exc)), "%s: %s" % (app, exc))

    def _sync(self, app, definition, state):
        active, pid = state
        proven = self.proven.get(app)
        running = active in ("active", "reloading") and pid > 0
        if proven and (not running or proven[0] != pid or proven[3] != definition["unit"]):
            self._remove(app)
            proven = None
        if not running or proven:
            return
        identity = process_identity(pid, definition["unit"] if self.check_cgroup else None, self.proc)
        if identity is None:
            return  # gone meanwhile, or not the unit's process: the next poll sees
        uid, gid = identity
        try:
            expected = self.users(definition["user"])
        except KeyError:
            self._report(("user", app), "%s: user %s does not exist; not proven" % (app, definition["user"]))
            return
        if uid != expected:
            self._report(("uid", app, pid), "%s: unit %s runs as uid %d, not %s (%d); not proven"
                         % (app, definition["unit"], uid, definition["user"], expected))
            return
        self._add_and_prove(app, definition, pid, uid, gid)


# --- CLI -------------------------------------------------------------------------------------

def root_key_path(config):
    """The adapter's root private key, sealed to the TPM (trust.SealedFile)."""
    return os.path.join(config["state_dir"], ROOT_KEY_FILE)


def make_side(config):
    """The adapter's trusted side: its root key sealed to the TPM in ``state_dir`` (made on the
    first start), a new intermediate."""
    return trust.TrustedSide("hcp-identity-orchestrator", trust.SealedFile(root_key_path(config), config.get("tcti")),
                             intermediate_period=config["intermediate_period"])


def serve(config, stop=None, side=None, states=systemd_states, check_cgroup=True):
    """Run the adapter until ``stop`` (a threading.Event) is set."""
    stop = stop or threading.Event()
    adapter = Adapter(config, side or make_side(config), states=states)
    adapter.check_cgroup = check_cgroup
    while not stop.is_set():
        try:
            adapter.poll()
        except (IdentityError, HcpError, OSError, subprocess.SubprocessError) as exc:
            adapter.provider_inode = None  # try the provider afresh next time
            _log("poll failed: %s" % exc)
        stop.wait(config["poll_interval"])
    # No RemoveClient at a stop: the applications keep running and stay proven (the provider
    # forgets exited processes itself); the next start proves them again.
    return adapter


def health(config):
    """0 when the provider's sockets and the security service's admin socket answer a ping and
    both trust relationships stand (the provider has pinned an orchestrator root, the security
    service the provider's root and an intermediate), else 1 with the reason on stderr. Root only
    (the admin sockets); the security service's client socket needs a token, so it is not pinged."""
    run = os.path.dirname(config["provider_admin_socket"])
    checks = (("provider-admin.sock", ("orchestrator_root",)), ("provider.sock", ()),
              ("secsvc-admin.sock", ("idp_root", "idp_intermediate")))
    failed = 0
    for name, needed in checks:
        try:
            answer = wire.call(os.path.join(run, name), "ping", {}, timeout=config["timeout"])
        except IdentityError as exc:
            sys.stderr.write("%s: %s\n" % (name, exc))
            failed = 1
            continue
        for key in needed:
            if not answer.get(key):
                sys.stderr.write("%s: no %s yet (trust not established)\n" % (name, key))
                failed = 1
    return failed


def main(argv=None):
    """CLI: ``[--check-config | health | reset-trust] CONFIG``; exit 2 on a bad configuration."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if len(argv) == 2 else "serve"
    if len(argv) not in (1, 2) or command not in ("serve", "--check-config", "health", "reset-trust"):
        sys.stderr.write("usage: python3 -s -m %s [--check-config | health | reset-trust] CONFIG\n" % __name__)
        return 2
    try:
        config = load_config(argv[-1])
    except ConfigError as exc:
        sys.stderr.write("bad configuration: %s\n" % exc)
        return 2
    if command == "--check-config":
        sys.stdout.write(json.dumps({"ok": True}) + "\n")
        return 0
    if command == "health":
        return health(config)
    if command == "reset-trust":
        try:
            os.unlink(root_key_path(config))
        except FileNotFoundError:
            pass
        sys.stdout.write("the adapter's root is forgotten: a new one is made at the next start\n")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve(config, stop)
    except (HcpError, OSError) as exc:
        _log("failed: %s" % exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
