# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every systemd unit template of the roles, rendered with Ansible's template engine and the role
defaults (tools/unit-security.py, one rendering per way a role is used), must pass
`systemd-analyze verify` without a warning and keep its `systemd-analyze security --offline`
exposure at or under the figure of docs/hardening.md; the sandbox comes from the ONE shared
partial (roles/runtime/templates/systemd-sandbox.j2), and the units that need less than the
full sandbox (the root attester, the webapi socket chown, the network of a policy URL) get
exactly that. systemd-analyze (systemd >= 252) is required: without it the tests fail."""
from __future__ import annotations

import glob
import importlib.util
import os
import re

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PARTIAL = "roles/runtime/templates/systemd-sandbox.j2"

# Highest accepted exposure per service unit (docs/hardening.md has the measured figures).
MAX_EXPOSURE = {
    "hcp-attester.service": 3.2,
    "hcp-arepl.service": 1.5,
    "hcp-enroll-writer.service": 1.5,
    "hcp-enroll-reenroll.service": 1.5,
    "hcp-erepl.service": 0.6,
    "hcp-swtpm.service": 1.4,
    "hcp-kdc.service": 1.6,
    "hcp-ipropd-master.service": 1.4,
    "hcp-ipropd-slave.service": 1.4,
    # the kadmin API asks the policy service: the network (localhost or inet)
    "hcp-webapi-kdc.service": 1.6,
    # root without capabilities: admin sockets 0600 root, SO_PEERCRED, /proc of the applications
    "hcp-identity-secsvc.service": 1.3,
    "hcp-identity-provider.service": 1.5,
    "hcp-identity-orchestrator.service": 1.3,
}
MAX_WEBAPI_EXPOSURE = 1.0


def _tool():
    spec = importlib.util.spec_from_file_location("unit_security", os.path.join(ROOT, "tools", "unit-security.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    if not os.access("/usr/bin/systemd-analyze", os.X_OK):
        pytest.fail("systemd-analyze (systemd >= 252) is required to check the unit templates: install systemd")
    tool = _tool()
    rendered = tool.render_all(ROOT)
    return rendered, tool.measure(rendered, str(tmp_path_factory.mktemp("units")))


def _directives(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_every_unit_template_is_rendered(units):
    rendered = units[0]
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "roles", "*", "templates", "*.j2"))
             if p.endswith((".service.j2", ".socket.j2", ".timer.j2"))}
    seen = {re.sub(r"\Ahcp-identity-[a-z]+", "hcp-identity", unit.replace("hcp-webapi-enrollsvc", "hcp-webapi"))
            for variant in rendered.values() for unit in variant}
    assert names <= seen


def test_systemd_analyze_verify_accepts_every_unit(units):
    measured = units[1]
    problems = {key: row["problems"] for key, row in measured.items() if row["problems"]}
    assert not problems
    # the only tolerated message: a program the roles install on the target is not on this host
    for row in measured.values():
        for program in row["missing"]:
            assert not os.path.exists(program)


def test_exposure_scores(units):
    measured = units[1]
    for (variant, unit), row in measured.items():
        if row["score"] is None:
            continue
        limit = MAX_EXPOSURE[unit] if unit in MAX_EXPOSURE else MAX_WEBAPI_EXPOSURE if unit.startswith("hcp-webapi-") else MAX_EXPOSURE[unit]
        assert row["score"] <= limit, (variant, unit, row["score"])


def test_one_shared_sandbox_partial():
    assert os.path.isfile(os.path.join(ROOT, PARTIAL))
    assert not [p for p in glob.glob(os.path.join(ROOT, "roles", "*", "templates", "*.j2"))
                if os.path.basename(p) == "sandbox.j2" or ("NoNewPrivileges" in open(p, encoding="utf-8").read() and not p.endswith(PARTIAL))]


def test_every_service_is_sandboxed(units):
    rendered = units[0]
    for variant, unit_texts in rendered.items():
        for unit, text in unit_texts.items():
            if not unit.endswith(".service"):
                continue
            d = _directives(text)
            assert d["NoNewPrivileges"] == ["yes"], (variant, unit)
            assert d["SystemCallFilter"][0] == "@system-service", (variant, unit)
            assert d["SystemCallErrorNumber"] == ["EPERM"], (variant, unit)
            assert "RestrictAddressFamilies" in d and "KeyringMode" in d, (variant, unit)
            assert "DevicePolicy" in d or unit == "hcp-attester.service", (variant, unit)


def test_what_each_unit_needs_is_left(units):
    rendered = units[0]
    webapi = _directives(rendered["webapi:enrollsvc"]["hcp-webapi-enrollsvc.service"])
    # uwsgi chowns its socket to user:www-data (chown-socket): @chown back after the deny list
    assert webapi["SystemCallFilter"] == ["@system-service", "~@privileged @resources", "@chown"]
    assert webapi["PrivateNetwork"] == ["yes"] and webapi["RestrictAddressFamilies"] == ["AF_UNIX"]

    attester = _directives(rendered["attestation_client:device"]["hcp-attester.service"])
    assert attester["ProtectHome"] == ["no"]  # user certificates go into the homes
    assert attester["UMask"] == ["0022"]  # the system CA bundle stays world-readable
    assert "MemoryDenyWriteExecute" not in attester and "ProtectProc" not in attester
    assert attester["SystemCallFilter"] == ["@system-service"]  # fchown of the users' files
    assert attester["DevicePolicy"] == ["closed"] and attester["DeviceAllow"] == ["/dev/tpmrm0 rw"]
    assert "PrivateDevices" not in attester
    swtpm_attester = _directives(rendered["attestation_client:swtpm"]["hcp-attester.service"])
    assert swtpm_attester["PrivateDevices"] == ["yes"]

    writer = _directives(rendered["enrollment_server:local-policy"]["hcp-enroll-writer.service"])
    assert writer["PrivateNetwork"] == ["yes"]
    writer_url = _directives(rendered["enrollment_server:policy-url"]["hcp-enroll-writer.service"])
    assert "PrivateNetwork" not in writer_url and writer_url["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]

    # the KDC binds port 88 as hcp-kdc: that one capability, ambient; the kadmin API asks the policy service
    kdc = _directives(rendered["kdc:primary"]["hcp-kdc.service"])
    assert kdc["User"] == ["hcp-kdc"] and kdc["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert kdc["AmbientCapabilities"] == ["", "CAP_NET_BIND_SERVICE"]
    assert kdc["ExecStartPre"] == ["+/usr/bin/install -m 0640 -o root -g hcp-kdc /etc/hcp/pkinit-kdc/pkinit-kdc.key /etc/hcp/kdc/pkinit-kdc.key"]
    for variant, unit in (("kdc:primary", "hcp-ipropd-master.service"), ("kdc:secondary", "hcp-ipropd-slave.service")):
        ipropd = _directives(rendered[variant][unit])
        assert ipropd["User"] == ["hcp-kdc"] and ipropd["CapabilityBoundingSet"] == [""] and ipropd["AmbientCapabilities"] == [""]
    kadmin_api = _directives(rendered["webapi:kdc"]["hcp-webapi-kdc.service"])
    assert kadmin_api["IPAddressAllow"] == ["localhost"] and "PrivateNetwork" not in kadmin_api

    swtpm_tcp = _directives(rendered["swtpm:tcp"]["hcp-swtpm.service"])
    assert swtpm_tcp["IPAddressAllow"] == ["localhost"] and "PrivateNetwork" not in swtpm_tcp
    assert _directives(rendered["swtpm:unix"]["hcp-swtpm.service"])["PrivateNetwork"] == ["yes"]
