# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.kerberos_principal against the real kadmin API (TLS, service-client certificate, policy
app) over a scratch Heimdal realm: check mode, idempotence, rotation, refusals."""
from __future__ import annotations

import pytest

from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin
from ansible_collections.hcp.core.plugins.modules import kerberos_principal
from ansible_collections.hcp.core.tests.unit.krb_helpers import REALM, KadminService

HOST = "host/web1.example.test"
FULL = HOST + "@" + REALM


@pytest.fixture
def service(tmp_path):
    value = KadminService(tmp_path)
    yield value
    value.close()


def args(service, **extra):
    value = {"url": service.url, "ca_file": service.ca_file, "client_cert": service.admin[0], "client_key": service.admin[1],
             "principal": HOST}
    value.update(extra)
    return value


def test_present_absent_check_mode_and_idempotence(service, run_module):
    kadmin = Kadmin(service.realm.conf, REALM)
    out = run_module(kerberos_principal, args(service, attributes=["requires-pre-auth"], _ansible_check_mode=True))
    assert out["changed"] and out["action"] == "created" and out["kvno"] is None and not kadmin.exists(HOST)
    out = run_module(kerberos_principal, args(service, attributes=["requires-pre-auth"]), raw=True)
    assert out["rc"] == 0 and out["changed"] and out["principal"] == FULL and out["kvno"] == 1
    assert out["attributes"] == ["requires-pre-auth"] and out["enctypes"] == ["aes128-cts-hmac-sha1-96", "aes256-cts-hmac-sha1-96"]
    assert "keytab" not in out["raw"]
    again = run_module(kerberos_principal, args(service, attributes=["requires-pre-auth"]))
    assert not again["changed"] and again["action"] == "none" and again["kvno"] == 1
    out = run_module(kerberos_principal, args(service, state="absent", _ansible_check_mode=True))
    assert out["changed"] and kadmin.exists(HOST)
    out = run_module(kerberos_principal, args(service, state="absent"))
    assert out["changed"] and out["action"] == "deleted" and not kadmin.exists(HOST)
    assert not run_module(kerberos_principal, args(service, state="absent"))["changed"]


def test_rotated(service, run_module):
    kadmin = Kadmin(service.realm.conf, REALM)
    out = run_module(kerberos_principal, args(service, state="rotated"))
    assert out["failed"] and out["status_code"] == 404
    kadmin.add(HOST)
    out = run_module(kerberos_principal, args(service, state="rotated", _ansible_check_mode=True))
    assert out["changed"] and out["action"] == "rotated" and kadmin.get(HOST)["kvno"] == 1
    out = run_module(kerberos_principal, args(service, state="rotated"))
    assert out["changed"] and out["kvno"] == 2 and out["kvnos"] == [1, 2]
    out = run_module(kerberos_principal, args(service, state="rotated", keep_old=False))
    assert out["kvno"] == 3 and out["kvnos"] == [3]


def test_refusals_fail_the_task_with_the_status(service, run_module):
    out = run_module(kerberos_principal, args(service, principal="host/denied.example.test"))
    assert out["failed"] and out["status_code"] == 403 and "no-denied-host" in out["msg"]
    out = run_module(kerberos_principal, args(service, principal="host/*"))
    assert out["failed"] and out["status_code"] == 400
    out = run_module(kerberos_principal, args(service, client_cert=service.enrolled_admin[0], client_key=service.enrolled_admin[1]))
    assert out["failed"] and out["status_code"] == 403 and "not authorized" in out["msg"]
    out = run_module(kerberos_principal, args(service, url="http://127.0.0.1:1"))
    assert out["failed"] and "https://" in out["msg"]
    assert not Kadmin(service.realm.conf, REALM).exists(HOST)
