# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the SPNEGO tests (web/spnego.py and role hcp.core.webapi with auth kerberos): a
scratch Heimdal realm with its KDC, the service keytab, an MIT (python-gssapi) client holding a
TGT from Heimdal's kinit, the hello app served over TLS."""
from __future__ import annotations

import base64
import os
import subprocess

import requests

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.attestation import install
from ansible_collections.hcp.core.plugins.module_utils.kerberos import config as krbconf
from ansible_collections.hcp.core.plugins.module_utils.web import hello_app, spnego
from ansible_collections.hcp.core.tests.unit.helpers import serve_wsgi
from ansible_collections.hcp.core.tests.unit.krb_helpers import KINIT, REALM, Realm

SERVICE = "HTTP/localhost"
SPNEGO_MECH = "1.3.6.1.5.5.2"
REFUSED = {"error": "Kerberos (Negotiate) authentication required"}


def write(path, data, mode=0o600):
    with open(path, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)
    return str(path)


def conf_file(path, realms, default):
    """A client krb5.conf naming every (Realm) KDC; names used as typed (no DNS canonicalisation)."""
    sections = krbconf.krb5_conf_sections(default.realm, ["127.0.0.1:%d" % default.port])
    for realm in realms:
        sections["realms"][realm.realm] = {"kdc": ["127.0.0.1:%d" % realm.port]}
    sections["libdefaults"].update(rdns=False, dns_canonicalize_hostname=False)
    return write(path, krbconf.render(sections), 0o644)


def kadmin_local(realm, *args):
    """kadmin -l on ``realm``'s database, for what the checked Kadmin wrapper refuses by design
    (realm principals such as a cross-realm krbtgt)."""
    result = subprocess.run(["/usr/bin/kadmin.heimdal", "-l", "-c", realm.conf, "-r", realm.realm] + list(args),
                            env={"PATH": "/usr/bin:/bin", "KRB5_CONFIG": realm.conf}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


class Site(object):  # pylint: disable=too-many-instance-attributes
    """The realm and its KDC, the service keytab (``keytab``: HTTP/localhost and host/localhost),
    alice's TGT in a FILE ccache (``ccache``), the hello app with auth kerberos over TLS (``url``)."""

    def __init__(self, tmp, stack):
        self.tmp = tmp
        self.stack = stack
        self.realm = Realm(os.path.join(tmp, "realm"))
        stack.enter_context(self.realm.kdc())
        for name in (SERVICE, "host/localhost", "alice"):
            self.realm.kadmin.add(name)
        self.keytab = os.path.join(tmp, "krb5.keytab")
        write(self.keytab, install.merge_keytabs(self.realm.kadmin.ext_keytab(SERVICE), self.realm.kadmin.ext_keytab("host/localhost")))
        self.conf = conf_file(os.path.join(tmp, "krb5.conf"), [], self.realm)
        os.environ["KRB5_CONFIG"] = self.conf
        self.ccache = self.tgt(self.realm, "alice", self.conf)
        self.config = {"auth": "kerberos", "kerberos": {"keytab": self.keytab, "service": SERVICE, "realm": REALM,
                                                        "rcache": os.path.join(tmp, "krb5.rcache2")}}
        key, cert = pki.create_ca("spnego test CA")
        server_key = pki.new_private_key()
        server_cert = pki.Issuer(key, [cert]).issue(server_key.public_key(), "https-server", "localhost", dns_names=["localhost"])
        self.ca = write(os.path.join(tmp, "ca.pem"), pki.certificate_pem(cert), 0o644)
        self.cert_file = write(os.path.join(tmp, "server.pem"), pki.certificate_pem(server_cert), 0o644)
        self.key_file = write(os.path.join(tmp, "server.key"), pki.private_key_pem(server_key))
        self.url = self.serve(self.config)

    def serve(self, config):
        return self.stack.enter_context(serve_wsgi(hello_app.create_app(config), self.cert_file, self.key_file))

    def tgt(self, realm, name, conf):
        """A FILE ccache with a TGT of ``name`` got by Heimdal's kinit from ``realm``'s KDC."""
        keytab = os.path.join(self.tmp, "%s-%s.keytab" % (name, realm.realm))
        realm.kadmin.ext_keytab(name, path=keytab)
        ccache = "FILE:" + os.path.join(self.tmp, "ccache-%s-%s" % (name, realm.realm))
        result = subprocess.run([KINIT, "--keytab=FILE:" + keytab, "--use-keytab", "%s@%s" % (name, realm.realm)],
                                env={"PATH": "/usr/bin:/bin", "KRB5_CONFIG": conf, "KRB5CCNAME": ccache},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return ccache

    def context(self, target=SERVICE + "@" + REALM, ccache=None):
        """An MIT (python-gssapi) initiator context for ``target`` from a ccache (alice's by default)."""
        gssapi = spnego.gssapi
        creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache or self.ccache})
        return gssapi.SecurityContext(name=gssapi.Name(target, gssapi.NameType.kerberos_principal), creds=creds, usage="initiate",
                                      mech=gssapi.OID.from_int_seq(SPNEGO_MECH), flags=[gssapi.RequirementFlag.mutual_authentication])

    def token(self, **kwargs):
        return "Negotiate " + base64.b64encode(self.context(**kwargs).step()).decode("ascii")

    def get(self, header=None, path="/whoami", url=None):
        headers = {"Authorization": header} if header is not None else {}
        return requests.get((url or self.url) + path, headers=headers, verify=self.ca, timeout=30)
