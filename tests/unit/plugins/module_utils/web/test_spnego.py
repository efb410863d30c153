# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kerberos (SPNEGO) authentication of the WSGI apps (web/spnego.py, the ``auth: kerberos`` hook
of web/wsgi.py, web/hello_app.py) with real parts only.

A scratch Heimdal realm with its real KDC on loopback (tests/unit/krb_helpers.py); the service
keytab exported by Heimdal's kadmin, holding ``HTTP/localhost`` and ``host/localhost`` like a
host's merged /etc/krb5.keytab; the hello app with ``auth: kerberos`` served over real HTTPS
(tests/unit/helpers.py serve_wsgi); the client is python-gssapi on the **MIT** GSSAPI library,
holding a TGT that Heimdal's ``kinit`` got from the Heimdal KDC into a FILE ccache (MIT reads it)
and sending ``Authorization: Negotiate <SPNEGO token>``. The server side is MIT too. So
``test_mit_client_gets_its_principal`` is also issue 17's MIT-interop evidence for SPNEGO: MIT
client and acceptor against tickets issued by the Heimdal KDC.

The attacks, each a test: no header (and Basic), garbage and non-canonical base64, a huge token,
a ticket for another service principal of the same keytab, a principal of another realm (a real
cross-realm trust, so the ticket itself is good), a replayed token, NTLM and continuation tokens,
and a server without its keys (refuses to start)."""

from __future__ import annotations

import base64
import contextlib
import grp
import logging
import os
import stat

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import install
from ansible_collections.hcp.core.plugins.module_utils.web import hello_app, spnego, wsgi
from ansible_collections.hcp.core.tests.unit.krb_helpers import KDC_BINARY, REALM, Realm
from ansible_collections.hcp.core.tests.unit.spnego_helpers import REFUSED, SERVICE, Site, conf_file, kadmin_local, write

FOREIGN = "EVIL.TEST"
# an NTLMSSP NEGOTIATE message as browsers send it after "Negotiate " when they have no ticket
NTLM = "Negotiate TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw=="

pytestmark = [
    pytest.mark.skipif(spnego.gssapi is None, reason="python-gssapi is not installed"),
    pytest.mark.skipif(not os.access(KDC_BINARY, os.X_OK), reason="the Heimdal KDC is not installed"),
]


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("KRB5_CONFIG", "/nonexistent")
    monkeypatch.setenv("KRB5RCACHEDIR", str(tmp_path))
    with contextlib.ExitStack() as stack:
        yield Site(str(tmp_path), stack)


def _refused(answer):
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"] == "Negotiate"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == REFUSED


def test_mit_client_gets_its_principal(site):
    """MIT interop (issue 17): the MIT GSSAPI initiator, with a TGT from the Heimdal KDC, is
    accepted by the MIT acceptor with the Heimdal-exported keytab; the answer carries the client
    principal and the mutual-authentication token, which completes the client's context."""
    context = site.context()
    answer = site.get("Negotiate " + base64.b64encode(context.step()).decode("ascii"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"authenticated": True, "subject": "alice@" + REALM, "principal": "alice@" + REALM}
    scheme, _sep, mutual = answer.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Negotiate" and mutual
    context.step(base64.b64decode(mutual))
    assert context.complete
    # /healthcheck stays the status only, without a token (the local probe's)
    health = site.get(path="/healthcheck")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_no_header_is_refused(site):
    _refused(site.get())
    _refused(site.get("Basic YWxpY2U6cGFzc3dvcmQ="))
    _refused(site.get("Negotiate"))
    _refused(site.get(path="/no-such-route"))  # every path checks its caller


def test_garbage_tokens_are_refused(site, caplog):
    caplog.set_level(logging.WARNING)
    for header in ("Negotiate !!!", "Negotiate YWJj", "Negotiate YWJ", "Negotiate YW=J", "Negotiate YWJj YWJj",
                   "Negotiate " + base64.b64encode(b"\x60\x03\x06\x01\x00").decode(), "Negotiate\tYWJj",
                   # a SPNEGO continuation (NegTokenResp): not the first leg
                   "Negotiate " + base64.b64encode(b"\xa1\x07\x30\x05\xa0\x03\x0a\x01\x01").decode()):
        _refused(site.get(header))
    assert "not a GSS-API initial context token" in caplog.text
    assert "token refused" in caplog.text  # the library's refusal, logged not sent


def test_huge_token_is_refused_before_the_library(site, caplog):
    caplog.set_level(logging.WARNING)
    good = site.token()
    _refused(site.get(good + "A" * (spnego.DEFAULT_MAX_TOKEN_CHARS + 4 - len(good) % 4)))
    assert "longer than %d characters" % spnego.DEFAULT_MAX_TOKEN_CHARS in caplog.text
    # the bound is the only difference: the same valid token under it is accepted
    assert site.get(good).status_code == 200


def test_ticket_for_another_service_of_the_keytab_is_refused(site, caplog):
    """host/localhost's keys are in the same keytab (a host's /etc/krb5.keytab): the acceptor is
    bound to HTTP/localhost, so a ticket for host/localhost is refused."""
    caplog.set_level(logging.WARNING)
    _refused(site.get(site.token(target="host/localhost@" + REALM)))
    assert "host/localhost@%s using keytab key for %s@%s" % (REALM, SERVICE, REALM) in caplog.text
    site.realm.kadmin.add("HTTP/other.example.test")
    _refused(site.get(site.token(target="HTTP/other.example.test@" + REALM)))
    assert site.get(site.token()).status_code == 200


def test_principal_of_another_realm_is_refused(site, caplog):
    """A real cross-realm trust EVIL.TEST -> HCP.TEST (the same krbtgt/HCP.TEST@EVIL.TEST key
    in both databases): alice@EVIL.TEST gets a valid ticket for HTTP/localhost@HCP.TEST from the
    HCP.TEST KDC. The library accepts the ticket; the realm check refuses the client."""
    caplog.set_level(logging.WARNING)
    evil = Realm(os.path.join(site.tmp, "evil"), realm=FOREIGN)
    site.stack.enter_context(evil.kdc())
    for realm in (site.realm, evil):
        kadmin_local(realm, "add", "--password=cross-realm-test-key", "--use-defaults", "krbtgt/%s@%s" % (REALM, FOREIGN))
    evil.kadmin.add("alice")
    conf = conf_file(os.path.join(site.tmp, "evil-krb5.conf"), [site.realm], evil)
    ccache = site.tgt(evil, "alice", conf)
    os.environ["KRB5_CONFIG"] = conf
    header = site.token(ccache=ccache)
    _refused(site.get(header))
    assert "client 'alice@%s' is not of realm %s" % (FOREIGN, REALM) in caplog.text


def test_replayed_token_is_refused(site, caplog):
    caplog.set_level(logging.WARNING)
    header = site.token()
    assert site.get(header).status_code == 200
    _refused(site.get(header))
    assert "Request is a replay" in caplog.text
    # the replay cache is a file shared by the service's processes: a second app (another uwsgi
    # worker) with the same configuration refuses it too
    _refused(site.get(header, url=site.serve(site.config)))


def test_ntlm_is_refused(site, caplog):
    caplog.set_level(logging.WARNING)
    _refused(site.get(NTLM))
    _refused(site.get(NTLM.replace("Negotiate", "NTLM")))
    assert "NTLM" in caplog.text


def test_server_without_its_keys_refuses_to_start(site):
    def refused(kerberos, auth="kerberos"):
        with pytest.raises(wsgi.ServiceConfigError):
            hello_app.create_app({"auth": auth, "kerberos": kerberos})

    settings = site.config["kerberos"]
    refused(dict(settings, keytab=os.path.join(site.tmp, "missing.keytab")))
    host_only = write(os.path.join(site.tmp, "host.keytab"), site.realm.kadmin.ext_keytab("host/localhost"))
    refused(dict(settings, keytab=host_only))
    refused(dict(settings, service="HTTP/other.example.test"))
    refused(dict(settings, service="alice"))
    refused(dict(settings, realm="hcp.test"))
    refused(dict(settings, keytab="relative.keytab"))
    refused(dict(settings, extra=1))
    refused(None)
    refused(settings, auth="kerberos-please")
    assert hello_app.create_app(site.config) is not None


def test_extract_service_keytab(site, tmp_path):
    """The role's ExecStartPre: only HTTP/localhost's entries, 0640 to the service's group; none
    at all is an error and writes nothing."""
    dest = str(tmp_path / "service.keytab")
    group = grp.getgrgid(os.getgid()).gr_name
    assert spnego.main(["extract-keytab", site.keytab, dest, SERVICE, REALM, group]) == 0
    with open(dest, "rb") as handle:
        names = set(entry[0] for entry in install.keytab_principals(handle.read()))
    assert names == set([SERVICE + "@" + REALM])
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o640 and os.stat(dest).st_gid == os.getgid()
    # the acceptor works with the extracted copy
    assert site.get(site.token(), url=site.serve(dict(site.config, kerberos=dict(site.config["kerberos"], keytab=dest)))).status_code == 200
    missing = str(tmp_path / "none.keytab")
    assert spnego.main(["extract-keytab", site.keytab, missing, "HTTP/other.example.test", REALM, group]) == 1
    assert not os.path.exists(missing)
