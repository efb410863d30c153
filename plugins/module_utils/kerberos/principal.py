# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one validator of Kerberos principal and realm names in hcp.core (docs/kerberos.md).

A name that reaches kadmin has passed :func:`validate_principal`: ASCII letters, digits and
``. _ -`` in 1 to 3 components, each starting with a letter or digit (so kadmin never reads one
as an option), separated by ``/``, optionally followed by ``@`` and the managed realm. Everything
else is refused before any process runs: glob characters (``* ? [`` — kadmin's get, del and
ext_keytab expand them over the whole database), backslash escapes, whitespace, NUL and other
controls, a second ``@``, empty components, non-ASCII text and over-long names. The check is a
``re.fullmatch`` on the whole string (a trailing newline never passes).
"""

from __future__ import annotations

import re

from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import PrincipalNameError, ReservedPrincipalError

MAX_REALM_CHARS = 255
MAX_COMPONENT_CHARS = 255
MAX_COMPONENTS = 3
MAX_PRINCIPAL_CHARS = 512

# Upper-case DNS-like realm (the Kerberos convention): labels of letters, digits and hyphens
# joined by single dots, starting and ending with a letter or digit.
REALM_RE = re.compile(r"[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?(?:\.[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?)*")
COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_COMPONENT_CHARS - 1))
NAME_RE = re.compile(r"(%s)(?:/%s){0,%d}" % (COMPONENT_RE.pattern, COMPONENT_RE.pattern, MAX_COMPONENTS - 1))

# First components owned by the realm: the TGS keys, kadmin's own principals, Heimdal's
# well-known and template entries, and the replication identities (iprop/hprop: their keys read
# the whole database). Extracting krbtgt's keys would let the holder forge any ticket. The KDC
# role manages these itself (allow_reserved=True); the kadmin API never does.
RESERVED_FIRST_COMPONENTS = frozenset(["krbtgt", "kadmin", "changepw", "WELLKNOWN", "default", "iprop", "hprop"])


def validate_realm(realm):
    """``realm`` if it is a valid realm name, else PrincipalNameError."""
    if not isinstance(realm, str) or not realm:
        raise PrincipalNameError("a Kerberos realm must be a non-empty string")
    if len(realm) > MAX_REALM_CHARS or not REALM_RE.fullmatch(realm):
        raise PrincipalNameError("invalid Kerberos realm %s (upper-case letters, digits, '-' and '.', at most %d characters)"
                                 % (_quote(realm), MAX_REALM_CHARS))
    return realm


def _quote(value):
    """A short printable rendering of a refused value for a message (never long, no controls)."""
    text = value if len(value) <= 80 else value[:80] + "..."
    return ascii(text)


def validate_principal(name, realm, allow_reserved=False):
    """The canonical ``components@REALM`` form of principal ``name`` in ``realm``.

    ``name`` may omit the realm (then ``realm`` is appended) or give it (it must be ``realm``).
    PrincipalNameError when malformed or in another realm; ReservedPrincipalError for the realm's
    own principals (RESERVED_FIRST_COMPONENTS) unless ``allow_reserved``."""
    validate_realm(realm)
    if not isinstance(name, str) or not name:
        raise PrincipalNameError("a Kerberos principal must be a non-empty string")
    if len(name) > MAX_PRINCIPAL_CHARS:
        raise PrincipalNameError("Kerberos principal longer than %d characters" % MAX_PRINCIPAL_CHARS)
    base, sep, given_realm = name.partition("@")
    if sep and given_realm != realm:
        if "@" in given_realm:
            raise PrincipalNameError("invalid Kerberos principal %s: more than one '@'" % _quote(name))
        raise PrincipalNameError("Kerberos principal %s is not in realm %s" % (_quote(name), realm))
    match = NAME_RE.fullmatch(base)
    if match is None:
        raise PrincipalNameError(
            "invalid Kerberos principal %s: 1 to %d components of ASCII letters, digits, '.', '_' and '-' separated by '/', "
            "each starting with a letter or digit, then optionally @%s" % (_quote(name), MAX_COMPONENTS, realm))
    if not allow_reserved and match.group(1) in RESERVED_FIRST_COMPONENTS:
        raise ReservedPrincipalError("Kerberos principal %s belongs to the realm and cannot be managed here" % _quote(name))
    return "%s@%s" % (base, realm)


def split_principal(canonical):
    """(components, realm) of a name validate_principal returned."""
    base, _sep, realm = canonical.partition("@")
    return base.split("/"), realm
