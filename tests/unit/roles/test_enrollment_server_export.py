# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role hcp.core.enrollment_server's export to the controller (tasks/export.yml), rendered by
Ansible's own engine with the role's defaults and vars over the result of a real
pki.bootstrap_site_credentials (what hcp.core.site_credentials returns): the key-server
credential CA's certificate is exported as kscred-ca.pem beside ca.pem and svc-ca.pem, never its
key (no private key in any exported file), and nothing for it while the CA does not exist
(check mode on a new site)."""
from __future__ import annotations

import os

import yaml
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "enrollment_server")


def _exported(creds):
    """{file name: content} the export task writes for the site_credentials result ``creds``."""
    with open(os.path.join(ROLE, "tasks", "export.yml"), "r", encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    task = next(t for t in tasks if t["name"].startswith("Export the CA certificates"))
    facts = {"enrollment_server_ca_cert": creds["ca_cert"], "enrollment_server_svc_ca_cert": creds["svc_ca_cert"],
             "enrollment_server_signer_public_key": creds["signer_public_key"], "__enrollment_server_creds": creds}
    task_vars = role_templar(ROLE, **facts).template(dict((k, trust_as_template(v)) for k, v in task["vars"].items()))
    templar = role_templar(ROLE, **dict(facts, **task_vars))
    assert templar.template(trust_as_template("{{ %s }}" % task["when"]))
    items = templar.template(trust_as_template(task["loop"]))
    return dict((item["name"], item["content"]) for item in items)


def _read(path):
    with open(path, "r", encoding="ascii") as handle:
        return handle.read()


def test_the_credential_ca_certificate_is_exported_never_its_key(tmp_path):
    paths = pki.bootstrap_site_credentials(str(tmp_path / "pki"), "lab", ["enroll.example.test"], ["orchestrator"])["paths"]
    creds = {"ca_cert": _read(paths["ca_cert"]), "svc_ca_cert": _read(paths["svc_ca_cert"]),
             "signer_public_key": _read(paths["signer_pub"]), "keyserver_credential_ca_cert": _read(paths["kscred_ca_cert"])}
    exported = _exported(creds)
    assert sorted(exported) == ["ca.pem", "kscred-ca.pem", "signer.pub.pem", "svc-ca.pem"]
    assert exported["kscred-ca.pem"] == _read(paths["kscred_ca_cert"])
    assert [c.subject for c in pki.load_certificates(exported["kscred-ca.pem"])] == \
        [c.subject for c in pki.load_certificates(_read(paths["kscred_ca_cert"]))]
    key = _read(paths["kscred_ca_key"])
    for name, content in exported.items():
        assert "PRIVATE KEY" not in content and key.strip() not in content, name
    # a site not bootstrapped yet (check mode) or a result without the field: no kscred-ca.pem
    assert sorted(_exported(dict(creds, keyserver_credential_ca_cert=""))) == ["ca.pem", "signer.pub.pem", "svc-ca.pem"]
    older = dict((k, v) for k, v in creds.items() if k != "keyserver_credential_ca_cert")
    assert sorted(_exported(older)) == ["ca.pem", "signer.pub.pem", "svc-ca.pem"]
