"""The warm-rebuild record: an unchanged ``kiln build --force`` finishes before the builder loads.

After a real build with a cache, :func:`record_build` writes ``fast/<key>.json`` into the cache
directory. It lists every input the build consulted, each with its stat identity (mode, device,
inode, size, mtime and ctime: a write to a file changes its ctime, which no user can set), the
output's files with theirs, and the result the command printed. :func:`replay` runs first in
``kiln build``, with nothing but the standard library loaded: when every identity still holds,
it prints the recorded result and the command is done. Any difference, and the real build runs.

What counts as an input is observed, not declared, so a new kind of source cannot be forgotten:
while the build runs, an audit hook (:func:`sys.addaudithook`) sees

- every file opened for reading (the manifest, sources read whole, ELF files and
  ``/etc/ld.so.conf``, dpkg's status file, and the Python modules imported),
- every directory listed (tree walks and globs): the directory's identity changes when an entry is
  added, removed or renamed, and each entry's own identity is taken at the same moment,
- ``kiln.input`` events ``(path, follow_symlinks)``: a path the builder decided on by its stat
  alone, found or not (a ``files`` source; each step of the ELF search: a library later installed
  earlier in the search order must be noticed),
- ``kiln.dir_fd`` events ``(directory or None)``: the directory the next relative ``os.open`` in
  this thread is relative to (an ``open`` event does not carry its ``dir_fd``), cleared after,

and, when the build ends, the files of every module loaded (the code is an input too). Identities
are taken when the event fires, before the builder reads, so a file changed while the build runs
is seen as changed next time. A file whose ctime is within :data:`_RACY_NS` of that moment could
change again in the same clock tick without a visible difference (git's "racily clean" index
entries): such a record is not written. A timestamp in whole seconds (a file system with
seconds resolution) widens that window to a second.

No record is written, and the real build always runs, when the build ran a program, opened a
network connection, used options this fast path does not know (the Debian flags, ``--no-cache``),
or had no ``--force`` (without it an existing output is an error, which the real path reports).
The key of a record is everything else that decides the output: kiln's version and where its code
is loaded from, the interpreter, the working directory, the options, and a SHA-256 digest of the
environment variables the build reads (never their values: ``KILN_PASSWORD`` is one). Records are
written 0600 in a 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

TYPE_CHECKING = False  # typing itself is not imported: this module runs before anything else loads
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TextIO

__all__ = [
    "BuildRequest",
    "parse_request",
    "replay",
    "InputRecorder",
    "record_build",
    "default_cache_dir",
    "base_key",
    "record_file",
    "scan_argv",
    "environment",
    "code_location",
    "look",
    "module_files",
    "stable_inputs",
    "write_record",
    "read_record",
    "inputs_hold",
    "print_result",
]

_FORMAT = 1
_RACY_NS = 50_000_000  # 50 ms: well above a tick of the kernel's coarse clock, which stamps ctime
_RACY_COARSE_NS = 1_000_000_000  # a timestamp in whole seconds: the tick may be a second long
_MAX_RECORD = 64 << 20
# Past this many inputs a record is not kept: checking it would cost a good part of what it saves
# (a stat per input), and remembering every path of a 100,000-file tree took 45 MB and 20% more
# time during the build itself.
_MAX_INPUTS = 20_000
_ENV_EXACT = ("SOURCE_DATE_EPOCH", "HOME", "PATH", "TZ", "LANG", "TMPDIR")
_ENV_PREFIXES = ("KILN_", "XDG_", "LD_", "LC_", "PYTHON")
# Options of ``kiln build`` the fast path understands, and whether each takes a value.
_VALUE_OPTIONS = {
    "-o": "output",
    "--output": "output",
    "--format": "format",
    "--name": "name",
    "--cache-dir": "cache_dir",
    "--source-date-epoch": "source_date_epoch",
}
_GLOBAL_FLAGS = {"--json": "json", "--debug": "debug", "-q": "quiet", "--quiet": "quiet"}
_UNSAFE_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "socket.connect"}
)

_IMPORT_SYSTEM = (
    "<frozen importlib._bootstrap_external>",
    "<frozen importlib._bootstrap>",
    "<frozen zipimport>",
)


def record_name(material: bytes) -> str:
    """A record's file name from its key: 64 bits of CRC-32 and Adler-32 (zlib loads in a
    millisecond, hashlib's OpenSSL in several). The record holds its whole key and is used only
    when that matches, so two keys that shared a name would only take turns, never mix up."""
    import zlib

    return f"{zlib.crc32(material):08x}{zlib.adler32(material):08x}.json"


def _sha256_hex(data: bytes) -> str:
    """SHA-256 from the interpreter's own module (half a millisecond; hashlib's OpenSSL takes ~6)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # 3.11
    except ImportError:
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def environment() -> str:
    """A digest of the environment variables that may change what a command does (a key of its
    record). Only the digest is kept: ``KILN_PASSWORD``, ``KILN_REGISTRY_PASSWORD`` and the like
    are among them, and their values must not be written to disk."""
    chosen = sorted((k, v) for k, v in os.environ.items() if k in _ENV_EXACT or k.startswith(_ENV_PREFIXES))
    return "sha256:" + _sha256_hex(
        json.dumps(chosen, separators=(",", ":")).encode("utf-8", "surrogateescape")
    )


