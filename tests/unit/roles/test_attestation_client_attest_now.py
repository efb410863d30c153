# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role hcp.core.attestation_client's "Attest now" task, rendered by Ansible's own engine with
the role's defaults and vars, then run as the play would run it (module hcp.core.attest in
process, a real swtpm, the real attestation app holding the key-server credential CA over real
TLS, the real key-server app: ReleaseSite of the release tests): with
attestation_client_keyserver_credential_dir the role's own run leaves a key-server credential
that the key-server accepts as attested, so a play need not wait for the timer; without it the
task asks for none."""
from __future__ import annotations

import json
import os

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.modules import attest as attest_module
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.web.test_keyserver_release import Clock, ReleaseSite
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

CLIENT_ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "attestation_client")


@pytest.fixture
def site(fresh_swtpm, tmp_path, monkeypatch):
    # the module's default generation memory (root: /var/lib/hcp/attester) moved to the test's directory
    monkeypatch.setattr(attest_module.attest_client, "default_state_dir", lambda: str(tmp_path / "attest-state"))
    value = ReleaseSite(fresh_swtpm, tmp_path, Clock())
    value.root = tmp_path / "root"
    value.root.mkdir()
    value.signer_file = tmp_path / "signer.pub.pem"
    value.signer_file.write_bytes(value.signer.public_key_pem())
    yield value
    value.close()


def _attest_now_args(**variables):
    """The arguments of the role's "Attest now" task as the play passes them (omitted ones left
    out), rendered with the role's defaults and vars and ``variables``."""
    with open(os.path.join(CLIENT_ROLE, "tasks", "main.yml"), "r", encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    task = next(t for t in tasks if "hcp.core.attest" in t)
    templar = role_templar(CLIENT_ROLE, **variables)
    arguments = dict((k, trust_as_template(v) if isinstance(v, str) else v) for k, v in task["hcp.core.attest"].items())
    return templar.template(arguments)


def _run(args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            attest_module.main()
    out = json.loads(capsys.readouterr().out)
    out["rc"] = exit_info.value.code
    return out


def test_the_role_attest_now_task_leaves_a_credential(site, capsys):
    variables = {"attestation_client_servers": [site.attest_url], "attestation_client_tcti": site.tpm.tcti,
                 "attestation_client_root": str(site.root), "swtpm_tcti": "",
                 "__attestation_client_ca_file": site.ks.ca_file, "__attestation_client_signer_file": str(site.signer_file)}
    args = _attest_now_args(**variables)
    assert "keyserver_credential_dir" not in args  # the default: none asked
    done = _run(args, capsys)
    assert done["rc"] == 0 and "keyserver_credential" not in done and not os.path.exists(site.credential_dir)
    args = _attest_now_args(attestation_client_keyserver_credential_dir=site.credential_dir, **variables)
    assert args["keyserver_credential_dir"] == site.credential_dir
    done = _run(args, capsys)
    assert done["rc"] == 0 and done["changed"] is False  # the assets were installed by the first run
    assert done["keyserver_credential"]["measurement"] == site.measurement
    client = site.client()
    assert client.using_credential and client.retrieve("release/disk-key")["data"] == b"disk-key-from-the-store"
    last = site.ks.audit()[-1]
    assert last["attested"] is True and last["caller"] == "node9.example.test" and last["decision"] == "allow"
