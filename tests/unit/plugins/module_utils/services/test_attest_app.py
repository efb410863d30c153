# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attestation API through Flask's test client: a real swtpm client, a real enrolled
entry in a git DB replicated by arepl, ticket key and asset signer from files."""
from __future__ import annotations

import base64
import json
import shutil
import ssl
import threading

import pytest
from werkzeug.serving import make_server

from ansible_collections.hcp.core.plugins.module_utils import arepl, attest, attest_client, enroll, pki
from ansible_collections.hcp.core.plugins.module_utils import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enroll_db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.services.attest_app import create_app


@pytest.fixture
def site(tmp_path, swtpm, other_swtpm):
    source = EnrollmentDb(str(tmp_path / "source.git"))
    source.init()
    ca_key, ca_cert = pki.create_ca("HCP test attest CA")
    signer = pki.Signer(pki.new_private_key("ec-p256"))
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=signer,
                                     postclient={"seal_policy": {"type": "none"}})
    with swtpm.open() as tpm:
        h, host, files, _s = enroll.build_entry(config, ek_public_pem(tpm.ek_public()), "web1.example.test",
                                                {"assets": ["hostname", "rootfs-key"]})
    source.add(h, host, files)
    replica = arepl.Replica(str(tmp_path / "arepl"), source.path)
    assert replica.sync()["error"] is None
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    signer_file = tmp_path / "signer.pem"
    signer_file.write_bytes(signer.public_key_pem())
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for i, path in enumerate(swtpm.vendor_ca_files + other_swtpm.vendor_ca_files):
        (vendor / ("ca%d.pem" % i)).write_bytes(open(path, "rb").read())
    cfg = {"db": replica.current_link, "ticket_key_file": str(key_file), "asset_signer_pub": str(signer_file),
           "vendor_ca_dir": str(vendor), "require_ek_cert": True, "used_ticket_dir": str(tmp_path / "used"),
           "max_content_length": 64 * 1024}
    return {"app": create_app(cfg), "hash": h, "signer": signer.public_key_pem(), "replica": replica, "source": source}


def transport(app):
    client = app.test_client()

    def call(path, body):
        resp = client.post(path, json=body)
        return resp.status_code, resp.get_json(silent=True)
    return call


def test_attest_over_the_api_and_metrics(site, swtpm, other_swtpm):
    call = transport(site["app"])
    with swtpm.open() as tpm:
        result = attest_client.attest(tpm, call, site["signer"])
    assert result["hostname"] == "web1.example.test" and len(result["assets"]["rootfs.key"]) == 64
    assert result["snapshot"] == site["source"].head()
    with other_swtpm.open() as tpm:
        with pytest.raises(attest_client.AttestServerError) as info:
            attest_client.attest(tpm, call, site["signer"])
    assert info.value.status == 404
    client = site["app"].test_client()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hcp_attest_total{result="ok"} 1' in metrics
    assert 'hcp_attest_total{result="not_enrolled"} 1' in metrics
    assert "hcp_attest_complete_seconds_count 2" in metrics and "hcp_attest_initiate_total 2" in metrics
    assert "hcp_attest_snapshot_age_seconds " in metrics and "NaN" not in metrics
    health = client.get("/healthcheck")
    assert health.status_code == 200 and health.get_json()["head"] == site["source"].head()
    assert health.get_json()["status"] == "ok"


def test_replay_and_bad_requests_get_json_errors(site, swtpm):
    client = site["app"].test_client()
    started = client.post("/v1/initiate", json={"ekpubhash": site["hash"]}).get_json()
    with swtpm.open() as tpm:
        request = {"ticket": started["ticket"], "ekpub": base64.b64encode(tpm.ek_public().marshal()).decode(),
                   "ek_cert": base64.b64encode(tpm.ek_certificate_der()).decode(),
                   "quote": quote_mod.quote(tpm, base64.b64decode(started["nonce"]), started["pcrs"]["sha256"])}
    assert client.post("/v1/complete", json=request).status_code == 200
    replay = client.post("/v1/complete", json=request)
    assert replay.status_code == 409 and "already used" in replay.get_json()["error"]
    no_cert = dict(request, ek_cert=None, ticket=client.post("/v1/initiate", json={"ekpubhash": site["hash"]}).get_json()["ticket"])
    resp = client.post("/v1/complete", json=no_cert)
    assert resp.status_code == 403 and "certificate is required" in resp.get_json()["error"]
    assert client.post("/v1/complete", json=dict(request, ticket="hcpt1.x.y")).status_code == 401
    assert client.post("/v1/initiate", json={"ekpubhash": "nope"}).status_code == 400
    assert client.post("/v1/initiate", data="not json", content_type="application/json").status_code == 400
    assert client.post("/v1/complete", data="x" * (70 * 1024), content_type="application/json").status_code == 413
    assert client.get("/v1/complete").status_code == 405
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hcp_attest_total{result="replay"} 1' in metrics and 'hcp_attest_total{result="ek_rejected"} 1' in metrics


def test_dead_erepl_keeps_serving_and_health_reports_it(site, swtpm, tmp_path):
    shutil.move(site["source"].path, str(tmp_path / "gone"))
    assert site["replica"].sync(force=True)["error"]
    with swtpm.open() as tpm:
        assert attest_client.attest(tpm, transport(site["app"]), site["signer"])["assets"]["rootfs.key"]
    client = site["app"].test_client()
    health = client.get("/healthcheck").get_json()
    assert health["consecutive_failures"] == 1 and health["last_error"]
    assert "hcp_attest_replication_failures 1" in client.get("/metrics").get_data(as_text=True)


def test_missing_snapshot_is_503(tmp_path):
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    app = create_app({"db": str(tmp_path / "none" / "current"), "ticket_key_file": str(key_file)})
    client = app.test_client()
    assert client.get("/healthcheck").status_code == 503
    started = client.post("/v1/initiate", json={"ekpubhash": "0" * 64})
    assert started.status_code == 200 and json.loads(started.data)["ticket"].startswith("hcpt1.")


def test_attest_over_real_tls(site, swtpm, tmp_path):
    creds = pki.bootstrap_site_credentials(str(tmp_path / "tls"), "test", ["localhost"], [])["paths"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(creds["server_cert"], creds["server_key"])
    server = make_server("127.0.0.1", 0, site["app"], threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "https://localhost:%d" % server.server_port
    try:
        with swtpm.open() as tpm:
            result = attest_client.attest(tpm, url, site["signer"], ca_file=creds["ca_cert"], timeout=30)
            assert len(result["assets"]["rootfs.key"]) == 64
            with pytest.raises(attest_client.AttestClientError, match="cannot reach"):
                attest_client.attest(tpm, url, site["signer"], timeout=30)  # server CA not trusted
    finally:
        server.shutdown()
