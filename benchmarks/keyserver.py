#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Key-server figures, all in one run on loopback: retrieves/s through the key-server app over
mTLS with connection reuse (the client library: one proof of possession, then the session token),
next to the floors measured in the same run (a bare TLS 1.3 handshake with client certificate,
and AES-256-GCM of an item); stores/s with fsync (the real path) and the same store without
fsync (write_durable with os.fsync stubbed), so the fsync cost shows separately. The store's
master key is sealed to a real swtpm started here. Prints figures; asserts nothing.
Run: .venv/bin/python benchmarks/keyserver.py (from the repo root, after `make install`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "collections"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from ansible_collections.hcp.core.tests.unit.conftest import Swtpm  # noqa: E402
from ansible_collections.hcp.core.tests.unit.keyserver_helpers import KeyServerSite  # noqa: E402

SECONDS = 2.0
ITEM = os.urandom(256)  # a typical key item


class _Path(str):
    """A str path with the ``/`` and ``mkdir`` KeyServerSite uses (it expects pytest's tmp_path)."""

    def __truediv__(self, other):
        return _Path(os.path.join(self, other))

    def mkdir(self):
        os.mkdir(self, 0o700)


def rate(func, seconds=SECONDS):
    count, start = 0, time.perf_counter()
    while True:
        func()
        count += 1
        now = time.perf_counter()
        if now - start >= seconds:
            return count / (now - start), count


def handshake_floor(site):
    """Bare TLS handshakes/s (new connection each, client certificate, same server and certificates)."""
    host, port = "localhost", int(site.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=site.ca_file)
    cert, key = site.cred("node1")
    context.load_cert_chain(cert, key)

    def once():
        with socket.create_connection((host, port)) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.do_handshake()
    return rate(once)


def main():
    workdir = tempfile.mkdtemp(prefix="hcp-bench-keyserver.")
    tpm = None
    try:
        tpm = Swtpm(os.path.join(workdir, "tpm")).start()
        site = KeyServerSite(tpm, _Path(workdir)).start()
        site.store.store("datica-test/bench", ITEM)
        client = site.client("node1")
        client.retrieve("datica-test/bench")  # the proof of possession, once
        retrieves, n = rate(lambda: client.retrieve("datica-test/bench"))
        print("retrieve over mTLS, connection reused: %8.0f /s (%d calls, %d proofs of possession)"
              % (retrieves, n, client.authentications))
        handshakes, _n = handshake_floor(site)
        print("floor: bare TLS handshake + client cert: %8.0f /s" % handshakes)
        aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
        seals, _n = rate(lambda: aead.decrypt(nonce, aead.encrypt(nonce, ITEM, b"aad"), b"aad"), 0.5)
        print("floor: AES-256-GCM encrypt+decrypt 256 B: %8.0f /s" % seals)
        fresh = site.client("node2")
        proofs, _n = rate(lambda: (setattr(fresh, "_session", None), fresh.retrieve("datica-test/bench")), 1.0)
        print("retrieve with a new proof of possession each: %8.0f /s" % proofs)
        counter = iter(range(10 ** 9))

        def one_store():
            site.store.store("datica-test/bench-%d" % (next(counter) % 64), os.urandom(256))
        stores, _n = rate(one_store)
        print("store (library, fsync file + directory): %8.0f /s" % stores)
        real_fsync = os.fsync
        os.fsync = lambda fd: None
        try:
            nosync, _n = rate(one_store)
        finally:
            os.fsync = real_fsync
        print("store without fsync (the fsync cost):   %8.0f /s" % nosync)
        deploy = site.client("deploy")
        over_tls, _n = rate(lambda: deploy.store("datica-test/bench", os.urandom(256)))
        print("store over mTLS (client, fsync):        %8.0f /s" % over_tls)
        print(json.dumps({"retrieve_per_s": round(retrieves), "tls_handshake_per_s": round(handshakes),
                          "aes_gcm_per_s": round(seals), "retrieve_new_proof_per_s": round(proofs),
                          "store_fsync_per_s": round(stores), "store_nofsync_per_s": round(nosync),
                          "store_mtls_per_s": round(over_tls)}, sort_keys=True))
        site.close()
    finally:
        if tpm is not None:
            tpm.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
