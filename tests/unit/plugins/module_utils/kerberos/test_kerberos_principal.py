# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The principal and realm validator (whole-string match, bounded, the managed realm only)."""

from __future__ import annotations

import pytest

from ansible_collections.hcp.core.plugins.module_utils.kerberos.errors import PrincipalNameError, ReservedPrincipalError
from ansible_collections.hcp.core.plugins.module_utils.kerberos.principal import (
    MAX_PRINCIPAL_CHARS,
    split_principal,
    validate_principal,
    validate_realm,
)

REALM = "EXAMPLE.TEST"


@pytest.mark.parametrize("name, canonical", [
    ("host/node1.example.test", "host/node1.example.test@EXAMPLE.TEST"),
    ("host/node1.example.test@EXAMPLE.TEST", "host/node1.example.test@EXAMPLE.TEST"),
    ("alice", "alice@EXAMPLE.TEST"),
    ("HTTP/web.example.test", "HTTP/web.example.test@EXAMPLE.TEST"),
    ("svc_1/a-b/c.d", "svc_1/a-b/c.d@EXAMPLE.TEST"),
])
def test_valid_names(name, canonical):
    assert validate_principal(name, REALM) == canonical
    components, realm = split_principal(canonical)
    assert realm == REALM and "/".join(components) == canonical.split("@")[0]


@pytest.mark.parametrize("name", [
    "*", "host/*", "h?st/a", "[ab]", "a\\/b",          # kadmin globs over the whole database / escapes
    "-x", "--help", "host/-a", "/a", "a/", "a//b",       # options, empty components
    "a b", "a\tb", "a\nb", "a\n", "a\0", " a", "a ",    # whitespace, NUL, trailing newline
    "a@B@EXAMPLE.TEST", "a@", "@EXAMPLE.TEST",           # two realms, empty realm or name
    "a@OTHER.TEST", "a@example.test",                    # another realm (realms are case-sensitive)
    "h\u00f4st/a", "a/b/c/d", "a" * 256, "",             # non-ASCII, 4 components, long component
    ".a", "_a",
])
def test_malformed_names_are_refused(name):
    with pytest.raises(PrincipalNameError):
        validate_principal(name, REALM)


@pytest.mark.parametrize("value", [None, 5, b"alice", ["alice"]])
def test_non_strings_are_refused(value):
    with pytest.raises(PrincipalNameError, match="non-empty string"):
        validate_principal(value, REALM)


def test_length_bound_counts_before_parsing():
    name = "/".join(["a" * 200] * 3)
    assert len(name) > MAX_PRINCIPAL_CHARS
    with pytest.raises(PrincipalNameError, match="longer than"):
        validate_principal(name, REALM)
    with pytest.raises(PrincipalNameError, match="longer than"):
        validate_principal("x" * 10 ** 6, REALM)


@pytest.mark.parametrize("name", ["krbtgt/EXAMPLE.TEST", "kadmin/admin", "changepw/kerberos", "default",
                                  "WELLKNOWN/ANONYMOUS", "iprop/kdc2.example.test", "krbtgt/EXAMPLE.TEST@EXAMPLE.TEST"])
def test_realm_principals_are_reserved(name):
    with pytest.raises(ReservedPrincipalError) as info:
        validate_principal(name, REALM)
    assert info.value.status == 403
    assert validate_principal(name, REALM, allow_reserved=True).endswith("@" + REALM)


def test_messages_quote_refused_names_safely():
    with pytest.raises(PrincipalNameError) as info:
        validate_principal("a\nb\x1b[31m" + "z" * 500, REALM)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 400


@pytest.mark.parametrize("realm", ["EXAMPLE.TEST", "A", "X-1.Y2"])
def test_valid_realms(realm):
    assert validate_realm(realm) == realm


@pytest.mark.parametrize("realm", ["", "example.test", "EXAMPLE..TEST", ".EXAMPLE", "EXAMPLE.", "-A", "A B", "A\n",
                                   "A" * 64 + ".TEST", None, "WELLKNOWN:ORG.H5L"])
def test_invalid_realms(realm):
    with pytest.raises(PrincipalNameError):
        validate_realm(realm)
