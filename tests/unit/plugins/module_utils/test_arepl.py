# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""arepl with real git: a local enrollment DB as the source, two clones, the atomic swap,
failure keeping the last good snapshot, and the back-off state."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import replica as arepl
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb

H1 = "a1" * 32
H2 = "b2" * 32


@pytest.fixture
def source(tmp_path):
    db = EnrollmentDb(str(tmp_path / "source.git"))
    db.init()
    db.add(H1, "one.example.test", {"ek.pub": b"one"})
    return db


def test_sync_swaps_and_serves_snapshots(tmp_path, source):
    rep = arepl.Replica(str(tmp_path / "replica"), "file://" + source.path)
    with pytest.raises(arepl.ReplicaError, match="no enrollment DB snapshot"):
        rep.current_db()
    first = rep.sync(now=1000.0)
    assert first["changed"] and first["error"] is None and first["head"] == source.head()
    assert rep.current_name() == "A"
    assert rep.current_db().get(H1)["hostname"] == b"one.example.test\n"
    # nothing new: no swap
    again = rep.sync(now=1010.0)
    assert not again["changed"] and again["error"] is None and rep.current_name() == "A"
    source.add(H2, "two.example.test", {"ek.pub": b"two"})
    second = rep.sync(now=1020.0)
    assert second["changed"] and rep.current_name() == "B" and second["head"] == source.head()
    assert rep.current_db().get(H2) is not None
    # the swap alternates and the provider resolves the link per call
    provider = arepl.snapshot_db_provider(rep.current_link)
    assert provider().path == os.path.realpath(os.path.join(rep.base_dir, "B"))
    source.delete(H1)
    assert rep.sync(now=1030.0)["changed"] and rep.current_name() == "A"
    assert provider().get(H1) is None and provider().get(H2) is not None
    st = rep.status(now=1040.0)
    assert st["healthy"] and st["lag_seconds"] == 10.0 and st["head"] == source.head()
    mode = os.stat(rep.state_path).st_mode
    assert stat.S_IMODE(mode) == 0o640
    assert json.loads(open(rep.state_path).read())["format"] == arepl.STATE_FORMAT


def test_failure_keeps_last_snapshot_and_backs_off(tmp_path, source):
    moved = str(tmp_path / "moved.git")
    rep = arepl.Replica(str(tmp_path / "replica"), source.path, min_backoff=5, max_backoff=20)
    assert rep.sync(now=1000.0)["error"] is None
    good = rep.current_db().head()
    shutil.move(source.path, moved)  # erepl dies
    res = rep.sync(now=1001.0)
    assert res["error"] and not res["changed"] and not res["skipped"]
    assert rep.current_db().head() == good and rep.current_db().get(H1) is not None
    st = rep.status(now=1001.0)
    assert st["consecutive_failures"] == 1 and st["next_attempt"] == 1006.0 and not st["healthy"]
    assert st["last_error"] and st["lag_seconds"] == 1.0
    # within the back-off: skipped, no attempt
    skipped = rep.sync(now=1003.0)
    assert skipped["skipped"] and rep.status()["last_attempt"] == 1001.0
    rep.sync(now=1006.0)
    rep.sync(now=1016.0)
    st = rep.status(now=1016.0)
    assert st["consecutive_failures"] == 3 and st["next_attempt"] == 1016.0 + 20  # capped
    assert [rep.backoff_delay(n) for n in range(6)] == [0, 5, 10, 20, 20, 20]
    shutil.move(moved, source.path)  # erepl is back
    res = rep.sync(force=True, now=1017.0)
    assert res["error"] is None and rep.status(now=1017.0)["consecutive_failures"] == 0


def test_wrong_format_is_not_swapped_in(tmp_path, source):
    rep = arepl.Replica(str(tmp_path / "replica"), source.path)
    assert rep.sync(now=1.0)["error"] is None
    good = rep.current_db().head()
    # a repository that is not an enrollment DB (FORMAT of another version)
    other = EnrollmentDb(str(tmp_path / "other.git"))
    other._git("init", "-q", "--bare", "--initial-branch", "main")
    other._commit("init", {"FORMAT": b'{"format": "hcp.core.enrolldb", "version": 99}\n'}, (), parent=False)
    rep.source_url = other.path
    res = rep.sync(now=2.0)
    assert "not an hcp.core.enrolldb v1" in res["error"]
    assert rep.current_db().head() == good


