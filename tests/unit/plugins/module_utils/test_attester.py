# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attester end to end: real swtpm, a real enrolled entry in a git DB, the attestation
Flask app over HTTP on loopback, the CLI as a subprocess, hooks as real commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ansible_collections
from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import attester
from ansible_collections.hcp.core.plugins.module_utils.tpm.policy import ONE_TIME_PCR
from ansible_collections.hcp.core.tests.unit.helpers import DEAD, AttestSite


def _collections_dir():
    return os.path.dirname(list(ansible_collections.__path__)[0])


def _cli(config_path):
    env = dict(os.environ, PYTHONPATH=_collections_dir())
    return subprocess.run([sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.attestation.attester",
                           str(config_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)


def _config(site, tmp_path, **extra):
    config = {"format": "hcp.core.attester-config", "version": 1, "servers": [site.url],
              "signer_public_file": str(site.signer_file), "tcti": site.tcti, "root": str(tmp_path / "root"),
              "success_file": str(tmp_path / "status.json"), "retries": 1, "backoff_base": 0.01, "backoff_max": 0.02}
    config.update(extra)
    path = tmp_path / "attester.json"
    path.write_text(json.dumps(config))
    return path


def _hook(tmp_path, name, exit_code=0):
    """A hook command saving its stdin to <name>.json."""
    script = tmp_path / (name + ".sh")
    script.write_text("#!/bin/sh\ncat > %s\necho '%s said no' >&2\nexit %d\n" % (tmp_path / (name + ".json"), name,
                                                                                 exit_code))
    script.chmod(0o755)
    return [str(script)]


def test_cli_end_to_end_with_hooks_success_file_and_idempotence(attest_site, tmp_path):
    os.makedirs(str(tmp_path / "root"))
    path = _config(attest_site, tmp_path, servers=[DEAD, attest_site.url], pre_hooks=[_hook(tmp_path, "pre")],
                   post_hooks=[_hook(tmp_path, "post")])
    proc = _cli(path)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line["hostname"] == "node1.example.test" and line["server"] == attest_site.url
    assert sorted(line["changed"]) == ["ca.pem", "etc-hostname", "rootfs.key"] and line["skipped"] == []
    for name in ("pre", "post"):
        assert json.loads((tmp_path / (name + ".json")).read_text()) == {
            "changed": line["changed"], "hostname": "node1.example.test"}
    root = tmp_path / "root"
    key = (root / "etc/hcp/rootfs.key").read_bytes()
    assert len(key) == 64 and oct(os.stat(str(root / "etc/hcp/rootfs.key")).st_mode & 0o777) == "0o600"
    assert (root / "usr/local/share/ca-certificates/hcp-node1.example.test.crt").read_bytes().startswith(b"-----BEGIN")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["format"] == "hcp.core.attester-status" and status["server"] == attest_site.url and status["time"]
    assert oct(os.stat(str(tmp_path / "status.json")).st_mode & 0o777) == "0o644"
    assert key.hex() not in proc.stdout.decode() + (tmp_path / "status.json").read_text()
    # second run: nothing changes, no hook runs
    os.unlink(str(tmp_path / "pre.json"))
    os.unlink(str(tmp_path / "post.json"))
    again = _cli(path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] == [] and not (tmp_path / "pre.json").exists()
    assert not (tmp_path / "post.json").exists()


def test_failing_pre_hook_writes_nothing_and_failing_post_hook_exits_1(attest_site, tmp_path):
    os.makedirs(str(tmp_path / "root"))
    proc = _cli(_config(attest_site, tmp_path, pre_hooks=[_hook(tmp_path, "pre", 3)]))
    assert proc.returncode == 1 and b"pre-hook" in proc.stderr and b"pre said no" in proc.stderr
    assert os.listdir(str(tmp_path / "root")) == [] and not (tmp_path / "status.json").exists()
    proc = _cli(_config(attest_site, tmp_path, post_hooks=[_hook(tmp_path, "post", 4)]))
    assert proc.returncode == 1 and b"post-hook" in proc.stderr and b"exit 4" in proc.stderr
    assert (tmp_path / "root/etc/hcp/rootfs.key").exists()  # files stay installed


def test_all_servers_down_exit_1_after_retries_and_bad_config_exit_2(attest_site, tmp_path):
    proc = _cli(_config(attest_site, tmp_path, servers=[DEAD, DEAD + "0"], retries=2))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("retrying") == 2 and "all 2 attestation servers failed" in err and DEAD + "0" in err
    assert not (tmp_path / "status.json").exists()
    bad = tmp_path / "bad.json"
    for config in ({"format": "hcp.core.attester-config", "version": 1}, {"version": 2}, "[",
                   {"format": "hcp.core.attester-config", "version": 1, "servers": ["x"], "signer_public_file": "s",
                    "pre_hooks": ["not a list"]}):
        bad.write_text(config if isinstance(config, str) else json.dumps(config))
        assert _cli(bad).returncode == 2
    assert _cli(tmp_path / "missing.json").returncode == 2


def test_wrong_signer_fails_clearly_and_installs_nothing(attest_site, swtpm, tmp_path):
    wrong = pki.Signer(pki.new_private_key("ec-p256")).public_key_pem()
    root = tmp_path / "root"
    root.mkdir()
    with swtpm.open() as tpm:
        with pytest.raises(attest_client.AttestClientError, match="does not verify with the trusted asset signer"):
            attester.run(tpm, [attest_site.url], wrong, root=str(root))
    assert os.listdir(str(root)) == []


def test_one_time_assets_check_mode_then_once_per_boot(new_swtpm, tmp_path):
    site = AttestSite(new_swtpm, tmp_path, policy={"type": "one_time"})
    root = tmp_path / "root"
    root.mkdir()
    try:
        with new_swtpm.open() as tpm:
            check = attester.run(tpm, [site.url], site.signer, root=str(root), check_mode=True)
            assert {"name": "rootfs.key", "reason": attest_client.SKIP_CHECK_REASON} in check["skipped"]
            assert check["changed"] and "etc-hostname" in check["changed_assets"] and os.listdir(str(root)) == []
            assert not any(tpm.read_pcrs("sha256", [ONE_TIME_PCR])[ONE_TIME_PCR])
            first = attester.run(tpm, [site.url], site.signer, root=str(root))
            assert first["pcr_extended"] is True and "rootfs.key" in first["changed_assets"]
            key = (root / "etc/hcp/rootfs.key").read_bytes()
            second = attester.run(tpm, [site.url], site.signer, root=str(root))
        assert second["changed"] is False and second["pcr_extended"] is False
        assert {"name": "rootfs.key", "reason": attest_client.SKIP_USED_REASON} in second["skipped"]
        assert (root / "etc/hcp/rootfs.key").read_bytes() == key
    finally:
        site.close()
