#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Site unseal wall time: prints figures, asserts nothing (benchmarks are not tests).

A 3-controller site, each controller's share TPM-protected on its own swtpm, and a local
control tower (the ControlTower store in a temporary directory, no HTTP). Measured:
  init (site key, seal key, token, sealed bundle stored, split);
  reading 2 shares from their TPMs (share_store.read_share: share-key lookup + EncryptDecrypt2);
  unseal from 2 of 3 gathered shares (combine, open token, one-time unwrap, open seal key);
  the whole restart path (read 2 shares + unseal), the figure to compare with other schemes.
The tower's unwrap is re-allowed between runs (outside the timed region).

Run: make install && .venv/bin/python benchmarks/site_unseal.py
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.unseal.control_tower import ControlTower  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.unseal.share_store import read_share, write_share  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.unseal.site_unseal import LocalTower, init_site, unseal  # noqa: E402

RUNS = 20


def _harness():
    """The Swtpm process harness of the unit tests (real swtpm, private vendor CA)."""
    spec = importlib.util.spec_from_file_location("hcp_swtpm_harness", os.path.join(REPO, "tests", "unit", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Swtpm


def timed(fn, runs, between=None):
    out = []
    for dummy in range(runs):
        if between is not None:
            between()
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return statistics.median(out), sorted(out)[max(0, int(len(out) * 0.95) - 1)]


def main():
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as workdir:
        swtpm = _harness()
        tpms = [swtpm(os.path.join(workdir, "tpm%d" % i)).start() for i in range(3)]
        try:
            tower = LocalTower(ControlTower(os.path.join(workdir, "tower")))
            names = ["c1", "c2", "c3"]
            init_ms = timed(lambda: init_site("bench", names, tower=tower, replace=True), RUNS)
            init = init_site("bench", names, tower=tower, replace=True)
            paths = []
            for name, tpm in zip(names, tpms):
                path = os.path.join(workdir, name + ".share")
                result = write_share(path, shamir.Share.from_text(init.shares[name]), "require", tpm_factory=tpm.open)
                assert result.protection == "tpm"
                paths.append(path)

            def read_two():
                return [read_share(paths[i], tpm_factory=tpms[i].open).to_text() for i in (0, 2)]

            gathered = read_two()
            read_ms = timed(read_two, RUNS)

            def reallow():
                if not tower.status("bench")["unwrap_allowed"]:
                    tower.reallow_unwrap("bench")

            def unseal_only():
                assert unseal(gathered, tower=tower, site="bench").seal_key == init.seal_key

            def restart():
                assert unseal(read_two(), tower=tower, site="bench").seal_key == init.seal_key

            unseal_ms = timed(unseal_only, RUNS, reallow)
            restart_ms = timed(restart, RUNS, reallow)
        finally:
            for tpm in tpms:
                tpm.stop()
    print("site unseal, 3 controllers (2-of-3), shares TPM-protected on swtpm, local tower, %d runs" % RUNS)
    print("%-48s %10s %10s" % ("operation", "median ms", "p95 ms"))
    for label, (median, p95) in (("init (keys, token, bundle at tower, split)", init_ms),
                                 ("read 2 shares from 2 TPMs", read_ms),
                                 ("unseal from 2 shares (combine+unwrap+open)", unseal_ms),
                                 ("restart: read 2 shares + unseal", restart_ms)):
        print("%-48s %10.2f %10.2f" % (label, median, p95))


if __name__ == "__main__":
    main()
