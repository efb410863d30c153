# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.site_credentials on real files: check mode, creation, idempotence, modes, no secrets out."""
from __future__ import annotations

import os
import stat

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.modules import site_credentials


def test_bootstrap_check_mode_idempotence(tmp_path, run_module):
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test", "localhost"],
            "client_names": ["orchestrator"]}
    out = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert out["changed"] and "client_orchestrator_key" in out["created"] and not os.path.exists(path)
    out = run_module(site_credentials, args, raw=True)
    assert out["rc"] == 0 and out["changed"] and len(out["created"]) == 8
    assert "PRIVATE KEY" not in out["raw"] and "BEGIN CERTIFICATE" in out["ca_cert"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out["paths"]["ca_key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out["paths"]["server_cert"]).st_mode) == 0o644
    with open(out["paths"]["server_cert"], "rb") as handle:
        chain = pki.load_certificates(handle.read())
    assert len(chain) == 2
    before = dict((p, open(p, "rb").read()) for p in out["paths"].values())
    again = run_module(site_credentials, args)
    assert not again["changed"] and again["created"] == []
    assert dict((p, open(p, "rb").read()) for p in again["paths"].values()) == before
    # A new client name adds only its pair.
    more = run_module(site_credentials, dict(args, client_names=["orchestrator", "attest-1"]))
    assert sorted(more["created"]) == ["client_attest-1_cert", "client_attest-1_key"]


def test_bad_input(tmp_path, run_module):
    out = run_module(site_credentials, {"path": str(tmp_path / "p"), "site": "lab", "server_names": []})
    assert out["failed"] and "server_names" in out["msg"]
    out = run_module(site_credentials, {"path": str(tmp_path / "p2"), "site": "lab", "server_names": ["a"],
                                        "client_names": ["../x"]})
    assert out["failed"] and "invalid client name" in out["msg"]
    assert not os.path.exists(str(tmp_path / "p2"))


def test_extra_server_certs(tmp_path, run_module):
    path = str(tmp_path / "pki")
    args = {"path": path, "site": "lab", "server_names": ["enroll.example.test"],
            "server_certs": {"attest-a1": ["a1.example.test", "localhost"]}}
    out = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert out["changed"] and {"server_attest-a1_key", "server_attest-a1_cert"} <= set(out["created"])
    assert not os.path.exists(path)
    out = run_module(site_credentials, args, raw=True)
    assert out["rc"] == 0 and len(out["created"]) == 8 and "PRIVATE KEY" not in out["raw"]
    assert out["paths"]["server_attest-a1_key"] == os.path.join(path, "server-attest-a1.key")
    assert stat.S_IMODE(os.stat(out["paths"]["server_attest-a1_key"]).st_mode) == 0o600
    with open(out["paths"]["server_attest-a1_cert"], "rb") as handle:
        leaf = pki.load_certificates(handle.read())[0]
    assert leaf.subject.rfc4514_string() == "O=lab,CN=a1.example.test"
    again = run_module(site_credentials, dict(args, _ansible_check_mode=True))
    assert not again["changed"] and again["created"] == []
    again = run_module(site_credentials, args)
    assert not again["changed"] and again["created"] == []
    bad = run_module(site_credentials, dict(args, server_certs={"Bad/label": ["x"]}))
    assert bad["failed"] and "invalid server certificate label" in bad["msg"]
