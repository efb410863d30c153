# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kdc.conf/krb5.conf rendering: checked by Heimdal's verify_krb5_conf, refused injections, and the
real KDC started from the rendered kdc.conf issuing a TGT for a keytab from ext_keytab."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, REALM, Realm

PKINIT = {"identity_cert": "/etc/hcp/kdc/kdc.pem", "identity_key": "/etc/hcp/kdc/kdc.key",
          "anchors": "/etc/hcp/kdc/ca.pem", "pool": "/etc/hcp/kdc/chain.pem"}


def verify(tmp_path, text):
    """verify_krb5_conf's complaints about ``text`` (a list of lines; empty when it is clean)."""
    path = str(tmp_path / "check.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    result = subprocess.run(["verify_krb5_conf", path], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_rendered_kdc_conf_verifies_and_parses_back(tmp_path):
    sections = krbconf.kdc_conf_sections(REALM, "/var/lib/hcp-kdc", ports=[88], addresses=["192.0.2.1"], pkinit=PKINIT,
                                         iprop=True, log_file="/var/log/hcp-kdc.log")
    text = krbconf.render(sections)
    # verify_krb5_conf's table lacks prune-key-history, which libhdb reads ([kadmin], test_kadmin's prune test)
    assert verify(tmp_path, text) == ["verify_krb5_conf: /kadmin/prune-key-history: unknown entry"]
    parsed = krbconf.parse(text)
    kdc = parsed["kdc"]
    assert kdc["pkinit_dh_min_bits"] == ["1536"]
    assert kdc["pkinit_identity"] == ["FILE:/etc/hcp/kdc/kdc.pem,/etc/hcp/kdc/kdc.key"]
    assert kdc["pkinit_anchors"] == ["FILE:/etc/hcp/kdc/ca.pem"] and kdc["enable-pkinit"] == ["true"]
    assert kdc["iprop-acl"] == ["/var/lib/hcp-kdc/slaves"]
    assert parsed["kadmin"]["default_keys"] == ["aes256-cts-hmac-sha1-96:pw-salt aes128-cts-hmac-sha1-96:pw-salt"]
    assert krbconf.database_of(text, REALM) == {"dbname": "/var/lib/hcp-kdc/heimdal", "mkey_file": "/var/lib/hcp-kdc/m-key",
                                                "log_file": "/var/lib/hcp-kdc/iprop.log"}


def test_rendered_krb5_conf_verifies(tmp_path):
    # verify_krb5_conf resolves the KDC names: loopback ones
    text = krbconf.render(krbconf.krb5_conf_sections(REALM, ["127.0.0.1", "localhost:8888"], admin_server="localhost",
                                                     pkinit_anchors="/etc/hcp/ca.pem", domains=["example.test"]))
    assert verify(tmp_path, text) == []
    parsed = krbconf.parse(text)
    realm = parsed["realms"][REALM][0]
    assert realm["kdc"] == ["127.0.0.1", "localhost:8888"]
    assert parsed["libdefaults"]["pkinit_dh_min_bits"] == ["1536"]
    assert realm["pkinit_require_krbtgt_otherName"] == ["true"]
    assert parsed["domain_realm"][".example.test"] == [REALM]


def test_iprop_acl():
    assert krbconf.iprop_acl(["kdc2.example.test"], REALM) == "iprop/kdc2.example.test@%s\n" % REALM
    with pytest.raises(krbconf.KerberosConfigError):
        krbconf.iprop_acl(["kdc2\n"], REALM)


@pytest.mark.parametrize("call", [
    lambda: krbconf.kdc_conf_sections(REALM, "/var/lib/kdc\n[kdc]"),
    lambda: krbconf.kdc_conf_sections(REALM, "relative/dir"),
    lambda: krbconf.kdc_conf_sections(REALM, "/var/lib/../etc"),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", ports=[0]),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", ports=[]),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", ports=[True]),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", addresses=["1.2.3.4 }"]),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", pkinit=dict(PKINIT, identity_key="/k,FILE:/etc/shadow")),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", pkinit=dict(PKINIT, extra="/x")),
    lambda: krbconf.kdc_conf_sections(REALM, "/db", log_file="/log }"),
    lambda: krbconf.krb5_conf_sections(REALM, []),
    lambda: krbconf.krb5_conf_sections(REALM, ["kdc:99999"]),
    lambda: krbconf.krb5_conf_sections(REALM, ["kdc\n[realms]"]),
    lambda: krbconf.render({"libdefaults": {"x": "a\nb"}}),
    lambda: krbconf.render({"libdefaults": {"x = y": "a"}}),
    lambda: krbconf.render({"Bad": {}}),
    lambda: krbconf.render({"a": {"b": {"c": {"d": {"e": 1}}}}}),
])
def test_injections_are_refused(call):
    with pytest.raises(krbconf.KerberosConfigError):
        call()


@pytest.mark.parametrize("text", [
    "[kdc]\n database = {\n dbname = /a\n realm = OTHER\n }\n",
    "[kdc]\n database = {\n dbname = /a\n realm = HCP.TEST\n }\n database = {\n dbname = /b\n realm = HCP.TEST\n }\n",
    "[kdc]\n database = {\n dbname = relative\n realm = HCP.TEST\n }\n",
    "[kdc]\n database = {\n realm = HCP.TEST\n }\n",
    "[kdc]\n ports = 88\n",
    "[kdc]\n database = {\n dbname = /a\n realm = HCP.TEST\n",
    "dbname = /a\n",
    "[kdc]\n }\n",
    "[kdc]\n" + " a = {\n" * 5,
    "x" * (krbconf.MAX_CONF_BYTES + 1),
    b"[kdc]\n\xff\n",
])
def test_database_of_refuses_anything_but_one_database_for_the_realm(text):
    with pytest.raises(krbconf.KerberosConfigError):
        krbconf.database_of(text, REALM)


@pytest.mark.skipif(not os.access(KDC_BINARY, os.X_OK) or not shutil.which("kinit.heimdal"),
                    reason="needs heimdal-kdc (tools/host-packages.sh installs it)")
def test_real_kdc_issues_a_tgt_for_an_extracted_keytab_and_rotation_revokes_the_old_one(tmp_path):
    realm = Realm(tmp_path / "realm")
    principal = "host/node1.example.test@" + REALM
    realm.kadmin.add(principal, attributes=["requires-pre-auth"])
    first = str(tmp_path / "first.keytab")
    realm.kadmin.ext_keytab(principal, path=first)
    with realm.kdc():
        assert realm.kinit(first, principal) == (0, "krbtgt/%s@%s" % (REALM, REALM))
        realm.kadmin.rotate(principal, keep_old=False)
        assert realm.kinit(first, principal)[1] is None          # the old key is gone
        second = str(tmp_path / "second.keytab")
        realm.kadmin.ext_keytab(principal, path=second)
        assert realm.kinit(second, principal)[1] == "krbtgt/%s@%s" % (REALM, REALM)
        realm.kadmin.delete(principal)
        assert realm.kinit(second, principal)[1] is None         # deleted: no TGT
