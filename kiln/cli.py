"""The ``kiln`` command: argparse verbs dispatched through a table.

Each verb module exposes ``register(subparsers)`` which adds its parsers and sets
``handler=<function(args, out) -> int>``. ``main(argv)`` is testable without a subprocess.

Exit codes: 0 ok, 1 failure, 2 usage, 3 verification or policy refused.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from kiln import __version__
from kiln.output import JSON_VERSION, Output, error_document
from manifests.errors import KilnError

__all__ = ["main", "VERB_MODULES"]

# Every verb, the module that implements it, and its one-line help. Only the module of the verb
# being run is imported, so `kiln build` does not pay for loading the signing stack (and the reverse).
VERBS: dict[str, tuple[str, str]] = {
    "validate": ("kiln.cmd_build", "check an image manifest without building"),
    "build": ("kiln.cmd_build", "build an image manifest into an OCI layout or archive"),
    "inspect": ("kiln.cmd_build", "show an image's config, layers and files"),
    "lock": ("kiln.cmd_debian", "resolve an image manifest's Debian packages into its lockfile"),
    "key": ("kiln.cmd_sign", "manage signing keys"),
    "sign": ("kiln.cmd_sign", "sign an image (cosign format)"),
    "verify": ("kiln.cmd_sign", "verify an image's signatures (exit 3 when refused)"),
    "attest": ("kiln.cmd_sign", "sign the build's SBOM and provenance as DSSE attestations"),
    "verify-attestation": ("kiln.cmd_sign", "verify an attestation and print its predicate"),
    "publish": ("kiln.cmd_publish", "push a built image with its signatures; tag its version"),
    "pull": ("kiln.cmd_publish", "fetch an image by digest or tag into a new OCI layout"),
    "copy": ("kiln.cmd_publish", "copy an image with its signatures, digests unchanged"),
    "release": ("kiln.cmd_release", "sign, verify and publish release manifests"),
    "root": ("kiln.cmd_release", "create, sign and rotate trust roots"),
    "agent": ("kiln.cmd_agent", "run the host agent; its status, rollback and trust updates"),
    "fleet": (
        "kiln.cmd_fleet",
        "coordinate rollouts across hosts: etcd slots and waves, FleetLock, dashboard",
    ),
    "completion": ("kiln.cmd_completion", "print a shell completion script (bash or zsh)"),
    "boot": ("kiln.cmd_boot", "boot a VM image locally under qemu, verified first"),
}
VERB_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in VERBS.values()))

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2  # 3 refused comes from KilnError.exit_code


class _Parser(argparse.ArgumentParser):
    json_errors = False  # set by main() when --json is anywhere on the command line

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"kiln: error: {message}", file=sys.stderr)
        if _Parser.json_errors:
            hint = f"see kiln {self.prog.partition(' ')[2]} --help".replace("  ", " ").strip()
            print(error_document(message, hint=hint, exit_code=EXIT_USAGE), flush=True)
        raise SystemExit(EXIT_USAGE)


class _VersionAction(argparse.Action):
    """``kiln --version`` (``--json``: ``{"version": 1, "kiln": "X.Y.Z"}`` on stdout)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show kiln's version")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        if _Parser.json_errors:
            print(json.dumps({"version": JSON_VERSION, "kiln": __version__}, sort_keys=True))
        else:
            print(f"kiln {__version__}")
        raise SystemExit(EXIT_OK)


def _requested_verb(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the requested verb's module is imported (all without)."""
    parser = _Parser(prog="kiln", description="Bake immutable infrastructure.")
    parser.add_argument("--version", action=_VersionAction)
    _add_common(parser)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verb = _requested_verb(argv) if argv is not None else None
    wanted = [VERBS[verb][0]] if verb is not None else list(VERB_MODULES)
    if argv is not None and verb is None:
        wanted = []  # help or a usage error: the one-line helps below are enough
    for name in wanted:
        importlib.import_module(name).register(sub)
    for name, (_module, help_text) in VERBS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text)
    for child in _all_subparsers(sub):
        _add_common(child, default=argparse.SUPPRESS)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, default: object = False) -> None:
    """The global flags, accepted before or after the verb (``kiln build x --json``)."""
    parser.add_argument(
        "--json", action="store_true", default=default, help="machine-readable result on stdout"
    )
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress on stderr")


