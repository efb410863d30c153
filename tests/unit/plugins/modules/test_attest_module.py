# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.attest in process (its main()) against a real swtpm and the attestation app on
loopback (attest_site, shared with the attester tests)."""
from __future__ import annotations

import json
import os

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.modules import attest as attest_module
from ansible_collections.hcp.core.tests.unit.helpers import DEAD


def test_module_check_mode_install_idempotence(attest_site, tmp_path, run_module):
    root = tmp_path / "root"
    root.mkdir()
    args = {"url": [DEAD, attest_site.url], "signer_public_file": str(attest_site.signer_file), "tcti": attest_site.tcti,
            "root": str(root)}
    checked = run_module(attest_module, dict(args, _ansible_check_mode=True))
    assert checked["rc"] == 0 and checked["changed"] is True and os.listdir(str(root)) == []
    assert sorted(checked["changed_assets"]) == ["ca.pem", "etc-hostname", "rootfs.key"]
    done = run_module(attest_module, args)
    assert done["changed"] is True and done["server"] == attest_site.url and done["hostname"] == "node1.example.test"
    assert done["ekpubhash"] == attest_site.hash and done["pcr_extended"] is False and done["skipped"] == []
    key = (root / "etc/hcp/rootfs.key").read_bytes()
    assert key.hex() not in json.dumps(done) and len(key) == 64
    assert {"name": "rootfs.key", "path": str(root / "etc/hcp/rootfs.key"), "changed": True} in done["files"]
    text_key = dict((k, v) for k, v in args.items() if k != "signer_public_file")
    again = run_module(attest_module, dict(text_key, signer_public=attest_site.signer.decode()))
    assert again.get("msg") is None and again["changed"] is False and again["changed_assets"] == []
    checked = run_module(attest_module, dict(args, _ansible_check_mode=True))
    assert checked["changed"] is False


def test_module_failures(attest_site, tmp_path, run_module):
    root = tmp_path / "root"
    root.mkdir()
    wrong = pki.Signer(pki.new_private_key("ec-p256")).public_key_pem().decode()
    out = run_module(attest_module, {"servers": [attest_site.url], "signer_public": wrong, "tcti": attest_site.tcti,
                                     "root": str(root)})
    assert out["rc"] == 1 and "does not verify with the trusted asset signer" in out["msg"]
    assert os.listdir(str(root)) == []
    attest_site.db.delete(attest_site.hash)
    out = run_module(attest_module, {"servers": [attest_site.url], "signer_public": attest_site.signer.decode(),
                                     "tcti": attest_site.tcti, "root": str(root)})
    assert out["rc"] == 1 and out["msg"].startswith("attestation server refused (404): ") and "not enrolled" in out["msg"]
    out = run_module(attest_module, {"servers": [attest_site.url], "tcti": attest_site.tcti})
    assert out["rc"] == 1 and "signer_public" in out["msg"]
    out = run_module(attest_module, {"servers": [attest_site.url], "signer_public_file": str(tmp_path / "none.pem"),
                                     "tcti": attest_site.tcti})
    assert out["rc"] == 1 and "cannot read the asset signer key" in out["msg"]
