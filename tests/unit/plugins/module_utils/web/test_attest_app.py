# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attestation API through Flask's test client: a real swtpm client, a real enrolled
entry in a git DB replicated by arepl, ticket key and asset signer from files."""
from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shutil
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import replica as arepl
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.tpm import quote as quote_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.web.attest_app import LATENCY_BUCKETS, Metrics, create_app
from ansible_collections.hcp.core.tests.unit.helpers import serve_wsgi


@pytest.fixture
def site(tmp_path, swtpm, other_swtpm):
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
        (vendor / ("ca%d.pem" % i)).write_bytes(open(path, "rb").read())
    cfg = {"db": replica.current_link, "ticket_key_file": str(key_file), "asset_signer_pub": str(signer_file),
           "vendor_ca_dir": str(vendor), "ek_trust": "vendor_ca", "used_ticket_dir": str(tmp_path / "used"),
           "max_content_length": 64 * 1024, "metrics_dir": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    return {"app": create_app(cfg), "hash": h, "signer": signer.public_key_pem(), "replica": replica, "source": source,
            "metrics_dir": str(tmp_path / "metrics")}


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
    assert "hcp_attest_metrics_errors 0" in metrics
    own = os.path.join(site["metrics_dir"], "%d.json" % os.getpid())
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o640
    with open(own, "rb") as handle:
        saved = json.load(handle)
    assert saved["results"]["ok"] == 1 and saved["count"] == 2 and saved["initiated"] == 2
    health = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"})
    assert health.status_code == 200 and health.get_json()["head"] == site["source"].head()
    assert health.get_json()["status"] == "ok"
    assert client.get("/healthcheck").get_json() == {"status": "ok"}  # anonymous: the status only


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
    health = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"}).get_json()
    assert health["consecutive_failures"] == 1 and health["last_error"]
    assert "hcp_attest_replication_failures 1" in client.get("/metrics").get_data(as_text=True)
    # through nginx (anonymous): no path, no error text, no head
    anonymous = client.get("/healthcheck")
    assert anonymous.get_json() == {"status": "ok"}
    assert str(tmp_path) not in anonymous.get_data(as_text=True)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "/" + "tmp" not in metrics and str(tmp_path) not in metrics and "error" not in metrics.replace(
        "hcp_attest_metrics_errors", "").replace('result="error"', "")


def test_broken_snapshot_health_is_anonymous(tmp_path, caplog):
    """The DB is missing: anonymous callers get 503 {"status": "unavailable"} with no path and
    no exception text; the local probe and the log get the details."""
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    state = tmp_path / "arepl" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"format": arepl.STATE_FORMAT, "version": arepl.STATE_VERSION, "last_attempt": 1, "last_success": 1,
                                 "consecutive_failures": 3,
                                 "last_error": "git fetch failed: %s/secret-layout/db: No such file" % tmp_path}))
    app = create_app({"db": str(tmp_path / "missing" / "current"), "ticket_key_file": str(key_file),
                      "arepl_state": str(state), "ek_trust": "tofu"})
    client = app.test_client()
    with caplog.at_level("WARNING"):
        anonymous = client.get("/healthcheck")
    assert anonymous.status_code == 503 and anonymous.get_json() == {"status": "unavailable"}
    text = anonymous.get_data(as_text=True)
    assert str(tmp_path) not in text and "secret-layout" not in text and "fetch" not in text
    assert "secret-layout" in caplog.text  # the operator finds it in the log
    local = client.get("/healthcheck", environ_base={"HCP_LOCAL_PROBE": "1"})
    assert local.status_code == 503 and "secret-layout" in local.get_json()["last_error"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert str(tmp_path) not in metrics and "secret-layout" not in metrics
    # a header cannot pass for the local probe
    forged = client.get("/healthcheck", headers={"HCP-LOCAL-PROBE": "1", "HCP_LOCAL_PROBE": "1"})
    assert forged.get_json() == {"status": "unavailable"}


def test_missing_snapshot_is_503(tmp_path):
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    app = create_app({"db": str(tmp_path / "none" / "current"), "ticket_key_file": str(key_file), "ek_trust": "tofu"})
    client = app.test_client()
    assert client.get("/healthcheck").status_code == 503
    started = client.post("/v1/initiate", json={"ekpubhash": "0" * 64})
    assert started.status_code == 200 and json.loads(started.data)["ticket"].startswith("hcpt1.")


def test_attest_over_real_tls(site, swtpm, tmp_path):
    creds = pki.bootstrap_site_credentials(str(tmp_path / "tls"), "test", ["localhost"], [])["paths"]
    with serve_wsgi(site["app"], creds["server_cert"], creds["server_key"]) as url:
        with swtpm.open() as tpm:
            result = attest_client.attest(tpm, url, site["signer"], ca_file=creds["ca_cert"], timeout=30)
            assert len(result["assets"]["rootfs.key"]) == 64
            with pytest.raises(attest_client.AttestClientError, match="cannot reach"):
                attest_client.attest(tpm, url, site["signer"], timeout=30)  # server CA not trusted


def samples(text):
    """{metric line name with labels: value} of a Prometheus text exposition."""
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def _worker(directory, results, queue):
    metrics = Metrics(directory)
    for result, seconds in results:
        metrics.initiate()
        metrics.observe(result, seconds)
    # a worker's clean exit runs Metrics.flush (atexit: test_clean_exit_loses_nothing); a
    # multiprocessing child leaves with os._exit, so it flushes here
    metrics.flush()
    queue.put(os.getpid())


def _run_workers(directory, jobs):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(directory, job, queue)) for job in jobs]
    for proc in procs:
        proc.start()
    pids = [queue.get(timeout=60) for _p in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return pids


def test_metrics_are_summed_over_processes_dead_ones_included(tmp_path):
    directory = str(tmp_path)
    pids = _run_workers(directory, [[("ok", 0.002), ("replay", 0.03)], [("ok", 0.7), ("ok", 5.0), ("error", 0.0005)]])
    assert sorted(os.listdir(directory)) == sorted("%d.json" % pid for pid in pids)
    # both workers have exited: their counts stay (a respawned worker must not reset them)
    scraper = Metrics(directory)
    scraper.observe("not_enrolled", 0.01)
    got = samples(scraper.render({}))
    assert got['hcp_attest_total{result="ok"}'] == "3"
    assert got['hcp_attest_total{result="replay"}'] == "1" and got['hcp_attest_total{result="error"}'] == "1"
    assert got['hcp_attest_total{result="not_enrolled"}'] == "1"
    assert got["hcp_attest_initiate_total"] == "5" and got["hcp_attest_complete_seconds_count"] == "6"
    assert got['hcp_attest_complete_seconds_bucket{le="0.001"}'] == "1"
    assert got['hcp_attest_complete_seconds_bucket{le="0.01"}'] == "3"
    assert got['hcp_attest_complete_seconds_bucket{le="1.0"}'] == "5"
    assert got['hcp_attest_complete_seconds_bucket{le="2.5"}'] == "5"
    assert got['hcp_attest_complete_seconds_bucket{le="+Inf"}'] == "6"
    assert abs(float(got["hcp_attest_complete_seconds_sum"]) - 5.7425) < 1e-6
    assert got["hcp_attest_metrics_errors"] == "0"
    # any other process renders the same sum
    assert samples(Metrics(directory).render({}))["hcp_attest_complete_seconds_count"] == "6"


def test_metrics_are_flushed_by_interval_and_before_reads(tmp_path):
    """A worker writes its file at most every flush_interval (not per request), and before it
    answers a read; other processes' counts are summed from their flushed files."""
    directory = str(tmp_path)
    metrics = Metrics(directory, 3600)
    own = os.path.join(directory, "%d.json" % os.getpid())
    metrics.observe("ok", 0.002)  # the first write of a process goes at once
    metrics.observe("ok", 0.002)
    metrics.initiate()
    assert json.loads(open(own, "rb").read())["count"] == 1  # pylint: disable=consider-using-with
    _run_workers(directory, [[("replay", 0.03)], [("ok", 0.7), ("ok", 0.1)]])  # they flush at exit
    got = samples(metrics.render({}))
    assert got['hcp_attest_total{result="ok"}'] == "4" and got['hcp_attest_total{result="replay"}'] == "1"
    assert got["hcp_attest_initiate_total"] == "4" and got["hcp_attest_complete_seconds_count"] == "5"
    saved = json.loads(open(own, "rb").read())  # pylint: disable=consider-using-with
    assert saved["count"] == 2 and saved["initiated"] == 1
    with pytest.raises(attest.AttestError, match="metrics_flush_interval"):
        create_app({"db": "x", "ticket_key_file": "x", "metrics_flush_interval": -1})


