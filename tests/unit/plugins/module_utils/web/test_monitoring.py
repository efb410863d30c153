# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freshness monitoring (docs/monitoring.md): per-host series and the status document of a real
attestation app (swtpm, arepl replica of a git DB), their caller check with real service-client
certificates, the bounds (store, series, unknown-EK flood), label escaping checked by promtool,
and the request counters of the other apps."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness
from ansible_collections.hcp.core.plugins.module_utils.attestation import replica as arepl
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.attestation import status_page
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.web import attest_app, control_tower_app, policy_app
from ansible_collections.hcp.core.plugins.module_utils.web import metrics as web_metrics


def _cert_environ(issuer, cn):
    """The WSGI environ nginx gives the app for a verified client certificate ``cn`` of ``issuer``."""
    key = pki.new_private_key("ec-p256")
    cert = issuer.issue(key.public_key(), "https-client", cn)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(pem, safe="")}


@pytest.fixture
def cas(tmp_path):
    """The site's service-client CA (file) and an unrelated CA (the enrollment CA of hosts)."""
    svc_key, svc_cert = pki.create_ca("HCP test service-client CA")
    host_key, host_cert = pki.create_ca("HCP test enrollment CA")
    path = tmp_path / "svc-ca.pem"
    path.write_bytes(pki.certificate_pem(svc_cert))
    return {"path": str(path), "svc": pki.Issuer(svc_key, [svc_cert], reserve_service_names=False),
            "hosts": pki.Issuer(host_key, [host_cert])}


@pytest.fixture
def site(tmp_path, swtpm, other_swtpm, cas):
    source = EnrollmentDb(str(tmp_path / "source.git"))
    source.init()
    ca_key, ca_cert = pki.create_ca("HCP test attest CA")
    signer = pki.Signer(pki.new_private_key("ec-p256"))
    config = enroll.EnrollmentConfig(issuer=pki.Issuer(ca_key, [ca_cert]), signer=signer,
                                     postclient={"seal_policy": {"type": "none"}}, ek_trust="tofu")
    with swtpm.open() as tpm:
        h, host, files, _s = enroll.build_entry(config, ek_public_pem(tpm.ek_public()), "web1.example.test",
                                                {"assets": ["hostname", "rootfs-key"]})
    enroll.store_entry(source, config, h, host, files)
    replica = arepl.Replica(str(tmp_path / "arepl"), source.path)
    assert replica.sync()["error"] is None
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    signer_file = tmp_path / "signer.pem"
    signer_file.write_bytes(signer.public_key_pem())
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    for i, path in enumerate(swtpm.vendor_ca_files + other_swtpm.vendor_ca_files):
        shutil.copy(path, str(vendor / ("ca%d.pem" % i)))
    (tmp_path / "metrics").mkdir()
    cfg = {"db": replica.current_link, "ticket_key_file": str(key_file), "asset_signer_pub": str(signer_file),
           "vendor_ca_dir": str(vendor), "ek_trust": "vendor_ca", "used_ticket_dir": str(tmp_path / "used"),
           "metrics_dir": str(tmp_path / "metrics"), "server_name": "attest-a1", "monitoring_client_ca": cas["path"],
           "monitoring_clients": ["prometheus*"]}
    app = attest_app.create_app(cfg)
    return {"app": app, "cfg": cfg, "hash": h, "signer": signer.public_key_pem(),
            "prometheus": _cert_environ(cas["svc"], "prometheus.example.test")}


def transport(app):
    client = app.test_client()

    def call(path, body):
        resp = client.post(path, json=body)
        return resp.status_code, resp.get_json(silent=True)
    return call


