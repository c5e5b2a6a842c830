"""Errors raised while building.

::

    KilnError
    └── BuildError                 building failed
        ├── SourceError            an input (file, tree, package) is missing or unusable
        ├── ClosureError           an ELF closure cannot be resolved (names binary, library, paths)
        └── TreeConflictError      two contents items claim the same path with different content
"""

from __future__ import annotations

from manifests.errors import KilnError, Problem

__all__ = ["BuildError", "SourceError", "ClosureError", "TreeConflictError"]


class BuildError(KilnError):
    """Building failed. ``at`` is the dotted path of the manifest value at fault, when there is one
    (``contents[0].files[1].src``): the build reports it at that value's file, line and column."""

    def __init__(self, message: str, *, hint: str | None = None, at: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.at = at
        self.problems: tuple[Problem, ...] = ()  # set once ``at`` was located in the manifest


class SourceError(BuildError):
    """An input is missing or unusable."""


class ClosureError(BuildError):
    """An ELF closure cannot be resolved."""


class TreeConflictError(BuildError):
    """Two contents items claim the same path with different content."""
