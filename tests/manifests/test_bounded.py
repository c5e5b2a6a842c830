"""The bounded reader for untrusted JSON: a table of hostile shapes, and a property/fuzz test that
nothing but ParseError ever escapes it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.bounded import JsonCaps, json_depth, read_json, read_json_object
from manifests.errors import DocumentError, ParseError, VerificationError


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


REFUSED = [
    ("a list", b"[]", "doc: expected a JSON object"),
    ("a string", b'"x"', "doc: expected a JSON object"),
    ("100,000-deep", deep(100_000), "doc: JSON nested 100000 levels deep exceeds the 64-level cap"),
    (
        "deep object",
        b'{"a":' * 65 + b"1" + b"}" * 65,
        "doc: JSON nested 65 levels deep exceeds the 64-level cap",
    ),
    ("5,000-digit int", b'{"a":' + b"7" * 5000 + b"}", "doc: an integer literal of 5000 characters exceeds"),
    ("negative long int", b'{"a":-' + b"7" * 100 + b"}", "doc: an integer literal of 101 characters exceeds"),
    ("float overflow", b'{"a":1e400}', "doc: the number 1e400 is out of range (overflows a float)"),
    ("negative overflow", b'{"a":-1e400}', "doc: the number -1e400 is out of range"),
    ("long float", b'{"a":0.' + b"1" * 100 + b"}", "doc: a number literal of 102 characters exceeds"),
    ("NaN", b'{"a":NaN}', "doc: NaN is not a JSON number"),
    ("Infinity", b'{"a":-Infinity}', "doc: -Infinity is not a JSON number"),
    ("duplicate key", b'{"a":1,"a":2}', "duplicate key 'a' in JSON document"),
    ("not UTF-8", b'{"a":"\xff"}', "doc: not valid JSON: not UTF-8 at byte 6"),
    ("not JSON", b"{nope", "doc: not valid JSON"),
    ("too large", b'{"a":"' + b"x" * 100 + b'"}', "doc: 108 bytes exceeds the 100-byte cap"),
]


@pytest.mark.parametrize(("data", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(data: bytes, message: str) -> None:
    caps = JsonCaps(max_bytes=100) if "bytes exceeds" in message else JsonCaps(max_bytes=1 << 20)
    with pytest.raises(ParseError) as err:
        read_json_object(data, what="doc", caps=caps)
    assert err.value.message.startswith(message), err.value.message
    assert err.value.reason == "parse"
    assert isinstance(err.value, DocumentError)
    assert isinstance(err.value, VerificationError)
    assert err.value.exit_code == 3


def test_brackets_inside_strings_do_not_count() -> None:
    data = b'{"a":"' + b"[" * 10_000 + b'\\"{{{","b":[[1]]}'
    assert json_depth(data) == 3
    assert read_json_object(data, what="doc")["b"] == [[1]]


def test_at_the_caps_is_accepted() -> None:
    caps = JsonCaps(max_depth=8, max_number=5)
    assert read_json(deep(8), what="doc", caps=caps) == json.loads(deep(8))
    assert read_json(b"[12345, -1234, 1.5e9]", what="doc", caps=caps) == [12345, -1234, 1.5e9]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_valid_documents_read_as_json_loads_reads_them(value: Any) -> None:
    data = json.dumps(value).encode()
    assert read_json(data, what="doc") == json.loads(data)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=300)
    | st.text(alphabet='[]{}",:0123456789.eE-+\\ntrufalse ', max_size=300).map(str.encode)
)
def test_fuzz_only_parse_errors_escape(data: bytes) -> None:
    reason = "accepted"
    try:
        read_json(data, what="doc", caps=JsonCaps(max_bytes=200, max_depth=8, max_number=20))
    except ParseError as exc:
        reason = exc.reason
    assert reason in ("accepted", "parse")