def test_attestation_freshness_status_and_metrics(site, swtpm, other_swtpm):
    """A real attestation shows up in the per-host series and the status document; an unenrolled
    TPM's failure (anyone can make one) does not add a host."""
    call = transport(site["app"])
    with swtpm.open() as tpm:
        attest_client.attest(tpm, call, site["signer"])
    with other_swtpm.open() as tpm:
        with pytest.raises(attest_client.AttestServerError):
            attest_client.attest(tpm, call, site["signer"])
    client = site["app"].test_client()
    doc = client.get("/v1/status", environ_base=site["prometheus"]).get_json()
    assert doc["format"] == "hcp.core.attest.status" and doc["version"] == 1
    assert list(doc["hosts"]) == ["web1.example.test"]
    host = doc["hosts"]["web1.example.test"]
    assert host["last_result"] == "ok" and host["reason"] is None and host["ekpubhash"] == site["hash"]
    assert host["last_success"] == host["last_attempt"] > 0
    assert doc["server"]["name"] == "attest-a1" and doc["server"]["healthy"] and doc["server"]["generation"] >= 1
    text = client.get("/metrics", environ_base=site["prometheus"]).get_data(as_text=True)
    assert 'hcp_attest_host_last_ok{ekpubhash="%s",hostname="web1.example.test"} 1' % site["hash"] in text
    assert "hcp_attest_hosts 1" in text and "hcp_attest_host_series_dropped 0" in text
    assert 'hcp_http_requests_total{service="attest",endpoint="complete",code="200"} 1' in text
    assert re.search(r"^hcp_attest_snapshot_generation [1-9]", text, re.M)
    # a second worker process (a new store object on the same directory) sees the same hosts
    other = freshness.FreshnessStore(site["cfg"]["metrics_dir"])
    assert [row["hostname"] for row in other.hosts()] == ["web1.example.test"]
    # a failure claimed for the enrolled EK (authentic ticket) is recorded with its reason,
    # and never moves the last success
    attestor = site["app"].extensions["hcp_attest_monitoring"].attestor
    ticket = attestor.initiate(site["hash"])["ticket"]
    assert freshness.record_failure(other, attestor, {"ticket": ticket}, "quote_rejected", "quote <b>bad</b>")
    again = client.get("/v1/status", environ_base=site["prometheus"]).get_json()["hosts"]["web1.example.test"]
    assert again["last_result"] == "quote_rejected" and again["reason"] == "quote <b>bad</b>"
    assert again["last_success"] == host["last_success"]
    page = client.get("/status", environ_base=site["prometheus"])
    assert page.status_code == 200 and "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    body = page.get_data(as_text=True)
    assert "quote &lt;b&gt;bad&lt;/b&gt;" in body and "<b>bad" not in body


def test_monitoring_endpoints_check_the_caller(site, cas):
    """The attack: read host names and failure reasons without being a monitoring client of the
    site (no certificate, a host's certificate of the enrollment CA, a service certificate of the
    right CA but not a monitoring client). All 403 (per-host series left out of /metrics, whose
    counters stay readable as before); the local probe and the Prometheus certificate pass."""
    call = transport(site["app"])
    site["app"].extensions["hcp_attest_monitoring"].store.success(site["hash"], "web1.example.test")
    client = site["app"].test_client()
    refused = [{}, _cert_environ(cas["hosts"], "prometheus.example.test"), _cert_environ(cas["svc"], "enrollsvc"),
               {"SSL_CLIENT_VERIFY": "FAILED:unable to verify", "SSL_CLIENT_CERT": site["prometheus"]["SSL_CLIENT_CERT"]}]
    for environ in refused:
        for path in ("/v1/status", "/status"):
            response = client.get(path, environ_base=environ)
            assert response.status_code == 403, (path, environ.get("SSL_CLIENT_VERIFY"))
            assert "web1" not in response.get_data(as_text=True)
        text = client.get("/metrics", environ_base=environ).get_data(as_text=True)
        assert "hcp_attest_total" in text and "web1" not in text and "hcp_attest_host_last_ok" not in text
    for environ in (site["prometheus"], {"HCP_LOCAL_PROBE": "1"}):
        assert client.get("/v1/status", environ_base=environ).status_code == 200
        assert "web1.example.test" in client.get("/metrics", environ_base=environ).get_data(as_text=True)
    assert call("/v1/initiate", {"ekpubhash": site["hash"]})[0] == 200


def test_unknown_ek_flood_adds_no_host(site):
    """The attack: authentic tickets for 300 made-up EKs (initiate is open to anyone), each
    completed with a failure; the store stays empty, so the flood neither grows the per-host
    series nor evicts real hosts."""
    monitor = site["app"].extensions["hcp_attest_monitoring"]
    for i in range(300):
        ticket = monitor.attestor.initiate("%064x" % (i + 1))["ticket"]
        for result in ("not_enrolled", "ek_rejected", "quote_rejected"):
            assert not freshness.record_failure(monitor.store, monitor.attestor, {"ticket": ticket}, result, "x")
    assert monitor.store.hosts() == []
    # through the app as well: a complete with an authentic ticket of an unknown EK
    client = site["app"].test_client()
    ticket = client.post("/v1/initiate", json={"ekpubhash": "ab" * 32}).get_json()["ticket"]
    assert client.post("/v1/complete", json={"ticket": ticket, "ekpub": "x", "quote": {}}).status_code >= 400
    assert monitor.store.hosts() == []
    # a forged ticket names nobody
    assert not freshness.record_failure(monitor.store, monitor.attestor, {"ticket": "hcpt1.x.y"}, "pcr_policy", "x")


