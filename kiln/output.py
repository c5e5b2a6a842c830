"""Output for the command line: results on stdout (``--json`` for machines), progress on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Output", "JSON_VERSION"]

JSON_VERSION = 1


@dataclass(slots=True)
class Output:
    """Where a command writes. Handlers get one; tests pass their own streams."""

    json_mode: bool = False
    quiet: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def progress(self, message: str) -> None:
        """A progress line on stderr (plain lines; never on stdout)."""
        if not self.quiet:
            print(message, file=self.stderr, flush=True)

    def result(self, human: str, data: dict[str, Any]) -> None:
        """The command's result: JSON (with a ``version`` field) or human text, on stdout."""
        if self.json_mode:
            payload = {"version": JSON_VERSION, **data}
            print(json.dumps(payload, sort_keys=True, indent=2), file=self.stdout, flush=True)
        else:
            print(human, file=self.stdout, flush=True)
