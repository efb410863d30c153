# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SPNEGO (HTTP ``Authorization: Negotiate``, RFC 4559) with Kerberos for the hcp.core WSGI apps.

Debian 12's nginx has no SPNEGO module, so the app accepts the token itself, with python-gssapi
(the maintained binding of the system GSSAPI library, MIT krb5 on Debian) and the keys of the
service principal ``HTTP/<host>@REALM`` from a keytab. :class:`KerberosAcceptor` turns an
``Authorization`` header value into an identity (the shape of ``web.wsgi.client_identity``, with
``auth: kerberos`` and ``principal``) or a refusal whose reason is logged, never sent.

What is accepted: exactly one GSS-API initial context token (RFC 2743 3.1 framing: first byte
0x60), base64 without any slack, at most ``max_token_chars``; it must complete the context in
one leg (a Kerberos AP-REQ, bare or in SPNEGO, as browsers, curl and python-gssapi send); the
mechanism must be Kerberos; the ticket must be for the configured service principal (the
acceptor credential is bound to that name: other keys of the keytab are not used); the client
must be of the configured realm (a cross-realm trust never widens a service's callers by
itself). Replays are refused by the GSSAPI library's replay cache (a file shared by the
service's processes, ``rcache``). Everything else (NTLM, a continuation token, garbage) is a
refusal, never an exception.

The module also copies the service's keys out of the host keytab (``extract_service_keytab``,
run as root by role hcp.core.webapi before the service starts): the service account reads a
keytab holding ``HTTP/<host>`` only, never the host's other keys.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import struct
import sys

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, MissingDependencyError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import KadminError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import split_principal, validate_principal, validate_realm

try:
    import gssapi
    import gssapi.raw
    from gssapi.exceptions import GeneralError, GSSError
except ImportError:  # pragma: no cover - exercised by the sanity import test only
    gssapi = None
    GSSError = GeneralError = Exception

KERBEROS_OID = "1.2.840.113554.1.2.2"
# A Heimdal ticket with its PAC is about 1.5 KiB as an AP-REQ; Active Directory tickets of users
# in many groups can be 12 KiB and more. nginx refuses request headers over 8 KiB (its default
# large_client_header_buffers) before the app sees them; this bound is the app's own.
DEFAULT_MAX_TOKEN_CHARS = 16 * 1024
MAX_KEYTAB_BYTES = 16 * 1024 * 1024
# "Negotiate" 1*SP token68 (RFC 7235 2.1: the scheme is case-insensitive); the token must be
# canonical base64 (length a multiple of 4, padding at the end only), checked before decoding.
_NEGOTIATE_RE = re.compile(r"(?i:negotiate) +([A-Za-z0-9+/]+={0,2})")
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+-]{0,4095}")
GSS_INITIAL_TOKEN_TAG = 0x60
CHALLENGE = "Negotiate"

LOG = logging.getLogger(__name__)


class SpnegoConfigError(HcpError):
    """The acceptor cannot be set up (keytab, realm, service name): the service must not start."""


def _require_gssapi():
    if gssapi is None:
        raise MissingDependencyError("the Python library 'gssapi' is required for Kerberos (SPNEGO) authentication")


def _path(value, what):
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value) or "/../" in value + "/":
        raise SpnegoConfigError("kerberos %s must be an absolute path of [A-Za-z0-9_./+-] (got %s)" % (what, ascii(value)[:80]))
    return value


def service_principal(service, realm):
    """The canonical ``<service>/<host>@REALM`` of a configured service name (two components)."""
    try:
        canonical = validate_principal(service, validate_realm(realm))
    except KadminError as exc:
        raise SpnegoConfigError("kerberos service: %s" % exc) from None
    components, _realm = split_principal(canonical)
    if len(components) != 2:
        raise SpnegoConfigError("kerberos service must be <service>/<host name> (e.g. HTTP/www.example.test), got %s"
                                % ascii(service)[:80])
    return canonical