def test_store_and_series_are_bounded(tmp_path):
    store = freshness.FreshnessStore(str(tmp_path), max_hosts=3)
    for i in range(5):
        assert store.success("%064x" % i, "host%d" % i, now=1000 + i)
    assert [row["hostname"] for row in store.hosts()] == ["host2", "host3", "host4"] and store.evicted() == 2
    out = freshness.render_metrics(store, web_metrics.Exposition(), max_series=2).text()
    assert out.count("hcp_attest_host_last_ok{") == 2 and "hcp_attest_host_series_dropped 1" in out
    assert "hcp_attest_hosts_evicted_total 2" in out and 'hostname="host2"' in out and 'hostname="host4"' not in out
    assert not store.success("not-a-hash", "x") and not store.failure("A" * 64, "pcr_policy", "x")
    assert store.failure("%064x" % 99, "pcr_policy", "y" * 1000, now=2000)  # proves enrollment: recorded
    assert len([r for r in store.hosts() if r["reason"]][0]["reason"]) == freshness.MAX_REASON_CHARS + 3
    for bad in (0, -1, True, "10"):
        with pytest.raises(freshness.FreshnessError):
            freshness.FreshnessStore(None, max_hosts=bad)


def test_freshness_is_flushed_by_interval_and_before_reads(tmp_path):
    """Successes wait in the worker's memory (flush_interval), a worker's own read sees them at
    once, another worker's after the flush; a failure written meanwhile by another worker is
    never overwritten by an older pending success, and a failure sees its own worker's pending
    success (the enrolled-host check)."""
    one = freshness.FreshnessStore(str(tmp_path), flush_interval=3600)
    two = freshness.FreshnessStore(str(tmp_path), flush_interval=3600)
    h1, h2 = "1" * 64, "2" * 64
    assert one.success(h1, "first", now=100)  # the first write of a process goes at once
    assert one.success(h2, "second", now=110)  # pending
    assert [row["hostname"] for row in two.hosts()] == ["first"]
    assert [row["hostname"] for row in one.hosts()] == ["first", "second"]  # own read: flushed
    assert [row["hostname"] for row in two.hosts()] == ["first", "second"]
    assert one.success(h1, "first", now=200)  # pending, older than the failure below
    assert two.failure(h1, "quote_rejected", "bad quote", now=300)
    one.flush()
    row = [r for r in two.hosts() if r["ekpubhash"] == h1][0]
    assert row["last_success"] == 200 and row["last_attempt"] == 300 and row["last_result"] == "quote_rejected"
    h3 = "3" * 64
    assert one.success(h3, "third", now=400)  # pending
    assert one.failure(h3, "quote_rejected", "x", now=500)  # known through the pending success
    row = [r for r in two.hosts() if r["ekpubhash"] == h3][0]
    assert row["last_success"] == 400 and row["last_result"] == "quote_rejected" and one.write_errors == 0


def test_freshness_pending_successes_are_bounded(tmp_path):
    store = freshness.FreshnessStore(str(tmp_path), max_hosts=3, flush_interval=3600)
    for i in range(7):
        assert store.success("%064x" % i, "host%d" % i, now=1000 + i)
        assert len(store._pending) < 3  # pylint: disable=protected-access
    assert [row["hostname"] for row in store.hosts()] == ["host4", "host5", "host6"] and store.evicted() == 4


