"""Durations written by people: ``500ms``, ``2s``, ``1m30s``, ``1h``.

A duration is one or more ``NUMBER UNIT`` pairs with no spaces, units ``ms``, ``s``, ``m``, ``h``
(as in Go's ``time.ParseDuration``, without the sign and the micro/nano units). Numbers may have
a fractional part (``1.5s``). The value is returned in seconds as a float.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["DurationError", "parse_duration", "format_duration", "DURATION_UNITS", "MAX_DURATION_TEXT"]

DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}

MAX_DURATION_TEXT = 64  # characters; longer strings are refused before any regex runs

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class DurationError(ValueError):
    """The text is not a duration. ``str()`` is the user-facing reason."""


def parse_duration(text: str) -> float:
    """Parse ``text`` into seconds. Raise :class:`DurationError` if it is not a duration.

    Zero is a valid duration here (``0s``); callers decide whether they accept it.
    """
    if len(text) > MAX_DURATION_TEXT:
        raise DurationError(f"longer than {MAX_DURATION_TEXT} characters")
    if not text:
        raise DurationError("empty")
    total = Decimal(0)
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise DurationError("expected NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h")
        total += Decimal(m.group(1)) * DURATION_UNITS[m.group(2)]
        pos = m.end()
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest common spelling of ``seconds``: ``500ms``, ``2s``, ``90s``, ``1.5s``."""
    if seconds < 0:
        raise ValueError("negative duration")
    value = Decimal(repr(seconds))
    if value != 0 and value < 1:
        return f"{_plain(value * 1000)}ms"
    return f"{_plain(value)}s"


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")
