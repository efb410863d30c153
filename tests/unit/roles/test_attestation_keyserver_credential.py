# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server credential wiring of roles hcp.core.attestation_server and
hcp.core.attestation_client, rendered by Ansible's own engine with the roles' defaults and vars:
the attestation service configuration names the credential CA files the role installs (or the
given paths, or none), and the real attestation app builds its credential issuer from it with
the CA that hcp.core.site_credentials made (a CA of its own, whose credentials the key-server
accepts as attested and the enrollment CA does not); the roles' argument checks refuse half
or mixed settings; the attester configuration carries keyserver_credential_dir and the real
attester accepts it."""
from __future__ import annotations

import datetime
import json
import os
import shutil

import pytest
import yaml
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import attester
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.web import attest_app
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

ROLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles")
SERVER = os.path.join(ROLES, "attestation_server")
CLIENT = os.path.join(ROLES, "attestation_client")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("site") / "pki")
    paths = pki.bootstrap_site_credentials(directory, "lab", ["enroll.example.test"], [], ca_kind="rsa-2048")["paths"]

    def read(label):
        with open(paths[label], "r", encoding="ascii") as handle:
            return handle.read()
    return {"paths": paths, "ca_cert": read("ca_cert"), "kscred_cert": read("kscred_ca_cert"), "kscred_key": read("kscred_ca_key"),
            "svc_cert": read("svc_ca_cert"), "signer_pub": read("signer_pub"), "tls_cert": read("server_cert"),
            "tls_key": read("server_key")}


def _server_vars(site, **overrides):
    values = {"attestation_server_erepl_url": "https://enroll.example.test:8443/erepl/db",
              "attestation_server_ca_cert": site["ca_cert"], "attestation_server_signer_public_key": site["signer_pub"],
              "attestation_server_tls_cert": site["tls_cert"], "attestation_server_tls_key": site["tls_key"],
              "attestation_server_erepl_client_cert": site["tls_cert"], "attestation_server_erepl_client_key": site["tls_key"],
              "attestation_server_ek_trust": "tofu"}
    values.update(overrides)
    return values


def _render(role, template, **variables):
    with open(os.path.join(role, "templates", template), "r", encoding="utf-8") as handle:
        source = handle.read()
    return json.loads(role_templar(role, **variables).template(trust_as_template(source)))


def _failed_checks(role, **variables):
    """The conditions of the role's argument check (its first task) that are false."""
    with open(os.path.join(role, "tasks", "main.yml"), "r", encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    check = next(t for t in tasks if "ansible.builtin.assert" in t and "fail_msg" in t["ansible.builtin.assert"])
    templar = role_templar(role, **variables)
    return [c for c in check["ansible.builtin.assert"]["that"] if not templar.template(trust_as_template("{{ %s }}" % c))]


def test_the_service_signs_credentials_with_the_installed_site_ca(site, tmp_path):
    key_file, cert_file = str(tmp_path / "kscred.key"), str(tmp_path / "kscred.pem")
    variables = _server_vars(site, attestation_server_keyserver_credential_ca_cert=site["kscred_cert"],
                             attestation_server_keyserver_credential_ca_key=site["kscred_key"],
                             __attestation_server_kscred_key=key_file, __attestation_server_kscred_cert=cert_file)
    assert _failed_checks(SERVER, **variables) == []
    config = _render(SERVER, "attest.json.j2", **variables)
    assert config["keyserver_credential_ca_key"] == key_file and config["keyserver_credential_ca_cert"] == cert_file
    assert config["keyserver_credential_minutes"] == 10
    # what the role's copy tasks write: the key 0600 (the app refuses a key others may read)
    shutil.copy(site["paths"]["kscred_ca_cert"], cert_file)
    shutil.copy(site["paths"]["kscred_ca_key"], key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(attest.AttestError, match="must not be readable by group or others"):
        attest_app._credential_issuer(config)  # pylint: disable=protected-access
    os.chmod(key_file, 0o600)
    issuer = attest_app._credential_issuer(config)  # pylint: disable=protected-access
    host_key = pki.new_private_key()
    credential = issuer.issue(host_key.public_key(), "https-client", "node1.example.test", lifetime=datetime.timedelta(minutes=10),
                              keyserver_binding={"profile": "vm", "measurement": None})
    enroll_ca = pki.load_certificates(site["ca_cert"])
    kscred = pki.load_certificates(site["kscred_cert"])
    assert pki.verify_keyserver_client(credential, enroll_ca, credential_anchors=kscred)["attested"]
    with pytest.raises(pki.CertificateVerifyError):
        pki.verify_keyserver_client(credential, enroll_ca)


def test_paths_or_nothing(site):
    config = _render(SERVER, "attest.json.j2", **_server_vars(site))
    assert config["keyserver_credential_ca_key"] is None and config["keyserver_credential_ca_cert"] is None
    assert attest_app._credential_issuer(config) is None  # pylint: disable=protected-access
    variables = _server_vars(site, attestation_server_keyserver_credential_ca_key_path="/srv/ca.key",
                             attestation_server_keyserver_credential_ca_cert_path="/srv/ca.pem")
    assert _failed_checks(SERVER, **variables) == []
    config = _render(SERVER, "attest.json.j2", **variables)
    assert config["keyserver_credential_ca_key"] == "/srv/ca.key" and config["keyserver_credential_ca_cert"] == "/srv/ca.pem"


@pytest.mark.parametrize("overrides", [
    {"attestation_server_keyserver_credential_ca_cert": "CERT"},  # the certificate without the key
    {"attestation_server_keyserver_credential_ca_key": "KEY"},  # the key without the certificate
    {"attestation_server_keyserver_credential_ca_key_path": "/srv/ca.key"},  # one path only
    {"attestation_server_keyserver_credential_ca_key_path": "srv/ca.key", "attestation_server_keyserver_credential_ca_cert_path": "srv/ca.pem"},
    {"attestation_server_keyserver_credential_minutes": 0},
    {"attestation_server_keyserver_credential_minutes": 61},
])
def test_half_or_bad_settings_are_refused(site, overrides):
    assert _failed_checks(SERVER, **_server_vars(site, **overrides))


def test_contents_and_paths_together_are_refused(site):
    variables = _server_vars(site, attestation_server_keyserver_credential_ca_cert=site["kscred_cert"],
                             attestation_server_keyserver_credential_ca_key=site["kscred_key"],
                             attestation_server_keyserver_credential_ca_key_path="/srv/ca.key",
                             attestation_server_keyserver_credential_ca_cert_path="/srv/ca.pem")
    assert _failed_checks(SERVER, **variables)


def _client_vars(site, **overrides):
    values = {"attestation_client_servers": ["https://attest.example.test:8444"], "attestation_client_ca_cert": site["ca_cert"],
              "attestation_client_signer_public_key": site["signer_pub"], "attestation_client_tcti": "", "swtpm_tcti": ""}
    values.update(overrides)
    return values


def test_the_attester_configuration_carries_the_credential_dir(site, tmp_path):
    for value, expected in (("", None), ("/var/lib/hcp/attester/keyserver-credential", "/var/lib/hcp/attester/keyserver-credential")):
        variables = _client_vars(site, attestation_client_keyserver_credential_dir=value)
        assert _failed_checks(CLIENT, **variables) == []
        config = _render(CLIENT, "attester.json.j2", **variables)
        assert config.get("keyserver_credential_dir") == expected
        path = tmp_path / "attester.json"
        path.write_text(json.dumps(config))
        assert attester.load_config(str(path)).get("keyserver_credential_dir") == expected
    for bad in ("relative/dir", "/var/lib/hcp", "/var/lib/x\n", "/var/lib/x y"):
        assert _failed_checks(CLIENT, **_client_vars(site, attestation_client_keyserver_credential_dir=bad)), bad
