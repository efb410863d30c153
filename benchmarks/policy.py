#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Policy engine figures: load+validate time of the example enrollment policy, and decisions
per second on realistic enrollment payloads (accepted and rejected), in-process, parsed-dict
and raw-JSON paths. Each measurement runs for a bounded time. Prints figures; asserts
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


def rate(func):
    """Calls per second of ``func`` over about SECONDS seconds."""
    count, start = 0, time.perf_counter()
    deadline = start + SECONDS
    while True:
        for _batch in range(100):
            func()
        count += 100
        now = time.perf_counter()
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
