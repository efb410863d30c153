# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's Kerberos keys: ``krb5.keytab`` (sensitive, sealed to the host's TPM like any
other secret) and ``keytab-principals`` (public JSON: the realm and the principals the keytab
holds; the enrollment service deletes them when the host is unenrolled).

The keys come from the kadmin web API (``kerberos/client.py``), called by the enrollment
service's writer with its service identity (config ``kerberos``, checked at start-up by
``enrollment/service.py``). Principal lifecycle (docs/kerberos.md):

- enrollment (``add``): each principal is created with random keys; one that already exists
  (left by an earlier, failed enrollment or made by hand) is re-keyed without keeping its old
  keys, so whoever held them holds nothing;
- re-enrollment (``reenroll``): each principal is re-keyed keeping the previous keys (new
  kvno; the realm prunes kept keys older than the principal's max ticket life); a missing one
  is created;
- then ``ext_keytab`` of each principal: the current and the kept keys.

Profile ``keytab`` (optional): ``{"principals": ["HTTP/{ENROLL_HOSTNAME}", ...]}``. The host
principal ``host/<hostname>@REALM`` is always included. Every name must be host-based for this
host: exactly ``<service>/<enrolled hostname>`` with an optional ``@REALM`` of the managed
realm, checked by ``kerberos/principal.py`` (no globs, no realm principals such as ``krbtgt``
or ``iprop``). A user principal or another host's principal is refused before any call.
"""

from __future__ import annotations

import json

from ansible_collections.hcp.core.plugins.module_utils import jsonutil
from ansible_collections.hcp.core.plugins.module_utils.attestation import install as keytab_format
from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import Asset, AssetGenerator, register
from ansible_collections.hcp.core.plugins.module_utils.enrollment.generators.common import fail, section, string_list
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.kerberos import principal as krb_principal
from ansible_collections.hcp.core.plugins.module_utils.kerberos.client import KadminApiError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import KadminError

MAX_PRINCIPALS = 16
MAX_RECORD_BYTES = 64 * 1024
KEYTAB_ASSET = "krb5.keytab"
PRINCIPALS_ASSET = "keytab-principals"
PRINCIPALS_FORMAT = "hcp.core.keytab-principals"
PRINCIPALS_VERSION = 1
# The attestation client merges the keytab into /etc/krb5.keytab. "authoritative": the asset
# carries every key the realm still holds for its principals, so the installer drops the
# host's other entries of those principals (keys the realm pruned or voided) and keeps the
# entries of any other principal (docs/attestation-client.md).
KEYTAB_INSTALL = {"category": "keytab", "dest": "/etc/krb5.keytab", "mode": "0600", "owner": "root", "authoritative": True}
OPTION_KEYS = frozenset(["principals"])


class KerberosEnrollmentError(HcpError):
    """The kadmin API refused (``status`` 403: caller or policy) or could not do (503:
    unreachable, failing, an unusable answer) what an enrollment or unenrollment needs.
    Raised before anything is stored: the enrollment DB is unchanged."""

    status = 503


def _api_error(action, principal, exc):
    status = 403 if exc.status == 403 else 503
    what = "refused" if status == 403 else "unavailable"
    return KerberosEnrollmentError("kadmin API %s: %s of %s failed: %s" % (what, action, principal, exc), status)


class HostPrincipals(object):
    """The enrollment service's side of the kadmin API: ``client`` (a KadminClient presenting
    the service identity) and the managed ``realm``."""

    def __init__(self, client, realm):
        self.client = client
        self.realm = krb_principal.validate_realm(realm)

    def __repr__(self):
        return "HostPrincipals(%r, %s)" % (self.client.url, self.realm)

    # -- names ---------------------------------------------------------------------
    def host_based(self, name, hostname, key="keytab.principals"):
        """The canonical ``<service>/<hostname>@REALM`` of ``name``; GeneratorError (profile
        key ``key``) for anything else: malformed, reserved, another realm, another host, a
        user principal."""
        try:
            canonical = krb_principal.validate_principal(name, self.realm)
        except KadminError as exc:
            raise fail(KeytabGenerator.name, key, str(exc)) from None
        components, _realm = krb_principal.split_principal(canonical)
        if len(components) != 2 or components[1] != hostname:
            raise fail(KeytabGenerator.name, key, "%s is not a service principal of this host (<service>/%s@%s)"
                       % (ascii(name[:80]), hostname, self.realm))
        return canonical

    def principals(self, hostname, requested=()):
        """host/<hostname>@REALM, then each of ``requested`` (checked by host_based), without duplicates."""
        names = [self.host_based("host/" + hostname, hostname, key="hostname")]
        for name in requested:
            canonical = self.host_based(name, hostname)
            if canonical not in names:
                names.append(canonical)
        return names

    def recorded(self, data, hostname, what="entry"):
        """The principals of a stored ``keytab-principals`` record (bytes) of the entry of
        ``hostname``, each re-checked as a host-based name of that host in the managed realm;
        KerberosEnrollmentError (503) when the record cannot be used: deleting the entry would
        leave its principals behind, so the operation is refused (fail closed)."""
        try:
            record = jsonutil.loads(data, "the keytab-principals record", max_bytes=MAX_RECORD_BYTES, max_depth=4)
            if not isinstance(record, dict) or record.get("format") != PRINCIPALS_FORMAT:
                raise ValueError("not a %s record" % PRINCIPALS_FORMAT)
            if record.get("realm") != self.realm:
                raise ValueError("its principals are in realm %r, the service manages %s" % (record.get("realm"), self.realm))
            names = record.get("principals")
            if record.get("hostname") != hostname:
                raise ValueError("it names another host")
            if not isinstance(names, list) or not names or len(names) > MAX_PRINCIPALS + 1:
                raise ValueError("malformed principal list")
            return [self.host_based(n, hostname) for n in names]
        except (ValueError, HcpError) as exc:
            raise KerberosEnrollmentError("the %s's Kerberos principals cannot be read (%s): refused, nothing changed"
                                          % (what, str(exc)[:200]), 503) from None

    def record(self, hostname, names):
        """The ``keytab-principals`` bytes for ``names``."""
        doc = {"format": PRINCIPALS_FORMAT, "version": PRINCIPALS_VERSION, "realm": self.realm, "hostname": hostname,
               "principals": list(names)}
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    # -- kadmin API -------------------------------------------------------------------
    def _keys(self, name, operation):
        """Create or re-key ``name`` for ``operation``."""
        if operation == "reenroll":
            try:
                self.client.rotate(name, keep_old=True)
                return
            except KadminApiError as exc:
                if exc.status != 404:
                    raise _api_error("rotate", name, exc)
        try:
            self.client.add(name)
            return
        except KadminApiError as exc:
            if exc.status != 409 or operation == "reenroll":
                raise _api_error("add", name, exc)
        # A first enrollment finding the principal: nobody else keeps its keys.
        try:
            self.client.rotate(name, keep_old=False)
        except KadminApiError as exc:
            raise _api_error("rotate", name, exc)

    def issue(self, names, operation):
        """One keytab (bytes, a secret) with the keys of every principal of ``names`` after
        creating or re-keying them for ``operation`` (add | reenroll)."""
        keytab = None
        for name in names:
            self._keys(name, operation)
            try:
                data, _kvno = self.client.ext_keytab(name)
            except KadminApiError as exc:
                raise _api_error("ext_keytab", name, exc)
            try:
                found = set(entry[0] for entry in keytab_format.keytab_principals(data))
                if found != {name}:  # only this principal's keys are ever sealed to the host
                    raise KerberosEnrollmentError("the kadmin API answered a keytab for %s holding other keys: refused" % name, 503)
                keytab = keytab_format.merge_keytabs(keytab, data)
            except keytab_format.KeytabFormatError as exc:
                raise KerberosEnrollmentError("the kadmin API answered no usable keytab for %s (%s)" % (name, exc), 503) from None
        return keytab

    def remove(self, names):
        """Delete every principal of ``names`` (one already absent counts as deleted);
        KerberosEnrollmentError at the first that cannot be deleted (fail closed)."""
        for name in names:
            try:
                self.client.delete(name)
            except KadminApiError as exc:
                if exc.status != 404:
                    raise _api_error("del", name, exc)


@register
class KeytabGenerator(AssetGenerator):
    """``krb5.keytab`` (sensitive) + ``keytab-principals`` (public), from the kadmin API."""

    name = "keytab"
    side_effects = True

    def generate(self, ctx):
        options = section(ctx, self.name, "keytab")
        unknown = sorted(set(options) - OPTION_KEYS)
        if unknown:
            raise fail(self.name, "keytab", "unknown keys %s" % ", ".join(ascii(k)[:40] for k in unknown[:5]))
        requested = string_list(self.name, "keytab.principals", options.get("principals", []))
        if len(requested) > MAX_PRINCIPALS:
            raise fail(self.name, "keytab.principals", "at most %d principals" % MAX_PRINCIPALS)
        if ctx.kerberos is None:
            raise fail(self.name, "keytab", "the enrollment service has no kerberos configuration")
        # every name is checked before the first call to the kadmin API
        names = ctx.kerberos.principals(ctx.hostname, requested)
        keytab = ctx.kerberos.issue(names, ctx.operation)
        return [Asset(KEYTAB_ASSET, keytab, True, KEYTAB_INSTALL),
                Asset(PRINCIPALS_ASSET, ctx.kerberos.record(ctx.hostname, names), False, {"category": "keytab-principals"})]
