# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``keytab`` generator and the principal lifecycle: the real enrollment service (its
pipeline, git DB and, for the HTTP cases, the writer as a separate process) calling the real
kadmin API over mutual TLS with its ``enrollsvc`` service identity, in front of a scratch Heimdal
realm (real ``kadmin -l``, real policy service), the real KDC for kinit, and a real swtpm that
unseals the keytab."""
from __future__ import annotations

import json
import os
import sys
import time
from urllib.parse import quote

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import install as asset_install
from ansible_collections.hcp.core.plugins.module_utils.enrollment import manifest as manifest_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment import service as enroll_service
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorError
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import AlreadyEnrolledError, EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators.keytab import KerberosEnrollmentError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminApiError
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_pem
from ansible_collections.hcp.core.plugins.module_utils.web.enroll_app import create_app
from ansible_collections.hcp.core.tests.unit.krb_helpers import REALM, KadminService, runs

HOST = "node1.example.test"
HOST_P = "host/%s@%s" % (HOST, REALM)
HTTP_P = "HTTP/%s@%s" % (HOST, REALM)
PROFILE = {"assets": ["hostname", "keytab"], "keytab": {"principals": ["HTTP/{ENROLL_HOSTNAME}"]}}
ENROLLSVC = "enrollsvc"


@pytest.fixture
def site(tmp_path, swtpm, monkeypatch):
    kadmin = KadminService(tmp_path / "kdc", callers=[ENROLLSVC])
    cred = str(tmp_path / "kdc" / "cred")  # the same site: its enrollment CA, signer and service-client CA
    db = EnrollmentDb(str(tmp_path / "db"))
    db.init()
    cert, key = kadmin.clients[ENROLLSVC]
    config = {"db": db.path, "credentials_dir": cred, "ek_trust": "tofu", "postclient": {"seal_policy": {"type": "none"}},
              "realm": REALM, "kerberos": {"url": kadmin.url, "ca_file": kadmin.ca_file, "client_cert": cert,
                                           "client_key": key, "realm": REALM, "timeout": 30},
              "service_client_ca": kadmin.service_client_ca}
    config_path = tmp_path / "enroll.json"
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    with swtpm.open() as tpm:
        ek = ek_public_pem(tpm.ek_public())
    try:
        yield {"kadmin": kadmin, "db": db, "config": config, "config_path": str(config_path), "ek": ek, "tmp": tmp_path,
               "service": enroll_service.EnrollmentService(config), "cred": cred}
    finally:
        kadmin.close()


def _add(site, hostname=HOST, profile=None, ek=None):
    return site["service"].perform({"op": "add", "ekpub": ek or site["ek"], "hostname": hostname,
                                    "profile": PROFILE if profile is None else profile})


def _info(site, principal):
    """The principal as the kadmin API's admin sees it, None when absent."""
    try:
        return site["kadmin"].client().get(principal)
    except KadminApiError as exc:
        assert exc.status == 404
        return None


def _unsealed_keytab(swtpm, db, h, tmp_path, label):
    """The entry's sealed keytab, unsealed by the swtpm, written to a file: (path, bytes)."""
    entry = db.get(h)
    assert "krb5.keytab" not in entry and "krb5.keytab.sealed" in entry
    with swtpm.open() as tpm:
        data = envelope.unseal(tpm, envelope.loads(entry["krb5.keytab.sealed"]))
    path = str(tmp_path / ("%s.keytab" % label))
    with open(path, "wb") as handle:
        handle.write(data)
    return path, data


def _kvnos(keytab, principal):
    return sorted(set(kvno for name, kvno, _enctype in asset_install.keytab_principals(keytab) if name == principal))


