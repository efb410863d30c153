# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment DB against real git: layout, one commit per operation, conflicts,
rollback on a killed writer."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import (
    AlreadyEnrolledError,
    EnrollDbError,
    EnrollmentDb,
    NotEnrolledError,
)


def h(n):
    return hashlib.sha256(str(n).encode()).hexdigest()


@pytest.fixture
def db(tmp_path):
    d = EnrollmentDb(str(tmp_path / "db"))
    assert d.init() is True
    return d


def test_init_is_idempotent_and_versioned(db):
    head = db.head()
    assert db.init() is False
    assert db.head() == head
    assert json.loads(db.read_file("FORMAT")) == {"format": "hcp.core.enrolldb", "version": 1}


def test_add_layout_one_commit_and_query(db):
    before = len(db.log())
    db.add(h(1), "node1.example.test", {"ek.pub": b"EK", "cert.pem": b"PEM"})
    assert len(db.log()) == before + 1
    e = h(1)
    base = "ekpubhash/%s/%s/%s/" % (e[:2], e[:6], e[:32])
    assert db.read_file(base + "ekpubhash") == e.encode() + b"\n"
    assert db.read_file(base + "hostname") == b"node1.example.test\n"
    assert db.read_file(base + "cert.pem") == b"PEM"
    assert db.query(e[:3]) == [{"ekpubhash": e, "hostname": "node1.example.test", "files": ["cert.pem", "ek.pub", "ekpubhash", "hostname"]}]
    assert db.query("", nofiles=True) == [{"ekpubhash": e, "hostname": "node1.example.test"}]
    assert db.query(e[:8] + ("0" if e[8] != "0" else "1")) == []
    assert db.by_hostname("node1.example.test") == e
    assert db.get(e)["ek.pub"] == b"EK"


def test_duplicates_are_refused_and_change_nothing(db):
    db.add(h(1), "a.example.test", {"x": b"1"})
    head = db.head()
    with pytest.raises(AlreadyEnrolledError, match="already enrolled"):
        db.add(h(1), "b.example.test", {"x": b"2"})
    with pytest.raises(AlreadyEnrolledError, match="hostname a.example.test"):
        db.add(h(2), "a.example.test", {"x": b"2"})
    assert db.head() == head


def test_find_by_regex_and_bad_regex(db):
    for i in range(20):
        db.add(h(i), "node%02d.example.test" % i, {"x": b"1"})
    found = db.find(r"^node1\d\.")
    assert [f["hostname"] for f in found] == ["node%02d.example.test" % i for i in range(10, 20)]
    assert found[0]["ekpubhash"] == h(10)
    with pytest.raises(EnrollDbError, match="invalid hostname regex"):
        db.find("(")


def test_reenroll_replaces_files(db):
    db.add(h(1), "a.example.test", {"old": b"1", "keep": b"1"})
    db.add(h(1), "a.example.test", {"keep": b"2"}, replace=True)
    assert sorted(db.get(h(1))) == ["ekpubhash", "hostname", "keep"]
    assert db.get(h(1))["keep"] == b"2"
    with pytest.raises(NotEnrolledError):
        db.add(h(2), "b.example.test", {"x": b"1"}, replace=True)
    with pytest.raises(EnrollDbError, match="may not change its hostname"):
        db.add(h(1), "other.example.test", {"x": b"1"}, replace=True)


def test_delete_by_prefix_updates_index(db):
    db.add(h(1), "a.example.test", {"x": b"1"})
    db.add(h(2), "b.example.test", {"x": b"1"})
    gone = db.delete(h(1)[:10])
    assert gone == [{"ekpubhash": h(1), "hostname": "a.example.test"}]
    assert db.get(h(1)) is None
    assert db.by_hostname("a.example.test") is None
    assert [e["hostname"] for e in db.find(".")] == ["b.example.test"]
    with pytest.raises(NotEnrolledError):
        db.delete(h(1)[:10])
    with pytest.raises(EnrollDbError, match="empty"):
        db.delete("")
    with pytest.raises(EnrollDbError, match="hex"):
        db.query("XYZ")


def test_janitor_repairs_index(db):
    db.add(h(1), "a.example.test", {"x": b"1"})
    assert db.janitor() == 0
    # Break the index behind the DB's back (as a buggy older writer could).
    db._commit("corrupt", {enroll_db.hostname_shard("a.example.test"): b"[]\n"}, ())
    assert db.by_hostname("a.example.test") is None
    assert db.janitor() == 1
    assert db.by_hostname("a.example.test") == h(1)


def test_invalid_names_rejected(db):
    with pytest.raises(EnrollDbError, match="ekpubhash"):
        db.add("abc", "a", {})
    with pytest.raises(EnrollDbError, match="invalid entry file"):
        db.add(h(1), "a", {"../x": b"1"})
    assert db.query("") == []


