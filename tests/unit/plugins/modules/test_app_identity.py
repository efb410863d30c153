# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module hcp.core.app_identity on real files, and the definition format it writes
(identity/appdef.py, read by the orchestrator adapter): check mode, idempotence, diff, removal,
names checked on the whole string, a planted link or foreign file refused."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils.identity import appdef
from ansible_collections.hcp.core.plugins.modules import app_identity


def _args(apps_dir, **extra):
    args = dict(name="billing", unit="billing.service", user="billing", apps_dir=str(apps_dir))
    args.update(extra)
    return args


def test_check_mode_then_write_then_idempotent(tmp_path, run_module):
    apps = tmp_path / "apps"
    out = run_module(app_identity, dict(_args(apps), _ansible_check_mode=True, _ansible_diff=True))
    assert out["rc"] == 0 and out["changed"]
    assert not apps.exists()  # check mode wrote nothing, not even the directory
    assert '"unit": "billing.service"' in out["diff"]["after"] and out["diff"]["before"] == ""

    out = run_module(app_identity, _args(apps))
    assert out["rc"] == 0 and out["changed"]
    path = apps / "billing.json"
    assert out["path"] == str(path)
    assert json.loads(path.read_text()) == {"version": 1, "app": "billing", "unit": "billing.service", "user": "billing"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert out["definition"] == appdef.read(str(apps), "billing")

    for check in (True, False):
        again = run_module(app_identity, dict(_args(apps), _ansible_check_mode=check))
        assert again["rc"] == 0 and not again["changed"]

    # a changed unit is a change; the diff shows names only
    out = run_module(app_identity, dict(_args(apps, unit="billing-v2.service"), _ansible_diff=True))
    assert out["changed"] and "billing.service" in out["diff"]["before"] and "billing-v2.service" in out["diff"]["after"]
    # a wrong mode is repaired
    os.chmod(path, 0o666)
    assert run_module(app_identity, _args(apps, unit="billing-v2.service"))["changed"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_absent_removes_once(tmp_path, run_module):
    apps = tmp_path / "apps"
    run_module(app_identity, _args(apps))
    out = run_module(app_identity, dict(name="billing", state="absent", apps_dir=str(apps), _ansible_check_mode=True))
    assert out["changed"] and (apps / "billing.json").exists()
    out = run_module(app_identity, dict(name="billing", state="absent", apps_dir=str(apps)))
    assert out["changed"] and out["definition"] is None and not (apps / "billing.json").exists()
    assert not run_module(app_identity, dict(name="billing", state="absent", apps_dir=str(apps)))["changed"]


@pytest.mark.parametrize("field,value", [
    ("name", "../etc/passwd"), ("name", "bill.ing"), ("name", "billing\n"), ("name", ""), ("name", "a" * 64), ("name", "Billing"),
    ("name", "-billing"), ("unit", "billing.socket"), ("unit", "billing.service\n"), ("unit", "@.service"),
    ("unit", "../x.service"), ("unit", "bil ling.service"), ("user", "root\n"), ("user", "Billing"), ("user", "0"),
])
def test_bad_names_refused_nothing_written(tmp_path, run_module, field, value):
    apps = tmp_path / "apps"
    out = run_module(app_identity, _args(apps, **{field: value}))
    assert out["rc"] == 1 and out["failed"]
    assert "is not valid" in out["msg"]
    assert not apps.exists()


def test_missing_unit_or_user(tmp_path, run_module):
    out = run_module(app_identity, dict(name="billing", apps_dir=str(tmp_path), user="billing"))
    assert out["rc"] == 1 and "unit" in out["msg"]


def test_planted_link_refused(tmp_path, run_module):
    # Attack: a link in place of the definition, to make root read (and report) another file.
    apps = tmp_path / "apps"
    apps.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("top-secret-7f3a\n")
    os.symlink(str(secret), str(apps / "billing.json"))
    out = run_module(app_identity, dict(_args(apps), _ansible_diff=True))
    assert out["rc"] == 1 and "top-secret-7f3a" not in json.dumps(out)
    assert os.path.islink(str(apps / "billing.json")) and secret.read_text() == "top-secret-7f3a\n"


def test_parse_refuses_what_is_not_a_definition(tmp_path):
    good = {"version": 1, "app": "billing", "unit": "billing.service", "user": "billing"}
    assert appdef.parse(appdef.encode(good), "billing") == good
    bad = [
        dict(good, extra=1), {k: v for k, v in good.items() if k != "user"}, dict(good, version=2),
        dict(good, version=True), dict(good, app="bill.ing"), dict(good, unit=["x.service"]), [good],
    ]
    for value in bad:
        with pytest.raises(appdef.DefinitionError):
            appdef.parse(json.dumps(value).encode())
    with pytest.raises(appdef.DefinitionError, match="not 'other'"):
        appdef.parse(appdef.encode(good), "other")
    with pytest.raises(Exception, match="larger than"):
        appdef.parse(b" " * (appdef.MAX_DEFINITION_BYTES + 1) + appdef.encode(good))
    with pytest.raises(Exception, match="nested deeper"):
        appdef.parse(b'{"app": [[[[1]]]]}')


def test_load_all_skips_bad_files(tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "one.json").write_bytes(appdef.encode(appdef.make("one", "one.service", "one")))
    (apps / "two.json").write_bytes(appdef.encode(appdef.make("one", "two.service", "two")))  # names another app
    (apps / "three.json").write_text("{not json")
    (apps / "bad name.json").write_text("{}")
    (apps / "README").write_text("not a definition")
    os.symlink(str(apps / "one.json"), str(apps / "four.json"))
    definitions, errors = appdef.load_all(str(apps))
    assert sorted(definitions) == ["one"]
    assert len(errors) == 4
    assert appdef.load_all(str(tmp_path / "missing")) == ({}, [])
