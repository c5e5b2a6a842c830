"""Canonical JSON written as a stream is byte for byte canonical_json of the whole document."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.jsonstream import json_string, marker, write_canonical
from manifests.canonical import canonical_json

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None)
@given(
    top=st.dictionaries(st.text(), _json, max_size=5),
    first=st.lists(_json, max_size=6),
    second=st.lists(st.text(), max_size=6),
)
def test_streamed_is_canonical(top: dict[str, Any], first: list[Any], second: list[str]) -> None:
    a, b = marker("a"), marker("b")
    skeleton = {**top, "a": a, "nested": {"b": b, "z": 1}}
    out = io.BytesIO()
    write_canonical(
        out, skeleton, {a: (canonical_json(x) for x in first), b: (json_string(s) for s in second)}
    )
    whole = {**top, "a": first, "nested": {"b": second, "z": 1}}
    assert out.getvalue() == canonical_json(whole)


def test_a_long_list_is_written_in_pieces_not_at_once() -> None:
    writes: list[int] = []

    class Sink:
        def write(self, data: bytes) -> None:
            writes.append(len(data))

    mark = marker("rows")
    write_canonical(Sink(), {"rows": mark}, {mark: (b'"%06d"' % i for i in range(100_000))})
    assert len(writes) > 10
    assert max(writes) < 1 << 17


@given(st.text())
def test_a_json_string_is_what_json_dumps_writes(text: str) -> None:
    assert json_string(text) == json.dumps(text, ensure_ascii=False).encode("utf-8")
