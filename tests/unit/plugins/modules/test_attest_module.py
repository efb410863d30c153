# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.attest in process (its main()) against a real swtpm and the attestation app on
loopback (site fixture shared with the attester tests)."""
from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.modules import attest as attest_module
from ansible_collections.hcp.core.tests.unit.plugins.module_utils.test_attester import DEAD, site  # noqa: F401  pylint: disable=unused-import


def run(args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            attest_module.main()
    out = json.loads(capsys.readouterr().out)
    out["rc"] = exit_info.value.code
    return out


def test_module_check_mode_install_idempotence(site, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    args = {"url": [DEAD, site.url], "signer_public_file": str(site.signer_file), "tcti": site.tcti,
            "root": str(root)}
    checked = run(dict(args, _ansible_check_mode=True), capsys)
    assert checked["rc"] == 0 and checked["changed"] is True and os.listdir(str(root)) == []
    assert sorted(checked["changed_assets"]) == ["ca.pem", "etc-hostname", "rootfs.key"]
    done = run(args, capsys)
    assert done["changed"] is True and done["server"] == site.url and done["hostname"] == "node1.example.test"
    assert done["ekpubhash"] == site.hash and done["pcr_extended"] is False and done["skipped"] == []
    key = (root / "etc/hcp/rootfs.key").read_bytes()
    assert key.hex() not in json.dumps(done) and len(key) == 64
    assert {"name": "rootfs.key", "path": str(root / "etc/hcp/rootfs.key"), "changed": True} in done["files"]
    text_key = dict((k, v) for k, v in args.items() if k != "signer_public_file")
    again = run(dict(text_key, signer_public=site.signer.decode()), capsys)
    assert again.get("msg") is None and again["changed"] is False and again["changed_assets"] == []
    checked = run(dict(args, _ansible_check_mode=True), capsys)
    assert checked["changed"] is False


def test_module_failures(site, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    wrong = pki.Signer(pki.new_private_key("ec-p256")).public_key_pem().decode()
    out = run({"servers": [site.url], "signer_public": wrong, "tcti": site.tcti, "root": str(root)}, capsys)
    assert out["rc"] == 1 and "does not verify with the trusted asset signer" in out["msg"]
    assert os.listdir(str(root)) == []
    site.db.delete(site.hash)
    out = run({"servers": [site.url], "signer_public": site.signer.decode(), "tcti": site.tcti, "root": str(root)},
              capsys)
    assert out["rc"] == 1 and out["msg"].startswith("attestation server refused (404): ") and "not enrolled" in out["msg"]
    out = run({"servers": [site.url], "tcti": site.tcti}, capsys)
    assert out["rc"] == 1 and "signer_public" in out["msg"]
    out = run({"servers": [site.url], "signer_public_file": str(tmp_path / "none.pem"), "tcti": site.tcti}, capsys)
    assert out["rc"] == 1 and "cannot read the asset signer key" in out["msg"]
