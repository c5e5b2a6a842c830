"""Documents people write, loaded with their positions: YAML or TOML into plain values.

Every document kiln reads from a person (image manifests, release manifests, agent config, trust
policies) goes through here first::

    load_document(path) / parse_document(data, source=..., fmt=...)
        -> SourceDocument(data={...}, positions={"contents[1].closure.paths[0]": (7, 9), ...})
    Checker(doc)  walks the values, collects Problems, raises one ManifestError at the end

Dotted paths name a value: ``contents[1].closure.paths[0]``. A key that is not a plain identifier is
written quoted, ``labels["org.opencontainers.image.source"]``, so a path is never ambiguous
(:mod:`manifests.dotted`; ``join_key`` and ``join_index`` are re-exported here).
Positions are 1-based ``(line, column)`` pointing at the KEY of a mapping entry and at the item of a
list. TOML parsers give no positions: they are recovered best-effort by scanning the text
(:mod:`manifests.toml_positions`), so a TOML problem may be located at an enclosing key instead.

What is refused, each as a clean :class:`~manifests.errors.ManifestError`, never a traceback:
files over :data:`MAX_SOURCE_BYTES`, binary files (a NUL byte or invalid UTF-8), an empty file,
malformed YAML or TOML, a top level that is not a mapping, duplicate YAML keys (PyYAML would keep
the last silently), YAML anchors and aliases (billion laughs), YAML tags other than the plain
types, merge keys (``<<``), non-string mapping keys, sexagesimal YAML 1.1 numbers (``1:30``), and
nesting deeper than :data:`MAX_DEPTH`. YAML timestamps stay the strings they were written as;
TOML dates and times become ISO 8601 strings (``datetime.isoformat()``).
"""

from __future__ import annotations

import datetime
import enum
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import tomli
import yaml

from manifests.dotted import ancestors, join_index, join_key, last_key
from manifests.errors import ManifestError, Problem
from manifests.toml_positions import is_bare_key, scan_toml

__all__ = [
    "MAX_SOURCE_BYTES",
    "MAX_DEPTH",
    "DocumentFormat",
    "SourceDocument",
    "load_document",
    "parse_document",
    "format_for",
    "join_key",
    "join_index",
    "type_name",
    "did_you_mean",
    "Checker",
]

MAX_SOURCE_BYTES = 1024 * 1024
MAX_DEPTH = 64

_POSITIONS: Mapping[str, tuple[int, int]] = MappingProxyType({})
_RAW: Mapping[str, str] = MappingProxyType({})


class DocumentFormat(enum.StrEnum):
    YAML = "yaml"
    TOML = "toml"

    @classmethod
    def from_name(cls, name: str) -> DocumentFormat | None:
        """``yaml``, ``yml`` or ``toml`` (any case, an optional leading dot); ``None`` otherwise."""
        key = name.lower().removeprefix(".")
        if key in ("yaml", "yml"):
            return cls.YAML
        if key == "toml":
            return cls.TOML
        return None


# --------------------------------------------------------------------------------------------
# The loaded document


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDocument:
    """A document's plain values plus where each one was written.

    ``data`` holds only ``dict``/``list``/``str``/``int``/``float``/``bool``/``None``.
    ``raw`` keeps the source text of scalars that are not strings (``mode: 0644`` -> ``"0644"``),
    so messages can quote what the person wrote rather than what YAML 1.1 made of it.
    """

    source: str
    fmt: DocumentFormat
    data: dict[str, Any]
    positions: Mapping[str, tuple[int, int]] = field(default_factory=lambda: _POSITIONS)
    raw: Mapping[str, str] = field(default_factory=lambda: _RAW)

    def locate(self, path: str) -> tuple[int | None, int | None]:
        """The position of ``path``, or of its nearest enclosing value that has one."""
        for candidate in ancestors(path):
            pos = self.positions.get(candidate)
            if pos is not None:
                return pos
        return None, None

    def problem(self, path: str, message: str, hint: str | None = None, *, at: str | None = None) -> Problem:
        """A Problem about ``path``, located at ``at`` (default: ``path`` itself)."""
        line, col = self.locate(path if at is None else at)
        return Problem(file=self.source, line=line, col=col, path=path, message=message, hint=hint)


def _fail(
    source: str, message: str, hint: str | None = None, line: int | None = None, col: int | None = None
) -> NoReturn:
    raise ManifestError([Problem(file=source, line=line, col=col, path="", message=message, hint=hint)])


