# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""arepl: the attestation servers' read-only replica of the enrollment DB (real git).

Layout under ``base_dir`` (docs/attestation.md, "arepl"):

* ``A/`` and ``B/``: two bare clones; a sync fetches into the one ``current`` does not
  point at (into ``refs/arepl/incoming``), checks its ``FORMAT`` (``hcp.core.enrolldb`` v1) and
  that the new head descends from the one ``current`` serves (``git merge-base --is-ancestor``),
  then moves its branch there and swaps ``current``;
* ``current``: a relative symlink to ``A`` or ``B``, replaced atomically (a temporary
  symlink renamed over it), so readers always see one whole, checked snapshot;
* ``state.json`` (0640, no secrets; the attestation web process reads it through the group):
  versioned sync state (last success, last error, consecutive failures, next attempt,
  head, generation, rollback alert) used for the back-off and by health/metrics;
* ``arepl.lock``: serialises syncs.

A failed fetch or check leaves ``current`` on the last good snapshot and schedules the
next attempt with exponential back-off (capped), so a dead erepl never stops attestation.
A head that does not descend from the served one (a rolled-back or rewritten erepl) is
refused the same way and raises the rollback alert (state, status, an ERROR log line) until
the source moves forward again or an operator accepts the rewrite (``--allow-rewind``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import BRANCH, FORMAT, VERSION, EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.fileutil import atomic_write, exclusive_lock

STATE_FORMAT = "hcp.core.arepl-state"
STATE_VERSION = 2
CLONES = ("A", "B")
INCOMING_REF = "refs/arepl/incoming"
HELD_REF = "refs/arepl/held"
LOG = logging.getLogger("hcp.core.arepl")
DEFAULT_INTERVAL = 30
DEFAULT_MIN_BACKOFF = 5
DEFAULT_MAX_BACKOFF = 600
DEFAULT_FETCH_TIMEOUT = 120


def _initial_state():
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "last_success": None, "last_attempt": None,
            "last_error": None, "last_error_time": None, "consecutive_failures": 0, "next_attempt": 0,
            "head": None, "head_time": None, "generation": None, "current": None, "rollback_alert": None}


def read_state(path):
    """arepl's state file (format ``hcp.core.arepl-state`` v2; a v1 file is read with the v2 keys
    at their defaults) as a dict; the initial state when the file is missing, unreadable or of
    another format. The one reader: arepl and the attestation app."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError, RecursionError):
        state = None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") not in (1, STATE_VERSION):
        return _initial_state()
    out = _initial_state()
    out.update((k, v) for k, v in state.items() if k in out and k not in ("format", "version"))
    return out


def alert_active(state):
    """True while the rollback alert of ``state`` is raised (not yet resolved)."""
    alert = state.get("rollback_alert")
    return isinstance(alert, dict) and not alert.get("resolved_at")


class ReplicaError(HcpError):
    """The replica cannot be used or configured (no snapshot yet, bad configuration)."""


class RollbackRefusedError(ReplicaError):
    """The source offered a head that does not descend from the served snapshot's head."""

    def __init__(self, held, offered):
        super(RollbackRefusedError, self).__init__(
            "refused a non-fast-forward update of the enrollment DB: the source offers %s, which does not descend "
            "from the served head %s (rolled back or rewritten); serving the last good snapshot" % (offered, held))
        self.held = held
        self.offered = offered


