# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures serving the collection's apps on loopback for the module_utils, modules and lookup
tests: an enrolled attestation site (plain HTTP), the enrollment app and the control tower app (TLS,
client certificates)."""

from __future__ import annotations

import ssl

import pytest

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.web import control_tower_app
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app as create_enroll_app
from ansible_collections.hcp.core.tests.unit.helpers import AttestSite, NginxLikeHandler, serve_wsgi


@pytest.fixture(autouse=True)
def attest_state_dir(tmp_path, monkeypatch):
    """The default generation memory of the attest module and the attested_secret lookup (for
    root: /var/lib/hcp/attester of this machine) moved to the test's directory."""
    path = str(tmp_path / "attest-state")
    monkeypatch.setattr(attest_client, "default_state_dir", lambda: path)
    return path


@pytest.fixture
def attest_site(swtpm, tmp_path):
    """An AttestSite: the session swtpm enrolled (ATTEST_PROFILE, no seal policy) and the
    attestation app serving it on http://127.0.0.1:<port> (attest_site.url)."""
    value = AttestSite(swtpm, tmp_path)
    yield value
    value.close()


@pytest.fixture
def enroll_server(tmp_path, swtpm):
    """The enrollment app over TLS on https://localhost:<port>, client certificates required, with
    an empty git DB: a dict with "client" (an EnrollmentClient as the orchestrator), "url", "paths"
    (the site credentials), "ek" (the session swtpm's EK public key, PEM) and "db"."""
    paths = pki.bootstrap_site_credentials(str(tmp_path / "cred"), "t", ["localhost"], ["orchestrator"])["paths"]
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    app = create_enroll_app({"db": db.path, "credentials_dir": str(tmp_path / "cred"), "require_client_cert": False, "ek_trust": "tofu",
                             "postclient": {"seal_policy": {"type": "none"}}})
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
    with serve_wsgi(app, paths["server_cert"], paths["server_key"], client_ca=paths["svc_ca_cert"]) as url:
        client = EnrollmentClient(url, paths["ca_cert"], paths["client_orchestrator_cert"], paths["client_orchestrator_key"],
                                  timeout=30)
        yield {"client": client, "url": url, "paths": paths, "ek": ek, "db": db}


@pytest.fixture
def control_tower(tmp_path):
    """The control tower app (operator "operator") over TLS on https://localhost:<port>, client
    certificates optional and passed on the way nginx does: a dict of the module options reaching
    it as the operator, "url", "ca_file", "client_cert" and "client_key"."""
    creds = pki.bootstrap_site_credentials(str(tmp_path / "cred"), "t", ["localhost"], ["operator"])["paths"]
    app = control_tower_app.create_app({"store": str(tmp_path / "store"), "operators": ["operator"]})
    with serve_wsgi(app, creds["server_cert"], creds["server_key"], client_ca=creds["svc_ca_cert"], verify_mode=ssl.CERT_OPTIONAL,
                    request_handler=NginxLikeHandler) as url:
        yield {"url": url, "ca_file": creds["ca_cert"], "client_cert": creds["client_operator_cert"],
               "client_key": creds["client_operator_key"]}
