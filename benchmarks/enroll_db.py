#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enrollment DB write rate and lookup latency at 0, 1k and 10k entries (real git).

Entries carry 12 files of realistic size (sealed envelopes ~1.5 KiB, certificates ~1 KiB).
The DB is grown between measurements with one bulk commit (not timed). Prints figures;
asserts nothing. Run: .venv/bin/python benchmarks/enroll_db.py (from the repo root, after
`make install`)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collections"))

from ansible_collections.hcp.core.plugins.module_utils.enrollment import db as enroll_db  # noqa: E402

FILES = dict(("asset%02d%s" % (i, ".sealed" if i % 2 else ".pem"), os.urandom(1100 + 40 * i)) for i in range(12))


def ek(n):
    return hashlib.sha256(b"ek-%d" % n).hexdigest()


def grow(db, start, stop):
    files = {}
    shards = {}
    for n in range(start, stop):
        base = enroll_db.entry_dir(ek(n))
        for name, data in FILES.items():
            files["%s/%s" % (base, name)] = data
        files[base + "/ekpubhash"] = ek(n).encode() + b"\n"
        files[base + "/hostname"] = b"host%06d.example.test\n" % n
        shards.setdefault(enroll_db.hostname_shard("host%06d.example.test" % n), []).append(n)
    for path in shards:
        old = db.read_file(path)
        rows = json.loads(old) if old else []
        rows += [{"hostname": "host%06d.example.test" % n, "ekpubhash": ek(n)} for n in shards[path]]
        files[path] = json.dumps(sorted(rows, key=lambda r: r["hostname"])).encode()
    db._commit("bulk %d..%d" % (start, stop), files, ())


def measure(db, size, count=100):
    t0 = time.perf_counter()
    for i in range(count):
        n = 10_000_000 + size + i
        db.add(ek(n), "new%08d.example.test" % n, FILES)
    add = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for i in range(50):
        db.by_hostname("host%06d.example.test" % (i * 7 % max(size, 1)))
    lookup = (time.perf_counter() - t0) / 50
    t0 = time.perf_counter()
    for _i in range(5):
        db.find(r"^host0001")
    find = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    for i in range(20):
        db.query(ek(i * 3 % max(size, 1))[:10])
    query = (time.perf_counter() - t0) / 20
    print("%6d entries: add %6.1f/s (%5.1f ms)  hostname lookup %5.2f ms  find(regex) %6.1f ms  query(prefix) %5.2f ms"
          % (size, 1 / add, add * 1e3, lookup * 1e3, find * 1e3, query * 1e3))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        db = enroll_db.EnrollmentDb(os.path.join(tmp, "db"))
        db.init()
        size = 0
        for target in (0, 1000, 10000):
            if target > size:
                grow(db, size, target)
                size = target
            measure(db, size)


if __name__ == "__main__":
    main()
