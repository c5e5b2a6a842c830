"""Every cap and timeout the host agent applies to what it reads, in one place.

The agent reads bytes that anyone who can move a tag or sit on the network may have written. Each
read has a bound: a size, a depth, a number length, a count, a time. They are gathered here in
:class:`AgentLimits` (python-tuf's ``UpdaterConfig`` is the model) with documented defaults; the
agent configuration may override any of them in its ``limits:`` section::

    limits:
      document_bytes: 4Mi          # one manifest, index or image config (4Ki to 4Mi)
      json_depth: 64               # nested arrays/objects in one JSON document
      number_chars: 64             # characters of one JSON number literal
      blob_bytes: 16Gi             # one blob in the content store
      image_bytes: 64Gi            # the compressed layers of one image, together
      unpack_entries: 1000000      # tar entries of one image, all layers together
      unpack_file_bytes: 8Gi       # one file in a layer
      unpack_bytes: 64Gi           # uncompressed bytes of one image
      unpack_path_depth: 256       # components of one member's path
      unpack_path_chars: 4096      # characters of one member's path
      unpack_work: 20000000        # entries x path depth, summed over one image
      unpack_time: 30m             # wall time to unpack one image
      free_space_margin: 1Gi       # the state filesystem keeps at least this much free
      connect_timeout: 10s         # one TCP/TLS connect to a registry
      read_timeout: 60s            # no byte from a registry for this long fails the request
      request_deadline: 10m        # one request: connect, headers and body together

Sizes are integers (bytes) or strings with a binary suffix (``Ki``, ``Mi``, ``Gi``, ``Ti``);
durations are strings with a unit (``500ms``, ``30s``, ``10m``). An unknown key or a value out of
range is a positioned error like the rest of the configuration.

``manifests`` only describes the numbers; the packages that read (``agent.store``,
``agent.unpack``, the publisher's session) take them from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from manifests.bounded import JsonCaps
from manifests.durations import format_duration

if TYPE_CHECKING:
    from manifests.fields import FieldChecker

__all__ = ["AgentLimits", "LIMIT_RANGES", "parse_size", "format_size", "limits_from_mapping"]

KI, MI, GI, TI = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLimits:
    """The agent's caps (see the module docstring for each one's meaning)."""

    document_bytes: int = 4 * MI
    json_depth: int = 64
    number_chars: int = 64
    blob_bytes: int = 16 * GI
    image_bytes: int = 64 * GI
    unpack_entries: int = 1_000_000
    unpack_file_bytes: int = 8 * GI
    unpack_bytes: int = 64 * GI
    unpack_path_depth: int = 256
    unpack_path_chars: int = 4096
    unpack_work: int = 20_000_000
    unpack_time: float = 1800.0
    free_space_margin: int = 1 * GI
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    request_deadline: float = 600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi, _kind = LIMIT_RANGES[f.name]
            value = getattr(self, f.name)
            if not lo <= value <= hi:
                raise ValueError(f"AgentLimits.{f.name}={value} is out of range ({lo} to {hi})")

    def json_caps(self, max_bytes: int | None = None) -> JsonCaps:
        """The bounded reader's caps for one document (``max_bytes`` overrides the size)."""
        return JsonCaps(
            max_bytes=max_bytes if max_bytes is not None else self.document_bytes,
            max_depth=self.json_depth,
            max_number=self.number_chars,
        )

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kind = LIMIT_RANGES[f.name][2]
            out[f.name] = (
                format_size(value)
                if kind == "size"
                else format_duration(value)
                if kind == "duration"
                else value
            )
        return out


# name -> (lowest, highest, kind); kind is "size" (bytes), "count" or "duration" (seconds)
LIMIT_RANGES: Mapping[str, tuple[float, float, str]] = {
    "document_bytes": (4 * KI, 4 * MI, "size"),  # at most the OCI parsers' own cap
    "json_depth": (8, 1000, "count"),
    "number_chars": (20, 1000, "count"),
    "blob_bytes": (1 * MI, 1 * TI, "size"),
    "image_bytes": (1 * MI, 4 * TI, "size"),
    "unpack_entries": (1, 100_000_000, "count"),
    "unpack_file_bytes": (1, 1 * TI, "size"),
    "unpack_bytes": (1, 4 * TI, "size"),
    "unpack_path_depth": (1, 4096, "count"),
    "unpack_path_chars": (16, 65536, "count"),
    "unpack_work": (1, 10**12, "count"),
    "unpack_time": (0.001, 7 * 86400.0, "duration"),
    "free_space_margin": (0, 1 * TI, "size"),
    "connect_timeout": (0.001, 3600.0, "duration"),
    "read_timeout": (0.001, 3600.0, "duration"),
    "request_deadline": (0.001, 86400.0, "duration"),
}

_SIZE = re.compile(r"^([0-9]{1,16})(Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "Ki": KI, "Mi": MI, "Gi": GI, "Ti": TI}


def parse_size(text: str) -> int | None:
    """``"4Mi"`` -> 4194304; ``None`` if ``text`` is not a size."""
    m = _SIZE.match(text.strip()) if len(text) <= 32 else None
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_size(value: int) -> str | int:
    for suffix, unit in (("Ti", TI), ("Gi", GI), ("Mi", MI), ("Ki", KI)):
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return value


def limits_from_mapping(checker: FieldChecker, m: Mapping[str, Any], path: str) -> AgentLimits:
    """The ``limits:`` section of an agent configuration; problems are reported on ``checker``
    (unknown keys, wrong types, values out of range) and defaults are kept for those keys."""
    from manifests.source import join_key

    checker.keys(m, path, required=(), optional=tuple(LIMIT_RANGES))
    values: dict[str, Any] = {}
    for name, raw in m.items():
        if name not in LIMIT_RANGES:
            continue
        where = join_key(path, name)
        lo, hi, kind = LIMIT_RANGES[name]
        value: float | None
        if kind == "count":
            value = checker.bounded(raw, where, int(lo), int(hi))
            if value is not None:
                values[name] = value
            continue
        if kind == "size":
            if isinstance(raw, int) and not isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str):
                value = parse_size(raw)
                if value is None:
                    checker.report(where, f"invalid size '{raw}'", "bytes, or a number with Ki, Mi, Gi or Ti")
                    continue
            else:
                checker.wrong_type(where, raw, "a size such as 4Mi or 1Gi")
                continue
            shown_lo, shown_hi = format_size(int(lo)), format_size(int(hi))
        else:
            value = checker.duration(raw, where, examples="500ms, 30s or 10m", escape=False)
            if value is None:
                continue
            shown_lo, shown_hi = format_duration(lo), format_duration(hi)
        if not lo <= value <= hi:
            checker.report(where, f"out of range ({shown_lo} to {shown_hi})")
            continue
        values[name] = value
    return AgentLimits(**values)