def code_location() -> str:
    """Where kiln's code is loaded from: two editable installs of one version in one virtual
    environment run different code, and must not share records."""
    import kiln

    return os.path.dirname(os.path.abspath(kiln.__file__ or ""))


def default_cache_dir() -> str:
    """``$KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``."""
    env = os.environ.get("KILN_CACHE_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "kiln")


def machine_caches() -> list[str]:
    """kiln's caches of derived data (the build cache, dpkg's owner index): their files are not
    inputs; what they are derived from is (and a build cache hit is verified by its digest)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "kiln")
    return sorted({default_cache_dir(), home})


class BuildRequest:
    """A ``kiln build`` command line the fast path understands (``None`` from the parser if not)."""

    __slots__ = ("json", "manifest", "options", "quiet")

    def __init__(self, manifest: str, options: dict[str, str], *, json_mode: bool, quiet: bool) -> None:
        self.manifest = manifest
        self.options = options
        self.json = json_mode
        self.quiet = quiet

    def cache_dir(self) -> str:
        return self.options.get("cache_dir") or default_cache_dir()

    def key(self) -> dict[str, Any]:
        """Everything besides the recorded inputs that decides what the build writes."""
        cwd = os.getcwd()
        options = dict(self.options)
        for name in ("output", "cache_dir"):
            if name in options:
                options[name] = os.path.join(cwd, options[name])
        return base_key() | {"manifest": os.path.join(cwd, self.manifest), "options": options}

    def record_path(self) -> str:
        return record_file(self.cache_dir(), "", self.key())


def base_key() -> dict[str, Any]:
    """What every record's key holds: kiln's version and code, the interpreter, the working
    directory and the environment's digest (a command adds its own arguments)."""
    from kiln import __version__

    return {
        "format": _FORMAT,
        "kiln": __version__,
        "code": code_location(),
        "python": [sys.executable, sys.version],
        "cwd": os.getcwd(),
        "env": environment(),
    }


def record_file(cache_dir: str, prefix: str, key: dict[str, Any]) -> str:
    """Where the record with ``key`` lives: ``CACHE/fast/PREFIX<name>.json``."""
    material = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return os.path.join(cache_dir, "fast", prefix + record_name(material))


def scan_argv(
    argv: Sequence[str], values: dict[str, str], switches: frozenset[str]
) -> tuple[dict[str, bool], set[str], dict[str, list[str]], list[str]] | None:
    """A command line in the fast path's terms: the global flags set, the ``switches`` given, each
    option of ``values`` (spelling -> name) with the values given, and the positional arguments;
    ``None`` for anything else (an abbreviation, ``-oX``, ``--``, an option not listed)."""
    flags = {"json": False, "quiet": False, "debug": False}
    given: set[str] = set()
    options: dict[str, list[str]] = {}
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        name, eq, value = arg.partition("=")
        if arg in _GLOBAL_FLAGS:
            flags[_GLOBAL_FLAGS[arg]] = True
        elif arg in switches:
            given.add(arg)
        elif name in values and (eq or name == arg):
            if not eq:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            options.setdefault(values[name], []).append(value)
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    return flags, given, options, positional


def parse_request(argv: Sequence[str]) -> BuildRequest | None:
    """The command line if it is ``kiln [globals] build MANIFEST`` with known options, ``--force``
    and ``--output`` (the default output depends on the manifest's name, unknown before parsing)."""
    scanned = scan_argv(argv, _VALUE_OPTIONS, frozenset({"--force"}))
    if scanned is None:
        return None
    flags, given, values, positional = scanned
    if any(len(v) > 1 for v in values.values()):
        return None  # given twice: leave the meaning to argparse
    options = {name: v[0] for name, v in values.items()}
    if len(positional) != 2 or positional[0] != "build" or "--force" not in given or "output" not in options:
        return None
    if options.get("format", "oci") not in ("oci", "oci-archive", "docker-archive"):
        return None
    return BuildRequest(positional[1], options, json_mode=flags["json"], quiet=flags["quiet"])


def _ident(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def look(path: str, follow: bool) -> list[int] | None:
    try:
        return _ident(os.stat(path) if follow else os.lstat(path))
    except OSError:
        return None


def replay(argv: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int | None:
    """Exit code 0 after printing the recorded result, if the recorded build still holds; else ``None``.

    Never raises for what it finds: a record is a file anyone may have damaged, and the working
    directory may be gone; any surprise means "run the real build", which reports what it finds."""
    try:
        found = _still_holds(argv)
    except Exception:  # noqa: BLE001 - the real path runs, and reports any error properly
        return None
    if found is None:
        return None
    request, human, doc = found
    gone = print_result(human, doc, json_mode=request.json, out=stdout or sys.stdout)
    if gone is not None:
        return gone
    if not request.quiet:
        print(
            "kiln: unchanged since the last build (every input as recorded): output kept",
            file=stderr or sys.stderr,
        )
    return 0


def _still_holds(argv: Sequence[str]) -> tuple[BuildRequest, str, dict[str, Any]] | None:
    request = parse_request(argv)
    if request is None:
        return None
    record = read_record(request.record_path())
    if record is None or record.get("key") != request.key() or not inputs_hold(record):
        return None
    with open(os.path.join(os.getcwd(), request.manifest), "rb") as fh:
        if fh.read().decode("latin-1") != record["manifest"]:  # its bytes, kept whole: small
            return None
    for path, ident in record["output"]:
        if look(path, False) != ident:
            return None
    human, doc = record["human"], record["json"]
    if not isinstance(human, str) or not isinstance(doc, dict):
        return None
    return request, human, doc


class InputRecorder:
    """Collects the inputs of one build from audit events (see the module docstring).

    The audit hook is process-wide and cannot be removed, so one hook is installed once and sends
    events to the recorders currently active (in any thread: the builder writes layers in a pool).
    """

    # The one hook's fan-out. Changed by __enter__/__exit__ and by a recorder giving up, on any
    # thread (append and remove are atomic under the GIL; a second remove is suppressed);
    # _dispatch walks a copy, so a recorder leaving mid-event is no harm.
    _active: list[InputRecorder] = []  # noqa: RUF012
    _installed = False

    def __init__(
        self,
        *,
        skip: Sequence[str],
        skip_prefixes: Sequence[str] = (),
        racy_ns: int = _RACY_NS,
        network: bool = False,
        max_inputs: int = _MAX_INPUTS,
    ) -> None:
        """``skip``: directories (or files) whose reads are not inputs (the cache, the output);
        ``skip_prefixes``: raw path prefixes likewise (the output's staging directories);
        ``racy_ns``: how recent a change makes an identity untrustworthy; ``network``: whether
        the command may connect (a publish: what it finds remotely is checked by the caller);
        ``max_inputs``: more than this and no record is kept.

        Once a record is refused (too many inputs, a program run, an input changing), the
        recorder forgets what it saw and stops listening: the rest of the command runs at full
        speed."""
        import threading

        self._skip = (
            tuple(os.path.join(os.path.abspath(p), "") for p in skip)
            + tuple(os.path.abspath(p) for p in skip_prefixes)
            + ("/proc/", "/dev/", "/sys/")
        )
        self._skip_exact = frozenset(os.path.abspath(p) for p in skip)
        self.inputs: dict[tuple[str, bool], list[int] | None] = {}
        self.refused: str | None = None  # why no record may be written
        self._max_inputs = max_inputs
        self._foreign: frozenset[object] = frozenset()  # threads running before __enter__
        self._current_thread: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._cwd = os.getcwd()
        self._racy_ns = racy_ns
        self._unsafe = _UNSAFE_EVENTS - {"socket.connect"} if network else _UNSAFE_EVENTS
        # What the command made itself (temporary directories, files it wrote) is not an input.
        self._created: set[str] = set()
        self._created_dirs: tuple[str, ...] = ()

    def __enter__(self) -> InputRecorder:
        import threading

        # Threads already running are not this command's: what they do (a test's leftover
        # server connecting, a host program's own workers) is no input of it. The command's own
        # thread, and every thread it starts, are watched. Thread objects, not idents: an ident
        # is reused by the next thread once one ends.
        me = threading.current_thread()
        self._foreign = frozenset(t for t in threading.enumerate() if t is not me)
        self._current_thread = threading.current_thread
        if not InputRecorder._installed:
            sys.addaudithook(_dispatch)
            InputRecorder._installed = True
        InputRecorder._active.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        with contextlib.suppress(ValueError):  # gone already: it gave up (maybe on another thread)
            InputRecorder._active.remove(self)

    def _give_up(self, why: str) -> None:
        """No record: say why, forget the inputs and stop listening."""
        if self.refused is None:
            self.refused = why
        self._leave()
        with self._lock:
            self.inputs.clear()
            self._created.clear()

    def _skipped(self, path: str) -> bool:
        if path in self._skip_exact or path.startswith(self._skip):
            return True
        return bool(self._created) and (path in self._created or path.startswith(self._created_dirs))

    def _note(self, path: str, follow: bool, *, code: bool = False) -> None:
        """Record ``path``'s identity; ``code``: a loaded module's file, an input even inside a
        directory this command made (kiln's own modules under ``-o $PWD/out``'s parent, say)."""
        if self.refused is not None:
            return
        path = os.path.join(self._cwd, path)
        if (path, follow) in self.inputs:
            return
        if self._skipped(path) and not (code and not path.startswith(self._skip)):
            return
        if follow:
            # A regular file seen when its directory was listed: that identity already covers it
            # (a symlink's target, or a directory's, still needs its own).
            listed = self.inputs.get((path, False))
            if listed is not None and listed[0] & 0o170000 == 0o100000:
                return
        if len(self.inputs) >= self._max_inputs:
            self._give_up(f"more than {self._max_inputs} inputs")
            return
        ident = look(path, follow)
        self._check_racy(path, ident)
        with self._lock:
            if self.refused is None:
                self.inputs.setdefault((path, follow), ident)

    def _made(self, path: str, *, directory: bool) -> None:
        path = os.path.join(self._cwd, path)
        # The audit event fires before the call: a path that is already there is not made by this
        # command (``mkdir(parents=True, exist_ok=True)`` of an existing directory, a file
        # rewritten in place), and what is under it stays an input.
        if os.path.lexists(path):
            return
        with self._lock:
            if (path, True) in self.inputs or (path, False) in self.inputs:
                return  # read before it was written: an input (the check after the run sees it)
            self._created.add(path)
            if directory:
                self._created_dirs = (*self._created_dirs, os.path.join(path, ""))

    def _check_racy(self, path: str, ident: list[int] | None) -> None:
        if ident is None:
            return
        now = time.time_ns()
        for stamp in (ident[4], ident[5]):  # mtime, ctime
            # A whole second is what a file system with seconds-resolution timestamps stores (or
            # one nanosecond time in a billion): then the clock tick is a second (as git assumes).
            window = max(self._racy_ns, _RACY_COARSE_NS) if stamp % 1_000_000_000 == 0 else self._racy_ns
            if stamp >= now - window:
                self._give_up(f"{path} changed less than {window // 1_000_000} ms ago")
                return

    def _listed(self, path: str) -> None:
        path = os.path.join(self._cwd, path)
        if self._skipped(path):
            return
        self._note(path, True)
        try:
            with os.scandir(path) as it:
                names = [e.name for e in it]
        except OSError:
            return
        for name in names:
            if self.refused is not None:
                return
            self._note(os.path.join(path, name), False)

    def event(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "open" and self._listed_file(args[0]):
            return  # a regular file its directory's listing already covers: read or rewritten, no news
        if self._foreign and self._current_thread() in self._foreign:
            return
        if name not in _WATCHED:
            if name in self._unsafe:
                self._give_up(f"the build used {name}")
            return
        if getattr(self._local, "busy", False):
            return  # our own scandir, or sys._getframe below
        self._local.busy = True
        try:
            # The import system's reads (sys.path listings, .pyc files) are not the build's: the
            # code is recorded as the files of the modules loaded, when the build ends.
            if sys._getframe(2).f_code.co_filename in _IMPORT_SYSTEM:
                return
            if name == "open":
                self._opened(*args)
            elif name == "kiln.dir_fd":
                self._local.dir_fd = None if args[0] is None else os.fsdecode(args[0])
            elif name == "os.mkdir":
                if isinstance(args[0], (str, bytes)) and args[2] == -1:  # (path, mode, dir_fd)
                    self._made(os.fsdecode(args[0]), directory=True)
            elif name in ("os.scandir", "os.listdir"):
                path = args[0] if args[0] is not None else "."
                if isinstance(path, (str, bytes)):
                    self._listed(os.fsdecode(path))
            elif name == "kiln.input":
                self._note(os.fsdecode(args[0]), bool(args[1]))
        finally:
            self._local.busy = False

    def _listed_file(self, path: object) -> bool:
        """Whether ``path`` was seen as a regular file when its directory was listed.
        Such an open changes nothing: a read adds no input (:meth:`_note`), and a write makes
        nothing new (:meth:`_made`). The builder opens every file of a tree this way, once or
        twice, so this is the hook's common case and is answered before anything else."""
        if type(path) is not str:
            return False
        if not path.startswith("/"):
            if getattr(self._local, "dir_fd", None) is not None:
                return False  # relative to a directory the event does not carry: the long way
            path = os.path.join(self._cwd, path)
        known = self.inputs.get((path, False))
        return known is not None and known[0] & 0o170000 == 0o100000

    def _opened(self, path: object, mode: object, flags: object) -> None:
        if not isinstance(path, (str, bytes)):
            return  # a file descriptor: opened before, by path
        path = os.fsdecode(path)
        base = getattr(self._local, "dir_fd", None)
        if mode is None and base is not None and not os.path.isabs(path):
            # os.open(name, dir_fd=...): the event does not carry the directory, so the caller
            # names it with a kiln.dir_fd event (builder/dpkg.py does).
            path = os.path.join(base, path)
        if _reads(mode, flags):
            self._note(path, True)
        else:
            self._made(path, directory=False)


def _reads(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        # Called for every file a build opens: plain tests, no generator.
        return not ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
    if isinstance(flags, int):
        return not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    return False


_WATCHED = frozenset({"open", "os.mkdir", "os.scandir", "os.listdir", "kiln.input", "kiln.dir_fd"})


def _dispatch(name: str, args: tuple[Any, ...]) -> None:
    if InputRecorder._active and (name in _WATCHED or name in _UNSAFE_EVENTS):
        for recorder in tuple(InputRecorder._active):
            recorder.event(name, args)


def module_files() -> list[str]:
    files = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.append(path)
    return sorted(set(files))


def _output_files(output: str) -> list[list[Any]]:
    """The output's paths with their identities (a layout directory walked, or one file)."""
    found: list[list[Any]] = []
    pending = [output]
    while pending:
        path = pending.pop()
        st = os.lstat(path)
        found.append([path, _ident(st)])
        if os.path.isdir(path) and not os.path.islink(path):
            with os.scandir(path) as it:
                pending.extend(e.path for e in it)
    return sorted(found)


def stable_inputs(
    recorder: InputRecorder, *, warn: Callable[[str], None] | None = None
) -> list[list[Any]] | None:
    """The recorded inputs plus the loaded modules' files, as ``[path, follow, identity]``; ``None``
    when one changed while the command ran (or a temporary file is gone): then no record."""
    for path in module_files():
        recorder._note(path, True, code=True)
    if recorder.refused is not None:
        if warn is not None:
            warn(f"no warm-run record: {recorder.refused}")
        return None
    for (path, follow), ident in recorder.inputs.items():
        if look(path, follow) != ident:
            if warn is not None:
                warn(f"no warm-run record: {path} changed while the command ran")
            return None
    return sorted([path, follow, ident] for (path, follow), ident in recorder.inputs.items())


def record_build(
    argv: Sequence[str],
    recorder: InputRecorder,
    *,
    manifest_bytes: bytes,
    output: str,
    human: str,
    doc: dict[str, Any],
    warn: Callable[[str], None] | None = None,
) -> bool:
    """Write the record of a finished build; ``False`` (and nothing written) when it may not be."""
    request = parse_request(argv)
    if request is None:
        return False
    inputs = stable_inputs(recorder, warn=warn)
    if inputs is None:
        return False
    record = {
        "key": request.key(),
        "manifest": manifest_bytes.decode("latin-1"),
        "inputs": inputs,
        "output": _output_files(os.path.join(os.getcwd(), output)),
        "human": human,
        "json": doc,
    }
    write_record(request.record_path(), record)
    return True


def write_record(path: str, record: dict[str, Any]) -> None:
    from pathlib import Path

    from manifests.atomic import atomic_write

    # Owner-only: a record names the paths and results of the user's builds.
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o777 != 0o700:
        _drop_legacy_records(directory)
        os.chmod(directory, 0o700)
    atomic_write(Path(path), json.dumps(record, sort_keys=True).encode(), mode=0o600, durable=False)


def _drop_legacy_records(directory: str) -> None:
    """Records from before the 0700 directory kept the environment's values (passwords among
    them) in files others could read; their keys differ from today's, so nothing would replace
    them. They are only a cache: remove them."""
    import contextlib

    with os.scandir(directory) as it:
        stale = [e.path for e in it if e.name.endswith(".json") and e.is_file(follow_symlinks=False)]
    for stale_path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale_path)


def read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_RECORD + 1)
        record = json.loads(data)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def inputs_hold(record: dict[str, Any]) -> bool:
    """Whether every recorded input still has its recorded identity."""
    try:
        return all(look(path, bool(follow)) == ident for path, follow, ident in record["inputs"])
    except (KeyError, TypeError, ValueError):
        return False


def print_result(human: str, doc: dict[str, Any], *, json_mode: bool, out: TextIO) -> int | None:
    """The recorded result on ``out`` as the command prints it; an exit code if the reader left."""
    try:
        if json_mode:
            print(json.dumps({"version": 1, **doc}, sort_keys=True, indent=2), file=out, flush=True)
        else:
            print(human, file=out, flush=True)
    except BrokenPipeError:  # `kiln ... | head`: as kiln.cli does, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 141
    return None
