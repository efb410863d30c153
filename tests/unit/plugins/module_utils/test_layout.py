# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The library's layout keeps host-side code apart from server code (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LIB = "ansible_collections.hcp.core.plugins.module_utils"
# What a host never needs: the attestation server and replica, the enrollment pipeline, DB,
# service and asset generators, the web apps.
SERVER_SIDE = (
    LIB + ".attestation.server",
    LIB + ".attestation.replica",
    LIB + ".enrollment.pipeline",
    LIB + ".enrollment.generators",
    LIB + ".enrollment.db",
    LIB + ".enrollment.service",
    LIB + ".enrollment.reenroller",
    LIB + ".policy.engine",
    LIB + ".web.wsgi",
    LIB + ".web.attest_app",
    LIB + ".web.enroll_app",
    LIB + ".web.policy_app",
    LIB + ".web.control_tower_app",
    LIB + ".web.kadmin_app",
    LIB + ".kerberos.kadmin",
)


def loaded_modules(module):
    """The hcp.core modules a fresh interpreter has loaded after importing ``module``."""
    code = (
        "import importlib, sys\n"
        "importlib.import_module(%r)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('ansible_collections.hcp.core'))))\n" % module
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", [
    LIB + ".attestation.attester",
    LIB + ".attestation.client",
    LIB + ".attestation.install",
])
def test_host_side_attestation_imports_no_server_code(module):
    loaded = loaded_modules(module)
    assert module in loaded
    assert LIB + ".attestation.protocol" in loaded or module.endswith(".install")
    leaked = [m for m in loaded if m.startswith(SERVER_SIDE)]
    assert leaked == []


def test_kerberos_client_imports_no_server_code():
    loaded = loaded_modules(LIB + ".kerberos.client")
    assert LIB + ".kerberos.client" in loaded
    assert [m for m in loaded if m.startswith(SERVER_SIDE)] == []


def test_the_server_side_list_is_real():
    # the check above can fail: the server itself loads what hosts must not
    loaded = loaded_modules(LIB + ".attestation.server")
    assert LIB + ".attestation.server" in loaded
    assert LIB + ".enrollment.manifest" in loaded
    assert LIB + ".enrollment.db" in loaded