def format_for(path: Path) -> DocumentFormat:
    """The document format named by ``path``'s suffix; a ManifestError for anything else."""
    fmt = DocumentFormat.from_name(path.suffix)
    if fmt is None:
        shown = f"'{path.suffix}'" if path.suffix else "no suffix"
        _fail(str(path), f"unsupported file type ({shown})", "name the file *.yaml, *.yml or *.toml")
    return fmt


def load_document(path: Path, *, limit: int = MAX_SOURCE_BYTES) -> SourceDocument:
    """Read and parse the YAML or TOML file at ``path`` (format from its suffix)."""
    source = str(path)
    fmt = format_for(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        _fail(source, f"cannot read the file: {reason}", "check the path and its permissions")
    return parse_document(data, source=source, fmt=fmt, limit=limit)


def parse_document(
    data: bytes, *, source: str, fmt: str | DocumentFormat, limit: int = MAX_SOURCE_BYTES
) -> SourceDocument:
    """Parse untrusted ``data`` as YAML or TOML into a :class:`SourceDocument`.

    ``source`` names the document in messages (usually its path).
    """
    kind = fmt if isinstance(fmt, DocumentFormat) else DocumentFormat.from_name(fmt)
    if kind is None:
        _fail(source, f"unsupported document format {fmt!r}", "use 'yaml' or 'toml'")
    if len(data) > limit:
        _fail(source, f"the file is larger than {limit} bytes", "documents people write stay small")
    text = _decode(data, source)
    if not text.strip():
        _fail(source, "the file is empty", "write a mapping of keys, starting with apiVersion and kind")
    if kind is DocumentFormat.YAML:
        return _load_yaml(text, source)
    return _load_toml(text, source)


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return line, col


def _decode(data: bytes, source: str) -> str:
    nul = data.find(b"\x00")
    if nul >= 0:
        line, col = _line_col(data, nul)
        _fail(source, "binary file (contains a NUL byte)", "kiln reads YAML or TOML text in UTF-8", line, col)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        _fail(
            source,
            f"not UTF-8 text (invalid byte 0x{data[exc.start]:02x})",
            "save the file as UTF-8",
            line,
            col,
        )
    return text.removeprefix("\ufeff")


def _top_level(value: Any, source: str, line: int | None, col: int | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(
            source,
            f"expected a mapping at the top level, got {type_name(value)}",
            "write key: value pairs, starting with apiVersion and kind",
            line,
            col,
        )
    return value


# --------------------------------------------------------------------------------------------
# YAML


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_VALUE = "tag:yaml.org,2002:value"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_PLAIN_TYPES_HINT = "only strings, numbers, booleans, null, lists and mappings are allowed"


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _Refused(Exception):
    def __init__(self, message: str, mark: Any, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.hint = hint


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader's composer, refusing anchors and aliases before they are expanded."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                "YAML aliases (*name) are not allowed", event.start_mark, "write the value out in full"
            )
        if getattr(event, "anchor", None) is not None:
            raise _Refused(
                "YAML anchors (&name) are not allowed", event.start_mark, "write the value out in full"
            )
        return super().compose_node(parent, index)


def _mark(mark: Any) -> tuple[int | None, int | None]:
    if mark is None:
        return None, None
    return mark.line + 1, mark.column + 1


def _load_yaml(text: str, source: str) -> SourceDocument:
    loader: _NoAliasLoader | None = None
    try:
        loader = _NoAliasLoader(text)
        root = loader.get_single_node()
    except _Refused as exc:
        _fail(source, exc.message, exc.hint, *_mark(exc.mark))
    except yaml.MarkedYAMLError as exc:
        what = exc.problem or exc.context or "syntax error"
        _fail(
            source,
            f"invalid YAML: {what}",
            "check the indentation and quoting here",
            *_mark(exc.problem_mark),
        )
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text.encode("utf-8"), len(text[: exc.position].encode("utf-8")))
        _fail(source, f"invalid YAML: character #x{exc.character:04x} is not allowed", None, line, col)
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above is marked or a ReaderError
        _fail(source, f"invalid YAML: {exc}")
    except RecursionError:
        _fail(source, "the document is nested too deeply", f"at most {MAX_DEPTH} levels are allowed")
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        _fail(source, "the file is empty", "write a mapping of keys, starting with apiVersion and kind")
    builder = _YamlBuilder(source)
    value = builder.build(root, "", 0)
    if builder.problems:
        raise ManifestError(_sorted(builder.problems))
    data = _top_level(value, source, *_mark(root.start_mark))
    return SourceDocument(
        source=source,
        fmt=DocumentFormat.YAML,
        data=data,
        positions=MappingProxyType(builder.positions),
        raw=MappingProxyType(builder.raw),
    )


class _YamlBuilder:
    """Turns a composed node graph into plain values, recording positions and refusing the unsafe."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.positions: dict[str, tuple[int, int]] = {}
        self.raw: dict[str, str] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def report(self, node: yaml.Node, path: str, message: str, hint: str | None) -> None:
        line, col = _mark(node.start_mark)
        self.problems.append(
            Problem(file=self.source, line=line, col=col, path=path, message=message, hint=hint)
        )

    def build(self, node: yaml.Node, path: str, depth: int) -> Any:
        if path not in self.positions:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
            self.positions[path] = (line, col)
        if depth > MAX_DEPTH:
            self.report(
                node, path, "the document is nested too deeply", f"at most {MAX_DEPTH} levels are allowed"
            )
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self.report(node, path, f"unsupported YAML tag {_tag(node.tag)}", _PLAIN_TYPES_HINT)
                return None
            return [self.build(item, join_index(path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                self.report(node, path, f"unsupported YAML tag {_tag(node.tag)}", _PLAIN_TYPES_HINT)
                return None
            return self._mapping(node, path, depth)
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                self.report(
                    key_node,
                    join_key(path, "<<"),
                    "YAML merge keys (<<) are not allowed",
                    "write the keys out in full",
                )
                continue
            key = self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else key_node
            if not isinstance(key, str):
                got = "a list or mapping" if isinstance(key_node, yaml.CollectionNode) else type_name(key)
                self.report(key_node, path, f"mapping keys must be strings, got {got}", "quote the key")
                continue
            child = join_key(path, key)
            line = key_node.start_mark.line + 1
            if key in first:
                self.report(
                    key_node, child, f"duplicate key (first at line {first[key]})", "remove one of them"
                )
                continue
            first[key] = line
            self.positions[child] = (line, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child, depth + 1)
        return out

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        tag = node.tag
        if tag in (_STR, _VALUE):
            return str(node.value)
        if tag == _TIMESTAMP:
            return str(node.value)  # kept as written; the schema decides what a time is
        if tag not in (_INT, _FLOAT, _BOOL, _NULL):
            self.report(node, path, f"unsupported YAML tag {_tag(tag)}", _PLAIN_TYPES_HINT)
            return None
        if tag in (_INT, _FLOAT) and ":" in node.value:
            self.report(
                node,
                path,
                f"ambiguous number {node.value} (YAML 1.1 reads it in base 60)",
                f'quote it: "{node.value}"',
            )
            return None
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, yaml.YAMLError):
            self.report(node, path, f"invalid {tag.rsplit(':', 1)[-1]} value {node.value!r}", None)
            return None
        self.raw[path] = str(node.value)
        return value


# --------------------------------------------------------------------------------------------
# TOML


_TOML_ERROR = re.compile(r"\s*\(at (?:line \d+, column \d+|end of document)\)\s*\Z")


def _load_toml(text: str, source: str) -> SourceDocument:
    try:
        value = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        message = _TOML_ERROR.sub("", str(exc.msg if hasattr(exc, "msg") else exc))
        line = getattr(exc, "lineno", None)
        col = getattr(exc, "colno", None)
        _fail(source, f"invalid TOML: {message}", "check the quoting and brackets here", line, col)
    except (ValueError, RecursionError) as exc:
        _fail(source, f"invalid TOML: {exc}", "check the quoting and brackets here")
    problems: list[Problem] = []
    data = _plain_toml(value, source, problems, 0)
    if problems:
        raise ManifestError(problems)
    if not data:
        _fail(source, "the file is empty", "write a mapping of keys, starting with apiVersion and kind")
    found = scan_toml(text, max_depth=MAX_DEPTH)
    return SourceDocument(
        source=source,
        fmt=DocumentFormat.TOML,
        data=_top_level(data, source, 1, 1),
        positions=MappingProxyType(found.positions),
        raw=MappingProxyType(found.raw),
    )


def _plain_toml(value: Any, source: str, problems: list[Problem], depth: int) -> Any:
    if depth > MAX_DEPTH:
        if not problems:
            problems.append(
                Problem(
                    file=source,
                    line=None,
                    col=None,
                    path="",
                    message="the document is nested too deeply",
                    hint=f"at most {MAX_DEPTH} levels are allowed",
                )
            )
        return None
    if isinstance(value, dict):
        return {k: _plain_toml(v, source, problems, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_toml(v, source, problems, depth + 1) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------
# Walking a document


def type_name(value: object) -> str:
    """The word a person knows for the type of a loaded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__  # pragma: no cover - loaders produce only the types above


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word`` if one is close enough."""
    import difflib  # only on an error

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _sort_key(problem: Problem) -> tuple[int, int]:
    return (problem.line or 0, problem.col or 0)


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=_sort_key)


class Checker:
    """Collects Problems while a schema walks a :class:`SourceDocument`; raises them all at once.

    Accessors return the value when it has the expected type and ``None`` otherwise (after
    recording the problem), so a schema can keep walking and report everything in one pass.
    """

    def __init__(self, doc: SourceDocument) -> None:
        self.doc = doc
        self._problems: list[Problem] = []

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(_sorted(self._problems))

    def report(self, path: str, message: str, hint: str | None = None, *, at: str | None = None) -> None:
        """Record a problem about ``path``, located at ``at`` (default: ``path``)."""
        self._problems.append(self.doc.problem(path, message, hint, at=at))

    def finish(self) -> None:
        """Raise one ManifestError with every problem, in position order, if there are any."""
        if self._problems:
            raise ManifestError(self.problems)

    # -- hints

    def quote_hint(self, path: str, value: object) -> str | None:
        """``quote it: key: "0644"`` for a scalar written where a string was expected."""
        if isinstance(value, list | dict) or value is None:
            return None
        raw = self.doc.raw.get(path)
        if raw is None:
            raw = json.dumps(value) if isinstance(value, bool) else str(value)
        key = last_key(path)
        quoted = json.dumps(raw, ensure_ascii=False)
        if key is None:
            return f"quote it: {quoted}"
        return f"quote it: {self.assignment(key)} {quoted}"

    def assignment(self, key: str) -> str:
        """``key:`` in YAML, ``key =`` in TOML (quoted when it is not a bare key), for hints."""
        if self.doc.fmt is DocumentFormat.TOML:
            return f"{key} =" if is_bare_key(key) else f"{json.dumps(key, ensure_ascii=False)} ="
        return f"{key}:"

    def wrong_type(self, path: str, value: object, expected: str, hint: str | None = None) -> None:
        """``expected a string, got integer``; a number where a string belongs gets a quote hint."""
        if hint is None and expected.endswith("string"):
            hint = self.quote_hint(path, value)
        self.report(path, f"expected {expected}, got {type_name(value)}", hint)

    # -- mappings

    def keys(
        self,
        mapping: Mapping[str, Any],
        path: str,
        *,
        required: Collection[str] = (),
        optional: Collection[str] = (),
    ) -> bool:
        """Report unknown keys (with a suggestion) and missing required keys. True if none missing."""
        allowed = [*required, *optional]
        for key in mapping:
            if key in allowed:
                continue
            suggestion = did_you_mean(key, allowed)
            if suggestion is not None:
                hint = f"did you mean '{suggestion}'?"
            else:
                hint = "expected one of: " + ", ".join(allowed) if allowed else "no keys are allowed here"
            self.report(join_key(path, key), "unknown key", hint)
        complete = True
        for key in required:
            if key not in mapping:
                self.report(join_key(path, key), "missing required key", at=path)
                complete = False
        return complete

    def mapping(self, value: object, path: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.wrong_type(path, value, "a mapping")
        return None

    def sequence(self, value: object, path: str, *, of: str = "") -> list[Any] | None:
        if isinstance(value, list):
            return value
        self.wrong_type(path, value, f"a list{of}")
        return None

    def string(self, value: object, path: str) -> str | None:
        if isinstance(value, str):
            return value
        self.wrong_type(path, value, "a string")
        return None

    def integer(self, value: object, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.wrong_type(path, value, "an integer")
        return None

    def boolean(self, value: object, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.wrong_type(path, value, "a boolean (true or false)")
        return None

    def strings(self, value: object, path: str) -> tuple[str, ...] | None:
        """A list of strings; every bad item is reported. ``None`` if anything was wrong."""
        items = self.sequence(value, path, of=" of strings")
        if items is None:
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(items):
            s = self.string(item, join_index(path, i))
            if s is None:
                ok = False
            else:
                out.append(s)
        return tuple(out) if ok else None

    def choice(self, value: object, path: str, choices: Collection[str]) -> str | None:
        """One of a closed set of strings, with a suggestion for near misses."""
        text = self.string(value, path)
        if text is None:
            return None
        if text in choices:
            return text
        suggestion = did_you_mean(text, choices)
        hint = f"did you mean '{suggestion}'?" if suggestion else "expected one of: " + ", ".join(choices)
        self.report(path, f"unknown value '{text}'", hint)
        return None
