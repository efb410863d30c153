# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory plugin hcp.core.enrollments run for real: ansible-inventory --graph / --list on a
git enrollment DB written by the enrollment pipeline (simulated EKs, real generators, sealing and
signing), on the enrollment API over TLS with a client certificate, with attestation status files,
a reference inventory, the cache, and the secrets of the entries kept out of the output."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import fleet
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_from_key, ek_public_pem
from ansible_collections.hcp.core.tests.unit.helpers import serve_wsgi

DB_SECRET = b"hcp-inventory-db-pw-7e1f00d5"
PROFILE = {"assets": ["hostname", "rootfs-key", "secrets", "reenroll-hint"], "secrets": ["db-password"], "reenroll": {"days": 7}}
HOSTS = ("fresh.example.test", "old.example.test", "failed.example.test", "never.example.test", "gone.example.test")


def _collections():
    path = os.path.abspath(fleet.__file__)
    for _dummy in range(7):  # <here>/ansible_collections/hcp/core/plugins/module_utils/enrollment/fleet.py
        path = os.path.dirname(path)
    return path


def _ansible(tool, *args, cwd):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections(), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="true", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), tool)] + list(args), cwd=str(cwd), env=env,
                          capture_output=True, timeout=300, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _plain(value):
    """ansible-inventory --list marks strings from an inventory source unsafe ({"__ansible_unsafe": s})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return dict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _config():
    ca_key, ca_cert = pki.create_ca("HCP test fleet CA")
    return enroll.EnrollmentConfig(pki.Issuer(ca_key, [ca_cert]), pki.Signer(pki.new_private_key("ec-p256")),
                                   postclient={"seal_policy": {"type": "none"}}, ek_trust="tofu",
                                   secrets={"db-password": DB_SECRET})


def _enroll(db, config, hostname, profile=None):
    ek = ek_public_pem(ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key()))
    h, host, files, _summary = enroll.build_entry(config, ek, hostname, profile or PROFILE)
    enroll.store_entry(db, config, h, host, files)
    return h


@pytest.fixture
def fleet_db(tmp_path):
    """A git enrollment DB with HOSTS enrolled by the pipeline; status.json (hcp.core.attest.status v1)."""
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    config = _config()
    hashes = dict((host, _enroll(db, config, host)) for host in HOSTS)
    now = time.time()
    stamp = fleet.format_time
    (tmp_path / "status.json").write_text(json.dumps({"format": "hcp.core.attest.status", "version": 1, "hosts": {
        "fresh.example.test": {"last_success": stamp(now - 60), "last_result": "ok"},
        "old.example.test": {"last_success": stamp(now - 3 * 86400), "last_result": "ok"},
        "failed.example.test": {"last_success": stamp(now - 120), "last_attempt": stamp(now - 10),
                                "last_result": "quote_mismatch",
                                "reason": "PCR 7 differs {{ lookup('ansible.builtin.pipe', 'touch %s') }}" % (tmp_path / "pwned")},
        "gone.example.test": {"last_success": stamp(now - 30), "last_result": "ok"},
    }}))
    (tmp_path / "site.yml").write_text(
        "all:\n  children:\n    tpm_hosts:\n      hosts:\n"
        "        fresh.example.test: {}\n        old.example.test: {}\n        failed.example.test: {}\n"
        "        never: {enroll_hostname: never.example.test}\n    other:\n      hosts:\n        gone.example.test: {}\n")
    return {"db": db, "config": config, "hashes": hashes, "dir": tmp_path}


def _write(path, **options):
    path.write_text(json.dumps(dict({"plugin": "hcp.core.enrollments"}, **options)))
    return str(path)


def test_graph_and_list_from_the_db(fleet_db):
    tmp = fleet_db["dir"]
    source = _write(tmp / "fleet.enrollments.yml", db_path=fleet_db["db"].path, attestation_status=[str(tmp / "status.json")],
                    stale_after="1d", reference_inventory=str(tmp / "site.yml"),
                    keyed_groups=[{"key": "hcp_attestation.state", "prefix": "state"}])
    code, out, err = _ansible("ansible-inventory", "-i", source, "--graph", cwd=tmp)
    assert code == 0, err
    for line in ("@attested:", "@stale:", "@failed:", "@unenrolled_in_inventory:", "@state_attested:"):
        assert line in out
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code == 0, err
    listing = _plain(json.loads(out))
    members = dict((g, sorted(listing.get(g, {}).get("hosts", []))) for g in ("attested", "stale", "failed", "unenrolled_in_inventory"))
    assert members == {"attested": ["fresh.example.test", "gone.example.test"], "stale": ["never.example.test", "old.example.test"],
                       "failed": ["failed.example.test"], "unenrolled_in_inventory": ["gone.example.test"]}
    hostvars = listing["_meta"]["hostvars"]
    assert sorted(hostvars) == sorted(HOSTS)
    failed = hostvars["failed.example.test"]
    assert failed["hcp_ekpubhash"] == fleet_db["hashes"]["failed.example.test"]
    assert failed["hcp_attestation"]["state"] == "failed" and failed["hcp_attestation"]["reason"].startswith("PCR 7 differs {{")
    # the client profile's white-listed members (seal_policy here comes from the server's postclient, not the client)
    assert failed["hcp_enrollment"]["profile"] == {"assets": PROFILE["assets"], "reenroll": {"days": 7}}
    assert failed["hcp_enrollment"]["manifest"]["seal_policy"] == {"type": "none"}
    assert failed["hcp_enrollment"]["manifest"]["operation"] == "add" and failed["hcp_enrollment"]["manifest"]["generation"] >= 2
    # no secret, no secret's name, no sealed asset or key anywhere in the output
    for forbidden in (DB_SECRET.decode(), "db-password", ".sealed", "PRIVATE KEY"):
        assert forbidden not in out


def test_status_text_is_never_templated(fleet_db):
    """The attack: an attestation status document (written by a server, fetched over the network) whose
    reason is a Jinja expression running a command when a play templates the host variable."""
    tmp = fleet_db["dir"]
    source = _write(tmp / "play.enrollments.yml", db_path=fleet_db["db"].path, attestation_status=[str(tmp / "status.json")])
    (tmp / "play.yml").write_text("- hosts: failed\n  gather_facts: false\n  tasks:\n"
                                  "    - ansible.builtin.debug:\n        msg: 'reason: {{ hcp_attestation.reason }}'\n")
    code, out, err = _ansible("ansible-playbook", "-c", "local", "-i", source, str(tmp / "play.yml"), cwd=tmp)
    assert code == 0, out + err
    assert "reason: PCR 7 differs {{ lookup(" in out and not (tmp / "pwned").exists()


def test_refused_profile_field_and_bad_sources(fleet_db):
    tmp = fleet_db["dir"]
    source = _write(tmp / "a.enrollments.yml", db_path=fleet_db["db"].path, profile_fields=["assets", "secrets"])
    code, _out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code != 0 and "secrets" in err
    source = _write(tmp / "b.enrollments.yml", db_path=fleet_db["db"].path, url="https://localhost:1")
    code, _out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code != 0 and "exactly one of db_path and url" in err
    (tmp / "evil.json").write_text('{"format": "hcp.core.attest.status", "version": 1, "hosts": {"x": ' * 50)
    source = _write(tmp / "c.enrollments.yml", db_path=fleet_db["db"].path, attestation_status=[str(tmp / "evil.json")])
    code, _out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code != 0 and "attestation status file" in err
    source = _write(tmp / "d.enrollments.yml", db_path=str(tmp / "status.json"))
    code, _out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code != 0 and "not an enrollment DB" in err


def test_cache_serves_the_cached_fleet_until_flushed(fleet_db):
    tmp = fleet_db["dir"]
    source = _write(tmp / "cached.enrollments.yml", db_path=fleet_db["db"].path, cache=True, cache_plugin="ansible.builtin.jsonfile",
                    cache_connection=str(tmp / "cache"), cache_timeout=3600)
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code == 0 and "late.example.test" not in out, err
    cached = os.listdir(str(tmp / "cache"))
    assert cached and "db-password" not in (tmp / "cache" / cached[0]).read_text()
    _enroll(fleet_db["db"], fleet_db["config"], "late.example.test")
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp)
    assert code == 0 and "late.example.test" not in out, err
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", "--flush-cache", cwd=tmp)
    assert code == 0 and "late.example.test" in json.loads(out)["_meta"]["hostvars"], err


def test_api_source_over_mtls(enroll_server, tmp_path):
    client, paths = enroll_server["client"], enroll_server["paths"]
    for host in ("api1.example.test", "api2.example.test"):
        ek = ek_public_pem(ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key()))
        client.add(ek, host, {"assets": ["hostname"], "reenroll": {"days": 3}})
    status = json.dumps({"format": "hcp.core.attest.status", "version": 1, "hosts": {
        "api1.example.test": {"last_success": fleet.format_time(time.time() - 5), "last_result": "ok"}}}).encode()

    def status_app(environ, start_response):  # an attestation server's status document, client certificate required
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(status)))])
        return [status]
    stack = contextlib.ExitStack()
    status_url = stack.enter_context(serve_wsgi(status_app, paths["server_cert"], paths["server_key"], client_ca=paths["svc_ca_cert"]))
    options = dict(url=enroll_server["url"], ca_file=paths["ca_cert"], reference_hosts=["api1.example.test"],
                   attestation_status=[status_url + "/v1/status"])
    source = _write(tmp_path / "api.enrollments.yml", client_cert=paths["client_orchestrator_cert"],
                    client_key=paths["client_orchestrator_key"], **options)
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp_path)
    assert code == 0, err
    listing = _plain(json.loads(out))
    assert listing["unenrolled_in_inventory"]["hosts"] == ["api2.example.test"]
    assert listing["_meta"]["hostvars"]["api1.example.test"]["hcp_enrollment"]["profile"]["reenroll"] == {"days": 3}
    assert listing["attested"]["hosts"] == ["api1.example.test"] and listing["stale"]["hosts"] == ["api2.example.test"]
    # without the client certificate the TLS server refuses the connection: the source fails, no host
    source = _write(tmp_path / "nocert.enrollments.yml", **options)
    code, out, err = _ansible("ansible-inventory", "-i", source, "--list", cwd=tmp_path)
    stack.close()
    assert code != 0 and "cannot reach the enrollment service" in err


def test_ansible_doc_renders(tmp_path):
    code, out, err = _ansible("ansible-doc", "-t", "inventory", "hcp.core.enrollments", cwd=tmp_path)
    assert code == 0, err
    assert "unenrolled_in_inventory" in out and "stale_after" in out
