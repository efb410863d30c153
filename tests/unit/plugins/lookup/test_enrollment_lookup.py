# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hcp.core.enrollment lookup against the real app on loopback TLS (enroll_server,
shared with the client tests)."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import ensure
from ansible_collections.hcp.core.tests.unit.helpers import ENROLL_PROFILE


def test_lookup_face(enroll_server):
    ensure(enroll_server["client"], "present", enroll_server["ek"], "node1.example.test", ENROLL_PROFILE)
    paths = enroll_server["paths"]
    options = dict(url=enroll_server["url"], ca_file=paths["ca_cert"], client_cert=paths["client_orchestrator_cert"],
                   client_key=paths["client_orchestrator_key"])
    by_hash = lookup_loader.get("hcp.core.enrollment").run([""], **options)
    assert [e["hostname"] for e in by_hash[0]] == ["node1.example.test"]
    by_name = lookup_loader.get("hcp.core.enrollment").run(["^node1", "^nothing"], by="hostname", **options)
    assert by_name[0][0]["ekpubhash"] == by_hash[0][0]["ekpubhash"] and by_name[1] == []
    with pytest.raises(AnsibleLookupError, match="term 'XYZ'"):
        lookup_loader.get("hcp.core.enrollment").run(["XYZ"], **options)
