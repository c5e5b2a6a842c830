"""Output for the command line: results on stdout (``--json`` for machines), progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from manifests.errors import KilnError, ManifestError, Problem

__all__ = ["Output", "JSON_VERSION", "UsageError", "error_document"]

JSON_VERSION = 1


class UsageError(KilnError):
    """The command line itself is wrong (a missing or conflicting option): exit 2, like argparse."""

    exit_code = 2


def error_document(
    message: str, *, hint: str | None, exit_code: int, exc: BaseException | None = None
) -> str:
    """The one JSON object a failed ``--json`` command prints on stdout.

    ``{"version": 1, "error": {"message", "hint", "exit_code", "problems": [...]}}``; each problem
    is ``{"file", "line", "column", "path", "message"}`` (a manifest's every problem; otherwise none).
    """
    problems: list[dict[str, Any]] = []
    located = getattr(exc, "problems", None)  # a build error found at its place in the manifest
    if isinstance(exc, ManifestError) or (located and all(isinstance(p, Problem) for p in located)):
        assert exc is not None  # noqa: S101 - narrowed by the condition
        problems = [
            {
                "file": p.file,
                "line": p.line,
                "column": p.col,
                "path": p.path,
                "message": p.message if p.hint is None else f"{p.message} ({p.hint})",
            }
            for p in getattr(exc, "problems", ())
        ]
    error = {"message": message, "hint": hint, "exit_code": exit_code, "problems": problems}
    return json.dumps({"version": JSON_VERSION, "error": error}, sort_keys=True, indent=2)


@dataclass(slots=True)
class Output:
    """Where a command writes. Handlers get one; tests pass their own streams."""

    json_mode: bool = False
    quiet: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    # While live bars are drawn (kiln.progress), progress lines go through them, above the bars.
    progress_sink: Callable[[str], None] | None = None

    def progress(self, message: str) -> None:
        """A progress line on stderr (plain lines; never on stdout)."""
        if self.quiet:
            return
        if self.progress_sink is not None:
            self.progress_sink(message)
        else:
            print(message, file=self.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"kiln: warning: {message}", file=self.stderr, flush=True)

    def result(self, human: str, data: dict[str, Any]) -> None:
        """The command's result: JSON (with a ``version`` field) or human text, on stdout."""
        if self.json_mode:
            payload = {"version": JSON_VERSION, **data}
            print(json.dumps(payload, sort_keys=True, indent=2), file=self.stdout, flush=True)
        else:
            print(human, file=self.stdout, flush=True)
