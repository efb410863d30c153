# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.shamir_share, hcp.core.site_unseal and hcp.core.control_tower_site run in-process
against real swtpm processes and a real control tower app served over TLS on loopback (control_tower)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.modules import control_tower_site, shamir_share, site_unseal

NO_TPM = "swtpm:host=127.0.0.1,port=9"


def test_argument_validation(tmp_path, run_module):
    out = run_module(shamir_share, {"path": str(tmp_path / "s")})
    assert out["rc"] == 1 and "share" in out["msg"]
    out = run_module(shamir_share, {"path": str(tmp_path / "s"), "share": "garbage"})
    assert out["rc"] == 1 and "hcpshare1" in out["msg"] and "garbage" not in json.dumps(out).replace('"garbage"', "")
    out = run_module(shamir_share, {"path": str(tmp_path / "missing" / "s"), "state": "read"})
    assert out["rc"] == 1 and "no share file" in out["msg"]
    out = run_module(site_unseal, {"site": "site-a", "dest": str(tmp_path / "k")})
    assert out["rc"] == 1 and "shares" in out["msg"]
    out = run_module(site_unseal, {"site": "site-a", "dest": str(tmp_path / "k"), "action": "init"})
    assert out["rc"] == 1 and "controllers" in out["msg"]
    out = run_module(site_unseal, {"site": "site-a", "dest": str(tmp_path / "k"), "action": "init", "controllers": ["a"],
                                   "url": "https://localhost:1", "return_content": True})
    assert out["rc"] == 1 and "client_cert" in out["msg"]
    # init/reinit make shares that only return_content=true returns: refused before anything happens
    out = run_module(site_unseal, {"site": "site-a", "dest": str(tmp_path / "k"), "action": "init", "controllers": ["a"],
                                   "url": "https://localhost:1"})
    assert out["rc"] == 1 and "return_content=true" in out["msg"] and not os.path.exists(str(tmp_path / "k"))
    out = run_module(control_tower_site, {"url": "https://localhost:1", "site": "s"})
    assert out["rc"] == 1 and "client_cert" in out["msg"]


