# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resource names (``<domain>/<name>``) and measurements, the key-server's one validator.

A name is a domain, ``/``, then one or more segments separated by ``/``: ASCII letters, digits
and ``_.@+=,:-``, each segment starting with a letter, digit or ``_``; no empty segment (so no
leading, trailing or doubled ``/``), no ``..`` anywhere, no NUL or other control character,
no space, at most MAX_NAME_CHARS characters and MAX_SEGMENTS segments. Whole-string matches
(``re.fullmatch``). The domain ``keyserver`` is reserved for the server itself: no caller
stores, reads or lists it.
"""

from __future__ import annotations

import hashlib
import json
import re

from ansible_collections.hcp.core.plugins.module_utils.keyserver.errors import AccessDenied, ResourceNameError

MAX_NAME_CHARS = 255
MAX_SEGMENTS = 16
RESERVED_DOMAINS = frozenset(["keyserver"])
DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=,:-]{0,127}")
MEASUREMENT_RE = re.compile(r"pcrs-sha256:[0-9a-f]{64}")
LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _show(value):
    """A short, printable rendering of a refused name for messages (never the whole input)."""
    return ascii(value[:64]) + ("..." if len(value) > 64 else "")


def validate_name(name, what="resource name"):
    """``name`` when it is a valid ``<domain>/<name>``; ResourceNameError (400) naming the rule otherwise."""
    if not isinstance(name, str):
        raise ResourceNameError("%s must be a string" % what)
    if len(name) > MAX_NAME_CHARS:
        raise ResourceNameError("%s is longer than %d characters" % (what, MAX_NAME_CHARS))
    if "\0" in name:
        raise ResourceNameError("%s %s contains NUL" % (what, _show(name)))
    if ".." in name:
        raise ResourceNameError("%s %s contains '..'" % (what, _show(name)))
    if name.startswith("/") or name.endswith("/"):
        raise ResourceNameError("%s %s starts or ends with '/'" % (what, _show(name)))
    parts = name.split("/")
    if len(parts) < 2:
        raise ResourceNameError("%s %s is not <domain>/<name>" % (what, _show(name)))
    if len(parts) > MAX_SEGMENTS + 1:
        raise ResourceNameError("%s has more than %d segments" % (what, MAX_SEGMENTS))
    if not DOMAIN_RE.fullmatch(parts[0]):
        raise ResourceNameError("%s %s: the domain must match [a-z0-9][a-z0-9_-]{0,62}" % (what, _show(name)))
    for part in parts[1:]:
        if not SEGMENT_RE.fullmatch(part):
            raise ResourceNameError("%s %s: segment %s is empty or has a character outside [A-Za-z0-9_.@+=,:-]"
                                    % (what, _show(name), _show(part)))
    return name


def validate_prefix(prefix, what="prefix"):
    """A name prefix for the ACL and ``list``: ``<domain>/`` or the start of a valid name
    (validated as the name it begins; a trailing ``/`` allowed)."""
    if not isinstance(prefix, str) or not prefix:
        raise ResourceNameError("%s must be a non-empty string" % what)
    if prefix.endswith("/") and "/" not in prefix[:-1]:
        if len(prefix) > MAX_NAME_CHARS or not DOMAIN_RE.fullmatch(prefix[:-1]):
            raise ResourceNameError("%s %s: the domain must match [a-z0-9][a-z0-9_-]{0,62}" % (what, _show(prefix)))
        return prefix
    validate_name(prefix[:-1] if prefix.endswith("/") else prefix, what)
    return prefix


def domain_of(name):
    return name.split("/", 1)[0]


def check_not_reserved(name):
    """AccessDenied when ``name`` (or prefix) is in a domain reserved for the server itself."""
    if domain_of(name) in RESERVED_DOMAINS:
        raise AccessDenied("domain %s is reserved for the key-server itself: its own credentials are never released"
                           % domain_of(name))


def measurement_of(golden):
    """The measurement of golden PCR values ``{bank: {index: hex}}`` (enrollment/profile.golden_pcrs):
    ``pcrs-sha256:`` + SHA-256 of their canonical JSON (keys as strings, sorted, no spaces)."""
    canonical = dict((str(bank), dict((str(k), str(v).lower()) for k, v in values.items()))
                     for bank, values in golden.items())
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("ascii")).hexdigest()
    return "pcrs-sha256:" + digest


def validate_measurement(value, what="measurement"):
    if not isinstance(value, str) or not MEASUREMENT_RE.fullmatch(value):
        raise ResourceNameError("%s must be pcrs-sha256:<64 lowercase hex>" % what)
    return value
