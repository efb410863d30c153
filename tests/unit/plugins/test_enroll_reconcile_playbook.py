# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reconciliation for real: playbooks/enroll.yml --tags reconcile run by ansible-playbook (connection
local) against the enrollment app over TLS with the orchestrator's service-client certificate
(passed on the way nginx does), on a git DB enrolled through the API: check mode lists and removes
nothing, the cap fails the run before any removal, the real run removes one commit per host
recorded with the caller's subject, and a second run changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.enrollment import fleet
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_from_key, ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app
from ansible_collections.hcp.core.tests.unit.helpers import NginxLikeHandler, serve_wsgi

INVENTORY = """
all:
  children:
    tpm_hosts:
      hosts:
        keep.example.test: {}
        k2: {enroll_hostname: Kept2.example.test.}
    other:
      hosts:
        old3.example.test: {}
    retired: {}
"""
OLD = ["old1.example.test", "old2.example.test", "old3.example.test"]


def _collections():
    path = os.path.abspath(fleet.__file__)
    for _dummy in range(7):  # <here>/ansible_collections/hcp/core/plugins/module_utils/enrollment/fleet.py
        path = os.path.dirname(path)
    return path


@pytest.fixture
def site(tmp_path):
    """The enrollment app requiring the orchestrator's service-client certificate, five hosts enrolled."""
    paths = pki.bootstrap_site_credentials(str(tmp_path / "cred"), "t", ["localhost"], ["orchestrator"])["paths"]
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    app = create_app({"db": db.path, "credentials_dir": str(tmp_path / "cred"), "service_client_ca": paths["svc_ca_cert"],
                      "authorized_clients": ["orchestrator"], "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}}})
    with serve_wsgi(app, paths["server_cert"], paths["server_key"], client_ca=paths["svc_ca_cert"], request_handler=NginxLikeHandler) as url:
        client = EnrollmentClient(url, paths["ca_cert"], paths["client_orchestrator_cert"], paths["client_orchestrator_key"])
        for host in ["keep.example.test", "kept2.example.test"] + OLD:
            client.add(ek_public_pem(ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key())), host, {"assets": ["hostname"]})
        (tmp_path / "hosts.yml").write_text(INVENTORY)
        yield {"url": url, "paths": paths, "db": db, "client": client, "dir": tmp_path}


def _reconcile(site, *args):
    tmp, paths = site["dir"], site["paths"]
    extra = {"enroll_reconcile": True, "enroll_api_host": "localhost", "enroll_url": site["url"], "enroll_ca_file": paths["ca_cert"],
             "enroll_client_cert": paths["client_orchestrator_cert"], "enroll_client_key": paths["client_orchestrator_key"],
             "ansible_python_interpreter": sys.executable}
    (tmp / "extra.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections(), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="false")
    env.pop("ANSIBLE_CONFIG", None)
    playbook = os.path.join(_collections(), "ansible_collections", "hcp", "core", "playbooks", "enroll.yml")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-c", "local", "-i", str(tmp / "hosts.yml"),
                           "--tags", "reconcile", "-e", "@%s" % (tmp / "extra.json")] + list(args) + [playbook],
                          cwd=str(tmp), env=env, capture_output=True, timeout=300, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def _hosts(db):
    return sorted(e["hostname"] for e in db.query("", nofiles=True))


def test_reconcile_playbook(site):
    db = site["db"]
    head = db.head()
    code, out = _reconcile(site, "--check")
    assert code == 0, out
    assert "would unenroll ['old1.example.test', 'old2.example.test', 'old3.example.test']" in out
    assert db.head() == head

    code, out = _reconcile(site, "-e", "enroll_reconcile_max_removals=2")
    assert code != 0 and "3 enrolled hosts are not in the inventory, more than max_removals=2: nothing removed" in out, out
    code, out = _reconcile(site, "--check", "-e", "enroll_reconcile_max_removals=2")
    assert code != 0 and "nothing removed" in out, out
    assert db.head() == head and len(_hosts(db)) == 5

    code, out = _reconcile(site)
    assert code == 0, out
    assert "unenrolled ['old1.example.test', 'old2.example.test', 'old3.example.test']" in out
    assert _hosts(db) == ["keep.example.test", "kept2.example.test"]
    deletes = [c["message"] for c in db.log(limit=3)]
    assert len(deletes) == 3 and all(m.startswith("delete: ") and " by " in m and "CN=orchestrator" in m for m in deletes), deletes

    head = db.head()
    code, out = _reconcile(site)
    assert code == 0 and "unenrolled []" in out and "changed=0" in out, out
    assert db.head() == head


def test_reconcile_refuses_an_empty_inventory_group(site):
    code, out = _reconcile(site, "-e", "enroll_hosts=retired", "-e", "enroll_reconcile_max_removals=100")
    assert code != 0 and "refusing to unenroll every enrolled host" in out, out
    assert len(_hosts(site["db"])) == 5


def test_reconcile_scope(site):
    code, out = _reconcile(site, "-e", r"enroll_reconcile_scope=^old[12]\.")
    assert code == 0 and "unenrolled ['old1.example.test', 'old2.example.test']" in out, out
    assert "old3.example.test" in _hosts(site["db"])