def test_cli_once_and_status(tmp_path, source):
    config = tmp_path / "arepl.json"
    config.write_text(json.dumps({"base_dir": str(tmp_path / "replica"), "source_url": source.path}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    mod = "ansible_collections.hcp.core.plugins.module_utils.attestation.replica"
    out = subprocess.run([sys.executable, "-m", mod, str(config), "once"], capture_output=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["head"] == source.head()
    out = subprocess.run([sys.executable, "-m", mod, str(config), "status"], capture_output=True, env=env, check=False)
    assert json.loads(out.stdout)["healthy"] is True
    config.write_text(json.dumps({"base_dir": str(tmp_path / "replica2"), "source_url": str(tmp_path / "nope")}))
    out = subprocess.run([sys.executable, "-m", mod, str(config)], capture_output=True, env=env, check=False)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]
    assert subprocess.run([sys.executable, "-m", mod], capture_output=True, env=env, check=False).returncode == 2


def test_git_tls_options_are_passed_as_config(tmp_path):
    rep = arepl.Replica(str(tmp_path), "https://erepl.example.test/db.git", ssl_cert="/c.pem", ssl_key="/k.pem", ssl_ca="/ca.pem")
    assert rep._git_config_args() == ["-c", "http.sslCert=/c.pem", "-c", "http.sslKey=/k.pem", "-c", "http.sslCAInfo=/ca.pem"]
    with pytest.raises(arepl.ReplicaError):
        arepl.replica_from_config({"source_url": "x"})


def _git(repo, *args):
    return subprocess.run(["git", "--git-dir", repo] + list(args), capture_output=True, check=True).stdout.decode().strip()


def test_rolled_back_source_is_refused_and_reported(tmp_path, source, caplog):
    rep = arepl.Replica(str(tmp_path / "replica"), "file://" + source.path, min_backoff=5, max_backoff=20)
    assert rep.sync(now=1000.0)["error"] is None
    old = source.head()
    source.add(H2, "two.example.test", {"ek.pub": b"two"})
    good = source.head()
    assert rep.sync(now=1010.0)["changed"] and rep.current_db().head() == good
    # the attack: erepl serves an older head of the same history (a force-pushed / restored DB)
    _git(source.path, "update-ref", "refs/heads/main", old)
    caplog.set_level("ERROR", logger="hcp.core.arepl")
    res = rep.sync(now=1020.0)
    assert res["error"] and "non-fast-forward" in res["error"] and res["alert"] and not res["changed"]
    # the last good snapshot keeps serving, H2 included
    assert rep.current_db().head() == good and rep.current_db().get(H2) is not None
    st = rep.status(now=1020.0)
    assert st["alert"] and not st["healthy"] and st["consecutive_failures"] == 1 and st["head"] == good
    alert = st["rollback_alert"]
    assert (alert["held"], alert["offered"], alert["count"], alert["resolved_at"]) == (good, old, 1, None)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "ALERT" in caplog.text and old in caplog.text and good in caplog.text and source.path not in caplog.text
    # forced again: still refused, counted
    assert rep.sync(force=True, now=1021.0)["alert"] and rep.status()["rollback_alert"]["count"] == 2
    # a rewritten history (another DB with its own root commit) is refused the same way
    other = EnrollmentDb(str(tmp_path / "other.git"))
    other.init()
    other.add(H2, "two.example.test", {"ek.pub": b"forged"})
    rep.source_url = other.path
    res = rep.sync(force=True, now=1022.0)
    assert "non-fast-forward" in res["error"] and rep.current_db().get(H2)["ek.pub"] == b"two"
    # the source moves forward from the served head: accepted, the alert resolved but kept for the record
    rep.source_url = source.path
    _git(source.path, "update-ref", "refs/heads/main", good)
    source.add("c3" * 32, "three.example.test", {"ek.pub": b"three"})
    res = rep.sync(force=True, now=1030.0)
    assert res["error"] is None and res["changed"] and not res["alert"]
    st = rep.status(now=1030.0)
    assert st["healthy"] and st["rollback_alert"]["resolved_at"] == 1030.0 and st["rollback_alert"]["count"] == 3
    assert st["generation"] == source.generation() == 4


def test_operator_accepts_a_rewrite_once(tmp_path, source):
    config = tmp_path / "arepl.json"
    config.write_text(json.dumps({"base_dir": str(tmp_path / "replica"), "source_url": source.path}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.attestation.replica", str(config)]
    old = source.head()
    source.add(H2, "two.example.test", {"ek.pub": b"two"})
    assert subprocess.run(cmd + ["once"], capture_output=True, env=env, check=False).returncode == 0
    _git(source.path, "update-ref", "refs/heads/main", old)
    out = subprocess.run(cmd + ["once", "--force"], capture_output=True, env=env, check=False)
    assert out.returncode == 1 and json.loads(out.stdout)["alert"] is True
    assert b"arepl: ERROR ALERT enrollment DB rollback" in out.stderr and source.path.encode() not in out.stderr
    out = subprocess.run(cmd + ["status"], capture_output=True, env=env, check=False)
    assert out.returncode == 1 and json.loads(out.stdout)["alert"] is True
    assert subprocess.run(cmd + ["loop", "--allow-rewind"], capture_output=True, env=env, check=False).returncode == 2
    out = subprocess.run(cmd + ["once", "--allow-rewind"], capture_output=True, env=env, check=False)
    assert out.returncode == 0 and b"operator accepted" in out.stderr
    status = json.loads(subprocess.run(cmd + ["status"], capture_output=True, env=env, check=True).stdout)
    assert status["head"] == old and status["healthy"] and status["rollback_alert"]["resolution"] == "rewrite accepted by the operator"


def test_state_v1_is_read_with_v2_defaults(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": arepl.STATE_FORMAT, "version": 1, "head": "ab" * 20, "consecutive_failures": 2,
                                "last_success": 5.0}))
    state = arepl.read_state(str(path))
    assert state["version"] == 2 and state["head"] == "ab" * 20 and state["consecutive_failures"] == 2
    assert state["rollback_alert"] is None and state["generation"] is None and not arepl.alert_active(state)
    path.write_text(json.dumps({"format": arepl.STATE_FORMAT, "version": 3, "head": "x"}))
    assert arepl.read_state(str(path))["head"] is None
