"""Dotted paths: the names messages give to values inside a document.

``contents[1].closure.paths[0]`` is item 0 of ``paths`` in the ``closure`` mapping of item 1 of
``contents``. A mapping key that is not a plain identifier is written as a JSON string in
brackets, ``labels["org.opencontainers.image.source"]``, so a path is never ambiguous. The top
level is the empty path ``""``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["join_key", "join_index", "ancestors", "last_key"]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_LAST_KEY = re.compile(r'(?:^|\.)([A-Za-z_][A-Za-z0-9_-]*)\Z|\["((?:[^"\\]|\\.)*)"\]\Z')


def join_key(base: str, key: str) -> str:
    """The dotted path of ``key`` inside the mapping at ``base``."""
    if _PLAIN_KEY.match(key):
        return f"{base}.{key}" if base else key
    return f"{base}[{json.dumps(key, ensure_ascii=False)}]"


def join_index(base: str, index: int) -> str:
    """The dotted path of item ``index`` in the list at ``base``."""
    return f"{base}[{index}]"


def ancestors(path: str) -> Iterable[str]:
    """``path`` and then each shorter prefix ending before a ``.`` or ``[``, down to ``""``."""
    yield path
    for i in range(len(path) - 1, 0, -1):
        if path[i] in ".[":
            yield path[:i]
    if path:
        yield ""


def last_key(path: str) -> str | None:
    """The last mapping key of ``path``, or ``None`` when it ends with a list index."""
    m = _LAST_KEY.search(path)
    if m is None:
        return None
    if m.group(1) is not None:
        return m.group(1)
    return str(json.loads(f'"{m.group(2)}"'))
