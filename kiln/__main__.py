import sys

from kiln.buildrecord import replay

# An unchanged `python -m kiln build ...` (kiln.buildrecord) or no-change `publish` to a loopback
# registry (kiln.publishrecord) ends here, before the command line parser, the builder or httpx are
# even imported: these two modules need the standard library only.
_argv = sys.argv[1:]
_done = replay(_argv) if "build" in _argv else None
if _done is None and "publish" in _argv:
    from kiln.publishrecord import replay as replay_publish

    _done = replay_publish(_argv)
if _done is not None:
    raise SystemExit(_done)

from kiln.cli import main  # noqa: E402 - only when the fast paths above did not finish

raise SystemExit(main(_argv, replay_first=False))
