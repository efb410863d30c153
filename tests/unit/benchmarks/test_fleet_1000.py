# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""benchmarks/fleet_1000.py at 3 hosts, the real thing: the enrollment and attestation services
through nginx and uwsgi on loopback, one swtpm per host, one ansible-playbook run of
playbooks/enroll.yml and the attestation client's module. Fails when a host is not enrolled and
attested, when two hosts share an EK, or when a figure of the report is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

# tests/unit/benchmarks/ -> the collection root
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SCRIPT = os.path.join(ROOT, "benchmarks", "fleet_1000.py")
NEEDED = ("nginx", "uwsgi", "swtpm", "systemd-socket-activate", "git")

pytestmark = pytest.mark.skipif(
    any(shutil.which(n) is None and shutil.which(n, path="/usr/sbin:/sbin:/usr/bin") is None for n in NEEDED)
    or not os.path.exists("/usr/lib/uwsgi/plugins/python3_plugin.so")
    or not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")),
    reason="nginx, uwsgi (python3 plugin), swtpm, systemd-socket-activate, git and ansible-playbook are needed")


def test_three_hosts_enrolled_and_attested_in_one_run():
    out = subprocess.run([sys.executable, SCRIPT, "--hosts", "3", "--forks", "3", "--setup-probes", "0", "--queries", "5"],
                         capture_output=True, text=True, timeout=300, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "SKIP" not in text, text
    assert "ansible-playbook exit 0" in text, text
    # every host enrolled (3 distinct EKs: each swtpm made its own endorsement seed) and attested
    assert "DB at 3 entries (3 distinct ekpubhash, 3 distinct hostnames)" in text, text
    assert re.search(r"Enroll the EK with the host's profile +[0-9.]+ +[0-9]+ +[0-9]+ 3/3/0/0", text), text
    assert re.search(r"Attest now and install the assets.* 3/3/0/0", text), text
    for figure in ("enroll (playbooks/enroll.yml)", "attest ", "GET /v1/find", "fleet.read_db", "swtpm: 3 at once",
                   "ansible-inventory --list with hcp.core.enrollments (db_path, no cache), whole command:"):
        assert figure in text, text
    assert ", 3 hosts" in text, text  # the inventory plugin lists the three enrolled hosts
