# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kdc_conf / krb5_conf filters (what roles/kdc templates): Heimdal's verify_krb5_conf accepts
their output (through the role's check, which allows only the settings verify's table lacks),
the library parses it back to the realm's own database, and values that would inject
configuration are refused."""
from __future__ import annotations

import os
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hcp.core.plugins.filter import kdc_conf as kdc_plugin
from ansible_collections.hcp.core.plugins.filter import krb5_conf as krb5_plugin
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf

KDC_CONF = kdc_plugin.FilterModule().filters()["kdc_conf"]
KRB5_CONF = krb5_plugin.FilterModule().filters()["krb5_conf"]
REALM = "HCP.TEST"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
CHECK = os.path.join(ROOT, "roles", "kdc", "files", "hcp-verify-krb5-conf")
PKINIT = {"identity_cert": "/etc/hcp/pkinit-kdc/pkinit-kdc.pem", "identity_key": "/run/credentials/hcp-kdc.service/pkinit-kdc.key",
          "anchors": "/usr/local/share/ca-certificates/hcp-krb.crt"}


def check(tmp_path, text):
    path = str(tmp_path / "kdc.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return subprocess.run(["/bin/sh", CHECK, path], capture_output=True, text=True, check=False)


def test_primary_conf_verifies_and_names_the_realms_database(tmp_path):
    text = KDC_CONF(REALM, db_dir="/var/lib/hcp/kdc/" + REALM, pkinit=PKINIT, iprop=True, iprop_acl="/etc/hcp/kdc/iprop-acl",
                    kdcs=["localhost", "127.0.0.1:88"], pkinit_anchors=PKINIT["anchors"], domains=["example.test"])
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    parsed = krbconf.parse(text)
    assert krbconf.database_of(text, REALM)["dbname"] == "/var/lib/hcp/kdc/%s/heimdal" % REALM
    kdc = parsed["kdc"]
    assert kdc["pkinit_identity"] == ["FILE:%s,%s" % (PKINIT["identity_cert"], PKINIT["identity_key"])]
    assert kdc["iprop-acl"] == ["/etc/hcp/kdc/iprop-acl"] and kdc["signal_socket"] == ["/var/lib/hcp/kdc/%s/signal" % REALM]
    # ipropd-master's dump and kadmin's signal: in the realm's directory, never /var/lib/heimdal-kdc
    assert parsed["hdb"]["db-dir"] == ["/var/lib/hcp/kdc/" + REALM] and "/var/lib/heimdal-kdc" not in text
    assert parsed["realms"][REALM][0]["kdc"] == ["localhost", "127.0.0.1:88"]
    assert parsed["domain_realm"]["localhost"] == [REALM] and parsed["domain_realm"][".example.test"] == [REALM]
    assert parsed["logging"]["kdc"] == ["STDERR"]
    assert parsed["kadmin"]["default_keys"] == [" ".join(krbconf.DEFAULT_KEYS)]


def test_secondary_keeps_the_master_key_elsewhere(tmp_path):
    text = KDC_CONF(REALM, db_dir="/var/lib/hcp/kdc/" + REALM, mkey_file="/etc/hcp/kdc/m-key", kdcs=["localhost"])
    assert check(tmp_path, text).returncode == 0
    assert krbconf.database_of(text, REALM)["mkey_file"] == "/etc/hcp/kdc/m-key"
    assert "iprop-acl" not in krbconf.parse(text)["kdc"]


def test_the_check_still_fails_on_anything_else(tmp_path):
    text = KDC_CONF(REALM, db_dir="/var/lib/hcp/kdc/" + REALM, kdcs=["localhost"]) + "[libdefaults]\n    no_such_setting = 1\n"
    result = check(tmp_path, text)
    assert result.returncode == 1 and "no_such_setting" in result.stderr


def test_client_conf(tmp_path):
    text = KRB5_CONF(REALM, kdcs=["localhost", "127.0.0.1"], pkinit_anchors="/etc/hcp/ca.pem")
    assert check(tmp_path, text).returncode == 0
    assert krbconf.parse(text)["realms"][REALM][0]["pkinit_anchors"] == ["FILE:/etc/hcp/ca.pem"]


@pytest.mark.parametrize("realm, kwargs", [
    ("HCP.TEST\n[kdc]", {}),
    (REALM, {"db_dir": "/var/lib/x\n    database = {"}),
    (REALM, {"mkey_file": "/etc/hcp/kdc/m key"}),
    (REALM, {"iprop_acl": "relative/acl", "iprop": True}),
    (REALM, {"kdcs": ["localhost }"]}),
    (REALM, {"pkinit": {"identity_cert": "/a", "identity_key": "/b", "anchors": "/c", "evil": "/d"}}),
    (REALM, {"ports": ["eighty-eight"]}),
])
def test_injections_are_refused(realm, kwargs):
    args = {"db_dir": "/var/lib/hcp/kdc/" + REALM, "kdcs": ["localhost"]}
    args.update(kwargs)
    with pytest.raises(AnsibleFilterError, match="^kdc_conf: "):
        KDC_CONF(realm, **args)
    with pytest.raises(AnsibleFilterError, match="^krb5_conf: "):
        KRB5_CONF(REALM, kdcs=["localhost\n[realms]"])
