# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.keyserver with credential_dir, end to end with the real apps: a host enrolled with
golden PCR values attests to the real attestation app (real swtpm, real TLS), which issues its
key-server credential; the lookup then presents that credential to the real key-server app and
gets the secrets the release policy maps to the host's measurement. The option comes from the
arguments, the environment or the variables. The attacks: the host's enrollment-CA certificate
alone (with the same measurement in its binding), a credential left readable by others, and a
credential whose key is not the certificate's are not accepted as credentials."""
from __future__ import annotations

import os

import pytest
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.web.test_keyserver_release import Clock, ReleaseSite

RELEASED = "release/disk-key"


@pytest.fixture
def site(fresh_swtpm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    value = ReleaseSite(fresh_swtpm, tmp_path, Clock())
    yield value
    value.close()


def _lookup(*terms, variables=None, **options):
    return lookup_loader.get("hcp.core.keyserver").run(list(terms), variables=variables, **options)


def test_the_lookup_presents_the_attested_credential(site):
    site.attest()
    options = {"url": site.ks.url, "ca_file": site.ks.ca_file}
    assert _lookup(RELEASED, credential_dir=site.credential_dir, cache=False, **options) == ["disk-key-from-the-store"]
    assert _lookup("release/app-token", credential_dir=site.credential_dir, **options) == ["app-token-from-json"]
    last = site.ks.audit()[-1]
    assert last["attested"] is True and last["caller"] == "node9.example.test" and last["decision"] == "allow"
    # preferred over client_cert while it is valid
    cert, key = site.host_certificate()
    assert _lookup(RELEASED, credential_dir=site.credential_dir, client_cert=cert, client_key=key, cache=False,
                   **options) == ["disk-key-from-the-store"]
    assert site.ks.audit()[-1]["attested"] is True


def test_credential_dir_from_the_environment_and_the_variables(site, monkeypatch):
    site.attest()
    options = {"url": site.ks.url, "ca_file": site.ks.ca_file, "cache": False}
    assert _lookup(RELEASED, variables={"hcp_keyserver_credential_dir": site.credential_dir},
                   **options) == ["disk-key-from-the-store"]
    monkeypatch.setenv("HCP_KEYSERVER_CREDENTIAL_DIR", site.credential_dir)
    assert _lookup(RELEASED, **options) == ["disk-key-from-the-store"]
    assert [r["attested"] for r in site.ks.audit()[-2:]] == [True, True]


def test_what_is_not_an_attested_credential_releases_nothing(site):
    """The host's enrollment-CA certificate names the same measurement: refused for the
    measurement-keyed secret. A credential whose files others may read, or whose key is not the
    certificate's, is not used (the lookup falls back to client_cert, refused; or has nothing)."""
    options = {"url": site.ks.url, "ca_file": site.ks.ca_file, "cache": False}
    cert, key = site.host_certificate()
    with pytest.raises(AnsibleLookupError, match="only to hosts holding a key-server credential"):
        _lookup(RELEASED, client_cert=cert, client_key=key, **options)
    with pytest.raises(AnsibleLookupError, match="needs a client certificate .*credential_dir"):
        _lookup(RELEASED, credential_dir=site.credential_dir, **options)  # never attested: no credential yet
    site.attest()
    key_file = os.path.join(site.credential_dir, attest_client.CREDENTIAL_KEY_FILE)
    os.chmod(key_file, 0o644)
    with pytest.raises(AnsibleLookupError, match="only to hosts holding a key-server credential"):
        _lookup(RELEASED, credential_dir=site.credential_dir, client_cert=cert, client_key=key, **options)
    os.chmod(key_file, 0o600)
    with open(key_file, "wb") as handle:  # another key beside the certificate (a torn or planted file)
        handle.write(pki.private_key_pem(pki.new_private_key()))
    with pytest.raises(AnsibleLookupError, match="needs a client certificate .*credential_dir"):
        _lookup(RELEASED, credential_dir=site.credential_dir, **options)
    assert all(r["decision"] != "allow" or not r["name"].startswith("release/") for r in site.ks.audit())
