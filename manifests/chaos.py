"""Chaos policies: how often to terminate a random instance on purpose, and what must stay healthy.

Written in a release (``chaos:``, for every host running it) or given to one agent
(``kiln agent chaos``)::

    chaos:
      kill_rate: 1/h        # on average one instance per hour on this host: N/s, N/m, N/h or N/d
      min_healthy: 1        # never kill an instance of a service that would leave fewer healthy

Kills form a Poisson process of the given rate (see :mod:`agent.chaos`), so they come at random
moments, never in a burst, and a kill never takes a service below ``min_healthy`` healthy
instances: phoenix replacement and self-healing are exercised all the time, under a budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from manifests.fields import FieldChecker
from manifests.source import join_key

__all__ = ["Chaos", "parse_rate", "format_rate", "check_chaos", "RATE_HINT"]

_RATE = re.compile(r"^([0-9]{1,6}(?:\.[0-9]{1,3})?)/([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
RATE_HINT = "kills per unit of time: 1/h, 6/d, 10/m or 1/s"
MAX_RATE_PER_SECOND = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Chaos:
    """``kill_rate`` kills per second on one host; ``min_healthy`` instances of a service stay up."""

    kill_rate: float
    min_healthy: int = 1
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kill_rate": self.text or format_rate(self.kill_rate), "min_healthy": self.min_healthy}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chaos:
        text = str(d["kill_rate"])
        rate = parse_rate(text)
        if rate is None:
            raise ValueError(f"invalid kill_rate {text!r}")
        return cls(kill_rate=rate, min_healthy=int(d.get("min_healthy", 1)), text=text)


def parse_rate(text: str) -> float | None:
    """``"3/h"`` -> kills per second; None when it is not a rate, is zero or is above 10/s."""
    match = _RATE.match(text.strip())
    if match is None:
        return None
    rate = float(match.group(1)) / _UNIT[match.group(2)]
    if rate <= 0 or rate > MAX_RATE_PER_SECOND:
        return None
    return rate


def format_rate(per_second: float) -> str:
    for unit in ("s", "m", "h", "d"):
        count = per_second * _UNIT[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}/{unit}"
    return f"{per_second * 86400:.3f}/d"


def check_chaos(checker: FieldChecker, value: object, path: str) -> Chaos | None:
    """Validate a ``chaos`` block at ``path``; problems go to ``checker``."""
    m = checker.mapping(value, path)
    if m is None or not checker.keys(m, path, required=("kill_rate",), optional=("min_healthy",)):
        return None
    where = join_key(path, "kill_rate")
    text = checker.string(m["kill_rate"], where)
    rate = parse_rate(text) if text is not None else None
    if text is not None and rate is None:
        checker.invalid(where, "rate", text, f"{RATE_HINT}; more than zero, at most 10/s")
    min_healthy = 1
    if "min_healthy" in m:
        got = checker.bounded(m["min_healthy"], join_key(path, "min_healthy"), 0, 10_000)
        if got is None:
            return None
        min_healthy = got
    if rate is None or text is None:
        return None
    return Chaos(kill_rate=rate, min_healthy=min_healthy, text=text)
