# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Asking the policy service (or a local policy file) for a decision.

Both :class:`PolicyClient` (HTTPS only, ``POST {url}/run``) and :class:`LocalPolicy` (in-process)
offer ``check(hookname, request_uid, params) -> PolicyResult``. A reject is a result; anything
that is not a clear accept or reject raises :class:`PolicyUnavailableError`, which callers
must treat as refusal (fail closed). Wire format: docs/policy-service.md.
"""

from __future__ import annotations

import hashlib
import os
import threading

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.policy.engine import (
    PolicyError,
    PolicyValidationError,
    load_policy,
)
from ansible_collections.hcp.core.plugins.module_utils.web.client import HttpsJsonClient


class PolicyUnavailableError(HcpError):
    """No decision could be obtained (service down, timeout, unexpected answer, evaluation
    error); the caller must refuse."""


class PolicyResult:
    """A decision: ``accepted``, ``decision`` (accept/reject), ``rule``, ``reason``, ``params``
    (echoed on accept, None on reject)."""

    __slots__ = ("accepted", "decision", "rule", "reason", "params")

    def __init__(self, accepted, rule=None, reason=None, params=None):
        self.accepted = bool(accepted)
        self.decision = "accept" if accepted else "reject"
        self.rule = rule
        self.reason = reason
        self.params = params if accepted else None

    def __repr__(self):
        return "PolicyResult(decision=%r, rule=%r)" % (self.decision, self.rule)


def _check_args(hookname, request_uid, params):
    if not isinstance(hookname, str) or not hookname:
        raise PolicyUnavailableError("hookname must be a non-empty string")
    if not isinstance(request_uid, str):
        raise PolicyUnavailableError("request_uid must be a string")
    if not isinstance(params, dict):
        raise PolicyUnavailableError("params must be a JSON object")


class PolicyClient:
    """Client of a policy service at ``url`` (e.g. ``https://policy.example.test``), over TLS
    verified with ``ca_file`` (system CAs when None), optionally presenting ``client_cert``/
    ``client_key``. Any other scheme, ``http://`` included (even on loopback), raises
    PolicyUnavailableError here: an accept read off an unauthenticated channel could be forged."""

    def __init__(self, url, ca_file=None, client_cert=None, client_key=None, timeout=5):
        self.http = HttpsJsonClient(url, ca_file, client_cert, client_key, timeout, what="policy service",
                                    error_class=PolicyUnavailableError)
        self.url = self.http.url + "/run"

    def check(self, hookname, request_uid, params):
        """The service's decision on ``params``; PolicyUnavailableError when there is none."""
        _check_args(hookname, request_uid, params)
        response = self.http.request(
            "POST", "/run", json_body={"hookname": hookname, "request_uid": request_uid, "params": params})
        body = response.body if isinstance(response.body, dict) else {}
        if response.status == 200 and body.get("decision") == "accept":
            return PolicyResult(True, body.get("rule"), body.get("reason"), params)
        if response.status == 403:
            return PolicyResult(False, body.get("rule"), body.get("reason"))
        raise PolicyUnavailableError("policy service %s answered HTTP %d%s" % (
            self.url, response.status, (": %s" % body["error"]) if isinstance(body.get("error"), str) else ""))


# Loaded policies by (sha256 of the file's bytes, limits): the enrollment service builds a
# LocalPolicy per request, which re-read and re-validated the file (and started with an empty
# {VAR} cache) every time. Sound: a Policy is a function of those bytes and limits only and never
# changes after load; a changed file has another digest (a miss: loaded and validated again, an
# invalid one refused as before, never cached). Bounded: cleared past _LOADED_MAX entries.
_LOADED = {}
_LOADED_MAX = 8
_LOADED_LOCK = threading.Lock()


def _load_by_content(raw, digest, limits):
    key = (digest, tuple(sorted((limits or {}).items())))
    with _LOADED_LOCK:
        policy = _LOADED.get(key)
    if policy is None:
        policy = load_policy(raw, limits)
        with _LOADED_LOCK:
            if len(_LOADED) >= _LOADED_MAX:
                _LOADED.clear()
            _LOADED[key] = policy
    return policy


class LocalPolicy:
    """The same ``check`` API on a policy file evaluated in-process. The file is re-read when
    its size, mtime or content changes; a new version that does not validate is ignored (the
    last good one stays in force, ``stale_error`` says why). The first load must succeed."""

    def __init__(self, path, limits=None):
        self.path = path
        self.limits = limits
        self.policy = None
        self.sha256 = None
        self.stale_error = None
        self._stat = None
        self._lock = threading.Lock()
        self.refresh()
        if self.policy is None:
            raise PolicyValidationError([self.stale_error or "cannot load %s" % path])

    def refresh(self):
        """Reload the file when it changed; returns the policy in force."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            with self._lock:
                self.stale_error = "cannot read policy file %s: %s" % (self.path, exc.strerror)
            return self.policy
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if key == self._stat:
                return self.policy
            try:
                with open(self.path, "rb") as handle:
                    raw = handle.read()
            except OSError as exc:
                self.stale_error = "cannot read policy file %s: %s" % (self.path, exc.strerror)
                return self.policy
            self._stat = key
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self.sha256:
                self.stale_error = None
                return self.policy
            try:
                policy = _load_by_content(raw, digest, self.limits)
            except PolicyValidationError as exc:
                self.stale_error = "policy file %s (sha256 %s) is invalid: %s" % (self.path, digest, "; ".join(exc.problems))
                return self.policy
            self.policy, self.sha256, self.stale_error = policy, digest, None
            return policy

    def decide(self, hookname, request_uid, params):
        """The engine's Decision (with trace); PolicyUnavailableError when evaluation fails."""
        _check_args(hookname, request_uid, params)
        policy = self.refresh()
        try:
            return policy.evaluate(params, hookname=hookname, request_uid=request_uid)
        except PolicyError as exc:
            raise PolicyUnavailableError("policy evaluation failed: %s" % exc) from None

    def check(self, hookname, request_uid, params):
        decision = self.decide(hookname, request_uid, params)
        return PolicyResult(decision.accepted, decision.rule, decision.reason, params)
