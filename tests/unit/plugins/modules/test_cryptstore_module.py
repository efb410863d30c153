# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.cryptstore in process against real swtpm TPMs (A = swtpm, B = other_swtpm,
C = new_swtpm). The -vvv playbook run is tests/unit/plugins/test_cryptstore_masked.py (ansible-test
runs this directory without ansible's CLI)."""

from __future__ import annotations

import base64
import json
import os
import stat

from ansible_collections.hcp.core.plugins.modules import cryptstore
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_b64

TEXT = "hcp-cryptstore-module-secret-4b7e0a19"
BINARY = bytes(range(180, 240))


def _ekpub(tpm_fixture):
    with tpm_fixture.open() as tpm:
        return ek_public_b64(tpm.ek_public())


def _leaks(out, *secrets):
    text = json.dumps(out)
    return [s for secret in secrets for s in (secret, base64.b64encode(secret.encode() if isinstance(secret, str) else secret).decode())
            if isinstance(s, str) and s in text]


def test_present_read_absent(swtpm, tmp_path, run_module):
    store = str(tmp_path / "store")
    args = {"path": store, "tcti": swtpm.tcti, "name": "db-password", "data": TEXT, "type": "other"}
    checked = run_module(cryptstore, dict(args, _ansible_check_mode=True))
    assert checked["rc"] == 0 and checked["changed"] is True and not os.path.exists(store)
    out = run_module(cryptstore, args)
    assert out["rc"] == 0 and out["changed"] is True and out["action"] == "created" and out["item"]["size"] == len(TEXT)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700 and not _leaks(out, TEXT)
    again = run_module(cryptstore, args)
    assert again["changed"] is False and again["action"] == "unchanged"
    checked = run_module(cryptstore, dict(args, data=TEXT + "x", _ansible_check_mode=True))
    assert checked["changed"] is True and checked["action"] == "updated"

    blob = {"path": store, "tcti": swtpm.tcti, "name": "blob", "data_b64": base64.b64encode(BINARY).decode(), "type": "binary-blob"}
    assert run_module(cryptstore, blob)["action"] == "created"

    read = {"path": store, "tcti": swtpm.tcti, "name": "db-password"}
    out = run_module(cryptstore, read)
    assert out["rc"] == 1 and "dest or return_content" in out["msg"]
    out = run_module(cryptstore, dict(read, return_content=True))
    assert out["rc"] == 0 and out["content"] == TEXT and out["changed"] is False
    out = run_module(cryptstore, dict(read, name="blob", return_content=True))
    assert base64.b64decode(out["content_b64"]) == BINARY and "content" not in out
    dest = str(tmp_path / "out" / "db-password")
    os.mkdir(tmp_path / "out", 0o700)
    out = run_module(cryptstore, dict(read, dest=dest))
    assert out["changed"] is True and open(dest).read() == TEXT and stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert not _leaks(out, TEXT) and [i["name"] for i in out["items"]] == ["blob", "db-password"]
    assert run_module(cryptstore, dict(read, dest=dest))["changed"] is False

    out = run_module(cryptstore, dict(read, name="../etc/passwd", data="some-data-value"))
    assert out["rc"] == 1 and "invalid item name" in out["msg"]
    # a src planted as a link to a file the user may not read: not followed
    (tmp_path / "shadow").write_text("root-only-content-77d1")
    os.symlink(str(tmp_path / "shadow"), str(tmp_path / "planted"))
    out = run_module(cryptstore, dict(read, name="planted", src=str(tmp_path / "planted")))
    assert out["rc"] == 1 and "symbolic link" in out["msg"] and "planted" not in [i["name"] for i in out.get("items", [])]
    out = run_module(cryptstore, dict(read, name="nope", return_content=True))
    assert out["rc"] == 1 and "no item nope" in out["msg"]

    gone = {"path": store, "tcti": swtpm.tcti, "name": "db-password", "state": "absent"}
    assert run_module(cryptstore, dict(gone, _ansible_check_mode=True))["changed"] is True
    out = run_module(cryptstore, gone)
    assert out["changed"] is True and out["action"] == "deleted" and [i["name"] for i in out["items"]] == ["blob"]
    assert run_module(cryptstore, gone)["changed"] is False
    # nothing to delete in a store that does not exist: no TPM needed
    assert run_module(cryptstore, dict(gone, path=str(tmp_path / "none"), tcti="swtpm:host=127.0.0.1,port=9"))["rc"] == 0


def test_export_import_between_tpms(swtpm, other_swtpm, new_swtpm, tmp_path, run_module):
    a, b, c = (str(tmp_path / name) for name in "abc")
    put = {"path": a, "tcti": swtpm.tcti, "name": "disk-key", "data": TEXT, "type": "key", "exportable": True}
    assert run_module(cryptstore, put)["changed"] is True
    assert run_module(cryptstore, dict(put, name="host-only", exportable=False))["changed"] is True
    export = {"path": a, "tcti": swtpm.tcti, "state": "exported", "ekpub": _ekpub(other_swtpm), "bundle_path": str(tmp_path / "b.bundle")}
    out = run_module(cryptstore, dict(export, names=["host-only"]))
    assert out["rc"] == 1 and "not exportable" in out["msg"] and not os.path.exists(export["bundle_path"])
    checked = run_module(cryptstore, dict(export, _ansible_check_mode=True))
    assert checked["changed"] is True and not os.path.exists(export["bundle_path"])
    out = run_module(cryptstore, export)
    assert out["rc"] == 0 and out["changed"] is True and out["exported"] == ["disk-key"]
    assert stat.S_IMODE(os.stat(export["bundle_path"]).st_mode) == 0o600
    raw = open(export["bundle_path"], "rb").read()
    assert TEXT.encode() not in raw and base64.b64encode(TEXT.encode()) not in raw and not _leaks(out, TEXT)
    again = run_module(cryptstore, export)
    assert again["changed"] is False and again["exported"] == ["disk-key"] and open(export["bundle_path"], "rb").read() == raw

    imp = {"path": b, "tcti": other_swtpm.tcti, "state": "imported", "bundle_path": export["bundle_path"]}
    checked = run_module(cryptstore, dict(imp, _ansible_check_mode=True))
    assert checked["changed"] is True and checked["imported"] == {"disk-key": "created"} and not os.path.exists(b)
    out = run_module(cryptstore, imp)
    assert out["rc"] == 0 and out["changed"] is True and out["imported"] == {"disk-key": "created"} and not _leaks(out, TEXT)
    assert run_module(cryptstore, imp)["changed"] is False
    got = run_module(cryptstore, {"path": b, "tcti": other_swtpm.tcti, "name": "disk-key", "return_content": True})
    assert got["content"] == TEXT and got["item"]["type"] == "key"

    # the bundle on the third TPM: refused, nothing made
    out = run_module(cryptstore, dict(imp, path=c, tcti=new_swtpm.tcti))
    assert out["rc"] == 1 and "not for this TPM" in out["msg"] and not os.path.exists(c)
    # store A opened on TPM B: refused
    out = run_module(cryptstore, {"path": a, "tcti": other_swtpm.tcti, "name": "disk-key", "return_content": True})
    assert out["rc"] == 1 and out["error"] == "StoreTpmMismatchError" and "content" not in out
    # a symbolic link as the store path
    os.symlink(a, str(tmp_path / "link"))
    out = run_module(cryptstore, {"path": str(tmp_path / "link"), "tcti": swtpm.tcti, "name": "disk-key", "return_content": True})
    assert out["rc"] == 1 and "symbolic link" in out["msg"]