def test_site_round_trip_with_shares_on_tpms(control_tower, tmp_path, run_module, swtpm, other_swtpm, new_swtpm):
    init_args = dict(control_tower, action="init", site="site-a", controllers=["c1", "c2", "c3"],
                     dest=str(tmp_path / "init.key"), key_format="hex", return_content=True)
    checked = run_module(site_unseal, dict(init_args, _ansible_check_mode=True))
    assert checked["changed"] is True and not os.path.exists(init_args["dest"])
    init = run_module(site_unseal, init_args)
    assert init["rc"] == 0 and init["changed"] and sorted(init["shares"]) == ["c1", "c2", "c3"]
    seal_key_hex = open(init_args["dest"]).read().strip()
    assert len(seal_key_hex) == 64 and seal_key_hex not in json.dumps(init)
    assert stat.S_IMODE(os.stat(init_args["dest"]).st_mode) == 0o600
    again = run_module(site_unseal, init_args)
    assert again["changed"] is False and "shares" not in again

    tpms = {"c1": swtpm, "c2": other_swtpm, "c3": new_swtpm}
    paths = {}
    for name, tpm in tpms.items():
        paths[name] = str(tmp_path / ("%s.share" % name))
        args = {"path": paths[name], "share": init["shares"][name], "tcti": tpm.tcti, "protect_with_tpm": "require"}
        checked = run_module(shamir_share, dict(args, _ansible_check_mode=True))
        assert checked["changed"] is True and not os.path.exists(paths[name])
        wrote = run_module(shamir_share, args)
        assert wrote["changed"] and wrote["protected_with_tpm"] is True and wrote["handle"].startswith("0x8100000")
        assert init["shares"][name] not in json.dumps(wrote)
        assert run_module(shamir_share, args)["changed"] is False
    facts = run_module(shamir_share, {"path": paths["c1"], "state": "inspect"})
    assert facts["protection"] == "tpm" and facts["threshold"] == 2 and facts["count"] == 3
    checked = run_module(shamir_share, {"path": paths["c1"], "state": "read", "tcti": tpms["c1"].tcti}, raw=True)
    assert checked["reinit_needed"] is False and "share" not in checked and init["shares"]["c1"] not in checked["raw"]
    gathered = [run_module(shamir_share, {"path": paths[n], "state": "read", "tcti": tpms[n].tcti, "return_content": True})["share"]
                for n in ("c1", "c3")]
    assert gathered == [init["shares"]["c1"], init["shares"]["c3"]]

    unseal_args = {"site": "site-a", "shares": gathered, "dest": str(tmp_path / "seal.key"), "url": control_tower["url"],
                   "ca_file": control_tower["ca_file"], "key_format": "hex"}
    one = run_module(site_unseal, dict(unseal_args, shares=gathered[:1]))
    assert one["rc"] == 1 and (one["valid"], one["needed"]) == (1, 2)
    checked = run_module(site_unseal, dict(unseal_args, _ansible_check_mode=True))
    assert checked["changed"] and checked["used"] == [1, 3] and not os.path.exists(unseal_args["dest"])
    done = run_module(site_unseal, unseal_args)
    assert done["rc"] == 0 and done["unsealed"] and done["via"] == "tower" and done["used"] == [1, 3]
    assert open(unseal_args["dest"]).read().strip() == seal_key_hex
    assert run_module(site_unseal, unseal_args)["changed"] is False  # dest exists: no second unwrap
    replay = run_module(site_unseal, dict(unseal_args, force=True))
    assert replay["rc"] == 1 and "re-allow" in replay["msg"]

    # c3's share read on another TPM: reinit needed; the operator re-allows, c1+c2 re-initialise
    swapped = run_module(shamir_share, {"path": paths["c3"], "state": "read", "tcti": swtpm.tcti})
    assert swapped["reinit_needed"] is True and "share" not in swapped
    op = dict(control_tower, site="site-a")
    status = run_module(control_tower_site, op)
    assert status["changed"] is False and status["status"]["unwrap_allowed"] is False
    checked = run_module(control_tower_site, dict(op, reallow_unwrap=True, _ansible_check_mode=True))
    assert checked["changed"] and checked["actions"] == ["reallowed"]
    reallowed = run_module(control_tower_site, dict(op, reallow_unwrap=True))
    assert reallowed["changed"] and reallowed["status"]["unwrap_allowed"] is True
    assert run_module(control_tower_site, dict(op, reallow_unwrap=True))["changed"] is False
    shares12 = [run_module(shamir_share, {"path": paths[n], "state": "read", "tcti": tpms[n].tcti, "return_content": True})["share"]
                for n in ("c1", "c2")]
    reinit = run_module(site_unseal, dict(control_tower, action="reinit", site="site-a", controllers=["c1", "c2", "c3"],
                                          shares=shares12, dest=str(tmp_path / "re.key"), key_format="hex", return_content=True))
    assert reinit["rc"] == 0 and reinit["set_id"] != init["set_id"]
    assert open(str(tmp_path / "re.key")).read().strip() == seal_key_hex
    rewritten = run_module(shamir_share, {"path": paths["c3"], "share": reinit["shares"]["c3"], "tcti": swtpm.tcti})
    assert rewritten["changed"] and rewritten["protected_with_tpm"] is True


def test_share_never_and_require_without_tpm(tmp_path, run_module, control_tower):
    init = run_module(site_unseal, dict(control_tower, action="init", site="site-b", controllers=["a", "b", "c"],
                                        dest=str(tmp_path / "k"), allow_local_unseal=True, return_content=True))
    path = str(tmp_path / "a.share")
    args = {"path": path, "share": init["shares"]["a"], "protect_with_tpm": "never", "tcti": NO_TPM}
    wrote = run_module(shamir_share, args)
    assert wrote["changed"] and wrote["protected_with_tpm"] is False and wrote["protection"] == "plaintext"
    assert run_module(shamir_share, args)["changed"] is False
    refused = run_module(shamir_share, {"path": str(tmp_path / "b.share"), "share": init["shares"]["b"],
                                        "protect_with_tpm": "require", "tcti": NO_TPM})
    assert refused["rc"] == 1 and refused["alert"]["name"] == "tpm-protection-unavailable"
    assert not os.path.exists(str(tmp_path / "b.share"))
    fallback = run_module(shamir_share, {"path": str(tmp_path / "b.share"), "share": init["shares"]["b"],
                                         "protect_with_tpm": "require", "operational": True, "tcti": NO_TPM})
    assert fallback["changed"] and fallback["protected_with_tpm"] is False and fallback["alert"]["severity"] == "major"
    local = run_module(site_unseal, {"site": "site-b", "shares": [init["shares"]["c"], init["shares"]["a"]],
                                     "dest": str(tmp_path / "local.key"), "unseal_mode": "local"})
    assert local["rc"] == 0 and local["via"] == "local"
    with open(str(tmp_path / "local.key"), "rb") as handle, open(str(tmp_path / "k"), "rb") as first:
        assert handle.read() == first.read()