class KerberosAcceptor(object):
    """Accepts Negotiate tokens for the service principal ``service`` (``HTTP/<host>``, in
    ``realm``) with its keys in ``keytab``; ``rcache``: the replay cache file (default: the
    library's, under ``$KRB5RCACHEDIR`` or /var/tmp). SpnegoConfigError when the keytab does not
    hold keys of that principal (the service fails closed at start)."""

    def __init__(self, keytab, realm, service, rcache=None, max_token_chars=DEFAULT_MAX_TOKEN_CHARS):
        _require_gssapi()
        self.principal = service_principal(service, realm)
        self.realm = realm
        _path(keytab, "keytab")
        if not isinstance(max_token_chars, int) or isinstance(max_token_chars, bool) or not 64 <= max_token_chars <= 65536:
            raise SpnegoConfigError("kerberos max_token_chars must be an integer from 64 to 65536")
        self.max_token_chars = max_token_chars
        # the credential store extension (MIT krb5 >= 1.11): the keytab and replay cache are
        # named here, not by KRB5_KTNAME / KRB5RCACHEDIR, so two apps of a host never mix them.
        # Acquiring checks that the keytab holds keys of the principal (a missing keytab or key
        # fails here, at start: tested)
        store = {"keytab": "FILE:" + keytab}
        if rcache is not None:
            store["rcache"] = "file2:" + _path(rcache, "rcache")
        try:
            name = gssapi.Name(self.principal, gssapi.NameType.kerberos_principal)
            self.creds = gssapi.Credentials(name=name, usage="accept", store=store)
            # SPNEGO may negotiate Kerberos only (never NTLM or IAKERB, whatever mechanisms the
            # library has; gss_set_neg_mechs)
            gssapi.raw.set_neg_mechs(self.creds, set([gssapi.OID.from_int_seq(KERBEROS_OID)]))
        except (GSSError, GeneralError) as exc:
            raise SpnegoConfigError("cannot use the keys of %s in %s: %s" % (self.principal, keytab, str(exc)[:300])) from None

    def accept(self, header):
        """(identity, response token) for an ``Authorization`` header value, or (None, reason).

        identity: ``{"auth": "kerberos", "principal", "subject", "cn"}`` (the client principal,
        ``name@REALM``) plus the empty certificate fields of ``client_identity``; response token:
        base64 for ``WWW-Authenticate: Negotiate <token>`` (mutual authentication) or None. The
        reason of a refusal is for the log only. Never raises on a caller's input."""
        if not isinstance(header, str) or not header:
            return None, "no Authorization header"
        if len(header) > self.max_token_chars + 32:
            return None, "Negotiate token longer than %d characters" % self.max_token_chars
        match = _NEGOTIATE_RE.fullmatch(header)
        if match is None:
            return None, "not a Negotiate header with one base64 token"
        text = match.group(1)
        if len(text) % 4:
            return None, "token is not canonical base64"
        try:
            token = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None, "token is not base64"
        if not token or token[0] != GSS_INITIAL_TOKEN_TAG:
            # a raw NTLMSSP message ("NTLMSSP\0", i.e. "TlRMTVNTUA..."), or a continuation token
            # (SPNEGO NegTokenResp, 0xa1): not the first token of a one-leg exchange
            return None, "not a GSS-API initial context token (NTLM or a continuation token?)"
        try:
            context = gssapi.SecurityContext(creds=self.creds, usage="accept")
            out = context.step(token)
            if not context.complete:
                return None, "the token needs another round (not a Kerberos AP-REQ)"
            mech = context.mech.dotted_form
            if mech != KERBEROS_OID:
                return None, "mechanism %s is not Kerberos" % mech[:64]
            principal = str(context.initiator_name)
        # the GSSAPI library reports every refusal (bad token, replay, wrong key, another service,
        # skew, expired ticket) as a GSSError; the binding's own conversions may raise the others
        except (GSSError, GeneralError, ValueError, TypeError, OverflowError, UnicodeError, MemoryError) as exc:
            return None, "token refused: %s" % str(exc)[:300]
        name, sep, realm = principal.rpartition("@")
        if not sep or not name or realm != self.realm:
            return None, "client %s is not of realm %s" % (ascii(principal)[:300], self.realm)
        identity = {"auth": "kerberos", "principal": principal, "subject": principal, "cn": principal,
                    "emails": [], "dns": [], "pem": None, "fingerprint_sha256": None}
        return identity, (base64.b64encode(out).decode("ascii") if out else None)


def extract_service_keytab(source, dest, principal, gid):
    """Writes to ``dest`` (atomically, mode 0640, owner the caller: root in the unit, group ``gid``) the entries of
    ``principal`` (canonical ``name@REALM``) found in keytab ``source`` (read without following
    links), and returns how many. SpnegoConfigError (nothing written) when there is none or the
    file is unusable: the service must not start without its keys."""
    # pylint: disable=import-outside-toplevel
    from ansible_collections.hcp.core.plugins.module_utils import fileutil
    from ansible_collections.hcp.core.plugins.module_utils.attestation import install
    try:
        _info, data = fileutil.read_nofollow(_path(source, "keytab"), MAX_KEYTAB_BYTES)
    except (OSError, fileutil.UnsafePathError) as exc:
        raise SpnegoConfigError("cannot read the keytab %s: %s" % (source, exc)) from None
    if data is None:
        raise SpnegoConfigError("keytab %s is missing or larger than %d bytes" % (source, MAX_KEYTAB_BYTES))
    try:
        # parse_keytab and keytab_principals list the same entries in the same order
        entries = [raw for raw, (name, _kvno, _enctype) in zip(install.parse_keytab(data), install.keytab_principals(data))
                   if name == principal]
    except install.KeytabFormatError as exc:
        raise SpnegoConfigError("keytab %s is unusable: %s" % (source, exc)) from None
    if not entries:
        raise SpnegoConfigError("keytab %s holds no key of %s" % (source, principal))
    out = install.KEYTAB_MAGIC + b"".join(struct.pack(">i", len(raw)) + raw for raw in entries)
    try:
        fileutil.safe_install(_path(dest, "service keytab"), out, mode=0o640, gid=gid)
    except (OSError, fileutil.UnsafePathError) as exc:
        raise SpnegoConfigError("cannot write %s: %s" % (dest, exc)) from None
    return len(entries)


def main(argv=None):
    """``python -m ...web.spnego extract-keytab SOURCE DEST SERVICE REALM GROUP``: the unit's
    ExecStartPre (as root) of role hcp.core.webapi with auth kerberos. Exit 0, or 1 with the
    reason on stderr (the unit does not start)."""
    import grp  # pylint: disable=import-outside-toplevel
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 6 or argv[0] != "extract-keytab":
        sys.stderr.write("usage: spnego extract-keytab SOURCE DEST SERVICE REALM GROUP\n")
        return 2
    source, dest, service, realm, group = argv[1:]
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        sys.stderr.write("spnego: unknown group %s\n" % ascii(group)[:80])
        return 1
    try:
        count = extract_service_keytab(source, dest, service_principal(service, realm), gid)
    except SpnegoConfigError as exc:
        sys.stderr.write("spnego: %s\n" % exc)
        return 1
    sys.stdout.write("spnego: %d key(s) of %s/%s written to %s\n" % (count, service, realm, dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