def test_corrupt_metrics_files_are_skipped_and_counted(tmp_path):
    _run_workers(str(tmp_path), [[("ok", 0.1)]])
    (tmp_path / "1.json").write_text("{not json")
    (tmp_path / "2.json").write_text(json.dumps({"results": {"ok": 5}, "initiated": 5, "buckets": [1, 2],
                                                 "count": 5, "sum": 1.0}))
    (tmp_path / "3.json").write_text(json.dumps({"results": {"ok": -4}, "initiated": 0, "buckets": [0] * len(LATENCY_BUCKETS),
                                                 "count": 0, "sum": 0.0}))
    (tmp_path / ".3.json.tmp").write_text("a temporary file of atomic_write")
    got = samples(Metrics(str(tmp_path)).render({}))
    assert got['hcp_attest_total{result="ok"}'] == "1" and got["hcp_attest_complete_seconds_count"] == "1"
    assert got["hcp_attest_metrics_errors"] == "3"


def test_forked_child_does_not_count_its_parents_observations(tmp_path):
    parent = Metrics(str(tmp_path))
    parent.observe("ok", 0.1)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=parent.observe, args=("replay", 0.1))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and len(os.listdir(str(tmp_path))) == 2
    got = samples(parent.render({}))
    assert got['hcp_attest_total{result="ok"}'] == "1" and got['hcp_attest_total{result="replay"}'] == "1"
    assert got["hcp_attest_complete_seconds_count"] == "2"


