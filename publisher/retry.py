"""Bounded retries: exponential backoff with full jitter, honouring ``Retry-After``.

Pure: the clock and the random source are passed in, so tests decide what a delay is.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RetryPolicy", "RETRYABLE_STATUS", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying again.

    ``attempts`` counts every try, the first included. The n-th wait (n from 0) is uniform in
    ``[0, min(max_delay, base_delay * 2**n)]``; a ``Retry-After`` from the registry replaces it, capped
    at ``max_retry_after`` so a hostile or confused server cannot park the client forever.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def delay(
        self, retry: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry, 30)))
        return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP-date. ``None`` when absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone also takes '²', which int() refuses
        return float(int(value[:10]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max((when - current).total_seconds(), 0.0)
