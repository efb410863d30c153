# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one decoder of untrusted JSON in hcp.core (service request bodies, the enrollment
writer's requests, the HTTPS client's answers, policy documents and data).

:func:`loads` bounds everything before or while parsing and fails with one error,
:class:`JsonInputError` (an HcpError with HTTP status 400), never with RecursionError,
OverflowError, UnicodeError or a bare ValueError:

* size: at most ``max_bytes`` bytes of UTF-8 (no BOM, no UTF-16/32 guessing);
* nesting: at most ``max_depth`` arrays/objects deep, checked on the raw text before
  ``json.loads`` runs, so a hostile document never recurses nor builds a deep structure;
* values: no ``NaN``/``Infinity``/``-Infinity``, no float that overflows to infinity, no
  integer longer than ``MAX_INT_DIGITS`` digits, no lone UTF-16 surrogate (``"\\ud800"``),
  which JSON text can spell but UTF-8 cannot carry.

The standard library has none of these bounds (the stdlib parser recurses until
RecursionError and accepts NaN); no well-kept library adds them without a C extension,
hence the few lines here. Pure standard library.
"""

from __future__ import annotations

import itertools
import json
import re

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 64
MAX_INT_DIGITS = 64

# What the depth scan drops: a whole string (escapes included; possessive, so linear), an
# unterminated string (the rest of the text: invalid JSON anyway, and scanning on from every
# later quote would be quadratic), or a run of characters that are neither brackets nor quotes.
_NOT_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|".*|[^"\[\]{}]+', re.S)
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# A \u escape of a UTF-16 surrogate (paired or not): only then can a lone surrogate appear.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(HcpError):
    """A JSON document is malformed or beyond a bound. The message, ``"<what> is <detail>"``,
    names the problem, never the document's content. ``reason``: ``size``, ``encoding``,
    ``depth``, ``value`` or ``syntax``."""

    status = 400

    def __init__(self, what, detail, reason):
        super(JsonInputError, self).__init__("%s is %s" % (what, detail), 400)
        self.detail = detail
        self.reason = reason


def _reject_constant(name):
    raise ValueError("non-JSON constant %s" % name)


def _bounded_int(text):
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise ValueError("integer longer than %d digits" % MAX_INT_DIGITS)
    return int(text)


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def nested_deeper_than(text, limit):
    """True when arrays/objects nest more than ``limit`` deep in JSON ``text`` (str), outside
    strings; linear time. For invalid JSON it may err towards True, never towards False."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, without the scan
    brackets = _NOT_BRACKET.sub("", text)
    return any(map(limit.__lt__, itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))))


def loads(data, what="JSON", max_bytes=DEFAULT_MAX_BYTES, max_depth=DEFAULT_MAX_DEPTH):
    """The value of the JSON document ``data`` (bytes or str) within the bounds; else
    :class:`JsonInputError` whose message starts with ``what``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise JsonInputError(what, "larger than %d bytes" % max_bytes, "size")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonInputError(what, "not UTF-8", "encoding") from None
    elif isinstance(data, str):
        if len(data) > max_bytes:
            raise JsonInputError(what, "larger than %d bytes" % max_bytes, "size")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise JsonInputError(what, "not UTF-8 text", "encoding") from None
        if size > max_bytes:
            raise JsonInputError(what, "larger than %d bytes" % max_bytes, "size")
        text = data
    else:
        raise JsonInputError(what, "not JSON text", "syntax")
    if nested_deeper_than(text, max_depth):
        raise JsonInputError(what, "nested deeper than %d levels" % max_depth, "depth")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise JsonInputError(what, "not valid JSON: %s" % exc.msg, "syntax") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # our parse_* hooks (ValueError), or a bound the scan above should make unreachable
        reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        raise JsonInputError(what, "not acceptable JSON: %s" % reason, "value") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonInputError(what, "not UTF-8 text (a lone UTF-16 surrogate)", "encoding") from None
    return value
