import sys

from kiln.buildrecord import replay

# `python -m kiln build ...` with nothing changed since the recorded build: done before the command
# line parser and the builder are even imported (kiln.buildrecord needs the standard library only).
_argv = sys.argv[1:]
_done = replay(_argv) if "build" in _argv else None
if _done is not None:
    raise SystemExit(_done)

from kiln.cli import main  # noqa: E402 - only when the fast path above did not finish

raise SystemExit(main(_argv, replay_first=False))
