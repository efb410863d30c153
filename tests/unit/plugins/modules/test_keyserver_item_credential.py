# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.keyserver_item with credential_dir, with the real apps: the host attests to the real
attestation app (real swtpm, real TLS) and gets its key-server credential; an ACL entry keyed on
its measurement then lets the module store and delete under the host's prefix with that
credential (check mode, idempotence, RV(attested)). The attack: the host's enrollment-CA
certificate naming the same measurement is refused for the same entry (its enrollment-time
measurement does not count once the key-server trusts the credential CA)."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of
from ansible_collections.hcp.core.plugins.modules import keyserver_item
from ansible_collections.hcp.core.tests.unit import keyserver_helpers
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.web.test_keyserver_release import GOLDEN_PCR, Clock, ReleaseSite

NAME = "node9/backup-key"
SECRET = "node9-backup-key-7f3a91c2"


@pytest.fixture
def site(fresh_swtpm, tmp_path, monkeypatch):
    with fresh_swtpm.open() as tpm:
        golden = tpm.read_pcrs("sha256", [GOLDEN_PCR])[GOLDEN_PCR].hex()
    measurement = measurement_of({"sha256": {str(GOLDEN_PCR): golden}})
    acl = copy.deepcopy(keyserver_helpers.ACL)
    entry = {"cn": "node9.example.test", "measurement": measurement}
    acl["rules"].append({"prefix": "node9/", "store": [entry], "retrieve": [entry], "delete": [entry], "list": [entry]})
    monkeypatch.setattr(keyserver_helpers, "ACL", acl)
    value = ReleaseSite(fresh_swtpm, tmp_path, Clock())
    assert value.measurement == measurement
    yield value
    value.close()


def _args(site, **extra):
    value = {"url": site.ks.url, "ca_file": site.ks.ca_file, "name": NAME}
    value.update(extra)
    return value


def test_store_and_delete_with_the_attested_credential(site, run_module):
    site.attest()
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, data=SECRET, _ansible_check_mode=True))
    assert out["rc"] == 0 and out["changed"] and out["attested"] is True and not site.ks.store.names("node9/")
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, data=SECRET), raw=True)
    assert out["rc"] == 0 and out["changed"] and out["attested"] is True and out["item_version"] == 1
    assert SECRET not in out["raw"]
    assert site.ks.store.retrieve(NAME)[0] == SECRET.encode()
    again = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, data=SECRET))
    assert again["rc"] == 0 and not again["changed"]
    assert site.ks.audit()[-1]["attested"] is True and site.ks.audit()[-1]["caller"] == "node9.example.test"
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, state="absent"))
    assert out["rc"] == 0 and out["changed"] and out["deleted"] and not site.ks.store.names("node9/")


def test_the_host_certificate_is_not_the_credential(site, run_module):
    cert_path, key_path = site.host_certificate()
    # no credential in credential_dir yet (never attested): the module uses client_cert, refused by the ACL
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, client_cert=cert_path,
                                           client_key=key_path, data=SECRET), raw=True)
    assert out["rc"] == 1 and out["status_code"] == 403 and "denied" in out["msg"] and SECRET not in out["raw"]
    assert not site.ks.store.names("node9/")
    assert site.ks.audit()[-1]["attested"] is False and site.ks.audit()[-1]["decision"] == "deny"
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, data=SECRET))
    assert out["rc"] == 1 and "credential_dir" in out["msg"]
    # once attested, the same task (client_cert still given) stores with the credential
    site.attest()
    out = run_module(keyserver_item, _args(site, credential_dir=site.credential_dir, client_cert=cert_path,
                                           client_key=key_path, data=SECRET))
    assert out["rc"] == 0 and out["changed"] and out["attested"] is True
