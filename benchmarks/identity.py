#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Identity figures (issue 19), all in one run; prints figures, asserts nothing (not a test).

The identity provider and the security service run as their own processes (``python -s -m``,
as their systemd units do) on Unix sockets in a private directory; this process is enrolled by
an in-process orchestrator (signed AddClient + ProveClient) and then measures, through the sockets:

* JWT issuances/s (FetchToken: SO_PEERCRED, /proc check, ES256 signature by the intermediate),
  one client, then N client processes (forked descendants of the proven process);
* verified sign calls/s (security service: token verified (cached per token), key record
  decrypted once, ECDSA P-256 signature), through the client library: 1 thread, N threads,
  N processes;
* per daemon CPU-second: the same counts divided by the daemon's own CPU time (utime+stime from
  /proc), i.e. per core used (each daemon is one Python process: one core at most for its Python code);
* the floor of the same run: bare ECDSA P-256 signatures/s with cryptography, and ES256 JWT
  encodes/s with PyJWT, in this process, one core.

Anchor: SPIRE's server rate-limits signing to 500 signings/s per client address.
The store key is in memory here (the TPM unseals it once at start; it is not on the hot path).
Needs root (the admin sockets are root's). Run from the repo root after `make install`:
.venv/bin/python benchmarks/identity.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "collections"))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from ansible_collections.hcp.core.plugins.module_utils.identity import trust, wire  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.identity.client import Client  # noqa: E402

SECONDS = 3.0
PKG = "ansible_collections.hcp.core.plugins.module_utils.identity"
SITE, HOST = "bench.test", "node1"
WORKERS = max(2, min(4, os.cpu_count() or 2))


