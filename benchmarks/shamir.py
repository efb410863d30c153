#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Speed of the Shamir library: prints figures, asserts nothing (benchmarks are not tests).

  split and combine throughput (ops/s and MB/s of secret) for 32-byte and 1 MiB secrets,
  3-of-5 and 2-of-3; combine is given exactly the threshold number of shares as text
  (parse + integrity tags + interpolation + commitment check), and all n shares (every
  spare share is also checked against the recovered secret).

Run: make install && .venv/bin/python benchmarks/shamir.py
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir  # noqa: E402


def rate(func, min_seconds=0.5, min_runs=3):
    """Runs func until min_seconds and min_runs are reached; returns ops/s."""
    runs, start = 0, time.perf_counter()
    while True:
        func()
        runs += 1
        elapsed = time.perf_counter() - start
        if runs >= min_runs and elapsed >= min_seconds:
            return runs / elapsed


def main():
    print("%-8s %-6s %-22s %12s %10s" % ("secret", "scheme", "operation", "ops/s", "MB/s"))
    for size, label in ((32, "32 B"), (1 << 20, "1 MiB")):
        secret = os.urandom(size)
        for count, threshold in ((5, 3), (3, 2)):
            texts = [s.to_text() for s in shamir.split(secret, count, threshold)]
            cases = (
                ("split", lambda: shamir.split(secret, count, threshold)),
                ("combine (t shares)", lambda: shamir.combine(texts[:threshold])),
                ("combine (all n shares)", lambda: shamir.combine(texts)),
            )
            for name, func in cases:
                ops = rate(func)
                scheme = "%d-of-%d" % (threshold, count)
                print("%-8s %-6s %-22s %12.1f %10.2f" % (label, scheme, name, ops, ops * size / 1e6))


if __name__ == "__main__":
    main()
