"""The fields several documents people write share, checked by one piece of code.

Image manifests, release manifests, trust roots and the agent configuration all have an
``apiVersion``/``kind`` header, durations (``2s``), RFC 3339 UTC times, TCP ports, health probes,
``env`` maps and bounded integers. :class:`FieldChecker` is the
:class:`~manifests.source.Checker` every schema is built on; each accessor records a problem and
returns ``None`` when the value is unusable, so a schema keeps walking and reports everything at once.
Where documents word a message differently (the example in a hint), the caller passes its words;
the messages themselves are frozen by the tests of each document.

The plain values (no document needed) live here too: :func:`parse_utc_time`,
:func:`format_utc_time`, :func:`parse_listen_address` and :class:`ListenAddress`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from manifests.durations import DurationError, parse_duration
from manifests.image import API_VERSION, HttpCheck, TcpCheck
from manifests.source import Checker, join_index, join_key

__all__ = [
    "CONTROL_CHARS",
    "LOWER_NAME",
    "TIME_EXAMPLE",
    "FieldChecker",
    "ListenAddress",
    "shown",
    "parse_utc_time",
    "format_utc_time",
    "time_problem",
    "parse_listen_address",
]

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Channels and rollout groups: lowercase, digits and . _ - inside, at most 64 characters.
LOWER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?\Z")
TIME_EXAMPLE = "2026-12-31T00:00:00Z"

_UTC_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")
_LISTEN_HINT = "write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"

_T = TypeVar("_T")
_H = TypeVar("_H", bound=Hashable)


def shown(text: str) -> str:
    """``text`` as messages quote it: JSON escapes (control characters, quotes), no quotes around."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


# --------------------------------------------------------------------------------------------
# Times


