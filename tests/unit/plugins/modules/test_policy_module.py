# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.policy module on real files: validation, idempotence, check mode, diff, absent."""
from __future__ import annotations

import hashlib
import json
import os
import stat

from ansible_collections.hcp.core.plugins.modules import policy as policy_module

POLICY = {"_": "test", "start": "main", "filters": {"main": [
    {"if": {"contains": ".assets", "value": "pkinit-kdc"}, "action": "reject"}, {"name": "ok", "action": "accept"}]}}


def test_present_idempotent_and_diff(tmp_path, run_module):
    path = str(tmp_path / "policy.json")
    out = run_module(policy_module, {"path": path, "policy": POLICY, "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["changed"] and not os.path.exists(path) and out["diff"]["before"] == ""
    out = run_module(policy_module, {"path": path, "policy": POLICY})
    assert out["rc"] == 0 and out["changed"] and out["filters"] == ["main", "ok"]
    with open(path, "rb") as handle:
        raw = handle.read()
    assert json.loads(raw) == POLICY and out["sha256"] == hashlib.sha256(raw).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    out = run_module(policy_module, {"path": path, "policy": json.dumps(POLICY)})
    assert not out["changed"]
    changed = json.loads(json.dumps(POLICY))
    changed["filters"]["main"][1]["action"] = "reject"
    out = run_module(policy_module, {"path": path, "policy": changed, "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["changed"] and '"accept"' in out["diff"]["before"] and '"accept"' not in out["diff"]["after"]
    with open(path, "rb") as handle:
        assert handle.read() == raw
    out = run_module(policy_module, {"path": path, "policy": changed, "backup": True, "mode": "0600"})
    assert out["changed"] and os.path.exists(out["backup_file"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_invalid_policy_fails_with_every_problem_and_leaves_file(tmp_path, run_module):
    path = str(tmp_path / "policy.json")
    run_module(policy_module, {"path": path, "policy": POLICY})
    with open(path, "rb") as handle:
        raw = handle.read()
    bad = {"start": "a", "filters": {"a": [{"if": {"equals": ".x"}, "action": "accept"}, {"action": "jump", "jump": "zz"}]}}
    out = run_module(policy_module, {"path": path, "policy": bad})
    assert out["failed"] and len(out["problems"]) == 2
    assert 'filters.a[0].if[0]: unknown condition "equals"' in out["msg"]
    assert 'filters.a[1].jump: no filter named "zz"' in out["msg"]
    out = run_module(policy_module, {"path": path, "policy": "{not json"})
    assert out["failed"] and "malformed policy JSON" in out["msg"]
    with open(path, "rb") as handle:
        assert handle.read() == raw


def test_absent(tmp_path, run_module):
    path = str(tmp_path / "policy.json")
    run_module(policy_module, {"path": path, "policy": POLICY})
    out = run_module(policy_module, {"path": path, "state": "absent", "_ansible_check_mode": True})
    assert out["changed"] and os.path.exists(path)
    out = run_module(policy_module, {"path": path, "state": "absent", "backup": True})
    assert out["changed"] and not os.path.exists(path) and os.path.exists(out["backup_file"])
    out = run_module(policy_module, {"path": path, "state": "absent"})
    assert not out["changed"]