def test_a_reused_pid_continues_from_the_dead_process_file(tmp_path):
    dead = {"results": {"ok": 7, "replay": 1}, "initiated": 9, "buckets": [0] * (len(LATENCY_BUCKETS) - 1) + [8],
            "count": 8, "sum": 16.0}
    (tmp_path / ("%d.json" % os.getpid())).write_text(json.dumps(dead))
    metrics = Metrics(str(tmp_path))
    metrics.observe("ok", 0.002)
    got = samples(metrics.render({}))
    assert got['hcp_attest_total{result="ok"}'] == "8" and got["hcp_attest_complete_seconds_count"] == "9"
    assert got['hcp_attest_complete_seconds_bucket{le="2.5"}'] == "9" and got["hcp_attest_initiate_total"] == "9"
    with open(str(tmp_path / ("%d.json" % os.getpid())), "rb") as handle:
        assert json.load(handle)["results"]["ok"] == 8


def test_unwritable_metrics_dir_keeps_counting_in_memory(tmp_path):
    metrics = Metrics(str(tmp_path / "missing"))
    metrics.observe("ok", 0.1)
    metrics.initiate()
    got = samples(metrics.render({}))
    assert got['hcp_attest_total{result="ok"}'] == "1" and got["hcp_attest_initiate_total"] == "1"
    assert got["hcp_attest_metrics_errors"] == "3"  # two failed writes and the unreadable directory


def test_without_metrics_dir_counts_in_memory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = Metrics()
    metrics.observe("ok", 0.1)
    text = metrics.render({"age_seconds": None})
    assert samples(text)['hcp_attest_total{result="ok"}'] == "1" and "hcp_attest_metrics_errors" not in text
    assert os.listdir(str(tmp_path)) == []


@pytest.fixture
def bare_app(tmp_path):
    """The attestation app over an empty DB (initiate needs none; these requests never reach it)."""
    key_file = tmp_path / "ticket.key"
    attest.write_ticket_key_file(str(key_file))
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    used = tmp_path / "used"
    app = create_app({"db": db.path, "ticket_key_file": str(key_file), "used_ticket_dir": str(used),
                      "max_content_length": 64 * 1024, "ek_trust": "tofu"})
    return app.test_client(), used


def test_initiate_refuses_a_hash_with_a_trailing_newline(bare_app):
    """EKPUBHASH_RE ended in $, which matches before a final newline: '<64 hex>\\n' got a ticket."""
    client, _used = bare_app
    for bad in ("0" * 64 + "\n", "0" * 64 + "\r\n", "\n" + "0" * 64, "0" * 63 + "\n"):
        response = client.post("/v1/initiate", json={"ekpubhash": bad})
        assert response.status_code == 400 and "ticket" not in response.get_json(), repr(bad)
    assert client.post("/v1/initiate", json={"ekpubhash": "0" * 64}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/initiate", "/v1/complete"])
@pytest.mark.parametrize("body", [
    "[" * 20000 + "]" * 20000,
    '{"ekpubhash": %s, "ticket": "x"}' % ("[" * 20000 + "]" * 20000),
    '{"ekpubhash": NaN, "ticket": NaN}',
    '{"ekpubhash": 1e400, "ticket": -Infinity}',
    '{"ekpubhash": %s}' % ("9" * 5000),
    '{"ekpubhash": "\\udc00", "ticket": "\\ud800"}',
    b'{"ekpubhash": "\xff"}',
])
def test_hostile_json_bodies_are_400(bare_app, path, body):
    """Deep documents made get_json raise RecursionError (a 500); odd numbers and lone
    surrogates reached the attestor. All are a 400 JSON error now, and nothing is recorded."""
    client, used = bare_app
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400 and response.is_json, (response.status_code, response.data[:200])
    assert len(response.data) < 600
    assert not used.exists() or os.listdir(used) == ["FORMAT"]  # no ticket consumed (FORMAT: the store marker)
