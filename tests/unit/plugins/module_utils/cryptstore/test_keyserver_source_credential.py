# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cryptstore's key-server source (module hcp.core.cryptstore, from_keyserver) with the host's
short-lived key-server credential: a host attests to the real attestation app (real swtpm, real
TLS), which issues the credential; the source presents it to the real key-server app and gets the
secret the release policy maps to the measurement the quote proved. The attack: the host's
enrollment-CA certificate naming the same measurement gets nothing (the key-server takes a
measurement from credentials only)."""
from __future__ import annotations

import pytest

from ansible_collections.hcp.core.plugins.module_utils.cryptstore import keyserver_source
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.errors import CryptStoreError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClientError
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.web.test_keyserver_release import Clock, ReleaseSite

RELEASED = "release/disk-key"


@pytest.fixture
def site(fresh_swtpm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    value = ReleaseSite(fresh_swtpm, tmp_path, Clock())
    yield value
    value.close()


def test_the_source_presents_the_attested_credential(site):
    site.attest()
    cert, key = site.host_certificate()
    source = {"url": site.ks.url, "name": RELEASED, "ca_file": site.ks.ca_file, "client_cert": cert, "client_key": key}
    data, meta = keyserver_source.fetch(dict(source, credential_dir=site.credential_dir))
    assert data == b"disk-key-from-the-store" and meta["name"] == RELEASED
    assert site.ks.audit()[-1]["attested"] is True
    # the attack: the same host's enrollment-CA certificate naming the same measurement, no credential
    with pytest.raises(KeyServerClientError) as refused:
        keyserver_source.fetch(source)
    assert refused.value.status == 403
    assert site.ks.audit()[-1]["decision"] != "allow"


def test_credential_dir_must_be_absolute():
    with pytest.raises(CryptStoreError, match="absolute"):
        keyserver_source.fetch({"url": "https://ks.example.test", "name": "a/b", "credential_dir": "relative/dir"})
