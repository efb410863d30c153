#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enrollments per second over HTTPS with client certificates (the enrollment app served by
werkzeug with TLS on loopback, the hcp.core.enrollment client), compared in one run with the
library alone, and with the deployed write path: the writer daemon behind a socket-activated
listener (systemd-socket-activate, as the hcp-enroll-writer.socket unit). Also /v1/find latency by hostname. Prints figures; asserts
nothing. Run from the repo root after `make install`:
    .venv/bin/python benchmarks/enroll_http.py"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collections"))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from ansible_collections.hcp.core.plugins.module_utils import pki  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_from_key, ek_public_pem  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb  # noqa: E402
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app  # noqa: E402

PROFILE = {"assets": ["hostname", "rootfs-key", "https-server", "https-client", "issuer-ca", "ssh-host-keys", "reenroll-hint"]}
COUNT = 20
MODULE = "ansible_collections.hcp.core.plugins.module_utils.enrollment.service"


def simulated_ek():
    return ek_public_pem(ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key()))


def site(root, name):
    cred = os.path.join(root, name, "cred")
    paths = pki.bootstrap_site_credentials(cred, "bench", ["localhost"], ["orchestrator"])["paths"]
    db = EnrollmentDb(os.path.join(root, name, "db"))
    db.init()
    config = {"db": db.path, "credentials_dir": cred, "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}},
              "service_client_ca": paths["svc_ca_cert"]}
    path = os.path.join(root, name, "enroll.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    return config, path, paths


def serve(config, paths):
    app = create_app(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["server_cert"], paths["server_key"])
    context.load_verify_locations(paths["svc_ca_cert"])
    context.verify_mode = ssl.CERT_REQUIRED
    srv = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    client = EnrollmentClient("https://localhost:%d" % srv.server_port, paths["ca_cert"],
                              paths["client_orchestrator_cert"], paths["client_orchestrator_key"], timeout=60)
    return srv, client


def rate(func, label):
    eks = [simulated_ek() for _i in range(COUNT)]
    start = time.perf_counter()
    for i, ek in enumerate(eks):
        func(ek, "%s%04d.example.test" % (label, i))
    elapsed = time.perf_counter() - start
    return COUNT / elapsed


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    root = tempfile.mkdtemp(prefix="hcp-bench-http-")
    try:
        # The nginx front end of the deployment only forwards the verified certificate.
        lib_config, _lib_path, _p = site(root, "lib")
        service = enroll_service.EnrollmentService(lib_config)
        lib = rate(lambda ek, host: service.perform({"op": "add", "ekpub": ek, "hostname": host, "profile": PROFILE}), "lib")

        http_config, _http_path, http_paths = site(root, "http")
        http_config["require_client_cert"] = False
        srv, client = serve(http_config, http_paths)
        http = rate(lambda ek, host: client.add(ek, host, PROFILE), "http")
        samples = []
        for i in range(50):
            start = time.perf_counter()
            client.find("^http%04d\\.example\\.test$" % (i % COUNT))
            samples.append(time.perf_counter() - start)
        srv.shutdown()

        sock_figure = None
        activate = shutil.which("systemd-socket-activate")
        if activate:
            sock_config, sock_path, sock_paths = site(root, "sock")
            sock = os.path.join(root, "writer.sock")
            listener = subprocess.Popen(  # pylint: disable=consider-using-with
                [activate, "-l", sock, "-E", "PYTHONPATH=" + os.pathsep.join(sys.path),
                 sys.executable, "-m", MODULE, "--serve", sock_path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not os.path.exists(sock):
                time.sleep(0.05)
            sock_config.update(require_client_cert=False, writer_socket=sock)
            srv, client = serve(sock_config, sock_paths)
            sock_figure = rate(lambda ek, host: client.add(ek, host, PROFILE), "sock")
            srv.shutdown()
            listener.terminate()
            listener.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    samples.sort()
    print("enrollments/s, %d adds each, 7 assets, simulated EKs:" % COUNT)
    print("  library in process           %6.1f /s" % lib)
    print("  HTTPS + mTLS, in-process write %6.1f /s  (%.2fx of library)" % (http, http / lib))
    if sock_figure is not None:
        print("  HTTPS + mTLS, writer daemon    %6.1f /s  (%.2fx of library; the writer daemon as deployed)"
              % (sock_figure, sock_figure / lib))
    else:
        print("  writer daemon: systemd-socket-activate not installed, skipped")
    median, p95 = samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.95)] * 1e3
    print("/v1/find by hostname over HTTPS: median %.1f ms, p95 %.1f ms" % (median, p95))


if __name__ == "__main__":
    main()
