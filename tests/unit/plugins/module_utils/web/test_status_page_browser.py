# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet status page in a real browser (Debian's chromium, headless): the page of two
attestation servers' status documents (from real freshness stores) with attacker-influenced host
names and reasons; one chromium run writes a screenshot into the test output directory (its path
is printed) and dumps the DOM after scripts would have run, which the test asserts on."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness, status_page

XSS_REASON = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
XSS_HOST = "<script>document.title='pwned'</script>evil.example.test"


def _output_dir(tmp_path):
    """tests/output/status-page of the collection under ansible-test (kept after the run), else tmp."""
    base = os.path.join(os.getcwd(), "tests", "output")
    path = os.path.join(base, "status-page") if os.path.isdir(base) else str(tmp_path / "status-page")
    os.makedirs(path, exist_ok=True)
    return path


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium (Debian package) not installed")
def test_status_page_in_headless_chromium(tmp_path):
    now = 100000.0
    a1, a2 = freshness.FreshnessStore(None), freshness.FreshnessStore(None)
    a1.success("01" * 32, "web1.example.test", now=now - 60)            # ok
    a1.success("02" * 32, "web2.example.test", now=now - 2 * 86400)     # stale on a1 ...
    a2.success("02" * 32, "web2.example.test", now=now - 7200)          # ... and on a2
    a2.success("03" * 32, "web3.example.test", now=now - 86400)
    a2.success("03" * 32, "web3.example.test", now=now - 30)            # fresh on a2
    a1.success("04" * 32, "db1.example.test", now=now - 600)
    assert a1.failure("04" * 32, "pcr_policy", XSS_REASON, now=now - 500)  # failed, with a hostile reason
    a2.success("05" * 32, XSS_HOST, now=now - 900)                      # hostile host name (from an enrollment)
    docs = [freshness.status_document(a1, {"name": "attest-a1", "healthy": True, "snapshot_age_seconds": 12,
                                           "replication_failures": 0, "generation": 9, "snapshot_head": "ab" * 20}, now),
            freshness.status_document(a2, {"name": "attest-a2", "healthy": False, "snapshot_age_seconds": 4000,
                                           "replication_failures": 7, "generation": 7, "snapshot_head": "cd" * 20}, now)]
    out = _output_dir(tmp_path)
    page = os.path.join(out, "status.html")
    with open(page, "w", encoding="utf-8") as handle:
        handle.write(status_page.render(docs, now=now, stale_after=3600))
    shot = os.path.join(out, "status.png")
    if os.path.exists(shot):
        os.unlink(shot)
    cmd = [_chromium(), "--headless", "--disable-gpu", "--no-first-run", "--user-data-dir=" + str(tmp_path / "profile"),
           "--window-size=1280,900", "--screenshot=" + shot, "--dump-dom", "file://" + page]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    dom = proc.stdout.decode("utf-8")
    print("status page screenshot: %s" % shot)
    assert proc.returncode == 0 and os.path.getsize(shot) > 1000, proc.stderr[-2000:]
    with open(shot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # no script ran (escaped, and the page's CSP forbids scripts anyway), nothing was injected
    assert "<title>hcp.core fleet status</title>" in dom and "pwned</title>" not in dom
    assert "<script" not in dom and "<img" not in dom
    # states: failed db1 (with its reason as text), stale web2 (newest success of either server:
    # 2 h), ok web1, web3 (fresh on a2) and the hostile host name as plain text
    counts = dict(re.findall(r'data-state="(\w+)" data-count="(\d+)"', dom))
    assert counts == {"failed": "1", "stale": "1", "ok": "3"}
    failed = re.search(r'<table id="hosts-failed".*?</table>', dom, re.S).group(0)
    assert "db1.example.test" in failed and "pcr_policy" in failed
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x" in failed
    stale = re.search(r'<table id="hosts-stale".*?</table>', dom, re.S).group(0)
    assert "web2.example.test" in stale and "2 h ago" in stale
    ok = re.search(r'<table id="hosts-ok".*?</table>', dom, re.S).group(0)
    assert "web1.example.test" in ok and "web3.example.test" in ok and "&lt;script&gt;document.title" in ok
    replication = re.search(r'<table id="replication".*?</table>', dom, re.S).group(0)
    assert re.search(r'class="unhealthy" data-server="attest-a2"', replication)
    assert re.search(r'class="healthy" data-server="attest-a1"', replication)