def test_enroll_reenroll_prune_install_and_delete(site, swtpm):
    """The whole lifecycle against the real KDC: a principal made by hand before the host
    enrolled loses its old keys; the sealed keytab unseals on the host's TPM and kinits; each
    re-enrollment adds a kvno, the old keytab stops working, the realm prunes old keys and the
    installed /etc/krb5.keytab follows; unenrollment deletes the principals."""
    kadmin, db, tmp = site["kadmin"], site["db"], site["tmp"]
    realm = kadmin.realm
    # made by hand earlier, with a 1 s max ticket life so the realm prunes within the test
    realm.kadmin.add(HOST_P, max_ticket_life=1)
    with realm.kdc():
        summary = _add(site)
        h = summary["ekpubhash"]
        assert {"name": "krb5.keytab", "sensitive": True} in summary["assets"]
        # the existing principal was re-keyed without its old keys; HTTP/ was created
        assert _info(site, HOST_P)["kvnos"] == [2] and _info(site, HTTP_P)["kvnos"] == [1]
        entry = db.get(h)
        manifest = manifest_mod.verify_entry(entry, open(os.path.join(site["cred"], "signer.pub.pem"), "rb").read())
        hints = dict((a["name"], a["install"]) for a in manifest["assets"])
        assert hints["krb5.keytab"] == {"category": "keytab", "dest": "/etc/krb5.keytab", "mode": "0600", "owner": "root",
                                        "authoritative": True}
        assert json.loads(entry["keytab-principals"])["principals"] == [HOST_P, HTTP_P]
        # the writer's calls are the enrollment service's, each policy-gated and audited
        assert {(a["caller"], a["cmd"], a["result"]) for a in kadmin.audit_lines()} >= {
            (ENROLLSVC, "add", "ok"), (ENROLLSVC, "rotate", "ok"), (ENROLLSVC, "ext_keytab", "ok")}
        first, keytab1 = _unsealed_keytab(swtpm, db, h, tmp, "first")
        assert {name for name, _kvno, _e in asset_install.keytab_principals(keytab1)} == {HOST_P, HTTP_P}
        assert _kvnos(keytab1, HOST_P) == [2]
        assert realm.kinit(first, HOST_P)[1] == "krbtgt/%s@%s" % (REALM, REALM)
        assert realm.kinit(first, HTTP_P)[0] == 0

        # the attestation client's installer merges it into /etc/krb5.keytab (0600)
        root = str(tmp / "root")
        os.makedirs(root + "/etc")
        installed = root + "/etc/krb5.keytab"
        assert asset_install.install(manifest, {"krb5.keytab": keytab1}, root=root)["changed"] == ["krb5.keytab"]
        assert os.stat(installed).st_mode & 0o777 == 0o600 and realm.kinit(installed, HOST_P)[0] == 0

        # re-enrollment: new kvno, the previous keys kept; the new keytab works, the old one no longer does
        site["service"].perform({"op": "reenroll", "ekpubhash": h})
        assert _info(site, HOST_P)["kvnos"] == [2, 3]
        second, keytab2 = _unsealed_keytab(swtpm, db, h, tmp, "second")
        assert _kvnos(keytab2, HOST_P) == [2, 3]
        assert realm.kinit(second, HOST_P)[0] == 0
        assert realm.kinit(first, HOST_P)[0] != 0
        # after the max ticket life the realm prunes the kept keys: kvno 2 is gone everywhere
        time.sleep(2.2)
        site["service"].perform({"op": "reenroll", "ekpubhash": h})
        time.sleep(2.2)
        site["service"].perform({"op": "reenroll", "ekpubhash": h})
        info = _info(site, HOST_P)
        assert info["kvno"] == 5 and 2 not in info["kvnos"] and 4 in info["kvnos"]
        last, keytab4 = _unsealed_keytab(swtpm, db, h, tmp, "last")
        assert _kvnos(keytab4, HOST_P) == info["kvnos"]
        assert realm.kinit(last, HOST_P)[0] == 0 and realm.kinit(second, HOST_P)[0] != 0
        manifest = manifest_mod.verify_entry(db.get(h), open(os.path.join(site["cred"], "signer.pub.pem"), "rb").read())
        asset_install.install(manifest, {"krb5.keytab": keytab4}, root=root)
        with open(installed, "rb") as handle:
            merged = handle.read()
        # authoritative: the pruned kvnos left the host's keytab too; HTTP/ follows its own kvnos
        assert _kvnos(merged, HOST_P) == info["kvnos"] and _kvnos(merged, HTTP_P) == _info(site, HTTP_P)["kvnos"]
        assert realm.kinit(installed, HOST_P)[0] == 0

        # unenrollment: the principals are deleted, then the entry; a TGT for the host fails
        result = site["service"].perform({"op": "delete", "prefix": h[:10]})
        assert [e["ekpubhash"] for e in result["entries"]] == [h]
        assert _info(site, HOST_P) is None and _info(site, HTTP_P) is None and db.get(h) is None
        assert realm.kinit(last, HOST_P)[0] != 0
        assert (ENROLLSVC, "del", "ok") in {(a["caller"], a["cmd"], a["result"]) for a in kadmin.audit_lines()}


