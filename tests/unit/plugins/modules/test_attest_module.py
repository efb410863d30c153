# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.attest in process (its main()) against a real swtpm and the attestation app on
loopback (attest_site, shared with the attester tests)."""
from __future__ import annotations

import json
import os
import subprocess

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.modules import attest as attest_module
from ansible_collections.hcp.core.tests.unit.helpers import ATTEST_PROFILE, DEAD


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


def test_module_remembers_the_generation_by_default(attest_site, attest_state_dir, tmp_path, run_module):
    """A rolled-back enrollment DB (an older, validly signed entry) is refused by the module
    without any option: its generation memory is on by default (attest_state_dir is that
    default, moved to the test's directory), and check mode records nothing."""
    site = attest_site
    old_path = str(tmp_path / "old.git")
    subprocess.run(["git", "clone", "-q", "--bare", site.db.path, old_path], check=True)
    root = tmp_path / "root"
    root.mkdir()
    args = {"servers": [site.url], "signer_public_file": str(site.signer_file), "tcti": site.tcti, "root": str(root)}
    assert run_module(attest_module, dict(args, _ansible_check_mode=True))["rc"] == 0
    assert not os.path.exists(attest_state_dir)
    current = site.db.get(site.hash)
    _h, host, files, _s = enroll.build_entry(site.config, current["ek.pub"], "node1.example.test", ATTEST_PROFILE,
                                             operation="reenroll")
    enroll.store_entry(site.db, site.config, site.hash, host, files, replace=True)
    assert run_module(attest_module, args)["rc"] == 0
    assert os.path.exists(os.path.join(attest_state_dir, "generations.json"))
    site.attestor.db_provider = lambda: EnrollmentDb(old_path)
    out = run_module(attest_module, args)
    assert out["rc"] == 1 and "older than generation 3" in out["msg"]
    out = run_module(attest_module, dict(args, _ansible_check_mode=True))
    assert out["rc"] == 1 and "older than generation 3" in out["msg"]
    # another memory (state_dir) has accepted nothing newer: the same answer passes there
    assert run_module(attest_module, dict(args, state_dir=str(tmp_path / "other")))["rc"] == 0


def test_default_state_dir(monkeypatch, tmp_path):
    monkeypatch.undo()  # the autouse attest_state_dir fixture's replacement
    real = attest_client.default_state_dir
    assert real() == "/var/lib/hcp/attester" or os.geteuid() != 0
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert real() == str(tmp_path / "xdg" / "hcp" / "attest")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert real() == str(tmp_path / "home" / ".local" / "state" / "hcp" / "attest")