def _all_subparsers(action: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    found: list[argparse.ArgumentParser] = []
    for child in dict.fromkeys(action.choices.values()):
        found.append(child)
        for act in child._actions:
            if isinstance(act, argparse._SubParsersAction):
                found.extend(_all_subparsers(act))
    return found


def _skip_final_collection() -> None:
    """Have the interpreter's exit skip its last garbage collection over every object still alive.

    That pass freed nothing and took 20-40 ms of a 0.2 s command once httpx was loaded. At exit
    the objects are frozen (``gc.freeze``) so the collector passes over them; files and temporary
    directories are closed by their own ``with`` blocks and ``atexit`` finalizers, not by it.
    Registered once, however often ``main`` runs in one process.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _show_warnings() -> None:
    """The publisher's warnings (``--insecure`` in force) as ``kiln: warning:`` lines on the current
    stderr, every time. Only set up when ``--insecure`` is given: logging stays unloaded otherwise."""
    import logging

    class WarningLines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(f"kiln: warning: {record.getMessage()}", file=sys.stderr, flush=True)

    logger = logging.getLogger("kiln.publisher")
    if not any(type(h).__name__ == "WarningLines" for h in logger.handlers):
        logger.addHandler(WarningLines(level=logging.WARNING))


def _print_traceback() -> None:
    import traceback  # only with --debug: its imports are a few ms of every command otherwise

    traceback.print_exc()


def _replay(argv: Sequence[str]) -> int | None:
    """An unchanged rebuild or a no-change publish, finished from its record before the parser,
    the builder or httpx are loaded (``None``: run the command)."""
    if "build" in argv:
        from kiln.buildrecord import replay

        return replay(argv)
    if "publish" in argv:
        from kiln.publishrecord import replay as replay_publish

        return replay_publish(argv)
    return None


def main(argv: Sequence[str] | None = None, *, replay_first: bool = True) -> int:
    """Run one command; ``replay_first=False`` when :mod:`kiln.__main__` already tried the warm
    rebuild record (:mod:`kiln.buildrecord`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so a usage error is one JSON object too (``--`` ends the options).
    _Parser.json_errors = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    if replay_first:
        done = _replay(argv)
        if done is not None:
            return done
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = tuple(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        if args.json:
            print(error_document("no verb given", hint="see kiln --help", exit_code=EXIT_USAGE), flush=True)
        return EXIT_USAGE
    out = Output(json_mode=args.json, quiet=args.quiet)
    _skip_final_collection()
    if getattr(args, "insecure", False):
        _show_warnings()

    def fail(message: str, hint: str | None, code: int, exc: BaseException | None = None) -> int:
        if args.debug:
            _print_traceback()
        for line in message.splitlines() or [""]:
            print(f"kiln: error: {line}", file=sys.stderr)
        if hint:
            print(f"kiln: hint: {hint}", file=sys.stderr)
        if args.json:
            print(error_document(message, hint=hint, exit_code=code, exc=exc), file=out.stdout, flush=True)
        return code

    try:
        return int(handler(args, out))
    except KilnError as exc:
        return fail(str(exc.message), exc.hint, exc.exit_code, exc)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kiln ... | head`): stop quietly, like any Unix filter killed by
        # SIGPIPE, and keep Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        # The filesystem or a tool said no (a missing directory, no permission, a full disk):
        # the user's to fix, so one clear line naming the file, not an "internal error".
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}", None, EXIT_FAIL)
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback only with --debug
        if args.debug:
            _print_traceback()
        message = f"internal error: {type(exc).__name__}: {exc}"
        hint = "rerun with --debug for a traceback, and report it"
        print(f"kiln: {message}", file=sys.stderr)
        print(f"kiln: hint: {hint}", file=sys.stderr)
        if args.json:
            print(error_document(message, hint=hint, exit_code=EXIT_FAIL), file=out.stdout, flush=True)
        return EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
