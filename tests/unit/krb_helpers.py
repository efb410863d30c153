# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the Kerberos unit tests: a scratch Heimdal realm (its own kdc.conf and database in
a test directory, initialised with the real kadmin -l), a kadmin wrapper that records every run,
and the real KDC on a loopback port."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time

from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminClient
from ansible_collections.hcp.core.plugins.module_utils.kerberos.kadmin import Kadmin, find_kadmin
from ansible_collections.hcp.core.plugins.module_utils.web import kadmin_app, policy_app
from ansible_collections.hcp.core.tests.unit.helpers import NginxLikeHandler, serve_wsgi

REALM = "HCP.TEST"
KDC_BINARY = "/usr/lib/heimdal-servers/kdc"
KINIT = "/usr/bin/kinit.heimdal"


def free_port():
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recording_kadmin(directory):
    """(path of a wrapper script that appends its argv to a log then runs the real kadmin, log path)."""
    log = os.path.join(str(directory), "kadmin-runs.log")
    script = os.path.join(str(directory), "kadmin-recording")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s"\nexec "%s" "$@"\n' % (log, find_kadmin()))
    os.chmod(script, 0o700)
    return script, log


def runs(log):
    """The argv lines the recording wrapper logged (empty when kadmin never ran)."""
    try:
        with open(log, "r", encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


class Realm(object):
    """A scratch realm in ``directory``: kdc.conf (``conf``; the KDC on loopback ``port``),
    krb5.conf for clients (``krb5_conf``), database under ``directory/db``, initialised;
    ``kadmin`` is a Kadmin driving it through the recording wrapper (``log``). ``pkinit``
    ({"identity_cert", "identity_key", "anchors"} paths, kdc_conf_sections' argument) turns
    PKINIT on in the KDC; ``pkinit_anchors`` (a CA file) in the clients' krb5.conf."""

    def __init__(self, directory, realm=REALM, pkinit=None, pkinit_anchors=None):
        directory = str(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.realm = realm
        self.port = free_port()
        self.conf = os.path.join(directory, "kdc.conf")
        self.krb5_conf = os.path.join(directory, "krb5.conf")
        self.kdc_log = os.path.join(directory, "kdc.log")
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(krbconf.render(krbconf.kdc_conf_sections(
                realm, os.path.join(directory, "db"), ports=[self.port], addresses=["127.0.0.1"], log_file=self.kdc_log,
                pkinit=pkinit)))
        with open(self.krb5_conf, "w", encoding="utf-8") as handle:
            handle.write(krbconf.render(krbconf.krb5_conf_sections(realm, ["127.0.0.1:%d" % self.port], pkinit_anchors=pkinit_anchors)))
        self.binary, self.log = recording_kadmin(directory)
        self.kadmin = Kadmin(self.conf, realm, kadmin=self.binary)
        self.kadmin.init_realm()
        os.unlink(self.log)  # runs from here on are the test's

    def names(self):
        """Every principal of the realm (read with the real kadmin, not recorded)."""
        return sorted(Kadmin(self.conf, self.realm).list("*"))

    @contextlib.contextmanager
    def kdc(self):
        """The real Heimdal KDC serving this realm on 127.0.0.1:<port> from the rendered kdc.conf."""
        env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": self.conf}
        proc = subprocess.Popen([KDC_BINARY, "--config-file=%s" % self.conf], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the KDC did not start (see %s)" % self.kdc_log)
                    time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)

    def kinit(self, keytab_path, principal):
        """kinit.heimdal with a keytab against this realm's KDC: (returncode, TGT principal or None)."""
        cache = os.path.join(self.directory, "ccache-%d" % time.monotonic_ns())
        env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": self.krb5_conf, "KRB5CCNAME": "FILE:" + cache}
        result = subprocess.run([KINIT, "--keytab=FILE:%s" % keytab_path, "--use-keytab", principal], env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            return result.returncode, None
        listing = subprocess.run(["heimtools", "klist"], env=env, capture_output=True, text=True, timeout=30, check=False)
        tgt = "krbtgt/%s@%s" % (self.realm, self.realm)
        return result.returncode, tgt if tgt in listing.stdout else None


ADMIN = "orchestrator"
"""The authorised caller's common name (authorized_clients) of KadminService."""

POLICY = {"start": "kdc", "default": "reject", "filters": {"kdc": [
    {"name": "no-denied-host", "if": {"equal": ".principal", "value": "host/denied.example.test@" + REALM}, "action": "reject"},
    {"name": "admins-only", "if": {"not-elementof": ".caller", "value": [ADMIN]}, "action": "reject"},
    {"name": "kadmin-commands", "if": {"elementof": ".hookname", "value": [
        "kdcsvc::add", "kdcsvc::get", "kdcsvc::del", "kdcsvc::ext_keytab", "kdcsvc::rotate"]}, "action": "accept",
     "otherwise": "reject"},
]}}


def policy_for(callers):
    """POLICY with the admins-only rule allowing ``callers`` (service identities) as well."""
    policy = json.loads(json.dumps(POLICY))
    for rule in policy["filters"]["kdc"]:
        if rule["name"] == "admins-only":
            rule["if"]["value"] = [ADMIN] + list(callers)
    return policy


def _write_pem(path, *items):
    with open(path, "wb") as handle:
        handle.write(b"".join(items))
    return path


class KadminService(object):
    """The kadmin app over TLS on https://localhost:<port> (``url``) in front of a scratch Realm
    (``realm``), the way nginx runs it: client certificates optional, verified against a bundle
    of three CAs (the enrollment CA, the service-client CA and a foreign CA) and passed on as
    SSL_CLIENT_*; the policy app over TLS on another port (``policy_url``) unless ``policy``
    is a dict used as is for the app's policy config. Client credentials (cert, key paths):
    ``admin`` (service CA, CN orchestrator), ``enrolled_admin`` (enrollment CA, CN orchestrator),
    ``foreign_admin`` (foreign CA, CN orchestrator), ``intruder`` (service CA, CN intruder).
    ``callers``: more service identities (service CA), authorised and allowed by the default
    policy like the admin; their credentials in ``clients[name]``.
    ``ca_file`` verifies the servers; ``audit`` is the audit log; close() stops both."""

    def __init__(self, tmp_path, policy=None, callers=()):
        tmp = str(tmp_path)
        self.realm = Realm(os.path.join(tmp, "realm"))
        paths = pki.bootstrap_site_credentials(os.path.join(tmp, "cred"), "t", ["localhost"], [ADMIN] + list(callers))["paths"]
        self.clients = dict((name, (paths["client_%s_cert" % name], paths["client_%s_key" % name])) for name in callers)
        self.ca_file = paths["ca_cert"]
        # the site's own service-client CA (svc-ca) issued the orchestrator certificate
        self.service_client_ca = paths["svc_ca_cert"]
        self.admin = (paths["client_%s_cert" % ADMIN], paths["client_%s_key" % ADMIN])
        with open(paths["ca_key"], "rb") as key_in, open(paths["ca_cert"], "rb") as cert_in:
            enrollment_ca = pki.Issuer.from_pem(key_in.read(), cert_in.read(), reserve_service_names=False)
        with open(paths["svc_ca_key"], "rb") as key_in, open(paths["svc_ca_cert"], "rb") as cert_in:
            service_ca = pki.Issuer.from_pem(key_in.read(), cert_in.read(), reserve_service_names=False)
        key, cert = pki.create_ca("t foreign client CA")
        _write_pem(os.path.join(tmp, "foreign-ca.pem"), pki.certificate_pem(cert))
        # the attack certificates: the name check of the generators is off, as on an older site
        issuers = {"enrollment": enrollment_ca, "service": service_ca, "foreign": pki.Issuer(key, [cert], reserve_service_names=False)}

        def client(label, issuer, common_name, **issue_args):
            key = pki.new_private_key("ec-p256")
            cert = issuers[issuer].issue(key.public_key(), "https-client", common_name, org="t", **issue_args)
            return (_write_pem(os.path.join(tmp, "%s.pem" % label), pki.certificate_pem(cert)),
                    _write_pem(os.path.join(tmp, "%s.key" % label), key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))
        # issuers stay available to tests that need other certificates (expired ones, ...)
        self.issuers = issuers
        self._tmp = tmp
        self._client = client
        self.enrolled_admin = client("enrolled-admin", "enrollment", ADMIN)
        self.foreign_admin = client("foreign-admin", "foreign", ADMIN)
        self.intruder = client("intruder", "service", "intruder")
        bundle = os.path.join(tmp, "nginx-client-cas.pem")
        with open(bundle, "wb") as out:
            for name in (self.ca_file, self.service_client_ca, os.path.join(tmp, "foreign-ca.pem")):
                with open(name, "rb") as handle:
                    out.write(handle.read())
        self._stack = contextlib.ExitStack()
        if policy is None:
            policy_file = os.path.join(tmp, "kdc-policy.json")
            with open(policy_file, "w", encoding="utf-8") as handle:
                json.dump(policy_for(callers), handle)
            papp = policy_app.create_app({"policy_file": policy_file, "audit_log": os.path.join(tmp, "policy-audit.log"), "require_client_cert": False})
            self.policy_url = self._stack.enter_context(serve_wsgi(papp, paths["server_cert"], paths["server_key"]))
            policy = {"url": self.policy_url, "ca_file": self.ca_file, "timeout": 5}
        self.audit = os.path.join(tmp, "kadmin-audit.log")
        self.config = {"realm": REALM, "kdc_conf": self.realm.conf, "kadmin": self.realm.binary,
                       "authorized_clients": [ADMIN] + list(callers), "service_client_ca": self.service_client_ca,
                       "policy": policy, "audit_log": self.audit}
        self.app = kadmin_app.create_app(self.config)
        self.url = self._stack.enter_context(serve_wsgi(self.app, paths["server_cert"], paths["server_key"], client_ca=bundle,
                                                        verify_mode=ssl.CERT_OPTIONAL, request_handler=NginxLikeHandler))

    def credentials(self, label, issuer, common_name, **issue_args):
        """New client credentials (cert, key paths) from ``issuer`` (enrollment | service | foreign),
        ``issue_args`` passed to pki.Issuer.issue (e.g. ``now`` and ``days`` for an expired one)."""
        return self._client(label, issuer, common_name, **issue_args)

    def client(self, creds=None):
        """A KadminClient presenting ``creds`` (default: the authorised admin; False: no certificate)."""
        creds = self.admin if creds is None else creds
        return KadminClient(self.url, self.ca_file, *(creds or (None, None)), timeout=30)

    def audit_lines(self):
        try:
            with open(self.audit, "r", encoding="utf-8") as handle:
                return [json.loads(line) for line in handle]
        except FileNotFoundError:
            return []

    def close(self):
        self._stack.close()
