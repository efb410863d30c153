#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Policy engine figures: load+validate time of the example enrollment policy, and decisions
per CPU second (one core) on realistic enrollment payloads (accepted and rejected), in-process, parsed-dict
and raw-JSON paths; cold (every request brings a new top-level ``__env``, as every new host
does through the enrollment pipeline) and warm (the same ``__env`` again), on the example
policy and on a variant whose checks use {VAR}s of the host; and the load time of a 4,000-filter
chain whose callers precede their callees. There is no reference-engine figure here (the
reference is not vendored). Each measurement runs for a bounded time. Prints figures; asserts
nothing. Run: .venv/bin/python benchmarks/policy.py (from the repo root, after `make install`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "collections"))

from ansible_collections.hcp.core.plugins.module_utils.policy.engine import evaluate_json, load_policy  # noqa: E402

SECONDS = 2.0
COLD_PAYLOADS = 30000


def payload(hostname, assets, users):
    return {
        "hostname": hostname, "ekpubhash": "5f" * 32, "operation": "add",
        "auth": {"client_cert": {"subject": "CN=enroller,O=Example", "cn": "enroller",
                                 "emails": ["ops@example.test"], "dns": ["enroller.example.test"]}},
        "profile": {
            "assets": ["hostname", "https-server", "pkinit-client", "pkinit-user"] + assets,
            "certificates": {"https-server": {"names": [hostname], "days": 365},
                             "pkinit-client": {"principal": "host/%s@EXAMPLE.TEST" % hostname},
                             "pkinit-user": {"users": users}},
            "__env": {"ENROLL_HOSTNAME": hostname, "ENROLL_DOMAIN": "example.test", "ENROLL_REALM": "EXAMPLE.TEST"},
        },
    }


def with_vars(doc):
    """The example policy plus host-dependent {VAR} checks: the PKINIT client principal and the
    HTTPS server name must be the host's own (their values change with every host)."""
    doc = json.loads(json.dumps(doc))
    doc["filters"]["enroll"][-1:-1] = [
        {"name": "own-principal", "if": [{"exist": ".profile.certificates.pkinit-client"},
                                         {"not-equal": ".profile.certificates.pkinit-client.principal",
                                          "value": "host/{ENROLL_HOSTNAME}@{ENROLL_REALM}"}], "action": "reject"},
        {"name": "own-names", "if": [{"exist": ".profile.certificates.https-server"},
                                     {"not-subset": ".profile.certificates.https-server.names",
                                      "value": ["{ENROLL_HOSTNAME}", "www.{ENROLL_DOMAIN}"]}], "action": "reject"},
    ]
    return doc


def top_env(data, users=True):
    """The payload as the enrollment pipeline sends it: ``__env`` at the top level (without
    ``users``: no pkinit-user asset, which the policy grants on listed hosts only)."""
    data = json.loads(json.dumps(data))
    if not users:
        data["profile"]["assets"].remove("pkinit-user")
        del data["profile"]["certificates"]["pkinit-user"]
    data["__env"] = data["profile"].pop("__env")
    return data


def cold_and_warm(policy, label):
    """Decisions/s with a new host (new ``__env``) on every request, and with one host again.
    The cold payloads are built before the clock starts (only the engine is measured)."""
    hosts = [top_env(payload("ws%d.example.test" % i, [], []), users=False) for i in range(COLD_PAYLOADS)]
    done, start = 0, time.process_time()
    deadline = start + SECONDS
    while done < len(hosts) and time.process_time() < deadline:
        for data in hosts[done:done + 100]:
            policy.evaluate(data, hookname="enrollsvc::add_request")
        done = min(done + 100, len(hosts))
    cold_per_s = done / (time.process_time() - start)
    warm_data = hosts[0]
    decision = policy.evaluate(warm_data, hookname="enrollsvc::add_request")
    warm_per_s, warm_n = rate(lambda: policy.evaluate(warm_data, hookname="enrollsvc::add_request"))
    print("%-30s %-6s cold %7.0f decisions/s (%6.1f us, %5d runs)   warm %7.0f decisions/s (%6.1f us, %d runs)"
          % (label, decision.action, cold_per_s, 1e6 / cold_per_s, done, warm_per_s, 1e6 / warm_per_s, warm_n))


