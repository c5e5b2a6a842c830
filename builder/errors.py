"""Errors raised while building.

::

    KilnError
    └── BuildError                 building failed
        ├── SourceError            an input (file, tree, package) is missing or unusable
        ├── ClosureError           an ELF closure cannot be resolved (names binary, library, paths)
        └── TreeConflictError      two contents items claim the same path with different content
"""

from __future__ import annotations

from manifests.errors import KilnError

__all__ = ["BuildError", "SourceError", "ClosureError", "TreeConflictError"]


class BuildError(KilnError):
    """Building failed."""


class SourceError(BuildError):
    """An input is missing or unusable."""


class ClosureError(BuildError):
    """An ELF closure cannot be resolved."""


class TreeConflictError(BuildError):
    """Two contents items claim the same path with different content."""
