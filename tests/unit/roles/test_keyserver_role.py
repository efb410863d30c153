# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role hcp.core.keyserver without a host: its ACL check (the code the role runs on the host, run
here by a real Python with the library's own parser) refuses every bad ACL with the parser's reason,
before any task that changes something; its argument checks refuse a TCTI the sandboxed app cannot
reach, a configuration that would replace the role's own members, relative paths; the service
configuration renders (Ansible's own engine) with the role's paths, the own credentials and the
extra members. The deployment itself runs in molecule/keyserver."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible.template import trust_as_template

from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "keyserver")
TCTI = "swtpm:host=127.0.0.1,port=2321"
GOOD_ACL = {"format": "hcp.core.keyserver-acl", "version": 1,
            "rules": [{"prefix": "datica-test/", "store": [{"profile": "deployer"}], "retrieve": [{"profile": "vm"}]}]}


def _yaml(name):
    with open(os.path.join(ROLE, name), "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _tasks():
    return _yaml("tasks/main.yml")


def _templar(**overrides):
    overrides.setdefault("keyserver_acl", GOOD_ACL)
    overrides.setdefault("swtpm_tcti", TCTI)
    return role_templar(ROLE, **overrides)


def _render(templar, expression):
    return templar.template(trust_as_template(expression))


def check_acl(text):
    """The role's ACL check as the role runs it on the host: (exit code, stderr)."""
    code = _yaml("vars/main.yml")["__keyserver_acl_check"]
    proc = subprocess.run([sys.executable, "-s", "-c", code], input=text if isinstance(text, bytes) else text.encode("utf-8"),
                          capture_output=True, timeout=60, check=False, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def test_a_good_acl_passes_as_the_role_installs_it():
    text = _render(_templar(), "{{ __keyserver_acl_text }}")
    assert json.loads(text) == GOOD_ACL
    assert check_acl(text) == (0, "")
    as_text = json.dumps(GOOD_ACL)
    assert _render(_templar(keyserver_acl=as_text), "{{ __keyserver_acl_text }}") == as_text  # installed as validated


@pytest.mark.parametrize("acl, reason", [
    ({"format": "hcp.core.keyserver-acl", "version": 1, "rules": [{"prefix": "keyserver/", "retrieve": [{"profile": "vm"}]}]},
     "reserved for the key-server itself"),
    (dict(GOOD_ACL, rules=[{"prefix": "datica-test/", "retrieve": [{"host": "x"}]}]), "unknown key"),
    (dict(GOOD_ACL, rules=[{"prefix": "datica-test/", "retrieve": [{"measurement": "pcrs-sha256:00"}]}]), "measurement"),
    (dict(GOOD_ACL, rules=[{"prefix": "../", "retrieve": [{"profile": "vm"}]}]), ".."),
    (dict(GOOD_ACL, rules=GOOD_ACL["rules"] * 2), "listed twice"),
    (dict(GOOD_ACL, version=2), "version"),
    ("[" * 100000, "nested"),
    ("{\"format\": ", ""),
    ("{\"a\": 1}\n" + " " * (1024 * 1024), ""),
    (b"\xff\xfe", ""),
])
def test_bad_acls_fail_with_the_parser_s_reason(acl, reason):
    """The attack: an ACL that would open the server's own domain, name unknown keys or
    malformed values, or kill the parser (deep nesting, huge or undecodable text)."""
    text = acl if isinstance(acl, (str, bytes)) else json.dumps(acl)
    code, stderr = check_acl(text)
    assert code == 1 and reason in stderr, (code, stderr)
    assert "Traceback" not in stderr and len(stderr) < 1000


def test_nothing_changes_before_the_acl_and_the_attested_files_are_checked():
    tasks = _tasks()
    names = [task["name"] for task in tasks]
    first_change = names.index("Create the service group")
    assert names.index("Fail on a bad ACL (nothing was changed)") < first_change
    assert names.index("Fail when attestation has not installed them") < first_change
    read_only = {"ansible.builtin.assert", "ansible.builtin.fail", "ansible.builtin.stat", "ansible.builtin.slurp",
                 "ansible.builtin.getent", "ansible.builtin.set_fact"}
    for task in tasks[:first_change]:
        module = [key for key in task if key.startswith("ansible.builtin.")][0]
        if module == "ansible.builtin.command":
            assert task["changed_when"] is False and task["check_mode"] is False and "__keyserver_acl_check" in str(task[module])
        else:
            assert module in read_only, module


def _argument_checks(**overrides):
    templar = _templar(**overrides)
    return [bool(templar.evaluate_conditional(trust_as_template(condition))) for condition in _tasks()[0]["ansible.builtin.assert"]["that"]]


def test_argument_checks():
    assert all(_argument_checks())
    assert all(_argument_checks(keyserver_tcti="mssim:host=localhost,port=2321"))
    assert all(_argument_checks(keyserver_config_extra={"credential_max_minutes": 30}))
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert all(_argument_checks(keyserver_credential_ca=cert, keyserver_release_policy={"version": 1}))


@pytest.mark.parametrize("overrides", [
    {"keyserver_tcti": "device:/dev/tpmrm0"},             # the sandboxed app has no device access
    {"keyserver_tcti": "swtpm:host=127.0.0.1.evil.example,port=2321"},
    {"keyserver_tcti": "swtpm:host=10.0.0.1,port=2321"},  # another host's TPM
    {"keyserver_tcti": "swtpm:host=127.0.0.1\n,port=2321"},
    {"keyserver_tcti": ""},
    {"keyserver_config_extra": {"store": "/tmp/other"}},  # would replace the role's own members
    {"keyserver_config_extra": {"own_credentials": []}},
    # the credential CA and the release policy are the role's own members (files it installs)
    {"keyserver_config_extra": {"release_policy": "/etc/hcp/keyserver/release.json"}},
    {"keyserver_config_extra": {"credential_ca": "/tmp/any-ca.pem"}},
    {"keyserver_credential_ca": "not a certificate"},
    # a release policy releases by measurement to credential holders only: without the credential CA, refused
    {"keyserver_release_policy": {"version": 1}},
    {"keyserver_own_credentials": ["relative/key.pem"]},
    {"keyserver_extra_client_ca": "not a certificate"},
    {"keyserver_acl": ["not", "a", "mapping"]},
])
def test_argument_checks_refuse(overrides):
    assert not all(_argument_checks(**overrides))


def test_service_configuration():
    with open(os.path.join(ROLE, "templates", "keyserver.json.j2"), "r", encoding="utf-8") as handle:
        source = handle.read()
    templar = _templar(keyserver_own_credentials=["/etc/hcp/https-client/https-client.key"],
                       keyserver_credential_ca="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                       keyserver_release_policy={"version": 1},
                       keyserver_config_extra={"credential_max_minutes": 30},
                       keyserver_tcti=" " + TCTI + "\n")
    config = json.loads(templar.template(trust_as_template(source)))
    assert config == {
        "_": config["_"], "store": "/var/lib/hcp/keyserver/store", "tcti": TCTI, "client_ca": "/etc/hcp/keyserver/client-ca.pem",
        "acl": "/etc/hcp/keyserver/acl.json", "audit_log": "/var/lib/hcp/keyserver/audit.jsonl",
        "own_credentials": ["/etc/hcp/keyserver/own/0.pem", "/etc/hcp/keyserver/own/1.pem"],
        "challenge_ttl": 60, "session_ttl": 300, "max_item_bytes": 1048576, "keep_versions": 16, "max_content_length": 2097152,
        "release_policy": "/etc/hcp/keyserver/release.json", "credential_ca": "/etc/hcp/keyserver/credential-ca.pem",
        "credential_max_minutes": 30}
    # the app's copies are made from the TLS key first, then the extra files, in that order
    copy = [task for task in _tasks() if task["name"] == "Give the app copies of its own credentials"][0]
    assert copy["no_log"] is True and copy["ansible.builtin.copy"]["mode"] == "0640"
    assert _render(templar, copy["loop"]) == ["/etc/hcp/https-server/https-server.key", "/etc/hcp/https-client/https-client.key"]
    assert _render(_templar(), "{{ keyserver_client_ca_path }}") == "/usr/local/share/ca-certificates/hcp-localhost.crt"


@pytest.mark.parametrize("extra", ["", "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n\n"])
def test_client_ca_bundle_is_one_pem_certificate_per_block(extra):
    """nginx and the app read the bundle: the attested CA, then keyserver_extra_client_ca, each
    ending with a real newline (a backslash-n left by the template broke nginx's PEM parser)."""
    site_ca = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    task = [task for task in _tasks() if task["name"] == "Install the client CA bundle"][0]
    templar = _templar(keyserver_extra_client_ca=extra, __keyserver_site_ca={"content": base64.b64encode(site_ca).decode()})
    bundle = _render(templar, task["ansible.builtin.copy"]["content"])
    assert bundle == site_ca.decode() + extra.strip() + ("\n" if extra else "")
    assert "\\n" not in bundle


def test_credential_ca_only_in_the_front_end_bundle():
    """The key-server credential CA's certificates pass nginx (its bundle) but the app's client_ca
    leaves it out: the app takes them as credentials only (credential_ca), never as host
    certificates, whose measurement would otherwise count (docs/keyserver.md, part 2)."""
    site_ca = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    cred_ca = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n"
    templar = _templar(keyserver_credential_ca=cred_ca, __keyserver_site_ca={"content": base64.b64encode(site_ca).decode()})
    tasks = dict((task["name"], task) for task in _tasks())
    app_bundle = _render(templar, tasks["Install the client CA bundle"]["ansible.builtin.copy"]["content"])
    front = tasks["Install the front end's client CA bundle"]["ansible.builtin.copy"]
    assert "CCCC" not in app_bundle
    assert _render(templar, front["content"]) == site_ca.decode() + cred_ca
    assert _render(templar, front["dest"]) == "/etc/hcp/keyserver/front-ca.pem"
    hosting = tasks["Host the key-server"]["vars"]
    assert _render(templar, hosting["webapi_client_ca_path"]) == "/etc/hcp/keyserver/front-ca.pem"
    assert _render(templar, tasks["Install the key-server credential CA"]["ansible.builtin.copy"]["content"]) == cred_ca
