# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one bounded JSON decoder: every hostile document is a JsonInputError, never a
RecursionError, OverflowError or UnicodeError, and the nesting bound holds before parsing."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError, loads, nested_deeper_than


@pytest.mark.parametrize("data,reason", [
    (b"[" * 100000 + b"]" * 100000, "depth"),
    ('{"a": ' * 65 + "1" + "}" * 65, "depth"),
    (b"[" * 200000, "depth"),  # not even closed: refused before the parser sees it
    (b"NaN", "value"),
    (b"[Infinity]", "value"),
    (b"{\"a\": -Infinity}", "value"),
    (b"1e400", "value"),
    (b"-1e400", "value"),
    (b"1" * 65, "value"),
    (b"1" * 5000, "value"),
    (b"\"\\ud800\"", "encoding"),
    (b"{\"\\udfff\": 1}", "encoding"),
    ("\"\ud800\"", "encoding"),
    (b"\xff\xfe{}", "encoding"),
    (b"\xef\xbb\xbf{}", "syntax"),
    (b"{", "syntax"),
    (b"", "syntax"),
    (b"x" * 2000, "size"),
    (12, "syntax"),
])
def test_hostile_documents_are_one_error(data, reason):
    with pytest.raises(JsonInputError) as info:
        loads(data, "body", max_bytes=1024 if reason == "size" else 1024 * 1024)
    assert info.value.reason == reason and info.value.status == 400
    assert str(info.value).startswith("body is ")
    assert len(str(info.value)) < 200  # names the problem, never echoes the document


def test_bounds_are_inclusive_and_strings_do_not_count():
    assert loads("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)
    assert loads(json.dumps({"a": "[[[[{{{{" * 100})) == {"a": "[[[[{{{{" * 100}
    assert loads(json.dumps(["\\\"[" * 100])) == ["\\\"[" * 100]
    assert loads(b"1" * 64) == int("1" * 64)
    assert loads(b"\"\\ud83d\\ude00\"") == "\U0001f600"  # a surrogate pair is a character
    assert loads(b'"' + b"x" * 8 + b'"', max_bytes=10) == "x" * 8
    with pytest.raises(JsonInputError, match="larger than 10 bytes"):
        loads('"' + "\u00e9" * 5 + '"', max_bytes=10)  # 7 characters, 12 bytes of UTF-8
    with pytest.raises(JsonInputError):
        loads("[" * 5 + "]" * 5, max_depth=4)


def test_hostile_scans_are_linear():
    """Quotes that open unterminated strings, escapes and brackets: the pre-parse scan stays
    well under a second on a megabyte (a naive scan from every quote is quadratic)."""
    for base in ('"\\"' * 350000, "[" * 1000000, '["a\\\\",' * 100000 + "1]", "a\\\"" * 350000):
        text = base + "[" * 100  # past the cheap bracket count: the scan runs
        started = time.monotonic()
        with pytest.raises(JsonInputError):
            loads(text, max_bytes=2 * 1024 * 1024, max_depth=64)
        assert time.monotonic() - started < 2


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30)


def depth_of(value):
    if isinstance(value, dict):
        return 1 + max([depth_of(v) for v in value.values()] or [0])
    if isinstance(value, list):
        return 1 + max([depth_of(v) for v in value] or [0])
    return 0


@settings(max_examples=120, deadline=None)
@given(JSON_VALUES, st.integers(min_value=0, max_value=8))
def test_plain_json_round_trips_and_depth_is_exact(value, limit):
    text = json.dumps(value)
    assert nested_deeper_than(text, limit) == (depth_of(value) > limit)
    if depth_of(value) <= limit:
        assert loads(text, max_depth=limit) == value
    else:
        with pytest.raises(JsonInputError, match="nested deeper"):
            loads(text, max_depth=limit)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_never_raise_anything_else(data):
    try:
        loads(data, max_depth=8)
    except JsonInputError:
        pass
