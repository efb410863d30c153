# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/runtime/files/venv_lacks.py (the role's "Check what the venv lacks", in place of
`pip install --dry-run`), run the way the role runs it (`python -c <text> FILE REQ...`) with
this interpreter against its own installed distributions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "runtime", "files", "venv_lacks.py")


def lacks(tmp_path, lines, *extra):
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(SCRIPT, encoding="utf-8") as handle:
        text = handle.read()
    out = subprocess.run([sys.executable, "-c", text, str(req)] + list(extra), check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_satisfied_pins_and_their_dependencies_lack_nothing(tmp_path):
    flask = metadata.version("flask")
    assert lacks(tmp_path, ["# a comment", "", "Flask==%s  # pinned" % flask, "--no-index"]) == []


def test_missing_or_other_versions_are_reported(tmp_path):
    flask = metadata.version("flask")
    got = lacks(tmp_path, ["Flask==0.1", "no-such-distribution-hcp==1.0"], "hcp_core_lib==0.1.0+gabc", "Flask==%s" % flask)
    assert got == ["Flask==0.1", "no-such-distribution-hcp==1.0", "hcp_core_lib==0.1.0+gabc"]


def test_a_dependency_out_of_range_is_reported(tmp_path, monkeypatch):
    # a fake distribution whose metadata requires a version of Flask that is not installed
    site = tmp_path / "site"
    info = site / "hcp_fake_dist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hcp-fake-dist\nVersion: 1.0\n"
                                   "Requires-Dist: Flask<0.2\nRequires-Dist: nothing-here; extra == 'x'\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(site))
    assert lacks(tmp_path, ["hcp-fake-dist==1.0"]) == ["Flask<0.2"]


def test_no_readable_file_fails(tmp_path):
    with open(SCRIPT, encoding="utf-8") as handle:
        text = handle.read()
    proc = subprocess.run([sys.executable, "-c", text, str(tmp_path / "missing.txt")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