def test_killed_writer_leaves_previous_commit(db, tmp_path):
    """A writer SIGKILLed in the middle of its commit stream: the branch does not move,
    no part of the entry is visible, and the next write works."""
    db.add(h(1), "a.example.test", {"x": b"1"})
    head = db.head()
    marker = tmp_path / "streaming"
    child = r'''
import subprocess, sys, time
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb

class Stalling(object):
    """fast-import's stdin that stalls (forever) once part of the commit is written."""
    def __init__(self, raw):
        self.raw, self.writes = raw, 0
    def write(self, data):
        self.writes += 1
        if self.writes == 8:
            self.raw.flush()
            open(sys.argv[2], "w").close()
            time.sleep(60)
        return self.raw.write(data)
    def close(self):
        self.raw.close()

class Popen(subprocess.Popen):
    def __init__(self, args, **kwargs):
        super().__init__(args, **kwargs)
        if "fast-import" in args:
            self.stdin = Stalling(self.stdin)

subprocess.Popen = Popen
EnrollmentDb(sys.argv[1]).add("%s", "b.example.test", {"a": b"1", "b": b"2", "c": b"3"})
''' % h(2)
    proc = subprocess.Popen([sys.executable, "-c", child, db.path, str(marker)], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    deadline = time.time() + 30
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "writer did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)  # fast-import sees EOF without "done" and aborts
    assert db.head() == head
    assert db.get(h(2)) is None
    assert db.by_hostname("b.example.test") is None
    db.add(h(3), "c.example.test", {"x": b"1"})
    assert db.by_hostname("c.example.test") == h(3)


def test_command_line_init_and_log(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.db"]
    path = str(tmp_path / "cli-db")
    first = subprocess.run(cmd + ["init", path], capture_output=True, env=env, check=True)
    assert json.loads(first.stdout)["created"] is True
    again = subprocess.run(cmd + ["init", path], capture_output=True, env=env, check=True)
    assert json.loads(again.stdout) == {"created": False, "head": json.loads(first.stdout)["head"]}
    log = subprocess.run(cmd + ["log", path], capture_output=True, env=env, check=True)
    assert json.loads(log.stdout.splitlines()[0])["message"].startswith("init:")
    cfg = subprocess.run(["git", "--git-dir", path, "config", "http.receivepack"], capture_output=True, check=True)
    assert cfg.stdout.strip() == b"false"
    bad = subprocess.run(cmd + ["frob", path], capture_output=True, env=env, check=False)
    assert bad.returncode == 2 and b"usage" in bad.stderr


def test_read_files_one_process_same_answers_as_read_file(db):
    db.add(h(1), "a.example.test", {"x": b"1\n", "nl": b"two\nlines\n\n", "empty": b""})
    base = enroll_db.entry_dir(h(1))
    paths = [base + "/x", base + "/nl", base + "/empty", base + "/absent", base, "hn2ek", enroll_db.hostname_shard("a.example.test"),
             enroll_db.GENERATION_FILE]
    got = db.read_files(paths)
    assert got == dict((p, db.read_file(p)) for p in paths)
    assert got[base + "/nl"] == b"two\nlines\n\n" and got[base + "/empty"] == b"" and got[base] is None
    first = db.head()
    db.add(h(2), "b.example.test", {"x": b"2\n"})
    # at a given commit: what that commit held
    assert db.read_files([enroll_db.GENERATION_FILE], rev=first) == {enroll_db.GENERATION_FILE: b"2\n"}
    assert db.read_files([enroll_db.GENERATION_FILE]) == {enroll_db.GENERATION_FILE: b"3\n"}
    with pytest.raises(EnrollDbError):
        db.read_files(["a\nb"])


def test_generations_and_gc_over_many_commits(db):
    # gc --auto runs every GC_EVERY commits (not after each): generations stay exact, the
    # branch head is read from the ref files, and the packs are repacked when gc.autoPackLimit is passed
    subprocess.run(["git", "--git-dir", db.path, "config", "gc.autoPackLimit", "4"], check=True)
    heads = set()
    for n in range(enroll_db.GC_EVERY + 2):
        heads.add(db.add(h(n), "n%d.example.test" % n, {"x": b"%d\n" % n}))
        assert db.generation() == n + 2
        assert db.head() == db.head_from_refs()
        assert db.head() in heads
    packs = [name for name in os.listdir(os.path.join(db.path, "objects", "pack")) if name.endswith(".pack")]
    assert len(packs) <= 4 + 2
    assert db.by_hostname("n3.example.test") == h(3)


def test_query_reads_any_number_of_entries_with_two_git_processes(db, monkeypatch):
    """query() answers what reading every entry with get() answers, for each prefix length,
    with one ls-tree and one cat-file whatever the number of entries (it used two per entry:
    10 s at 1,000 hosts)."""
    hashes = [h(n) for n in range(40)]
    for n, e in enumerate(hashes):
        db.add(e, "n%d.example.test" % n, {"ek.pub": b"EK%d" % n} if n % 2 else {"ek.pub": b"EK", "cert.pem": b"PEM"})
    first = db.head()
    db.delete(hashes[0])

    def by_get(prefix, nofiles, rev=None):
        rows = []
        for e in sorted(hashes):
            files = db.get(e, rev=rev)
            if e.startswith(prefix) and files is not None:
                row = {"ekpubhash": e, "hostname": files["hostname"].decode().strip()}
                if not nofiles:
                    row["files"] = sorted(files)
                rows.append(row)
        return rows

    for prefix in ("", hashes[1][:1], hashes[1][:2], hashes[1][:5], hashes[1][:6], hashes[1][:40], hashes[1], hashes[0]):
        for nofiles in (False, True):
            assert db.query(prefix, nofiles=nofiles) == by_get(prefix, nofiles)
    assert len(db.query("", rev=first)) == 40 and db.query("", rev=first) == by_get("", False, rev=first)
    calls = []
    real = db._git
    monkeypatch.setattr(db, "_git", lambda *args, **kwargs: calls.append(args[0]) or real(*args, **kwargs))
    assert len(db.query("")) == 39
    assert calls == ["ls-tree", "cat-file"]