def test_control_tower_site_present_absent(control_tower, run_module):
    from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import generate_site_key, public_key_pem
    op = dict(control_tower, site="site-c")
    missing = run_module(control_tower_site, op)
    assert missing["rc"] == 1 and "public_key is required" in missing["msg"]
    pem = public_key_pem(generate_site_key())
    checked = run_module(control_tower_site, dict(op, public_key=pem, _ansible_check_mode=True))
    assert checked["changed"] and checked["status"]["registered"] is False
    first = run_module(control_tower_site, dict(op, public_key=pem))
    assert first["changed"] and first["actions"] == ["registered"] and first["status"]["registered"]
    assert run_module(control_tower_site, dict(op, public_key=pem))["changed"] is False
    other = public_key_pem(generate_site_key())
    conflict = run_module(control_tower_site, dict(op, public_key=other))
    assert conflict["rc"] == 1 and "replace_key" in conflict["msg"]
    replaced = run_module(control_tower_site, dict(op, public_key=other, replace_key=True))
    assert replaced["actions"] == ["replaced_key"]
    nothing = run_module(control_tower_site, dict(op, reallow_unwrap=True))
    assert nothing["changed"] is False and nothing["warnings"]
    gone = run_module(control_tower_site, dict(op, state="absent"))
    assert gone["changed"] and gone["actions"] == ["deleted"]
    assert run_module(control_tower_site, dict(op, state="absent"))["changed"] is False


def test_best_effort_upgrades_a_plaintext_share_when_the_tpm_is_usable(tmp_path, run_module, new_swtpm):
    from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
    text = shamir.split(b"x" * 64, 3)[0].to_text()
    path = str(tmp_path / "s")
    args = {"path": path, "share": text, "tcti": new_swtpm.tcti}
    assert run_module(shamir_share, dict(args, protect_with_tpm="never"))["protection"] == "plaintext"
    checked = run_module(shamir_share, dict(args, _ansible_check_mode=True))
    assert checked["changed"] is True and run_module(shamir_share, dict(args, state="inspect"))["protection"] == "plaintext"
    upgraded = run_module(shamir_share, args)
    assert upgraded["changed"] and upgraded["protected_with_tpm"] is True
    assert run_module(shamir_share, args)["changed"] is False
    downgraded = run_module(shamir_share, dict(args, protect_with_tpm="never"))
    assert downgraded["changed"] and downgraded["protected_with_tpm"] is False


SOFTHSM = next((m for m in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                if os.path.exists(m)), None)


@pytest.mark.skipif(SOFTHSM is None, reason="libsofthsm2.so not installed (apt-get install softhsm2)")
def test_hsm_protected_share_in_a_separate_process(tmp_path):
    """The module as Ansible runs it (a separate Python process with an args file), so SoftHSM2
    reads this test's own configuration at C_Initialize."""
    import subprocess
    import sys
    from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o700)
    conf = tmp_path / "softhsm2.conf"
    conf.write_text("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n" % tokens)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    root = os.path.abspath(shamir_share.__file__)
    for dummy in range(6):
        root = os.path.dirname(root)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "hcp-mod", "--pin", "1234-pin",
                    "--so-pin", "5678-so"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    text = shamir.split(b"h" * 48, 3)[1].to_text()
    path = str(tmp_path / "share")

    def module(args):
        args_file = tmp_path / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        proc = subprocess.run([sys.executable, shamir_share.__file__, str(args_file)], env=env, check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        return json.loads(proc.stdout)

    hsm = {"module": SOFTHSM, "token_label": "hcp-mod", "pin": "1234-pin"}
    wrote = module({"path": path, "share": text, "hsm": hsm, "tcti": NO_TPM})
    assert wrote["changed"] and wrote["protection"] == "hsm" and wrote["protected_with_tpm"] is False
    assert "1234-pin" not in json.dumps(wrote)
    assert module({"path": path, "share": text, "hsm": hsm, "tcti": NO_TPM})["changed"] is False
    read = module({"path": path, "state": "read", "hsm": hsm, "return_content": True})
    assert read["share"] == text and read["reinit_needed"] is False
    wrong_pin = module({"path": path, "state": "read", "hsm": dict(hsm, pin="0000-bad")})
    assert wrong_pin["failed"] and "PIN" in wrong_pin["msg"] and "0000-bad" not in wrong_pin["msg"]
