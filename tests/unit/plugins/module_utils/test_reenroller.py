# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Re-enroller against a real DB, real generators and a real swtpm EK."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service
from ansible_collections.hcp.core.plugins.module_utils.enrollment import reenroller
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb

PROFILE = {"assets": ["hostname", "https-server", "reenroll-hint"], "reenroll": {"days": 1}}
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def site(tmp_path, swtpm):
    cred = tmp_path / "cred"
    pki.bootstrap_site_credentials(str(cred), "test", ["enroll.example.test"], [])
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": str(cred), "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}}}
    service = enroll_service.EnrollmentService(config)
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
    summary = service.perform({"op": "add", "ekpub": ek, "hostname": "node1.example.test", "profile": PROFILE})
    return {"service": service, "config": config, "db": db, "h": summary["ekpubhash"], "cred": cred,
            "state": str(tmp_path / "state.json"), "tmp": tmp_path}


def _cert(db, h):
    return db.get(h)["https-server.pem"]


def test_nothing_due_until_the_hint(site):
    summary = reenroller.run(site["service"], site["state"], now=NOW)
    assert summary == {"due": 0, "reenrolled": [], "failed": [], "deferred": []}
    assert os.stat(site["state"]).st_mode & 0o777 == 0o600


def test_due_entry_gets_fresh_certificates_in_one_commit(site):
    db, h = site["db"], site["h"]
    before, head = _cert(db, h), db.head()
    assert reenroller.due_entries(db, NOW + 2 * DAY) == [(h, reenroller.due_entries(db, NOW + 2 * DAY)[0][1])]
    summary = reenroller.run(site["service"], site["state"], now=NOW + 2 * DAY)
    assert summary["reenrolled"] == [h] and summary["failed"] == []
    assert _cert(db, h) != before
    log = db.log(limit=5)
    assert len(log) >= 3 and db.head() != head
    assert "reenroll: node1.example.test %s by re-enroller" % h in json.dumps(log)


def test_failure_backs_off_then_recovers(site):
    db, h, cred = site["db"], site["h"], site["cred"]
    key = (cred / "ca.key").read_bytes()
    (cred / "ca.key").write_bytes(b"not a key")
    site["service"]._enroll_config = None  # pylint: disable=protected-access
    head = db.head()
    t0 = NOW + 2 * DAY
    first = reenroller.run(site["service"], site["state"], now=t0, backoff_base=300)
    assert [f["ekpubhash"] for f in first["failed"]] == [h] and db.head() == head
    assert "PRIVATE" not in json.dumps(first)
    # Inside the backoff window: deferred, no attempt.
    second = reenroller.run(site["service"], site["state"], now=t0 + datetime.timedelta(seconds=120), backoff_base=300)
    assert second["deferred"] == [h] and second["failed"] == []
    # After it: a second failure doubles the delay.
    third = reenroller.run(site["service"], site["state"], now=t0 + datetime.timedelta(seconds=301), backoff_base=300)
    assert third["failed"][0]["next_attempt"] == (t0 + datetime.timedelta(seconds=301 + 600)).strftime(reenroller.TIME_FORMAT)
    assert reenroller.load_state(site["state"])["entries"][h]["failures"] == 2
    (cred / "ca.key").write_bytes(key)
    site["service"]._enroll_config = None  # pylint: disable=protected-access
    fourth = reenroller.run(site["service"], site["state"], now=t0 + datetime.timedelta(seconds=1000), backoff_base=300)
    assert fourth["reenrolled"] == [h] and db.head() != head
    assert reenroller.load_state(site["state"])["entries"] == {}


def test_bad_state_file_is_refused(site):
    with open(site["state"], "w") as handle:
        handle.write('{"format": "other"}')
    with pytest.raises(reenroller.ReenrollError, match="not a hcp.core.reenroll-state"):
        reenroller.run(site["service"], site["state"], now=NOW)


def test_command_line_pass(site):
    path = site["tmp"] / "enroll.json"
    path.write_text(json.dumps(dict(site["config"], writer=["false"])))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.reenroller",
                           str(path), site["state"]], capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["due"] == 0
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.reenroller"],
                          capture_output=True, env=env, check=False)
    assert proc.returncode == 2 and b"usage" in proc.stderr