def rate(func, seconds=SECONDS):
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        func()
        count += 1
    return count / (time.perf_counter() - start), count


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid, "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemons(object):
    def __init__(self, workdir):
        self.workdir = workdir
        run = os.path.join(workdir, "run")
        os.mkdir(run, 0o700)
        self.config = {
            "secsvc": {"site": SITE, "host": HOST, "state_dir": os.path.join(workdir, "secsvc"),
                       "store_dir": os.path.join(workdir, "store"), "socket": os.path.join(run, "secsvc.sock"),
                       "admin_socket": os.path.join(run, "secsvc-admin.sock"), "store_key": {"backend": "memory"}},
            "provider": {"site": SITE, "host": HOST, "state_dir": os.path.join(workdir, "provider"),
                         "socket": os.path.join(run, "provider.sock"), "admin_socket": os.path.join(run, "provider-admin.sock"),
                         "secsvc_admin_socket": os.path.join(run, "secsvc-admin.sock")},
        }
        self.procs = {}

    def start(self, which):
        path = os.path.join(self.workdir, which + ".json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.config[which], handle)
        log = open(os.path.join(self.workdir, which + ".log"), "ab")  # pylint: disable=consider-using-with
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.procs[which] = subprocess.Popen([sys.executable, "-s", "-m", "%s.%s" % (PKG, which), path],
                                             stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                return wire.call(self.config[which]["admin_socket"], "ping")
            except wire.IdentityError:
                time.sleep(0.05)
        raise RuntimeError("%s did not start (see %s.log)" % (which, which))

    def stop(self):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def in_processes(func, count, seconds=SECONDS):
    """Total calls/s of ``func`` run by ``count`` forked processes (descendants of the proven one)."""
    pipes, pids = [], []
    start_at = time.monotonic() + 0.5
    for _index in range(count):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 0
            try:
                work = func()
                work()  # warm: connection, token
                while time.monotonic() < start_at:
                    time.sleep(0.001)
                done, began = 0, time.perf_counter()
                while time.perf_counter() - began < seconds:
                    work()
                    done += 1
                os.write(write_fd, ("%f" % (done / (time.perf_counter() - began))).encode())
            except BaseException:  # pylint: disable=broad-except
                code = 1
            os._exit(code)  # pylint: disable=protected-access
        os.close(write_fd)
        pipes.append(read_fd)
        pids.append(pid)
    total = 0.0
    for read_fd, pid in zip(pipes, pids):
        data = os.read(read_fd, 100)
        os.close(read_fd)
        os.waitpid(pid, 0)
        total += float(data or 0)
    return total


def in_threads(make_work, count, seconds=SECONDS):
    counts = [0] * count
    barrier = threading.Barrier(count)

    def run(index):
        work = make_work()
        work()
        barrier.wait()
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            work()
            counts[index] += 1
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def main():
    if os.geteuid() != 0:
        print("skip: benchmarks/identity.py needs root (the admin sockets are root's)")
        return
    workdir = tempfile.mkdtemp(prefix="hcp-bench-identity.")
    daemons = Daemons(workdir)
    figures = {}
    try:
        daemons.start("secsvc")
        daemons.start("provider")
        orchestrator = trust.TrustedSide("orchestrator")
        admin = daemons.config["provider"]["admin_socket"]
        trust.share(orchestrator, admin)
        audience = "spiffe://%s/%s/hcp-identity-provider" % (SITE, HOST)
        definition = {"app": "bench", "host": HOST, "selectors": {"uid": os.getuid(), "unit": "bench.service"}}
        proof = {"app": "bench", "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "unit": "bench.service",
                 "host_attestation": {"result": "none"}}
        trust.signed_call(orchestrator, admin, "add_client", definition, audience)
        trust.signed_call(orchestrator, admin, "prove_client", proof, audience)
        while not wire.call(daemons.config["secsvc"]["admin_socket"], "ping").get("idp_intermediate"):
            time.sleep(0.05)
        provider_pid, secsvc_pid = daemons.procs["provider"].pid, daemons.procs["secsvc"].pid
        sockets = dict(provider_socket=daemons.config["provider"]["socket"], secsvc_socket=daemons.config["secsvc"]["socket"])

        def token_work():
            conn = wire.Connection(sockets["provider_socket"])
            return lambda: conn.call("fetch_token", {})

        def sign_work():
            client = Client(**sockets)
            return lambda: client.sign(b"benchmark message of a typical size: 64 bytes.........")

        Client(**sockets).sign(b"warm")  # the default key exists before the timed runs
        print("identity benchmark: provider and security service as processes on Unix sockets; %d s per figure; "
              "%d workers where N" % (SECONDS, WORKERS))
        cpu0 = cpu_seconds(provider_pid)
        figures["token_1"], count = rate(token_work())
        figures["token_1_per_cpu_s"] = count / max(cpu_seconds(provider_pid) - cpu0, 1e-9)
        print("JWT issuance (FetchToken), 1 client:                 %8.0f /s  (%6.0f per provider CPU-second)"
              % (figures["token_1"], figures["token_1_per_cpu_s"]))
        figures["token_n_procs"] = in_processes(token_work, WORKERS)
        print("JWT issuance, %d client processes:                    %8.0f /s" % (WORKERS, figures["token_n_procs"]))
        cpu0 = cpu_seconds(secsvc_pid)
        figures["sign_1"], count = rate(sign_work())
        figures["sign_1_per_cpu_s"] = count / max(cpu_seconds(secsvc_pid) - cpu0, 1e-9)
        print("verified sign (client library), 1 thread:            %8.0f /s  (%6.0f per security-service CPU-second)"
              % (figures["sign_1"], figures["sign_1_per_cpu_s"]))
        figures["sign_n_threads"] = in_threads(sign_work, WORKERS)
        print("verified sign, %d threads of one process:             %8.0f /s" % (WORKERS, figures["sign_n_threads"]))
        cpu0, wall0 = cpu_seconds(secsvc_pid), time.monotonic()
        figures["sign_n_procs"] = in_processes(sign_work, WORKERS)
        used = cpu_seconds(secsvc_pid) - cpu0
        print("verified sign, %d client processes:                   %8.0f /s  (security service used %.2f CPU-s over %.1f s: "
              "one Python process, one core for its Python code)" % (WORKERS, figures["sign_n_procs"], used, time.monotonic() - wall0))
        key = ec.generate_private_key(ec.SECP256R1())
        message = b"benchmark message of a typical size: 64 bytes........."
        figures["floor_ecdsa"], _count = rate(lambda: key.sign(message, ec.ECDSA(hashes.SHA256())))
        print("floor: bare ECDSA P-256 sign (cryptography), 1 core: %8.0f /s" % figures["floor_ecdsa"])
        claims = {"sub": "spiffe://%s/%s/bench" % (SITE, HOST), "aud": "x", "iat": 0, "exp": 300, "jti": "j"}
        figures["floor_jwt"], _count = rate(lambda: jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k"}))
        print("floor: ES256 JWT encode (PyJWT), 1 core:             %8.0f /s" % figures["floor_jwt"])
        print("anchor: SPIRE's server rate-limits signing to 500 signings/s per client address; one client here: "
              "%.1fx that (sign), %.1fx (JWT issuance)" % (figures["sign_1"] / 500.0, figures["token_1"] / 500.0))
        print(json.dumps(dict((k, round(v)) for k, v in figures.items()), sort_keys=True))
    finally:
        daemons.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
