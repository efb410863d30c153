# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.keyserver_item against the real key-server app (TLS, key-server client certificates,
auth-challenge, store sealed to a real swtpm): check mode, idempotence, absent, refusals, and the
data never in the result."""
from __future__ import annotations

import base64

import pytest

from ansible_collections.hcp.core.plugins.modules import keyserver_item
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import KeyServerSite

NAME = "datica-test/storage-disk-key"
SECRET = "s3cret-disk-key-material"


@pytest.fixture
def site(swtpm, tmp_path):
    value = KeyServerSite(swtpm, tmp_path).start()
    yield value
    value.close()


def args(site, who="deploy", **extra):
    cert, key = site.cred(who)
    value = {"url": site.url, "ca_file": site.ca_file, "client_cert": cert, "client_key": key, "name": NAME}
    value.update(extra)
    return value


def test_present_check_mode_idempotence_absent(site, run_module):
    out = run_module(keyserver_item, args(site, data=SECRET, _ansible_check_mode=True))
    assert out["rc"] == 0 and out["changed"] and out["item_version"] == 1
    assert not site.store.names("datica-test/")  # check mode stored nothing
    out = run_module(keyserver_item, args(site, data=SECRET), raw=True)
    assert out["rc"] == 0 and out["changed"] and out["item_version"] == 1
    assert SECRET not in out["raw"] and base64.b64encode(SECRET.encode()).decode() not in out["raw"]
    assert site.store.retrieve(NAME)[0] == SECRET.encode()
    again = run_module(keyserver_item, args(site, data_b64=base64.b64encode(SECRET.encode()).decode()))
    assert again["rc"] == 0 and not again["changed"] and again["item_version"] == 1
    out = run_module(keyserver_item, args(site, data=SECRET + "2"))
    assert out["changed"] and out["item_version"] == 2
    out = run_module(keyserver_item, args(site, state="absent", _ansible_check_mode=True))
    assert out["changed"] and out["deleted"] and site.store.names("datica-test/")
    out = run_module(keyserver_item, args(site, state="absent"))
    assert out["changed"] and not site.store.names("datica-test/")
    assert not run_module(keyserver_item, args(site, state="absent"))["changed"]


def test_refusals_fail_clearly_without_the_data(site, run_module):
    out = run_module(keyserver_item, args(site, who="node1", data=SECRET), raw=True)
    assert out["rc"] == 1 and out["status_code"] == 403 and "denied" in out["msg"] and SECRET not in out["raw"]
    out = run_module(keyserver_item, args(site, who="plain", data=SECRET))
    assert out["rc"] == 1 and out["status_code"] == 403 and "lacks the key-server client purpose" in out["msg"]
    out = run_module(keyserver_item, args(site, name="datica-test/../x", data=SECRET))
    assert out["rc"] == 1 and "'..'" in out["msg"]
    out = run_module(keyserver_item, args(site, data_b64="!!"))
    assert out["rc"] == 1 and "not base64" in out["msg"]
    out = run_module(keyserver_item, args(site))
    assert out["rc"] == 1 and "data" in out["msg"]
