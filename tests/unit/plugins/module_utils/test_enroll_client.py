# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment client and its idempotent ensure() against the real app served over TLS
with client-certificate authentication on loopback (werkzeug), with a real swtpm EK."""
from __future__ import annotations

import json
import ssl
import threading

import pytest
from werkzeug.serving import make_server

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentApiError, EnrollmentClient, ensure
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app

PROFILE = {"assets": ["hostname", "rootfs-key"]}


@pytest.fixture
def server(tmp_path, swtpm):
    paths = pki.bootstrap_site_credentials(str(tmp_path / "cred"), "t", ["localhost"], ["orchestrator"])["paths"]
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    app = create_app({"db": db.path, "credentials_dir": str(tmp_path / "cred"), "require_client_cert": False,
                      "postclient": {"seal_policy": {"type": "none"}}})
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["server_cert"], paths["server_key"])
    context.load_verify_locations(paths["ca_cert"])
    context.verify_mode = ssl.CERT_REQUIRED
    srv = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
    url = "https://localhost:%d" % srv.server_port
    client = EnrollmentClient(url, paths["ca_cert"], paths["client_orchestrator_cert"], paths["client_orchestrator_key"], timeout=30)
    yield {"client": client, "url": url, "paths": paths, "ek": ek, "db": db}
    srv.shutdown()


def test_ensure_is_idempotent(server):
    c, ek, db = server["client"], server["ek"], server["db"]
    planned = ensure(c, "present", ek, "node1.example.test", PROFILE, check_mode=True)
    assert planned["changed"] and planned["action"] == "added"
    assert db.query("") == []
    first = ensure(c, "present", ek, "node1.example.test", PROFILE)
    assert first["changed"] and "rootfs.key.sealed" in first["assets"]
    head = db.head()
    again = ensure(c, "present", ek, "node1.example.test", PROFILE)
    assert again["changed"] is False and db.head() == head
    changed = ensure(c, "present", ek, "node1.example.test", {"assets": ["hostname"]})
    assert changed["action"] == "reenrolled" and "rootfs.key.sealed" not in changed["assets"]
    assert json.loads(db.get(first["ekpubhash"])["clientprofile"]) == {"assets": ["hostname"]}
    with pytest.raises(EnrollmentApiError, match="enrolled as node1.example.test"):
        ensure(c, "present", ek, "other.example.test", PROFILE)
    assert ensure(c, "reenrolled", ek)["changed"] is True
    assert ensure(c, "absent", ek)["action"] == "deleted"
    assert ensure(c, "absent", ek)["changed"] is False
    assert c.find(".") == []
    assert b"PUBLIC KEY" in c.asset_signer()


def test_untrusted_or_missing_client_cert_is_refused(server, tmp_path):
    bare = EnrollmentClient(server["url"], server["paths"]["ca_cert"], timeout=10)
    with pytest.raises(EnrollmentApiError) as info:
        bare.query("")
    assert info.value.status == 0
    wrong_ca = EnrollmentClient(server["url"], None, server["paths"]["client_orchestrator_cert"],
                                server["paths"]["client_orchestrator_key"], timeout=10)
    with pytest.raises(EnrollmentApiError, match="cannot reach"):
        wrong_ca.query("")


def test_api_errors_carry_status(server):
    with pytest.raises(EnrollmentApiError) as info:
        server["client"].add(server["ek"], "", PROFILE)
    assert info.value.status == 400 and "hostname" in str(info.value)
    with pytest.raises(EnrollmentApiError) as info:
        ensure(server["client"], "reenrolled", server["ek"])
    assert info.value.status == 404