def test_freshness_and_counters_survive_a_clean_exit(site, tmp_path):
    """Two worker processes with a long flush interval: what each counted reaches the shared
    files at its clean exit (atexit), nothing lost; the app's /metrics and /v1/status sum them."""
    script = (
        "import sys\n"
        "from ansible_collections.hcp.core.plugins.module_utils.attestation import freshness\n"
        "from ansible_collections.hcp.core.plugins.module_utils.web.attest_app import Metrics\n"
        "metrics = Metrics(sys.argv[1], 3600)\n"
        "store = freshness.FreshnessStore(sys.argv[1], flush_interval=3600)\n"
        "for i in range(int(sys.argv[2])):\n"
        "    metrics.initiate()\n"
        "    metrics.observe('ok', 0.002)\n"
        "    store.success('%064x' % (i + int(sys.argv[3])), 'worker-host-%d' % (i + int(sys.argv[3])))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for count, first in ((5, 1), (7, 100)):
        done = subprocess.run([sys.executable, "-c", script, site["cfg"]["metrics_dir"], str(count), str(first)],
                              env=env, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    client = site["app"].test_client()
    text = client.get("/metrics", environ_base=site["prometheus"]).get_data(as_text=True)
    assert 'hcp_attest_total{result="ok"} 12' in text and "hcp_attest_initiate_total 12" in text
    assert "hcp_attest_hosts 12" in text and "hcp_attest_metrics_errors 0" in text
    doc = client.get("/v1/status", environ_base=site["prometheus"]).get_json()
    assert len(doc["hosts"]) == 12 and "worker-host-106" in doc["hosts"] and "worker-host-5" in doc["hosts"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_label_injection_is_escaped_promtool(tmp_path):
    """The attack: a host name (from an enrollment) and a reason that try to close the label and
    forge a series. promtool parses the exposition and finds only the real series."""
    store = freshness.FreshnessStore(None)
    evil = 'web9"} hcp_attest_host_last_ok{hostname="web1"} 1\nhcp_attest_hosts 0\\'
    store.success("cd" * 32, evil, now=1000)
    text = freshness.render_metrics(store, web_metrics.Exposition()).text()
    assert text.count("\nhcp_attest_hosts ") == 1 and "\nhcp_attest_host_last_ok{hostname" not in text
    assert sum(1 for line in text.splitlines() if line.startswith("hcp_attest_host_last_ok")) == 1
    proc = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert b"error" not in proc.stderr.lower() and b"error" not in proc.stdout.lower(), proc.stderr
    # what the host name becomes once parsed back: the same string
    line = [line for line in text.splitlines() if line.startswith("hcp_attest_host_last_ok")][0]
    label = re.search(r'hostname="((?:[^"\\]|\\.)*)"', line).group(1)
    assert label.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\") == evil.replace("\n", " ")  # stored names are one line


def test_request_counters_of_the_other_services(tmp_path, cas):
    """One helper for every service: the policy service and the control tower count requests by
    endpoint and code; their /metrics needs a monitoring client (403 for anyone else)."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"start": "a", "filters": {"a": {"action": "accept"}}}')
    policy = policy_app.create_app({"policy_file": str(policy_file), "service_client_ca": cas["path"]}).test_client()
    caller = _cert_environ(cas["svc"], "enrollsvc")
    assert policy.post("/run", json={"hookname": "h", "request_uid": "u", "params": {}}, environ_base=caller).status_code == 200
    assert policy.post("/run", json={"hookname": "h", "request_uid": "u", "params": {}}).status_code == 403
    assert policy.get("/nope").status_code == 404
    assert policy.get("/metrics").status_code == 403
    assert policy.get("/metrics", environ_base=_cert_environ(cas["hosts"], "web1.example.test")).status_code == 403
    text = policy.get("/metrics", environ_base=caller).get_data(as_text=True)
    for sample in ('hcp_http_requests_total{service="policy",endpoint="_run",code="200"} 1',
                   'hcp_http_requests_total{service="policy",endpoint="_run",code="403"} 1',
                   'hcp_http_requests_total{service="policy",endpoint="unmatched",code="404"} 1',
                   'hcp_http_requests_failed_total{service="policy",endpoint="_run"} 1'):
        assert sample in text
    store = tmp_path / "tower"
    tower = control_tower_app.create_app({"store": str(store), "operators": ["op"]}).test_client()
    assert tower.post("/v1/sites/s1/unwrap", json={}).status_code == 401
    assert tower.get("/metrics", environ_base=_cert_environ(cas["svc"], "prometheus")).status_code == 403  # no CA configured
    text = tower.get("/metrics", environ_base={"HCP_LOCAL_PROBE": "1"}).get_data(as_text=True)
    assert 'hcp_http_requests_total{service="control-tower",endpoint="unwrap",code="401"} 1' in text


def test_status_page_escapes_everything():
    """The attack: a host name and a failure reason carrying markup; the page holds them as text."""
    doc = {"server": {"name": "<i>a1</i>", "healthy": False, "snapshot_age_seconds": 5000, "replication_failures": 3},
           "hosts": {"<script>alert(1)</script>": {
               "ekpubhash": "ab" * 32, "last_success": None, "last_attempt": 10.0, "last_result": "pcr_policy",
               "reason": "<img src=x onerror=alert(2)>"}}}
    page = status_page.render([doc], now=100.0)
    assert "<script>alert" not in page and "<img src" not in page and "<i>a1" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert 'data-state="failed" data-count="1"' in page and "unhealthy" in page


def test_exposition_values():
    assert [web_metrics.format_value(v) for v in (None, 1, 2.5, float("nan"), float("inf"), True)] == [
        "NaN", "1", "2.5", "NaN", "+Inf", "1"]
    assert web_metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    with pytest.raises(ValueError):
        web_metrics.Exposition().family("x", "counter", "a").family("x", "gauge", "b")
    assert os.path.basename(web_metrics.__file__) == "metrics.py"
