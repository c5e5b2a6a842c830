"""Positions in TOML text: where each key and list item was written, for messages.

TOML parsers (tomli included) return values without positions. :func:`scan_toml` recovers them
for a document the parser already accepted, as a mapping from dotted paths
(:mod:`manifests.dotted`) to 1-based ``(line, column)``: a mapping entry is located at its key,
a list item at its first character, an item of an array of tables at its ``[[header]]``. It also
keeps the source text of every scalar that is not a string (``mode = 0o644`` -> ``"0o644"``), so
hints can quote what the person wrote.

The scan is best-effort: it walks keys, table headers and values (skipping strings and comments)
without building values, and stops at the first thing that surprises it, keeping what it
recorded so far. Positions are an aid for messages, never a source of truth.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import tomli

from manifests.dotted import join_index, join_key

__all__ = ["TomlPositions", "scan_toml", "is_bare_key"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TomlPositions:
    positions: Mapping[str, tuple[int, int]]  # dotted path -> (line, column); "" is (1, 1)
    raw: Mapping[str, str]  # dotted path -> source text of a non-string scalar


def scan_toml(text: str, *, max_depth: int) -> TomlPositions:
    """The positions (and raw scalar text) of the TOML document ``text``, which tomli accepted.

    Values nested deeper than ``max_depth`` end the scan.
    """
    scanner = _Scanner(text, max_depth)
    positions = scanner.scan()
    return TomlPositions(positions=positions, raw=scanner.raw)


def is_bare_key(key: str) -> bool:
    """Whether ``key`` can be written unquoted on the left of a TOML ``=``."""
    return _BARE_KEY.fullmatch(key) is not None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WS = re.compile(r"[ \t]*")
_SCALAR_END = re.compile(r"[,\]}\n#]")


class _Scanner:
    """Walks the text once; ``scan`` returns the positions, ``raw`` holds the scalar texts."""

    def __init__(self, text: str, max_depth: int) -> None:
        self.text = text
        self.max_depth = max_depth
        self.i = 0
        self.positions: dict[str, tuple[int, int]] = {"": (1, 1)}
        self.raw: dict[str, str] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._aot: dict[str, int] = {}

    def scan(self) -> dict[str, tuple[int, int]]:
        with contextlib.suppress(IndexError, ValueError, KeyError, RecursionError):
            self._document()
        return self.positions

    # -- helpers

    def _pos(self, index: int) -> tuple[int, int]:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, index - self._line_starts[lo] + 1

    def _record(self, path: str, index: int) -> None:
        self.positions.setdefault(path, self._pos(index))

    def _skip_ws(self) -> None:
        m = _WS.match(self.text, self.i)
        if m:
            self.i = m.end()

    def _skip_blank(self) -> None:
        """Whitespace, newlines and comments."""
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "#":
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                return

    def _peek(self, s: str) -> bool:
        return self.text.startswith(s, self.i)

    # -- structure

    def _document(self) -> None:
        table = ""
        while True:
            self._skip_blank()
            if self.i >= len(self.text):
                return
            start = self.i
            if self._peek("[["):
                self.i += 2
                table = self._header(self._keys(), array=True, start=start)
                self._skip_ws()
                self._expect("]]")
            elif self._peek("["):
                self.i += 1
                table = self._header(self._keys(), array=False, start=start)
                self._skip_ws()
                self._expect("]")
            else:
                self._key_value(table)
            if self.i == start:
                raise ValueError("no progress")

    def _expect(self, s: str) -> None:
        if not self._peek(s):
            raise ValueError(f"expected {s!r}")
        self.i += len(s)

    def _header(self, keys: list[tuple[str, int]], *, array: bool, start: int) -> str:
        path = ""
        for n, (key, index) in enumerate(keys):
            path = join_key(path, key)
            self._record(path, index)
            last = n == len(keys) - 1
            if array and last:
                count = self._aot.get(path, 0)
                self._aot[path] = count + 1
                path = join_index(path, count)
                self._record(path, start)
            elif path in self._aot:
                path = join_index(path, self._aot[path] - 1)
        return path

    def _keys(self) -> list[tuple[str, int]]:
        keys: list[tuple[str, int]] = []
        while True:
            self._skip_ws()
            start = self.i
            keys.append((self._key(), start))
            self._skip_ws()
            if not self._peek("."):
                return keys
            self.i += 1

    def _key(self) -> str:
        text = self.text
        if self._peek('"'):
            end = self._basic_string_end(self.i)
            raw = text[self.i : end]
            self.i = end
            return str(tomli.loads(f"k = {raw}")["k"])
        if self._peek("'"):
            end = text.index("'", self.i + 1)
            key = text[self.i + 1 : end]
            self.i = end + 1
            return key
        m = _BARE_KEY.match(text, self.i)
        if m is None:
            raise ValueError("expected a key")
        self.i = m.end()
        return m.group()

    def _key_value(self, table: str) -> None:
        path = table
        for key, index in self._keys():
            path = join_key(path, key)
            self._record(path, index)
        self._skip_ws()
        self._expect("=")
        self._skip_ws()
        self._value(path, 0)

    def _value(self, path: str, depth: int) -> None:
        if depth > self.max_depth:
            raise ValueError("too deep")
        text = self.text
        if self._peek('"""'):
            self.i = self._multiline_end('"""', escapes=True)
        elif self._peek("'''"):
            self.i = self._multiline_end("'''", escapes=False)
        elif self._peek('"'):
            self.i = self._basic_string_end(self.i)
        elif self._peek("'"):
            self.i = text.index("'", self.i + 1) + 1
        elif self._peek("["):
            self.i += 1
            index = 0
            while True:
                self._skip_blank()
                if self._peek("]"):
                    self.i += 1
                    return
                item = join_index(path, index)
                self._record(item, self.i)
                self._value(item, depth + 1)
                index += 1
                self._skip_blank()
                if self._peek(","):
                    self.i += 1
        elif self._peek("{"):
            self.i += 1
            while True:
                self._skip_ws()
                if self._peek("}"):
                    self.i += 1
                    return
                child = path
                for key, index in self._keys():
                    child = join_key(child, key)
                    self._record(child, index)
                self._skip_ws()
                self._expect("=")
                self._skip_ws()
                self._value(child, depth + 1)
                self._skip_ws()
                if self._peek(","):
                    self.i += 1
        else:
            m = _SCALAR_END.search(text, self.i)
            end = len(text) if m is None else m.start()
            if end == self.i:
                raise ValueError("empty value")
            self.raw.setdefault(path, text[self.i : end].rstrip())
            self.i = end

    def _basic_string_end(self, start: int) -> int:
        """Index just past the closing quote of the basic string opening at ``start``."""
        text = self.text
        i = start + 1
        while True:
            c = text[i]
            if c == "\\":
                i += 2
            elif c == '"':
                return i + 1
            elif c == "\n":
                raise ValueError("newline in a basic string")
            else:
                i += 1

    def _multiline_end(self, delim: str, *, escapes: bool) -> int:
        text = self.text
        i = self.i + 3
        while True:
            if escapes and text[i] == "\\":
                i += 2
                continue
            if text.startswith(delim, i):
                end = i + 3
                # Up to two quotes right before the closing delimiter belong to the string.
                while end < len(text) and text[end] == delim[0] and end - i < 5:
                    end += 1
                return end
            i += 1
