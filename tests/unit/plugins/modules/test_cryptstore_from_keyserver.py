# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.cryptstore with from_keyserver (seed 003, scenario 1 on the host): the deployed host
retrieves items by name from the real key-server app (real TLS, its store sealed to the swtpm
``swtpm``) with its key-server client certificate, answering the auth-challenge with its key, and
keeps them in its cryptstore sealed to ITS TPM (``other_swtpm``). Check mode, idempotence, the
refusals (certificate without the key-server purpose, name outside the ACL, non-exportable item
for another measurement, exportable copy of a non-exportable item), never the data in a result."""
from __future__ import annotations

import base64
import json
import os

import pytest

from ansible_collections.hcp.core.plugins.modules import cryptstore
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import M1, M2, KeyServerSite

KEY = "vhd-key-0f9e8d7c6b5a49382716"
ADMIN = "deploy-only-admin-key-5566aa"
BOUND = "bound-to-node1-measurement-77"
OTHER = "bound-to-node2-measurement-88"


@pytest.fixture
def site(swtpm, tmp_path):
    value = KeyServerSite(swtpm, tmp_path).start()
    deploy = value.client("deploy")
    deploy.store("datica-test/vhd-key", KEY)
    deploy.store("datica-test/deploy-only/admin-key", ADMIN)
    deploy.store("datica-test/bound", BOUND, exportable=False, measurements=[M1])
    deploy.store("datica-test/other", OTHER, exportable=False, measurements=[M2])
    yield value
    value.close()


def args(site, tpm, store, who="node1", name="vhd-key", ks_name="datica-test/vhd-key", **extra):
    cert, key = site.cred(who)
    source = {"url": site.url, "name": ks_name, "ca_file": site.ca_file, "client_cert": cert, "client_key": key}
    source.update(extra.pop("source", {}))
    value = {"path": store, "tcti": tpm.tcti, "name": name, "type": "key", "from_keyserver": source}
    value.update(extra)
    return value


def leaks(raw, *secrets):
    return [s for secret in secrets for s in (secret, base64.b64encode(secret.encode()).decode(), secret.encode().hex())
            if s in raw]


def test_retrieve_into_the_cryptstore_check_mode_and_idempotence(site, other_swtpm, tmp_path, run_module):
    store = str(tmp_path / "cryptstore")
    out = run_module(cryptstore, args(site, other_swtpm, store, _ansible_check_mode=True), raw=True)
    assert out["rc"] == 0 and out["changed"] and out["action"] == "created" and not os.path.exists(store)
    assert out["keyserver"] == {"name": "datica-test/vhd-key", "item_version": 1, "created": out["keyserver"]["created"],
                                "exportable": True}
    out = run_module(cryptstore, args(site, other_swtpm, store), raw=True)
    assert out["rc"] == 0 and out["changed"] and out["action"] == "created", out
    assert out["item"]["type"] == "key" and not out["item"]["exportable"] and out["item"]["size"] == len(KEY)
    assert not leaks(out["raw"], KEY)
    again = run_module(cryptstore, args(site, other_swtpm, store))
    assert again["rc"] == 0 and not again["changed"] and again["action"] == "unchanged"
    read = run_module(cryptstore, {"path": store, "tcti": other_swtpm.tcti, "name": "vhd-key", "return_content": True})
    assert read["content"] == KEY
    # a new version on the key-server: the next run updates the copy; an older version can be asked for
    site.client("deploy").store("datica-test/vhd-key", KEY + "-v2")
    out = run_module(cryptstore, args(site, other_swtpm, store))
    assert out["changed"] and out["action"] == "updated" and out["keyserver"]["item_version"] == 2
    out = run_module(cryptstore, args(site, other_swtpm, store, source={"version": 1}))
    assert out["changed"] and out["keyserver"]["item_version"] == 1
    # the measurement-bound item goes to the host whose measurement it names, kept non-exportable
    out = run_module(cryptstore, args(site, other_swtpm, store, name="bound", ks_name="datica-test/bound"), raw=True)
    assert out["rc"] == 0 and out["changed"] and not out["keyserver"]["exportable"] and not leaks(out["raw"], BOUND)
    entries = [json.loads(line) for line in open(site.audit_file, encoding="utf-8")]
    assert all(KEY not in json.dumps(entry) for entry in entries)


@pytest.mark.parametrize("who, ks_name, extra, status, words", [
    # a certificate of the site CA without the key-server purpose
    ("plain", "datica-test/vhd-key", {}, 403, "lacks the key-server client purpose"),
    # a certificate of another CA (accepted by the TLS front end, refused by the app)
    ("foreign", "datica-test/vhd-key", {}, 403, ""),
    # a name outside the host's ACL
    ("node1", "datica-test/deploy-only/admin-key", {}, 403, "denied"),
    # a non-exportable item bound to another host's measurement
    ("node1", "datica-test/other", {}, 403, "not exportable"),
    # a non-exportable item asked for as an exportable copy
    ("node1", "datica-test/bound", {"exportable": True}, 403, "not exportable"),
    # unknown item
    ("node1", "datica-test/nope", {}, 404, ""),
])
def test_refusals_store_nothing(site, other_swtpm, tmp_path, run_module, who, ks_name, extra, status, words):
    store = str(tmp_path / "cryptstore")
    out = run_module(cryptstore, args(site, other_swtpm, store, who=who, ks_name=ks_name, **extra), raw=True)
    assert out["rc"] == 1 and out.get("status_code") == status and words in out["msg"], out
    assert not os.path.exists(store)
    assert not leaks(out["raw"], KEY, ADMIN, BOUND, OTHER)


@pytest.mark.parametrize("source, words", [
    ({"name": "datica-test/../x"}, "'..'"),
    ({"name": "/datica-test/x"}, "name"),
    ({"name": "datica-test/x\x00y"}, "name"),
    ({"url": "http://localhost:1"}, "https://"),
    ({"version": 0}, "version"),
])
def test_bad_sources_fail_before_any_call(site, other_swtpm, tmp_path, run_module, source, words):
    store = str(tmp_path / "cryptstore")
    before = os.path.getsize(site.audit_file) if os.path.exists(site.audit_file) else 0
    out = run_module(cryptstore, args(site, other_swtpm, store, source=source))
    assert out["rc"] == 1 and words in out["msg"], out
    assert not os.path.exists(store)
    assert (os.path.getsize(site.audit_file) if os.path.exists(site.audit_file) else 0) == before


def test_from_keyserver_excludes_other_data(site, other_swtpm, tmp_path, run_module):
    out = run_module(cryptstore, args(site, other_swtpm, str(tmp_path / "s"), data="not-a-word-of-the-message"))
    assert out["rc"] == 1 and "mutually exclusive" in out["msg"]