def _http_site(site):
    """The enrollment API (Flask test client) with the writer as a separate process."""
    config = dict(site["config"], writer=[sys.executable, "-m", "ansible_collections.hcp.core.plugins.module_utils.enrollment.service",
                                          site["config_path"]])
    with open(site["kadmin"].admin[0]) as handle:
        env = {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": quote(handle.read())}
    app = create_app(config)

    def call(path, data):
        return app.test_client().post(path, data=data, environ_base=env)
    return call


def test_kadmin_down_fails_closed(site, other_swtpm):
    """With the kadmin API down, an enrollment, a re-enrollment and an unenrollment each fail
    with a clear 503 and leave the DB as it was; the unenrollment succeeds once it is back."""
    db = site["db"]
    h = _add(site)["ekpubhash"]
    head = db.head()
    url = site["config"]["kerberos"]["url"]
    site["kadmin"].close()  # the kadmin API (and its policy service) stops
    call = _http_site(site)
    with other_swtpm.open() as tpm:
        other_ek = ek_public_pem(tpm.ek_public())
    r = call("/v1/add", {"ekpub": other_ek, "hostname": "node2.example.test", "profile": json.dumps(PROFILE)})
    assert r.status_code == 503, r.get_json()
    assert "kadmin API unavailable: add of host/node2.example.test@%s failed" % REALM in r.get_json()["error"]
    assert url in r.get_json()["error"]
    r = call("/v1/reenroll", {"ekpubhash": h})
    assert r.status_code == 503 and "kadmin API unavailable: rotate of %s" % HOST_P in r.get_json()["error"]
    r = call("/v1/delete", {"ekpubhash": h})
    assert r.status_code == 503 and "del of %s" % HOST_P in r.get_json()["error"]
    assert db.head() == head and db.get(h) is not None
    code, body = enroll_service.handle(site["config_path"], json.dumps({"op": "delete", "prefix": h}).encode(), site["service"])
    assert code == 6 and "kadmin API unavailable" in body["error"]
    assert db.head() == head


def test_delete_is_retried_once_kadmin_is_back(site):
    """The entry kept by a failed unenrollment is deleted by the next run; a principal already
    gone (deleted by the failed run's first call, or by hand) counts as deleted."""
    db = site["db"]
    h = _add(site)["ekpubhash"]
    site["kadmin"].client().delete(HOST_P)  # as if an earlier attempt got this far
    result = site["service"].perform({"op": "delete", "prefix": h})
    assert result["entries"][0]["ekpubhash"] == h and db.get(h) is None
    assert _info(site, HTTP_P) is None


def test_kadmin_policy_reject_refuses_enrollment(site):
    """The KDC's policy rejects host/denied.example.test: the enrollment is refused (403) and
    nothing is stored; the principal was never created."""
    db = site["db"]
    head = db.head()
    with pytest.raises(KerberosEnrollmentError) as info:
        _add(site, hostname="denied.example.test")
    assert info.value.status == 403 and enroll_service.classify(info.value) == 403
    assert "kadmin API refused: add of host/denied.example.test@%s" % REALM in str(info.value)
    assert "refused by policy" in str(info.value)
    assert db.head() == head
    assert "host/denied.example.test@" + REALM not in site["kadmin"].realm.names()
    call = _http_site(site)
    r = call("/v1/add", {"ekpub": site["ek"], "hostname": "denied.example.test", "profile": json.dumps(PROFILE)})
    assert r.status_code == 403 and "refused by policy" in r.get_json()["error"]
    assert db.head() == head


@pytest.mark.parametrize("principals", [
    ["HTTP/other.example.test"],             # another host's service
    ["host/other.example.test"],             # another host's host principal
    ["alice"],                               # a user principal
    ["HTTP/node1.example.test/extra"],       # three components
    ["krbtgt/" + REALM],                     # the realm's keys
    ["iprop/node1.example.test"],            # replication identity (reads the whole database)
    ["HTTP/*"],                              # a glob: kadmin would expand it over the database
    ["HTTP/node1.example.test@OTHER.TEST"],  # another realm
    ["HTTP/NODE1.example.test"],             # not the enrolled name
    ["HTTP/node1.example.test", "HTTP/node2.example.test"],  # one bad name refuses them all
])
def test_principal_of_another_host_is_refused(site, principals):
    """Every refused name stops the enrollment before any kadmin call: nothing stored, nothing
    created, kadmin never ran."""
    db = site["db"]
    head = db.head()
    profile = dict(PROFILE, keytab={"principals": principals})
    with pytest.raises(GeneratorError, match="asset generator keytab: profile key keytab.principals"):
        _add(site, profile=profile)
    assert db.head() == head
    assert runs(site["kadmin"].realm.log) == [] and site["kadmin"].audit_lines() == []


def test_other_generator_failure_changes_nothing_in_the_realm(site):
    """``keytab`` listed first still runs last: a profile error of a later generator (a missing
    secret) refuses the enrollment before any principal is made."""
    head = site["db"].head()
    with pytest.raises(GeneratorError, match="secret 'missing' is not available"):
        _add(site, profile={"assets": ["keytab", "hostname", "secrets"], "secrets": ["missing"]})
    assert site["db"].head() == head
    assert runs(site["kadmin"].realm.log) == [] and site["kadmin"].audit_lines() == []
    assert HOST_P not in site["kadmin"].realm.names()


def test_duplicate_hostname_does_not_rekey_the_enrolled_host(site, other_swtpm):
    """The attack: another TPM enrolls under an enrolled hostname. Refused (409) before the
    keytab generator runs: the enrolled host's keys are not rotated (they would be without the
    check, the add then failing on the DB only after the re-keying)."""
    h = _add(site)["ekpubhash"]
    before = _info(site, HOST_P)
    with other_swtpm.open() as tpm:
        other_ek = ek_public_pem(tpm.ek_public())

    def enrollsvc_calls():
        return [a for a in site["kadmin"].audit_lines() if a["caller"] == ENROLLSVC]
    calls = enrollsvc_calls()
    with pytest.raises(AlreadyEnrolledError, match="hostname node1.example.test is already enrolled"):
        _add(site, ek=other_ek)
    assert _info(site, HOST_P)["kvnos"] == before["kvnos"] == [1]
    assert enrollsvc_calls() == calls  # the enrollment service did not call the kadmin API at all
    # the same TPM under another name: refused before any principal is made for that name
    with pytest.raises(AlreadyEnrolledError, match="TPM %s is already enrolled" % h):
        _add(site, hostname="node3.example.test")
    assert _info(site, "host/node3.example.test@" + REALM) is None


def test_reenroll_deletes_principals_the_profile_dropped(site):
    """A server profile change that drops HTTP/: the re-enrollment deletes it (before storing
    the entry that no longer lists it); host/ is rotated."""
    h = _add(site)["ekpubhash"]
    config = dict(site["config"], postclient={"seal_policy": {"type": "none"}, "keytab": {"principals": []}})
    service = enroll_service.EnrollmentService(config)
    service.perform({"op": "reenroll", "ekpubhash": h})
    assert _info(site, HTTP_P) is None and _info(site, HOST_P)["kvnos"] == [1, 2]
    assert json.loads(site["db"].get(h)["keytab-principals"])["principals"] == [HOST_P]


def test_entry_with_principals_needs_the_kerberos_config(site, other_swtpm):
    """A service started without ``kerberos`` refuses to delete or re-enroll an entry that has
    principals (they would stay in the realm): 503, nothing changed."""
    h = _add(site)["ekpubhash"]
    head = site["db"].head()
    config = dict(site["config"])
    del config["kerberos"]
    service = enroll_service.EnrollmentService(config)
    for request in ({"op": "delete", "prefix": h}, {"op": "reenroll", "ekpubhash": h}):
        with pytest.raises(enroll_service.ServiceError, match="has Kerberos principals but this service has no kerberos") as info:
            service.perform(request)
        assert info.value.status == 503
    assert site["db"].head() == head and _info(site, HOST_P) is not None
    # and a profile asking for a keytab from it: refused before anything is made
    with other_swtpm.open() as tpm:
        other_ek = ek_public_pem(tpm.ek_public())
    with pytest.raises(GeneratorError, match="no kerberos configuration"):
        service.perform({"op": "add", "ekpub": other_ek, "hostname": "node9.example.test", "profile": PROFILE})
    assert site["db"].head() == head


KERBEROS = {"url": "https://kdc1.example.test:8443", "ca_file": "/etc/hcp/ca.pem", "client_cert": "/etc/hcp/enrollsvc.pem",
            "client_key": "/etc/hcp/enrollsvc.key", "realm": REALM}


@pytest.mark.parametrize("change, match", [
    ({"url": "http://kdc1.example.test:8443"}, "kerberos.url must be the kadmin API's https:// URL"),
    ({"url": None}, "kerberos.url"),
    ({"client_cert": None}, "kerberos.client_cert must be an absolute path"),
    ({"client_key": "enrollsvc.key"}, "kerberos.client_key must be an absolute path"),
    ({"ca_file": 5}, "kerberos.ca_file"),
    ({"realm": "hcp.test"}, "invalid Kerberos realm"),
    ({"realm": "OTHER.TEST"}, "kerberos.realm must be the configuration's realm"),
    ({"timeout": 0}, "kerberos.timeout"),
    ({"user": "x"}, "unknown keys 'user'"),
])
def test_kerberos_config_is_checked_at_startup(tmp_path, change, match):
    db = EnrollmentDb(str(tmp_path / "db"))
    config = {"db": db.path, "credentials_dir": str(tmp_path), "ek_trust": "tofu", "realm": REALM,
              "kerberos": dict((k, v) for k, v in dict(KERBEROS, **change).items() if v is not None)}
    with pytest.raises(enroll_service.ServiceConfigError, match=match):
        enroll_service.EnrollmentService(config)
    with pytest.raises(enroll_service.ServiceConfigError, match="kerberos must be a JSON object"):
        enroll_service.EnrollmentService(dict(config, kerberos="https://kdc1"))
    assert enroll_service.EnrollmentService(dict(config, kerberos=KERBEROS)).kerberos.realm == REALM