class Replica(object):
    """Two-clone replica of the enrollment DB at ``source_url`` (https://, file:// or a path).

    ``ssl_cert``/``ssl_key``/``ssl_ca``: client certificate, its key and the CA bundle for
    erepl over HTTPS (passed to git as ``-c http.sslCert=...`` etc., never logged).
    """

    def __init__(self, base_dir, source_url, ssl_cert=None, ssl_key=None, ssl_ca=None, git="git",
                 min_backoff=DEFAULT_MIN_BACKOFF, max_backoff=DEFAULT_MAX_BACKOFF, fetch_timeout=DEFAULT_FETCH_TIMEOUT):
        if not source_url:
            raise ReplicaError("arepl needs a source_url (the erepl repository)")
        self.base_dir = os.path.abspath(base_dir)
        self.source_url = source_url
        self.ssl_cert, self.ssl_key, self.ssl_ca = ssl_cert, ssl_key, ssl_ca
        self.git_bin = git
        self.min_backoff = max(1, int(min_backoff))
        self.max_backoff = max(self.min_backoff, int(max_backoff))
        self.fetch_timeout = fetch_timeout
        self.current_link = os.path.join(self.base_dir, "current")
        self.state_path = os.path.join(self.base_dir, "state.json")

    def __repr__(self):
        return "Replica(%r)" % self.base_dir

    # -- git ------------------------------------------------------------------------------
    def _git_config_args(self):
        args = []
        for key, value in (("http.sslCert", self.ssl_cert), ("http.sslKey", self.ssl_key), ("http.sslCAInfo", self.ssl_ca)):
            if value:
                args += ["-c", "%s=%s" % (key, value)]
        return args

    def _git(self, git_dir, *args, **kwargs):
        """stdout of a git command; ReplicaError on failure. ``ok_codes``: exit codes that are
        answers, not failures (then returns (code, stdout))."""
        ok_codes = kwargs.pop("ok_codes", None)
        cmd = [self.git_bin] + self._git_config_args() + ["--git-dir", git_dir] + list(args)
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_ASKPASS="/bin/false")
        try:
            proc = subprocess.run(cmd, capture_output=True, env=env, check=False, timeout=self.fetch_timeout)
        except subprocess.TimeoutExpired:
            raise ReplicaError("git %s timed out after %ss" % (args[0], self.fetch_timeout))
        out = proc.stdout.decode("utf-8", "replace").strip()
        if ok_codes is not None and proc.returncode in ok_codes:
            return proc.returncode, out
        if proc.returncode != 0:
            raise ReplicaError("git %s failed: %s" % (args[0], proc.stderr.decode("utf-8", "replace").strip()[-500:]))
        return out

    def _ensure_clone(self, name):
        path = os.path.join(self.base_dir, name)
        if not os.path.isfile(os.path.join(path, "HEAD")):
            os.makedirs(path, mode=0o700, exist_ok=True)
            self._git(path, "init", "-q", "--bare", "--initial-branch", BRANCH)
            self._git(path, "config", "gc.autoDetach", "false")
        return path

    # -- state ----------------------------------------------------------------------------
    def _load_state(self):
        return read_state(self.state_path)

    def _save_state(self, state):
        atomic_write(self.state_path, (json.dumps(state, sort_keys=True, indent=1) + "\n").encode(), mode=0o640)

    def _lock(self):
        os.makedirs(self.base_dir, mode=0o700, exist_ok=True)
        return exclusive_lock(os.path.join(self.base_dir, "arepl.lock"), 0o600)

    def current_name(self):
        """``A`` or ``B`` (the clone ``current`` points at), or None before the first sync."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        return target if target in CLONES else None

    def backoff_delay(self, failures):
        """Seconds to wait after ``failures`` consecutive failures (exponential, capped)."""
        if failures <= 0:
            return 0
        return min(self.max_backoff, self.min_backoff * (2 ** min(failures - 1, 30)))

    # -- sync -----------------------------------------------------------------------------
    def _check_format(self, path, ref):
        """The commit id of ``ref`` in the clone ``path`` after checking its ``FORMAT``."""
        db = EnrollmentDb(path, git=self.git_bin)
        raw = db.read_file("FORMAT", rev=ref)
        try:
            doc = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ReplicaError("the fetched repository is not an %s v%d enrollment DB" % (FORMAT, VERSION))
        return self._git(path, "rev-parse", "--verify", "-q", ref + "^{commit}")

    def _held_head(self, path, active):
        """The head the active clone serves, fetched into ``path`` as HELD_REF (so the ancestry
        check has both commits in one object store); None before the first sync."""
        if active is None:
            return None
        active_path = os.path.join(self.base_dir, active)
        held = self._git(active_path, "rev-parse", "--verify", "-q", "refs/heads/%s^{commit}" % BRANCH)
        self._git(path, "fetch", "-q", "--no-tags", active_path, "+refs/heads/%s:%s" % (BRANCH, HELD_REF))
        return held

    def _fast_forward(self, path, held, head):
        """True when ``head`` descends from (or is) ``held``."""
        if held is None or held == head:
            return True
        code, dummy = self._git(path, "merge-base", "--is-ancestor", held, head, ok_codes=(0, 1))
        return code == 0

    def _raise_alert(self, state, exc, now):
        """Raise (or keep raised) the rollback alert: one record from the first refusal until the
        source moves forward again, counting refusals and naming the last offered head."""
        alert = state["rollback_alert"] if alert_active(state) else None
        if alert is None:
            alert = {"kind": "non_fast_forward", "first_seen": now, "count": 0, "resolved_at": None, "resolution": None}
        alert.update(held=exc.held, offered=exc.offered, last_seen=now, count=int(alert.get("count") or 0) + 1)
        state["rollback_alert"] = alert
        # commit ids only: the source URL (which may carry credentials) is never logged
        LOG.error("ALERT enrollment DB rollback: the source offers %s, which does not descend from the served head %s; "
                  "kept the last good snapshot (refusal #%d)", exc.offered, exc.held, alert["count"])

    def sync(self, force=False, now=None, allow_rewind=False):
        """Fetch from the source into the inactive clone, check it and swap ``current``.

        A head that does not descend from the served one is refused (RollbackRefusedError as
        ``error``, the rollback alert raised in the state and logged) unless ``allow_rewind``
        (an operator accepting a rewritten source once; logged).

        Returns {changed, head, lag_seconds, error, skipped, alert}: ``changed`` when ``current``
        moved to a new head; ``error`` (str) when this attempt failed (``current`` is kept);
        ``skipped`` when still backing off (``force`` ignores the back-off); ``alert`` while
        the rollback alert is raised."""
        with self._lock():
            now = time.time() if now is None else now
            state = self._load_state()
            if not force and state["consecutive_failures"] and now < state["next_attempt"]:
                return {"changed": False, "head": state["head"], "lag_seconds": self._lag(state, now),
                        "error": state["last_error"], "skipped": True, "alert": alert_active(state)}
            state["last_attempt"] = now
            active = self.current_name()
            target = CLONES[1] if active == CLONES[0] else CLONES[0]
            changed = False
            try:
                path = self._ensure_clone(target)
                held = self._held_head(path, active)
                # into a scratch ref: the clone's branch moves only after the checks
                self._git(path, "fetch", "-q", "--no-tags", self.source_url, "+refs/heads/%s:%s" % (BRANCH, INCOMING_REF))
                head = self._check_format(path, INCOMING_REF)
                resolution = "the source moved forward again"
                if not self._fast_forward(path, held, head):
                    if not allow_rewind:
                        raise RollbackRefusedError(held, head)
                    LOG.warning("operator accepted a non-fast-forward update of the enrollment DB from %s to %s "
                                "(--allow-rewind)", held, head)
                    resolution = "rewrite accepted by the operator"
                self._git(path, "update-ref", "refs/heads/" + BRANCH, head)
                if head != state["head"] or active is None:
                    head_time = int(self._git(path, "log", "-1", "--format=%ct", head) or 0)
                    generation = EnrollmentDb(path, git=self.git_bin).generation(head)
                    tmp = os.path.join(self.base_dir, ".current.tmp")
                    if os.path.lexists(tmp):
                        os.unlink(tmp)
                    os.symlink(target, tmp)
                    os.replace(tmp, self.current_link)
                    changed = head != state["head"]
                    state.update(current=target, head_time=head_time, generation=generation)
                if alert_active(state):
                    state["rollback_alert"].update(resolved_at=now, resolution=resolution)
                state.update(head=head, last_success=now, consecutive_failures=0, next_attempt=0)
                error = None
            except (ReplicaError, OSError, HcpError) as exc:
                if isinstance(exc, RollbackRefusedError):
                    self._raise_alert(state, exc, now)
                error = str(exc)
                failures = state["consecutive_failures"] + 1
                state.update(last_error=error, last_error_time=now, consecutive_failures=failures,
                             next_attempt=now + self.backoff_delay(failures))
            self._save_state(state)
            return {"changed": changed, "head": state["head"], "lag_seconds": self._lag(state, now),
                    "error": error, "skipped": False, "alert": alert_active(state)}

    @staticmethod
    def _lag(state, now):
        """Seconds since the snapshot was last confirmed current with the source (None: never)."""
        return None if state["last_success"] is None else max(0.0, now - state["last_success"])

    def status(self, now=None):
        """Health/metrics view: {head, head_time, generation, current, last_success, last_attempt,
        last_error, last_error_time, consecutive_failures, next_attempt, rollback_alert,
        lag_seconds, alert, healthy}; ``alert`` while the rollback alert is raised."""
        now = time.time() if now is None else now
        state = self._load_state()
        out = dict((k, v) for k, v in state.items() if k not in ("format", "version"))
        out["lag_seconds"] = self._lag(state, now)
        out["alert"] = alert_active(state)
        out["healthy"] = self.current_name() is not None and state["consecutive_failures"] == 0 and not out["alert"]
        return out

    def current_path(self):
        """Real path of the current snapshot (resolved once, so a later swap does not move
        a reader mid-request). ReplicaError before the first successful sync."""
        if self.current_name() is None:
            raise ReplicaError("no enrollment DB snapshot yet in %s (arepl has not synced)" % self.base_dir)
        return os.path.realpath(self.current_link)

    def current_db(self):
        """EnrollmentDb on the current snapshot."""
        return EnrollmentDb(self.current_path(), git=self.git_bin)


def snapshot_db_provider(current_link, git="git"):
    """A db_provider for attest.Attestor reading the snapshot ``current_link`` points at:
    each call resolves the link once and returns an EnrollmentDb on that clone."""
    def provider():
        path = os.path.realpath(current_link)
        if not os.path.isfile(os.path.join(path, "HEAD")):
            raise ReplicaError("no enrollment DB snapshot at %s" % current_link)
        return EnrollmentDb(path, git=git)
    return provider


def replica_from_config(config):
    """A Replica from a config dict (keys: base_dir, source_url, ssl_cert, ssl_key, ssl_ca,
    git, min_backoff, max_backoff, fetch_timeout)."""
    if not isinstance(config, dict) or not config.get("base_dir"):
        raise ReplicaError("arepl configuration needs base_dir and source_url")
    keys = ("ssl_cert", "ssl_key", "ssl_ca", "git", "min_backoff", "max_backoff", "fetch_timeout")
    return Replica(config["base_dir"], config.get("source_url"), **dict((k, config[k]) for k in keys if k in config))


def main(argv=None):
    """``python -m ...arepl CONFIG [once|loop|status] [--force] [--allow-rewind]``.

    once (default; for a systemd timer): one sync respecting the back-off, prints the result
    as JSON, exit 0 on success or when skipped with a usable snapshot, 1 on failure.
    loop (for a service): sync every ``interval`` seconds (or at the back-off time).
    status: the state as JSON (exit 1 while the rollback alert is raised).
    ``--allow-rewind`` (once only, an operator's decision): accept a source head that does not
    descend from the served one. Alerts and errors are logged to stderr (the journal)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        sys.stderr.write("usage: arepl CONFIG [once|loop|status] [--force] [--allow-rewind]\n")
        return 2
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("arepl: %(levelname)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    try:
        with open(argv[0], "r", encoding="utf-8") as handle:
            config = json.load(handle)
        replica = replica_from_config(config)
    except (OSError, ValueError, HcpError) as exc:
        sys.stderr.write("arepl: bad configuration %s: %s\n" % (argv[0], exc))
        return 2
    command = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "once"
    force = "--force" in argv
    allow_rewind = "--allow-rewind" in argv
    if allow_rewind and command != "once":
        sys.stderr.write("arepl: --allow-rewind goes with once only\n")
        return 2
    if command == "status":
        status = replica.status()
        sys.stdout.write(json.dumps(status, sort_keys=True) + "\n")
        return 1 if status["alert"] else 0
    if command == "once":
        result = replica.sync(force=force or allow_rewind, allow_rewind=allow_rewind)
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        return 1 if result["error"] and not result["skipped"] else 0
    if command != "loop":
        sys.stderr.write("arepl: unknown command %s\n" % command)
        return 2
    interval = float(config.get("interval", DEFAULT_INTERVAL))
    while True:  # pragma: no cover - service loop, exercised by molecule
        result = replica.sync(force=force)
        force = False
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        sys.stdout.flush()
        status = replica.status()
        wait = interval
        if status["consecutive_failures"]:
            wait = max(1.0, status["next_attempt"] - time.time())
        time.sleep(wait)


if __name__ == "__main__":
    raise SystemExit(main())
