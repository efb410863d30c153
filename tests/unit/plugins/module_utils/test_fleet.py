# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""enrollment/fleet.py: the reconciliation decision (cap, empty inventory, scope, names), the
attestation status format hcp.core.attest.status v1 and the grouping of the inventory plugin."""
from __future__ import annotations

import json

import pytest

from ansible_collections.hcp.core.plugins.module_utils.enrollment import fleet
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollDbError

NOW = 1796000000.0  # 2026-11-30


def _entries(*names):
    return [{"hostname": n, "ekpubhash": "%064x" % i} for i, n in enumerate(names, 1)]


def test_plan_removes_only_hosts_absent_from_the_inventory():
    entries = _entries("a.example.test", "b.example.test", "c.example.test", "old.example.test")
    plan = fleet.reconcile_plan(entries, ["A.example.test.", " b.example.test", "c.example.test", "new.example.test"])
    assert plan == {"remove": [entries[3]], "keep": 3}


def test_plan_cap_refuses_before_anything():
    entries = _entries("a.example.test", "x1.example.test", "x2.example.test", "x3.example.test")
    assert len(fleet.reconcile_plan(entries, ["a.example.test"], max_removals=3)["remove"]) == 3
    with pytest.raises(fleet.ReconcileCapError, match=r"3 enrolled hosts .* max_removals=2: nothing removed. They are: "
                                                      r"x1.example.test, x2.example.test, x3.example.test"):
        fleet.reconcile_plan(entries, ["a.example.test"], max_removals=2)
    with pytest.raises(fleet.ReconcileCapError):
        fleet.reconcile_plan(entries, ["a.example.test"], max_removals=0)
    assert fleet.reconcile_plan(entries, [e["hostname"] for e in entries], max_removals=0)["remove"] == []


@pytest.mark.parametrize("inventory", [[], ["not a name"], ["a.example.test", "bad_name!"]])
def test_plan_refuses_an_empty_or_invalid_inventory(inventory):
    with pytest.raises(fleet.FleetError):
        fleet.reconcile_plan(_entries("a.example.test"), inventory, max_removals=100)


@pytest.mark.parametrize("cap", [-1, True, "5", None])
def test_plan_refuses_a_bad_cap(cap):
    with pytest.raises(fleet.FleetError, match="max_removals"):
        fleet.reconcile_plan(_entries("a.example.test"), ["a.example.test"], max_removals=cap)


def test_plan_scope_limits_the_candidates():
    entries = _entries("a.lab.example.test", "b.lab.example.test", "prod1.example.test")
    plan = fleet.reconcile_plan(entries, ["a.lab.example.test"], scope=r"\.lab\.example\.test\z")
    assert [e["hostname"] for e in plan["remove"]] == ["b.lab.example.test"] and plan["keep"] == 1
    with pytest.raises(EnrollDbError):  # the caller's regex runs on RE2 only: look-around refused
        fleet.reconcile_plan(entries, ["a.lab.example.test"], scope=r"(?=a)")


def _status(hosts, **extra):
    return json.dumps(dict({"format": "hcp.core.attest.status", "version": 1, "hosts": hosts}, **extra))


def test_status_parse_and_merge():
    one = fleet.parse_status(_status({
        "ok.example.test": {"last_success": "2026-11-30T08:00:00Z", "last_result": "ok"},
        "bad.example.test": {"last_success": "2026-11-29T00:00:00Z", "last_attempt": "2026-11-30T08:00:00Z",
                             "last_result": "quote_mismatch", "reason": "PCR 7 differs " * 40},
    }))
    assert one["bad.example.test"]["last_result"] == "quote_mismatch" and len(one["bad.example.test"]["reason"]) == 256
    two = fleet.parse_status(_status({
        "BAD.example.test.": {"last_success": 1796040000, "last_result": "ok"},  # later success at another server
        "ok.example.test": {"last_success": "2026-11-29T00:00:00Z", "last_attempt": "2026-11-29T00:00:00Z",
                            "last_result": "no_entry", "reason": "older"},
    }))
    merged = fleet.merge_status([one, two])
    assert merged["bad.example.test"]["last_result"] == "ok" and merged["bad.example.test"]["last_success"] == 1796040000
    assert merged["ok.example.test"]["last_result"] == "ok" and merged["ok.example.test"]["reason"] is None


@pytest.mark.parametrize("doc, message", [
    (b"not json", "attestation status"),
    (b'{"format": "other", "version": 1, "hosts": {}}', "is not an hcp.core.attest.status"),
    (_status({}, version=2), "version 2"),
    (_status([]), "hosts must be an object"),
    (_status({"bad name": {}}), "is not a hostname"),
    (_status({"a.example.test": {"last_success": "2026-11-30 08:00:00"}}), "YYYY-MM-DDTHH:MM:SSZ"),
    (_status({"a.example.test": {"last_success": "2026-11-30T08:00:00Z\n"}}), "YYYY-MM-DDTHH:MM:SSZ"),
    (_status({"a.example.test": {"last_success": "2026-13-40T08:00:00Z"}}), "not a valid date"),
    (_status({"a.example.test": {"last_success": 10 ** 30}}), "out of range"),
    (_status({"a.example.test": {"last_result": 1}}), "last_result"),
    (_status({"a.example.test": {"reason": ["x"]}}), "reason"),
    ("[" * 100000, "attestation status"),
    (b" " * (fleet.MAX_STATUS_BYTES + 1), "larger than"),
])
def test_status_refuses_bad_documents(doc, message):
    with pytest.raises(fleet.FleetError, match=message):
        fleet.parse_status(doc)


def test_status_host_count_is_bounded(monkeypatch):
    monkeypatch.setattr(fleet, "MAX_STATUS_HOSTS", 3)
    with pytest.raises(fleet.FleetError, match="more than 3 hosts"):
        fleet.parse_status(_status(dict(("h%d.example.test" % i, {}) for i in range(4))))


def test_classify_groups():
    entries = _entries("fresh.example.test", "old.example.test", "failed.example.test", "never.example.test", "gone.example.test")
    status = fleet.merge_status([fleet.parse_status(_status({
        "fresh.example.test": {"last_success": NOW - 60, "last_result": "ok"},
        "old.example.test": {"last_success": NOW - 7200, "last_result": "ok"},
        "failed.example.test": {"last_success": NOW - 120, "last_attempt": NOW - 30, "last_result": "quote_mismatch",
                                "reason": "PCR 7"},
        "gone.example.test": {"last_success": NOW - 10, "last_result": "ok"},
    }))])
    reference = ["fresh.example.test", "OLD.example.test", "failed.example.test", "never.example.test", "not-enrolled.example.test"]
    hosts = fleet.classify(entries, status, NOW, 3600, reference=reference)
    groups = dict((h, v["groups"]) for h, v in hosts.items())
    assert groups == {"fresh.example.test": ["attested"], "old.example.test": ["stale"], "failed.example.test": ["failed"],
                      "never.example.test": ["stale"], "gone.example.test": ["attested", "unenrolled_in_inventory"]}
    failed = hosts["failed.example.test"]["vars"]["hcp_attestation"]
    assert failed == {"state": "failed", "last_success": "2026-11-30T00:51:20Z", "last_result": "quote_mismatch",
                      "reason": "PCR 7", "age": 120}
    assert hosts["never.example.test"]["vars"]["hcp_attestation"]["state"] == "stale"
    # without status sources nothing is claimed about attestation; without a reference nothing is "unenrolled"
    bare = fleet.classify(entries, None, NOW, 3600)
    assert all(v["groups"] == [] and v["vars"]["hcp_attestation"]["state"] == "unknown" for v in bare.values())


@pytest.mark.parametrize("value, seconds", [(60, 60), ("90", 90), ("15m", 900), ("6h", 21600), ("1d", 86400), ("2w", 1209600)])
def test_durations(value, seconds):
    assert fleet.parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -5, True, "1y", "1d\n", "", "9" * 30, None])
def test_bad_durations(value):
    with pytest.raises(fleet.FleetError):
        fleet.parse_duration(value)


def test_profile_fields_whitelist():
    assert fleet.check_profile_fields(None) == fleet.PROFILE_FIELDS_DEFAULT
    with pytest.raises(fleet.FleetError, match="secrets"):
        fleet.check_profile_fields(["assets", "secrets"])


def test_the_attestation_servers_status_document_is_what_the_reader_reads(tmp_path):
    """The producer (attestation/freshness.py, docs/monitoring.md) and the reader (this module)
    of ``hcp.core.attest.status`` v1 agree: a document made by the server's own code parses,
    merges and classifies."""
    from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness

    store = freshness.FreshnessStore(str(tmp_path))
    good, bad = "a" * 64, "b" * 64
    assert store.success(good, "node1.example.test", now=1000.0)
    assert store.success(bad, "node2.example.test", now=900.0)
    assert store.failure(bad, "pcr_policy", "PCR 7 differs", now=1100.0)
    doc = json.dumps(freshness.status_document(store, {"name": "attest-1"}, now=1200.0))
    status = fleet.merge_status([fleet.parse_status(doc)])
    assert status["node1.example.test"]["last_success"] == 1000.0
    assert status["node1.example.test"]["last_result"] == "ok"
    assert status["node2.example.test"]["last_success"] == 900.0
    assert status["node2.example.test"]["last_attempt"] == 1100.0
    assert status["node2.example.test"]["last_result"] == "pcr_policy"
    assert status["node2.example.test"]["reason"] == "PCR 7 differs"
