"""The one canonical JSON serializer for everything kiln hashes or signs.

Keys sorted, no insignificant whitespace, UTF-8, no NaN/Infinity. A digest is always over the exact
bytes this returns (or the exact bytes read from storage); nothing is re-serialized and expected to
hash the same.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json", "pretty_json"]


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` canonically: sorted keys, compact separators, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def pretty_json(value: Any) -> str:
    """Human-readable JSON for output (never hashed)."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)
