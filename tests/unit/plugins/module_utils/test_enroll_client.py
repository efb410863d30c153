# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment client and its idempotent ensure() against the real app served over TLS
with client-certificate authentication on loopback (enroll_server), with a real swtpm EK."""
from __future__ import annotations

import json

import pytest

from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentApiError, EnrollmentClient, ensure
from ansible_collections.hcp.core.tests.unit.helpers import ENROLL_PROFILE


def test_ensure_is_idempotent(enroll_server):
    c, ek, db = enroll_server["client"], enroll_server["ek"], enroll_server["db"]
    planned = ensure(c, "present", ek, "node1.example.test", ENROLL_PROFILE, check_mode=True)
    assert planned["changed"] and planned["action"] == "added"
    assert db.query("") == []
    first = ensure(c, "present", ek, "node1.example.test", ENROLL_PROFILE)
    assert first["changed"] and "rootfs.key.sealed" in first["assets"]
    head = db.head()
    again = ensure(c, "present", ek, "node1.example.test", ENROLL_PROFILE)
    assert again["changed"] is False and db.head() == head
    changed = ensure(c, "present", ek, "node1.example.test", {"assets": ["hostname"]})
    assert changed["action"] == "reenrolled" and "rootfs.key.sealed" not in changed["assets"]
    assert json.loads(db.get(first["ekpubhash"])["clientprofile"]) == {"assets": ["hostname"]}
    with pytest.raises(EnrollmentApiError, match="enrolled as node1.example.test"):
        ensure(c, "present", ek, "other.example.test", ENROLL_PROFILE)
    assert ensure(c, "reenrolled", ek)["changed"] is True
    assert ensure(c, "absent", ek)["action"] == "deleted"
    assert ensure(c, "absent", ek)["changed"] is False
    assert c.find(".") == []
    assert b"PUBLIC KEY" in c.asset_signer()


def test_untrusted_or_missing_client_cert_is_refused(enroll_server, tmp_path):
    bare = EnrollmentClient(enroll_server["url"], enroll_server["paths"]["ca_cert"], timeout=10)
    with pytest.raises(EnrollmentApiError) as info:
        bare.query("")
    assert info.value.status == 0
    wrong_ca = EnrollmentClient(enroll_server["url"], None, enroll_server["paths"]["client_orchestrator_cert"],
                                enroll_server["paths"]["client_orchestrator_key"], timeout=10)
    with pytest.raises(EnrollmentApiError, match="cannot reach"):
        wrong_ca.query("")


def test_api_errors_carry_status(enroll_server):
    with pytest.raises(EnrollmentApiError) as info:
        enroll_server["client"].add(enroll_server["ek"], "", ENROLL_PROFILE)
    assert info.value.status == 400 and "hostname" in str(info.value)
    with pytest.raises(EnrollmentApiError) as info:
        ensure(enroll_server["client"], "reenrolled", enroll_server["ek"])
    assert info.value.status == 404
