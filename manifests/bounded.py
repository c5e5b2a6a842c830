"""The one reader for JSON that came from outside: bounded before the parser sees it.

Every document kiln receives (release envelopes and their payloads, trust-root updates, token
answers, OCI manifests, indexes, image configs, tag lists, referrers, registry error bodies, what
the agent's content store holds) is read by :func:`read_json`. It checks, in this order:

1. **size**: more than ``max_bytes`` is refused before anything else;
2. **encoding**: strict UTF-8;
3. **nesting depth**: an iterative scan of the bytes (string literals skipped) finds the deepest
   ``[``/``{`` nesting; past ``max_depth`` is refused *before* :func:`json.loads` runs, so the
   parser (which recurses) never sees input that could raise ``RecursionError``;
4. while parsing: **integer literals** longer than ``max_number`` characters (the interpreter
   refuses more than 4300 digits with a bare ``ValueError``), **float literals** that are too long
   or overflow to infinity (``1e400``), the non-JSON constants ``NaN``/``Infinity``, and
   **duplicate keys**;
5. **top-level type**: an object (or a list) where one is expected.

Every refusal is one :class:`~manifests.errors.ParseError` (``reason="parse"``), a
``VerificationError`` that is also a ``DocumentError``, naming ``what`` was read. Nothing else
escapes: no ``RecursionError``, ``ValueError`` or ``UnicodeDecodeError``.

Why not a third-party parser or a higher recursion limit: see ``docs/adr/0013-bounded-reader.md``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, TypeVar, overload

from manifests.errors import ParseError

__all__ = ["JsonCaps", "read_json", "read_json_object", "read_json_list", "json_depth"]

T = TypeVar("T", dict[str, Any], list[Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonCaps:
    """Bounds on one untrusted JSON document.

    ``max_bytes``: the whole document. ``max_depth``: nested arrays/objects (OCI documents need
    fewer than 10, in-toto provenance fewer than 20). ``max_number``: characters of one number
    literal (an int64 has at most 20; a long float spelling is still short).
    """

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_number: int = 64

    def __post_init__(self) -> None:
        if self.max_bytes < 2 or self.max_depth < 1 or self.max_number < 1:
            raise ValueError(f"JsonCaps out of range: {self}")


DEFAULT_CAPS = JsonCaps()

# A JSON string literal (escapes included); unrolled so it runs in linear time.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = 1, 255  # signed byte +1 / -1
_DEPTH_TABLE = bytes(_OPEN if b in b"[{" else _CLOSE if b in b"]}" else 0 for b in range(256))
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """The deepest ``[``/``{`` nesting of ``data``, string literals skipped; never recurses.

    On malformed input (an unterminated string) it counts brackets the parser would see as text,
    so it may only over-estimate, which errs on the side of refusing.
    """
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_DEPTH_TABLE)).cast("b")
    return max(accumulate(steps, initial=0))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(f"duplicate key {k!r} in JSON document")
        out[k] = v
    return out


class _Refusal(Exception):
    """Internal: raised from the parser's hooks; becomes a ParseError naming the document."""


class _Duplicate(_Refusal):
    """Internal: a duplicate key (its message stands alone, as it always has)."""


def _parse_int(caps: JsonCaps) -> Any:
    def parse(text: str) -> int:
        if len(text) > caps.max_number:
            raise _Refusal(
                f"an integer literal of {len(text)} characters exceeds the {caps.max_number}-character cap"
            )
        return int(text)

    return parse


def _parse_float(caps: JsonCaps) -> Any:
    def parse(text: str) -> float:
        if len(text) > caps.max_number:
            raise _Refusal(
                f"a number literal of {len(text)} characters exceeds the {caps.max_number}-character cap"
            )
        value = float(text)
        if not math.isfinite(value):
            raise _Refusal(f"the number {text} is out of range (overflows a float)")
        return value

    return parse


def _parse_constant(text: str) -> Any:
    raise _Refusal(f"{text} is not a JSON number")


@overload
def read_json(data: bytes, *, what: str, expect: type[T], caps: JsonCaps = ...) -> T: ...
@overload
def read_json(data: bytes, *, what: str, expect: None = None, caps: JsonCaps = ...) -> Any: ...
def read_json(
    data: bytes, *, what: str, expect: type[Any] | None = None, caps: JsonCaps = DEFAULT_CAPS
) -> Any:
    """Parse untrusted JSON ``data`` within ``caps``; ``expect`` (``dict`` or ``list``) is the
    required top-level type. Raises :class:`~manifests.errors.ParseError` naming ``what``."""
    if len(data) > caps.max_bytes:
        raise ParseError(f"{what}: {len(data)} bytes exceeds the {caps.max_bytes}-byte cap")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{what}: not valid JSON: not UTF-8 at byte {exc.start}") from None
    depth = json_depth(bytes(data))
    if depth > caps.max_depth:
        raise ParseError(f"{what}: JSON nested {depth} levels deep exceeds the {caps.max_depth}-level cap")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_int=_parse_int(caps),
            parse_float=_parse_float(caps),
            parse_constant=_parse_constant,
        )
    except _Duplicate as exc:
        raise ParseError(str(exc)) from None
    except _Refusal as exc:
        raise ParseError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"{what}: not valid JSON: {exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # belt and braces: the scan prevents these
        raise ParseError(f"{what}: not acceptable JSON: {type(exc).__name__}") from None
    if expect is not None and not isinstance(value, expect):
        kind = "a JSON object" if expect is dict else "a JSON array" if expect is list else expect.__name__
        raise ParseError(f"{what}: expected {kind}", hint=f"the document is {_kind(value)}")
    return value


def read_json_object(data: bytes, *, what: str, caps: JsonCaps = DEFAULT_CAPS) -> dict[str, Any]:
    """:func:`read_json` of a document whose top level must be an object."""
    return read_json(data, what=what, expect=dict, caps=caps)


def read_json_list(data: bytes, *, what: str, caps: JsonCaps = DEFAULT_CAPS) -> list[Any]:
    """:func:`read_json` of a document whose top level must be an array."""
    return read_json(data, what=what, expect=list, caps=caps)


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
