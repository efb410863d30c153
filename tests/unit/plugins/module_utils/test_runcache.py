# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/runcache.py: the one per-run cache (attested_secret's payload cache and the
key-server client's session cache), with real processes, files and flocks."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.hcp.core.plugins.module_utils import runcache
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.keyserver import client as ks_client


def test_both_caches_use_the_one_implementation(tmp_path):
    payload = attest_client.PayloadCache({"x": 1}, directory=str(tmp_path / "a"))
    session = ks_client.SessionCache("https://ks.example.test", "ab" * 32, directory=str(tmp_path / "k"))
    assert isinstance(payload.file, runcache.RunFile) and isinstance(session.file, runcache.RunFile)
    assert attest_client.process_start_time is runcache.process_start_time
    assert attest_client.run_process is runcache.run_process
    session.save("token-1")
    assert session.load() == "token-1"
    assert oct(os.stat(session.path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(str(tmp_path / "k")).st_mode & 0o777) == "0o700"
    name = os.path.basename(session.path)
    assert name.startswith("run-%d-%s-" % (session.run_pid, runcache.process_start_time(session.run_pid)))


def test_dead_runs_are_purged_live_ones_kept(tmp_path):
    directory = str(tmp_path / "c")
    run = runcache.RunFile(directory, "k")
    run.ensure_dir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()
    stale = [os.path.join(directory, n) for n in ("run-%s-1-abc.json" % dead, "run-%s-1-abc.lock" % dead, "run-1-0-x.json")]
    live = os.path.join(directory, "run-%d-%s-other.json" % (os.getpid(), runcache.process_start_time(os.getpid())))
    foreign = os.path.join(directory, "notes.txt")
    for path in stale + [live, foreign]:
        open(path, "w").close()
    run.write(b"data")
    assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(live) and os.path.exists(foreign)
    assert run.read() == b"data"


def test_refuses_shared_directories_and_files_and_links(tmp_path):
    directory = tmp_path / "c"
    run = runcache.RunFile(str(directory), "k", error_class=runcache.RunCacheError)
    run.write(b"x")
    os.chmod(run.path, 0o644)
    with pytest.raises(runcache.RunCacheError, match="not private to this user"):
        run.read()
    os.unlink(run.path)
    os.symlink(str(tmp_path / "elsewhere"), run.path)
    (tmp_path / "elsewhere").write_bytes(b"planted")
    with pytest.raises(runcache.RunCacheError, match="cannot read"):
        run.read()
    os.chmod(str(directory), 0o755)
    with pytest.raises(runcache.RunCacheError, match="not a private directory"):
        run.read()
    link = tmp_path / "link"
    os.symlink(str(tmp_path), str(link))
    with pytest.raises(runcache.RunCacheError, match="not a private directory"):
        runcache.RunFile(str(link), "k").read()


def test_lock_is_exclusive_across_processes(tmp_path):
    run = runcache.RunFile(str(tmp_path / "c"), "k")
    with run.lock():
        probe = ("import fcntl, sys; f = open(sys.argv[1], 'rb');\n"
                 "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
                 "except OSError:\n    print('held')")
        out = subprocess.run([sys.executable, "-c", probe, run.path[:-5] + ".lock"], check=True, stdout=subprocess.PIPE)
        assert out.stdout.strip() == b"held"
    out = subprocess.run([sys.executable, "-c", probe, run.path[:-5] + ".lock"], check=True, stdout=subprocess.PIPE)
    assert out.stdout.strip() == b"free"


def test_oversized_file_is_ignored(tmp_path):
    run = runcache.RunFile(str(tmp_path / "c"), "k", max_bytes=8)
    run.write(b"123456789")
    assert run.read() is None
