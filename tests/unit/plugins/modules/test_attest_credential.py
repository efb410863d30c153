# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.attest with keyserver_credential_dir, in process (its main()) with a real swtpm
against the real attestation app holding the key-server credential CA over real TLS, and the
real key-server app (ReleaseSite of the release tests): the module leaves a fresh credential
that the key-server accepts as attested, renews it at each run without reporting a change, and
writes nothing in check mode (the role's use of it: tests/unit/roles/test_attestation_client_attest_now.py).
The attacks: a planted link or a directory others may read
as the credential directory (refused, nothing written through it, no asset installed), a host
whose quote no longer matches (no credential), a relative directory."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.modules import attest as attest_module
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.web.test_keyserver_release import GOLDEN_PCR, Clock, ReleaseSite
FILES = (attest_client.CREDENTIAL_CERT_FILE, attest_client.CREDENTIAL_KEY_FILE)


@pytest.fixture
def site(fresh_swtpm, tmp_path):
    value = ReleaseSite(fresh_swtpm, tmp_path, Clock())
    value.root = tmp_path / "root"
    value.root.mkdir()
    value.signer_file = tmp_path / "signer.pub.pem"
    value.signer_file.write_bytes(value.signer.public_key_pem())
    yield value
    value.close()


def _args(site, **extra):
    value = {"servers": [site.attest_url], "ca_file": site.ks.ca_file, "signer_public_file": str(site.signer_file),
             "tcti": site.tpm.tcti, "root": str(site.root), "keyserver_credential_dir": site.credential_dir}
    value.update(extra)
    return value


def _mode(path):
    return os.lstat(path).st_mode & 0o777


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _retrieve(site):
    """release/disk-key from the key-server with the credential alone (no client_cert)."""
    client = site.client()
    assert client.using_credential
    data = client.retrieve("release/disk-key")["data"]
    last = site.ks.audit()[-1]
    assert last["attested"] is True and last["caller"] == "node9.example.test" and last["decision"] == "allow"
    return data


def test_the_module_leaves_a_fresh_credential_the_key_server_accepts(site, run_module):
    checked = run_module(attest_module, _args(site, _ansible_check_mode=True))
    assert checked["rc"] == 0 and checked["changed"] is True and "keyserver_credential" not in checked
    assert not os.path.exists(site.credential_dir) and os.listdir(str(site.root)) == []
    done = run_module(attest_module, _args(site), raw=True)
    assert done["rc"] == 0 and done["changed"] is True and done["hostname"] == "node9.example.test"
    info = done["keyserver_credential"]
    assert info["measurement"] == site.measurement and info["profile"] == "vm"
    assert info["path"] == os.path.join(site.credential_dir, attest_client.CREDENTIAL_CERT_FILE)
    assert _mode(site.credential_dir) == 0o700 and sorted(os.listdir(site.credential_dir)) == sorted(FILES)
    assert all(_mode(os.path.join(site.credential_dir, name)) == 0o600 for name in FILES)
    key = _read(os.path.join(site.credential_dir, attest_client.CREDENTIAL_KEY_FILE))
    body = b"".join(key.strip().splitlines()[1:-1]).decode()
    assert body[:40] not in done["raw"] and "PRIVATE KEY" not in done["raw"]
    assert not done.get("warnings")
    assert _retrieve(site) == b"disk-key-from-the-store"
    # the next run renews it (a new key), reports no change for it, and the new one works
    again = run_module(attest_module, _args(site))
    assert again["rc"] == 0 and again["changed"] is False and again["changed_assets"] == []
    assert again["keyserver_credential"]["not_after"] >= info["not_after"]
    assert _read(os.path.join(site.credential_dir, attest_client.CREDENTIAL_KEY_FILE)) != key
    assert _retrieve(site) == b"disk-key-from-the-store"
    # check mode leaves the credential alone
    before = [_read(os.path.join(site.credential_dir, name)) for name in FILES]
    checked = run_module(attest_module, _args(site, _ansible_check_mode=True))
    assert checked["rc"] == 0 and checked["changed"] is False and "keyserver_credential" not in checked
    assert [_read(os.path.join(site.credential_dir, name)) for name in FILES] == before


def test_a_planted_or_open_credential_directory_is_refused(site, run_module, tmp_path):
    """A link at the credential directory (to a directory the attacker reads) and a directory
    others may read: the module fails, writes no key through them, installs no asset."""
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    os.symlink(str(elsewhere), site.credential_dir)
    out = run_module(attest_module, _args(site))
    assert out["rc"] == 1 and "is not a private directory" in out["msg"]
    assert os.listdir(str(elsewhere)) == [] and os.listdir(str(site.root)) == []
    os.unlink(site.credential_dir)
    os.mkdir(site.credential_dir, 0o755)
    os.chmod(site.credential_dir, 0o755)
    out = run_module(attest_module, _args(site))
    assert out["rc"] == 1 and "is not a private directory" in out["msg"]
    assert os.listdir(site.credential_dir) == [] and os.listdir(str(site.root)) == []
    out = run_module(attest_module, _args(site, keyserver_credential_dir="relative/credential"))
    assert out["rc"] == 1 and out["msg"] == "keyserver_credential_dir must be an absolute path"
    assert not os.path.exists("relative")


def test_a_host_whose_quote_no_longer_matches_gets_no_credential(site, run_module):
    with site.tpm.open() as tpm:
        tpm.extend_pcr(GOLDEN_PCR, b"booted something else")
    out = run_module(attest_module, _args(site))
    assert out["rc"] == 1 and "PCR policy not satisfied" in out["msg"]
    assert not os.path.exists(site.credential_dir) and os.listdir(str(site.root)) == []


def test_a_server_without_the_credential_ca_issues_none(attest_site, run_module, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    directory = str(tmp_path / "credential")
    out = run_module(attest_module, {"servers": [attest_site.url], "signer_public_file": str(attest_site.signer_file),
                                     "tcti": attest_site.tcti, "root": str(root), "keyserver_credential_dir": directory})
    assert out["rc"] == 0 and out["changed"] is True and out["keyserver_credential"] is None
    assert "issued no key-server credential" in json.dumps(out["warnings"]), out["warnings"]
    assert not os.path.exists(directory)
