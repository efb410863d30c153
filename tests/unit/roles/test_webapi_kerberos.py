# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role hcp.core.webapi with ``webapi_auth: kerberos``: its templates rendered by Ansible's own
engine with the role's defaults and vars, then used for real.

The unit passes ``systemd-analyze verify`` and keeps the webapi exposure bound; its
``ExecStartPre`` command line (as rendered) runs and copies only the service principal's keys out
of a host keytab that also holds ``host/localhost``; the rendered app configuration (auth.json,
named by the uwsgi ini's ``HCP_WEBAPI_AUTH_CONFIG``) makes the hello app, served over TLS,
accept an MIT client's Negotiate token with a ticket from the Heimdal KDC and refuse a request
without one; before ExecStartPre has run (no service keytab) the app refuses to start. The nginx
site passes the Authorization header and no certificate identity. The role's argument check
(evaluated by Ansible's templating from tasks/main.yml) refuses values that would inject lines or
arguments into the unit's ExecStartPre."""
from __future__ import annotations

import contextlib
import grp
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from ansible.template import trust_as_template

from ansible_collections.hcp.core.plugins.module_utils.attestation import install
from ansible_collections.hcp.core.plugins.module_utils.web import hello_app, spnego, wsgi
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, REALM
from ansible_collections.hcp.core.tests.unit.role_helpers import role_templar
from ansible_collections.hcp.core.tests.unit.spnego_helpers import REFUSED, SERVICE, Site, write

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ROLE = os.path.join(ROOT, "roles", "webapi")
MAX_WEBAPI_EXPOSURE = 1.0  # tests/unit/plugins/test_systemd_units.py

pytestmark = [
    pytest.mark.skipif(spnego.gssapi is None, reason="python-gssapi is not installed"),
    pytest.mark.skipif(not os.access(KDC_BINARY, os.X_OK), reason="the Heimdal KDC is not installed"),
    pytest.mark.skipif(not os.access("/usr/bin/systemd-analyze", os.X_OK), reason="systemd-analyze is not installed"),
]


def _unit_tool():
    spec = importlib.util.spec_from_file_location("unit_security", os.path.join(ROOT, "tools", "unit-security.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._init_plugins()  # pylint: disable=protected-access
    return module


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("KRB5_CONFIG", "/nonexistent")
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    with contextlib.ExitStack() as stack:
        yield Site(str(tmp_path), stack)


def _role_vars(site):
    directory = os.path.join(site.tmp, "etc-hello-krb")
    os.makedirs(directory, mode=0o750)
    return {"webapi_name": "hello-krb", "webapi_port": 8443, "webapi_auth": "kerberos", "webapi_kerberos_realm": REALM,
            "webapi_server_name": "localhost", "webapi_kerberos_keytab": site.keytab, "webapi_venv": sys.prefix,
            "webapi_group": grp.getgrgid(os.getgid()).gr_name,
            "__webapi_service_keytab": os.path.join(directory, "service.keytab"),
            "__webapi_auth_config": os.path.join(directory, "auth.json"),
            "__webapi_rcache": os.path.join(site.tmp, "krb5.rcache2")}


def _directive(unit, key):
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]
    assert len(values) == 1, (key, values)
    return values[0]


def test_role_renders_a_working_kerberos_service(site, monkeypatch):
    variables = _role_vars(site)
    tool = _unit_tool()
    unit = tool.render(ROOT, "webapi", "hcp-webapi.service.j2", variables)
    unit_dir = os.path.join(site.tmp, "units")
    os.makedirs(unit_dir)
    write(os.path.join(unit_dir, "hcp-webapi-hello-krb.service"), unit, 0o644)
    problems, _missing = tool.verify(unit_dir, ["hcp-webapi-hello-krb.service"])
    assert not problems
    assert tool.exposure(os.path.join(unit_dir, "hcp-webapi-hello-krb.service"))[0] <= MAX_WEBAPI_EXPOSURE
    assert "Environment=KRB5_CONFIG=/etc/krb5.conf" in unit.splitlines()
    assert "Environment=KRB5_KTNAME=FILE:%s" % variables["__webapi_service_keytab"] in unit.splitlines()

    templar = role_templar(ROLE, **variables)
    with open(os.path.join(ROLE, "templates", "uwsgi.ini.j2"), "r", encoding="utf-8") as handle:
        ini = templar.template(trust_as_template(handle.read()))
    assert "env = HCP_WEBAPI_AUTH_CONFIG=%s" % variables["__webapi_auth_config"] in ini.splitlines()
    write(variables["__webapi_auth_config"], templar.template(trust_as_template("{{ __webapi_kerberos_settings | to_nice_json }}")), 0o640)
    monkeypatch.setenv(wsgi.AUTH_CONFIG_ENV, variables["__webapi_auth_config"])

    # before ExecStartPre has copied the keys the app does not start (fails closed, never open)
    with pytest.raises(wsgi.ServiceConfigError):
        hello_app.create_app({})

    # ExecStartPre as rendered (root's '+' prefix dropped), with the collection importable
    argv = _directive(unit, "ExecStartPre").lstrip("+").split()
    assert argv[:3] == [os.path.join(sys.prefix, "bin", "python"), "-m", "ansible_collections.hcp.core.plugins.module_utils.web.spnego"]
    collections = os.path.abspath(os.path.join(os.path.dirname(spnego.__file__), *[".."] * 6))
    result = subprocess.run([sys.executable] + argv[1:], env=dict(os.environ, PYTHONPATH=collections), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    with open(variables["__webapi_service_keytab"], "rb") as handle:
        assert set(entry[0] for entry in install.keytab_principals(handle.read())) == set([SERVICE + "@" + REALM])

    url = site.serve({})
    answer = site.get(site.token(), url=url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["principal"] == "alice@" + REALM
    refused = site.get(url=url)
    assert refused.status_code == 401 and refused.json() == REFUSED and refused.headers["WWW-Authenticate"] == "Negotiate"
    # the app's own configuration may not contradict the role's
    with pytest.raises(wsgi.ServiceConfigError):
        hello_app.create_app({"auth": "none"})


def test_nginx_site_passes_the_authorization_header_and_no_certificate():
    with open(os.path.join(ROLE, "templates", "nginx-site.conf.j2"), "r", encoding="utf-8") as handle:
        source = handle.read()
    site = role_templar(ROLE, webapi_name="hello-krb", webapi_port=8443, webapi_auth="kerberos",
                        webapi_kerberos_realm=REALM).template(trust_as_template(source))
    assert "uwsgi_pass_request_headers on;" in site
    assert "ssl_verify_client" not in site and "ssl_client_certificate" not in site
    assert 'uwsgi_param SSL_CLIENT_VERIFY "";' in site and 'uwsgi_param SSL_CLIENT_CERT "";' in site


def _kerberos_check(**overrides):
    """The conditions of the role's task "Check the Kerberos arguments" for ``overrides``: {condition: bool}."""
    with open(os.path.join(ROLE, "tasks", "main.yml"), "r", encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    task = [t for t in tasks if t.get("name") == "Check the Kerberos arguments"][0]
    templar = role_templar(ROLE, webapi_name="hello-krb", webapi_auth="kerberos", **overrides)
    return dict((cond, templar.template(trust_as_template("{{ %s }}" % cond))) for cond in task["ansible.builtin.assert"]["that"])


def test_role_refuses_values_that_would_reach_the_unit_unchecked():
    good = {"webapi_kerberos_realm": REALM, "webapi_server_name": "www.example.test"}
    assert all(_kerberos_check(**good).values())
    for bad in ({"webapi_kerberos_realm": "hcp.test"}, {"webapi_kerberos_realm": REALM + "\n"}, {"webapi_kerberos_realm": ""},
                {"webapi_kerberos_service": "HTTP/www.example.test\nExecStartPre=/bin/sh -c id"},
                {"webapi_kerberos_service": "HTTP/www.example.test /etc/shadow"}, {"webapi_kerberos_service": "alice"},
                {"webapi_kerberos_service": "HTTP/a/b"}, {"webapi_kerberos_keytab": "krb5.keytab"},
                {"webapi_kerberos_keytab": "/etc/krb5.keytab /etc/shadow"}, {"webapi_kerberos_krb5_conf": "/etc/krb5.conf\n"}):
        checks = _kerberos_check(**dict(good, **bad))
        assert not all(checks.values()), bad
    # the realm is required with auth kerberos (no default)
    assert not all(_kerberos_check(webapi_server_name="www.example.test").values())
