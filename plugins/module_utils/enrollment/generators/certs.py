# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""X.509 generators: HTTPS and PKINIT certificates from the enrollment CA, and the CA itself.

Options live under profile ``certificates.<generator name>``. Every certificate PEM carries
the issuer chain after the leaf. PKINIT keys are RSA-2048 (Heimdal rejects EC keys) and
need an RSA issuing CA (Heimdal's hx509 cannot verify ECDSA signatures)."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.enrollment.profile import golden_pcrs as profile_golden_pcrs
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import measurement_of
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import Asset, AssetGenerator, register
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators.common import (
    NAME_RE,
    USER_RE,
    cert_options,
    fail,
    positive_int,
    string_list,
)

DEFAULT_DAYS = 30
MAX_DAYS = 825


def _issuer(ctx, generator):
    if ctx.issuer is None:
        raise fail(generator, "certificates.%s" % generator, "no enrollment CA is configured")
    return ctx.issuer


def _host_install(generator, filename, sensitive):
    return {"category": generator, "dest": "/etc/hcp/%s/%s" % (generator, filename),
            "mode": "0600" if sensitive else "0644", "owner": "root"}


def _pair(ctx, generator, stem, key, cert, install):
    """The (key, certificate + chain) assets of one issued certificate."""
    chain = pki.certificate_pem(cert) + ctx.issuer.chain_pem()
    return [Asset(stem + ".key", pki.private_key_pem(key), True, install(stem + ".key", True)),
            Asset(stem + ".pem", chain, False, install(stem + ".pem", False))]


def _issue(issuer, generator, key_name, *args, **kwargs):
    """``issuer.issue(...)``; a name reserved for a service identity (pki.ReservedNameError)
    or one cryptography rejects (non-ASCII, malformed) is a GeneratorError on ``key_name``."""
    try:
        return issuer.issue(*args, **kwargs)
    except pki.ReservedNameError as exc:
        raise fail(generator, key_name, str(exc))
    except ValueError as exc:
        raise fail(generator, key_name, "invalid name (%s)" % exc)


def _days(generator, options):
    return positive_int(generator, "certificates.%s.days" % generator, options.get("days", DEFAULT_DAYS), MAX_DAYS)


class _HttpsGenerator(AssetGenerator):
    profile = None

    def generate(self, ctx):
        issuer = _issuer(ctx, self.name)
        options = cert_options(ctx, self.name)
        prefix = "certificates.%s." % self.name
        dns_names = string_list(self.name, prefix + "dns_names", options.get("dns_names", [ctx.hostname]))
        emails = string_list(self.name, prefix + "emails", options.get("emails", []))
        if self.profile == "https-server" and not dns_names:
            raise fail(self.name, prefix + "dns_names", "an https-server certificate needs a DNS name")
        days = _days(self.name, options)
        binding = _keyserver_binding(ctx, self.name, options) if self.profile == "https-client" else None
        key = pki.new_private_key("ec-p256")
        cert = _issue(issuer, self.name, prefix + "dns_names", key.public_key(), self.profile, ctx.hostname,
                      dns_names=dns_names, emails=emails, days=days, now=ctx.now, keyserver_binding=binding)
        return _pair(ctx, self.name, self.name, key, cert, lambda f, s: _host_install(self.name, f, s))


def _keyserver_binding(ctx, generator, options):
    """None, or the key-server binding of an https-client certificate with ``keyserver_client:
    true``: the label ``keyserver_profile`` (optional) and the measurement of the profile's golden
    PCR values (``attest.pcrs``; none when it has none). docs/keyserver.md."""
    prefix = "certificates.%s." % generator
    enabled = options.get("keyserver_client", False)
    if not isinstance(enabled, bool):
        raise fail(generator, prefix + "keyserver_client", "must be a boolean")
    label = options.get("keyserver_profile")
    if not enabled:
        if label is not None:
            raise fail(generator, prefix + "keyserver_profile", "needs keyserver_client: true")
        return None
    if label is not None and (not isinstance(label, str) or not NAME_RE.fullmatch(label)):
        raise fail(generator, prefix + "keyserver_profile", "must match [a-z0-9][a-z0-9_.-]{0,63}")
    try:
        golden = profile_golden_pcrs(ctx.profile)
    except HcpError as exc:
        raise fail(generator, "attest.pcrs", str(exc))
    return {"profile": label, "measurement": measurement_of(golden) if golden else None}


@register
class HttpsServerGenerator(_HttpsGenerator):
    """``https-server.key`` (sensitive) + ``https-server.pem`` (leaf + chain)."""

    name = "https-server"
    profile = "https-server"


@register
class HttpsClientGenerator(_HttpsGenerator):
    """``https-client.key`` (sensitive) + ``https-client.pem`` (leaf + chain)."""

    name = "https-client"
    profile = "https-client"


def _realm(ctx, generator, options):
    realm = options.get("realm", (ctx.env or {}).get("ENROLL_REALM"))
    if not isinstance(realm, str) or not realm or any(c in realm for c in "/@\\\n"):
        raise fail(generator, "certificates.%s.realm" % generator, "no valid realm (set it or ENROLL_REALM)")
    return realm


def _rsa_issuer(ctx, generator):
    issuer = _issuer(ctx, generator)
    if not pki.is_rsa_key(issuer.key):
        raise fail(generator, "certificates.%s" % generator,
                   "PKINIT certificates need an RSA enrollment CA (Heimdal cannot verify ECDSA signatures)")
    return issuer


class _PkinitHostGenerator(AssetGenerator):
    """One RSA-2048 PKINIT certificate for the host: ``<name>.key/.pem``, certificate profile
    ``<name>``, named ``principal_format`` unless the profile sets ``principal``."""

    principal_format = None

    def generate(self, ctx):
        issuer = _rsa_issuer(ctx, self.name)
        options = cert_options(ctx, self.name)
        key_name = "certificates.%s.principal" % self.name
        principal = options.get("principal")
        if principal is None:
            principal = self.principal_format.format(hostname=ctx.hostname, realm=_realm(ctx, self.name, options))
        try:
            pki.parse_principal(principal)
        except pki.PkiError:
            raise fail(self.name, key_name, "not a Kerberos principal name/instance@REALM")
        days = _days(self.name, options)
        key = pki.new_private_key("rsa-2048")
        cert = _issue(issuer, self.name, key_name, key.public_key(), self.name, ctx.hostname, principal=principal,
                      days=days, now=ctx.now)
        return _pair(ctx, self.name, self.name, key, cert, lambda f, s: _host_install(self.name, f, s))


# The host PKINIT certificates differ only in their name and default principal.
for _name, _principal_format in (
    ("pkinit-client", "host/{hostname}@{realm}"),  # the host's own client identity
    ("pkinit-kdc", "krbtgt/{realm}@{realm}"),  # the KDC's; restrict to KDC hosts by policy
    ("pkinit-iprop", "iprop/{hostname}@{realm}"),  # KDC replicas
):
    register(type("PkinitHostGenerator[%s]" % _name, (_PkinitHostGenerator,),
                  {"name": _name, "principal_format": _principal_format}))


@register
class PkinitUserGenerator(AssetGenerator):
    """``user-<user>.key/.pem`` for each of ``certificates.pkinit-user.users`` (``<user>@REALM``),
    installed under ``~<user>/.hcp/pkinit/`` owned by the user."""

    name = "pkinit-user"

    def generate(self, ctx):
        issuer = _rsa_issuer(ctx, self.name)
        options = cert_options(ctx, self.name)
        users = string_list(self.name, "certificates.pkinit-user.users", options.get("users", []), USER_RE)
        realm = _realm(ctx, self.name, options)
        days = _days(self.name, options)
        assets = []
        for user in users:
            key = pki.new_private_key("rsa-2048")
            cert = _issue(issuer, self.name, "certificates.pkinit-user.users", key.public_key(), "pkinit-user", user,
                          principal="%s@%s" % (user, realm), days=days, now=ctx.now)

            def install(filename, sensitive, user=user):
                return {"category": "pkinit-user", "dest": "~%s/.hcp/pkinit/%s" % (user, filename),
                        "mode": "0600" if sensitive else "0644", "owner": user}

            assets.extend(_pair(ctx, self.name, "user-" + user, key, cert, install))
        return assets


@register
class IssuerCaGenerator(AssetGenerator):
    """``ca.pem`` (public): the enrollment CA chain, for the system trust store."""

    name = "issuer-ca"

    def generate(self, ctx):
        issuer = _issuer(ctx, self.name)
        return [Asset("ca.pem", issuer.chain_pem(), False,
                      {"category": "trust-anchor", "dest": "/usr/local/share/ca-certificates/hcp-enrollment-ca.crt",
                       "mode": "0644", "owner": "root"})]