def parse_utc_time(text: str) -> datetime | None:
    """An RFC 3339 time in UTC (``Z`` or ``+00:00``, whole seconds) as an aware datetime, or None."""
    m = _UTC_TIME.match(text)
    if m is None or m.group(7) is not None or m.group(8) not in ("Z", "+00:00"):
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def format_utc_time(when: datetime) -> str:
    """The canonical spelling: ``2026-12-31T00:00:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_problem(text: str, *, example: str = TIME_EXAMPLE, specific: bool = True) -> tuple[str, str]:
    """The message and hint for ``text`` that :func:`parse_utc_time` refused.

    ``specific`` says what is wrong with a well-formed time that is not in UTC or has fractional
    seconds; otherwise every refusal is an ``invalid time``.
    """
    m = _UTC_TIME.match(text) if specific else None
    if m is not None and m.group(8) not in ("Z", "+00:00"):
        return f"time '{shown(text)}' is not in UTC", f"write it in UTC with a Z, e.g. {example}"
    if m is not None and m.group(7) is not None:
        return f"time '{shown(text)}' has fractional seconds", f"write whole seconds, e.g. {example}"
    return f"invalid time '{shown(text)}'", f"write an RFC 3339 UTC time such as {example}"


# --------------------------------------------------------------------------------------------
# Listen addresses


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """An IP address and TCP port (``127.0.0.1:8080``, ``[::1]:8080``)."""

    host: str
    port: int

    @property
    def unspecified(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def conflicts(self, other: ListenAddress) -> bool:
        """Two addresses that cannot both be bound: same port, and same host or a wildcard."""
        if self.port != other.port:
            return False
        return self.host == other.host or self.unspecified or other.unspecified

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen_address(text: str) -> tuple[ListenAddress | None, str, str | None]:
    """``(address, "", None)`` for ``IP:PORT`` or ``[IPv6]:PORT``; otherwise ``(None, message, hint)``."""
    invalid = f"invalid address '{shown(text)}'"
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        return None, invalid, _LISTEN_HINT
    want_v6 = host.startswith("[") and host.endswith("]")
    if want_v6:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, invalid, _LISTEN_HINT + " (a host name is not an address)"
    if (ip.version == 6) != want_v6:
        return None, invalid, "write an IPv6 address in brackets: [::1]:8080"
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None, f"port {port} is out of range (1 to 65535)", None
    return ListenAddress(host=ip.compressed, port=port), "", None


# --------------------------------------------------------------------------------------------
# The checker


class FieldChecker(Checker):
    """A :class:`~manifests.source.Checker` with the field types documents share."""

    # -- the document header and plain words

    def header(
        self, d: Mapping[str, Any], kind: str, *, wording: str | None = None, escape: bool = True
    ) -> None:
        """Check ``apiVersion`` and ``kind``: ``wrong kind 'Image' (expected 'Release')``.

        ``wording`` replaces both ``unsupported apiVersion`` and ``wrong kind``; ``escape=False``
        quotes the value as written instead of :func:`shown` (the agent config, release and trust
        root messages have always done so).
        """
        for key, expected in (("apiVersion", API_VERSION), ("kind", kind)):
            if key not in d:
                continue
            value = self.string(d[key], key)
            if value is not None and value != expected:
                what = wording or ("unsupported apiVersion" if key == "apiVersion" else "wrong kind")
                self.report(key, f"{what} '{shown(value) if escape else value}'", f"expected '{expected}'")

    def invalid(self, where: str, what: str, text: str, hint: str | None = None) -> None:
        """Report ``invalid WHAT 'TEXT'`` (the text escaped as :func:`shown` does)."""
        self.report(where, f"invalid {what} '{shown(text)}'", hint)

    def matching(
        self, value: object, where: str, pattern: re.Pattern[str], what: str, hint: str
    ) -> str | None:
        """A string that ``pattern`` matches; ``invalid WHAT '...'`` otherwise."""
        text = self.string(value, where)
        if text is None:
            return None
        if not pattern.match(text):
            self.invalid(where, what, text, hint)
            return None
        return text

    # -- numbers

    def bounded(self, value: object, where: str, lo: int, hi: int, hint: str | None = None) -> int | None:
        """An integer from ``lo`` to ``hi``; ``out of range (LO to HI)`` otherwise."""
        number = self.integer(value, where)
        if number is not None and not lo <= number <= hi:
            self.report(where, f"out of range ({lo} to {hi})", hint)
            return None
        return number

    def port_number(self, m: Mapping[str, Any], path: str) -> int | None:
        """``m["port"]``, a TCP or UDP port number, at ``path.port``."""
        where = join_key(path, "port")
        number = self.integer(m["port"], where)
        if number is not None and not 1 <= number <= 65535:
            self.report(where, f"port {number} is out of range (1 to 65535)")
            return None
        return number

    # -- durations and times

    def duration(
        self,
        value: object,
        where: str,
        *,
        example: str = "2s",
        examples: str = "500ms, 2s, 1m30s or 1h",
        positive: bool = True,
        whole_ms: bool = False,
        escape: bool = True,
    ) -> float | None:
        """A duration string (``1m30s``) in seconds.

        A bare number is refused with a hint to add a unit (``example`` shows one); ``positive``
        refuses zero, ``whole_ms`` anything finer than a millisecond.
        """
        if isinstance(value, int | float) and not isinstance(value, bool):
            raw = self.doc.raw.get(where, str(value))
            key = where.rsplit(".", 1)[-1]
            hint = f'add a unit and quote it: {self.assignment(key)} "{raw}s"'
            self.wrong_type(where, value, f"a duration such as {example}", hint)
            return None
        text = self.string(value, where)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except DurationError:
            self.report(
                where,
                f"invalid duration '{shown(text) if escape else text}'",
                f"use NUMBER UNIT pairs such as {examples}",
            )
            return None
        if positive and seconds <= 0:
            self.report(where, "must be greater than 0")
            return None
        if whole_ms and abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
            self.report(where, "finer than a millisecond", "round it to whole milliseconds")
            return None
        return seconds

    def utc_time(
        self, value: object, where: str, *, example: str = TIME_EXAMPLE, specific: bool = True
    ) -> datetime | None:
        """An RFC 3339 UTC time (see :func:`time_problem` for ``example`` and ``specific``)."""
        text = self.string(value, where)
        if text is None:
            return None
        when = parse_utc_time(text)
        if when is None:
            self.report(where, *time_problem(text, example=example, specific=specific))
        return when

    # -- addresses and health probes

    def listen_address(self, value: object, where: str) -> ListenAddress | None:
        """``IP:PORT`` or ``[IPv6]:PORT`` (a host name is refused: it is not an address)."""
        text = self.string(value, where)
        if text is None:
            return None
        address, message, hint = parse_listen_address(text)
        if address is None:
            self.report(where, message, hint)
        return address

    def probe(self, kind: str, value: object, where: str) -> HttpCheck | TcpCheck | None:
        """An ``http: {port, path}`` or ``tcp: {port}`` health probe."""
        c = self.mapping(value, where)
        if c is None:
            return None
        if kind == "tcp":
            complete = self.keys(c, where, required=("port",))
            port = self.port_number(c, where) if "port" in c else None
            return TcpCheck(port=port) if complete and port is not None else None
        complete = self.keys(c, where, required=("port",), optional=("path",))
        port = self.port_number(c, where) if "port" in c else None
        http_path = "/"
        if "path" in c:
            sub = join_key(where, "path")
            text = self.string(c["path"], sub)
            if text is not None and (not text.startswith("/") or CONTROL_CHARS.search(text) or " " in text):
                self.report(sub, "must start with '/' and contain no spaces", f"write '/{text.lstrip('/')}'")
                return None
            if text is not None:
                http_path = text
        return HttpCheck(port=port, path=http_path) if complete and port is not None else None

    def one_probe(
        self,
        m: Mapping[str, Any],
        where: str,
        kinds: tuple[str, ...],
        probe: Callable[[str, object, str], _T],
        *,
        probe_all: bool = False,
    ) -> _T | None:
        """The one probe of ``kinds`` that the health mapping ``m`` has.

        None or two are reported; ``probe_all`` also checks each probe when there are two.
        """
        present = [k for k in kinds if k in m]
        if not present:
            self.report(where, "expected exactly one of: " + ", ".join(kinds), "say how to probe the service")
            return None
        found: list[_T] = []
        if probe_all or len(present) == 1:
            found = [probe(k, m[k], join_key(where, k)) for k in present]
        if len(present) > 1:
            self.report(where, f"has both '{present[0]}' and '{present[1]}'", "keep one check")
            return None
        return found[0]

    # -- maps and lists

    def env_key(self, key: str, where: str) -> bool:
        """Whether ``key`` can name an environment variable (reported if not)."""
        if not key or "=" in key or CONTROL_CHARS.search(key) or " " in key:
            self.report(where, "invalid environment variable name", "no '=', spaces or control characters")
            return False
        return True

    def string_map(
        self,
        value: object,
        where: str,
        *,
        key_check: Callable[[str, str], bool],
        skip_bad_keys: bool = False,
    ) -> tuple[tuple[str, str], ...]:
        """A mapping of strings to strings without NUL characters, sorted by key.

        ``key_check(key, where)`` reports a bad key; ``skip_bad_keys`` then leaves its value unread.
        """
        m = self.mapping(value, where)
        if m is None:
            return ()
        out: list[tuple[str, str]] = []
        for k, v in m.items():
            sub = join_key(where, k)
            if not key_check(k, sub) and skip_bad_keys:
                continue
            text = self.string(v, sub)
            if text is None:
                continue
            if "\x00" in text:
                self.report(sub, "contains a NUL character")
                continue
            out.append((k, text))
        return tuple(sorted(out))

    def distinct(
        self,
        items: list[Any],
        where: str,
        parse: Callable[[object, str], _H | None],
        *,
        duplicate: Callable[[_H], str] = lambda _: "listed twice",
    ) -> dict[_H, str]:
        """Each usable item of a list, once, mapped to its dotted path (in list order).

        ``parse(item, where)`` reports an unusable item and returns ``None``; a repeated value is
        reported as ``DUPLICATE (first at PATH)``.
        """
        seen: dict[_H, str] = {}
        for i, raw in enumerate(items):
            at = join_index(where, i)
            value = parse(raw, at)
            if value is None:
                continue
            if value in seen:
                self.report(at, f"{duplicate(value)} (first at {seen[value]})", "remove one of them")
                continue
            seen[value] = at
        return seen