def chain_load(count):
    """Seconds to load a chain of ``count`` filters, each calling the next (callers first)."""
    filters = {}
    for i in range(count):
        if i + 1 < count:
            filters["f%d" % i] = {"action": "call", "call": "f%d" % (i + 1), "on-return": "accept"}
        else:
            filters["f%d" % i] = {"action": "return"}
    start = time.perf_counter()
    load_policy({"start": "f0", "filters": filters})
    return time.perf_counter() - start


def rate(func):
    """Calls per CPU second of this process (``time.process_time``: one core's worth, fair on a
    loaded machine) of ``func`` over about SECONDS seconds of CPU, and the number of calls."""
    count, start = 0, time.process_time()
    deadline = start + SECONDS
    while True:
        for _batch in range(100):
            func()
        count += 100
        now = time.process_time()
        if now >= deadline:
            return count / (now - start), count


def main():
    with open(os.path.join(ROOT, "examples", "policy", "enrollment-policy.json"), encoding="utf-8") as handle:
        text = handle.read()
    loads, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        load_policy(text)
        loads += 1
    load_ms = (time.perf_counter() - start) / loads * 1000
    policy = load_policy(text)
    print("policy: %d filters, load+validate %.3f ms (%d loads)" % (len(policy.filter_names), load_ms, loads))
    cases = {
        "accept ws1 (user check via call+scope)": payload("ws1.example.test", [], ["alice", "bob"]),
        "accept kdc1 (pkinit-kdc + iprop)": payload("kdc1.example.test", ["pkinit-kdc", "pkinit-iprop"], ["kdcadmin"]),
        "reject ws1 asking pkinit-kdc": payload("ws1.example.test", ["pkinit-kdc"], ["alice"]),
    }
    for label, data in cases.items():
        decision = policy.evaluate(data, hookname="enrollsvc::add_request")
        per_s, count = rate(lambda d=data: policy.evaluate(d, hookname="enrollsvc::add_request"))
        body = json.dumps(data)
        json_per_s, _json_count = rate(lambda b=body: evaluate_json(policy, b, hookname="enrollsvc::add_request"))
        print("%-42s %-6s rule=%-18s %8.0f decisions/s (dict, %d runs, %.1f us each)  %8.0f/s (raw JSON %d bytes)"
              % (label, decision.action, decision.rule, per_s, count, 1e6 / per_s, json_per_s, len(body)))
    print("decisions per CPU second (one core), new top-level __env per request (cold) vs the same again (warm):")
    cold_and_warm(policy, "example policy (no {VAR})")
    cold_and_warm(load_policy(with_vars(json.loads(text))), "example + host {VAR} checks")
    print("load of a %d-filter call chain, callers before callees: %.3f s" % (4000, chain_load(4000)))
    try:
        from ansible_collections.hcp.core.plugins.module_utils.web import policy_app  # pylint: disable=import-outside-toplevel
    except ImportError:
        return
    if policy_app.common.flask is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = os.path.join(tmp, "policy.json")
        with open(policy_file, "w", encoding="utf-8") as handle:
            handle.write(text)
        client = policy_app.create_app({"policy_file": policy_file, "audit_log": os.path.join(tmp, "audit"), "require_client_cert": False}).test_client()
        body = {"hookname": "enrollsvc::add_request", "request_uid": "bench", "params": cases["accept ws1 (user check via call+scope)"]}
        per_s, count = rate(lambda: client.post("/run", json=body))
        print("through the Flask test client (POST /run, audit to file): %.0f requests/s (%d runs)" % (per_s, count))


if __name__ == "__main__":
    main()
