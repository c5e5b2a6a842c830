"""Bake CPython bytecode into the tree: deterministic ``.pyc`` files beside every ``.py`` (ADR 0023).

A read-only image cannot write ``__pycache__``, so without bytecode CPython compiles every module it
imports at every start; under qemu's TCG that is most of a Python service's boot time. With the
manifest's ``python: {bytecode: true}`` the build adds, for every ``.py`` file of the tree,
``__pycache__/<name>.<cache tag>[.opt-N].pyc``:

- PEP 552 *unchecked-hash* pycs (flags ``0b01``): the header holds the source's SipHash, not its
  mtime, and the interpreter never compares it (the root is read-only: the source cannot change).
  No host mtime reaches the image.
- compiled by **the image's own interpreter**: the tree's ``<prefix>/bin/python3.X``, run from
  the host file it was copied from, and only if that file may run on the build host
  (:func:`trusted_interpreter`): a ``closure`` source took it from a system directory of this host
  (under /usr, /bin, /sbin, /lib), it and every directory above it are root-owned and writable by
  no one else, and it is an ELF executable. An interpreter from a ``files``/``tree`` source (the
  checkout), a closure resolved in another sysroot or an unpacked Debian package is refused with a
  :class:`BuildError` naming the path and why, and nothing is run. Such an interpreter's prefix is
  the host's ``/usr``, so the stdlib it imports is the host's, never tree content (the compiler
  reports where ``importlib.util`` came from and that is checked the same way). Its
  ``major.minor`` must be the stdlib directory's and its magic number the one in the tree's
  ``importlib/_bootstrap_external.py``; a patch release may compile differently, so the
  interpreter's exact version is recorded (:data:`ANNOTATION`).
- run as ``python -S -s -B -c <compiler>`` with ``PYTHONHASHSEED=0`` and no other environment, in
  ``/``; the compiler drops ``''`` from ``sys.path`` before its first import (``-I`` is not used:
  its ``-E`` would drop the hash seed that interpreters before 3.11 need for reproducible
  frozensets, and the environment is entirely ours anyway). It only calls ``compile()`` (no
  source is executed) and reads everything from stdin, so the checkout's path, umask, TZ and
  mtimes cannot reach the output. ``co_filename`` is the in-image path.

The result is recorded as ``cpython-3.11.2/magic-3495/unchecked-hash/opt-0`` in the OCI manifest's
``dev.kiln.bytecode`` annotation and in ``vm.json``'s ``bytecode``: a different interpreter is a
visible, versioned change of the digest, like a different compressor.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.tree import Entry, EntryKind, FileTree
from manifests.image import ImageManifest

__all__ = ["ANNOTATION", "Bytecode", "add_bytecode", "bake", "find_python", "trusted_interpreter"]

ANNOTATION = "dev.kiln.bytecode"
_STDLIB = re.compile(
    r"^(?P<prefix>/usr(?:/local)?)/lib/python(?P<ver>3\.\d+)/importlib/_bootstrap_external\.py$"
)
_MAGIC = re.compile(rb"^MAGIC_NUMBER\s*=\s*\((\d+)\)\.to_bytes\(2,\s*'little'\)", re.MULTILINE)
_MAX_OUTPUT = 1 << 30
# No site (-S), no user site (-s), no writes (-B). Not -I: its -E would drop PYTHONHASHSEED, which
# interpreters before 3.11 need for reproducible frozenset constants; the environment is ours
# entirely anyway ({"PYTHONHASHSEED": "0"}), and the compiler drops '' from sys.path itself
# before its first import (what -I's -P does, on every version).
_FLAGS = ("-S", "-s", "-B")

# Run by the image's interpreter. stdin: a count, then (path, source) pairs, length-prefixed;
# stdout: version facts, then per file a status byte and a length-prefixed pyc or error text.
_COMPILER = r"""
import sys
sys.path[:] = [p for p in sys.path if p.startswith("/")]  # -c put '' (the working directory) first
import importlib.util, marshal, struct
inp, out = sys.stdin.buffer, sys.stdout.buffer
def take():
    (n,) = struct.unpack(">I", inp.read(4))
    return inp.read(n)
def put(status, data):
    out.write(bytes([status]) + struct.pack(">I", len(data)) + data)
info = "%s %s %d.%d %s" % (sys.implementation.name, sys.version.split()[0], sys.version_info[0],
                           sys.version_info[1], sys.implementation.cache_tag)
put(0, info.encode() + b" " + importlib.util.MAGIC_NUMBER.hex().encode() + b"\n"
    + importlib.util.__file__.encode("utf-8", "surrogateescape"))
(opt,) = struct.unpack(">I", inp.read(4))
(count,) = struct.unpack(">I", inp.read(4))
for _ in range(count):
    path = take().decode("utf-8", "surrogateescape")
    src = take()
    try:
        code = compile(src, path, "exec", dont_inherit=True, optimize=opt)
    except (SyntaxError, ValueError) as exc:
        put(1, ("%s: %s" % (type(exc).__name__, exc)).encode("utf-8", "replace"))
        continue
    head = importlib.util.MAGIC_NUMBER + struct.pack("<I", 0b01) + importlib.util.source_hash(src)
    put(0, head + marshal.dumps(code))
out.flush()
"""


@dataclass(frozen=True, slots=True)
class Bytecode:
    """What :func:`add_bytecode` did: ``tag`` is the recorded compiler and format."""

    tag: str
    compiled: int
    skipped: tuple[str, ...]  # image paths whose source does not compile (e.g. Python 2 files)


@dataclass(frozen=True, slots=True)
class _Python:
    prefix: str
    version: str  # "3.11"
    magic: int
    interpreter: Entry
    host: Path  # the host file that is run: a trusted system file (:func:`trusted_interpreter`)


def _read(entry: Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    try:
        return Path(str(entry.host_path)).read_bytes()
    except OSError as exc:
        raise BuildError(f"{entry.origin}: cannot read {entry.host_path}: {exc.strerror}") from exc


_CLOSURE_ORIGIN = re.compile(r"^contents\[\d+\]\.closure$")
_SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")


def _unsafe_path(real: str) -> str | None:
    """Why the host path ``real`` (resolved) is not a trusted system file, or ``None``: it must lie
    under /usr (or /bin, /sbin, /lib) and it and every directory above it must be owned by root
    and writable by no one else."""
    if not real.startswith(_SYSTEM_DIRS):
        return f"{real} is not in a system directory ({', '.join(d.rstrip('/') for d in _SYSTEM_DIRS)})"
    at = real
    while True:
        try:
            st = os.lstat(at)
        except OSError as exc:
            return f"cannot stat {at}: {exc.strerror}"
        if st.st_uid != 0:
            return f"{at} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022:
            return f"{at} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o})"
        if at == "/":
            return None
        at = posixpath.dirname(at)


def trusted_interpreter(entry: Entry, path: str) -> Path:
    """The host file to run as the image's interpreter ``path``, if it may run on the build host.

    Only a file a ``closure`` source took from a system location of this host qualifies: root-owned,
    writable by no one else, in root-owned directories no one else can write, and an ELF
    executable. Anything else (a ``files``/``tree`` source from the checkout, a closure resolved in
    another sysroot, an unpacked Debian package, a script) is a :class:`BuildError` naming why, and
    nothing is run."""
    refuse = (
        f"python.bytecode: the image's interpreter {path} ({entry.describe()}) is not run on the build host"
    )
    hint = (
        "take the interpreter from the host with a closure source (contents: - closure: {paths: ["
        + path
        + "]})"
    )
    if not _CLOSURE_ORIGIN.match(entry.origin):
        raise BuildError(f"{refuse}: only a closure source's host interpreter is run", hint=hint)
    real = os.path.realpath(str(entry.host_path))
    why = _unsafe_path(real)
    if why is not None:
        raise BuildError(f"{refuse}: {why}", hint=hint)
    try:
        with open(real, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise BuildError(f"{refuse}: cannot read {real}: {exc.strerror}", hint=hint) from exc
    if head != b"\x7fELF":
        raise BuildError(f"{refuse}: {real} is not an ELF executable", hint=hint)
    return Path(real)


def find_python(tree: FileTree) -> _Python:
    """The tree's CPython: its stdlib directory, version, magic number and interpreter entry."""
    found = [(m, e) for e in tree.entries() if e.kind is EntryKind.FILE and (m := _STDLIB.match(e.path))]
    if not found:
        raise BuildError(
            "python.bytecode: the image has no CPython standard library "
            "(<prefix>/lib/python3.X/importlib/_bootstrap_external.py)",
            hint="add the interpreter and its stdlib, or remove python.bytecode",
        )
    if len(found) > 1:
        raise BuildError(
            "python.bytecode: the image holds more than one CPython standard library: "
            + ", ".join(posixpath.dirname(posixpath.dirname(e.path)) for _, e in found),
            hint="keep one interpreter per image",
        )
    match, marker = found[0]
    magic = _MAGIC.search(_read(marker))
    if magic is None:
        raise BuildError(f"python.bytecode: no MAGIC_NUMBER in {marker.path}")
    prefix, version = match["prefix"], match["ver"]
    path = f"{prefix}/bin/python{version}"
    entry = tree.get(path)
    seen = 0
    while entry is not None and entry.kind in (EntryKind.SYMLINK, EntryKind.HARDLINK) and seen < 8:
        seen += 1
        target = entry.target or ""
        if entry.kind is EntryKind.SYMLINK and not target.startswith("/"):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
        entry = tree.get(target)
    if entry is None or entry.kind is not EntryKind.FILE or entry.host_path is None:
        raise BuildError(
            f"python.bytecode: the image's interpreter {path} is not a file taken from this host",
            hint="add it with a closure source (contents: - closure: {paths: [" + path + "]})",
        )
    host = trusted_interpreter(entry, path)
    return _Python(prefix=prefix, version=version, magic=int(magic.group(1)), interpreter=entry, host=host)


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def next(self) -> tuple[int, bytes]:
        if self.at + 5 > len(self.data):
            raise BuildError("python.bytecode: the compiler's answer is truncated")
        status = self.data[self.at]
        (n,) = struct.unpack(">I", self.data[self.at + 1 : self.at + 5])
        start = self.at + 5
        self.at = start + n
        if self.at > len(self.data):
            raise BuildError("python.bytecode: the compiler's answer is truncated")
        return status, self.data[start : self.at]


# Compiled pycs of this process, by (interpreter identity, optimize, image path, source sha256):
# a build run twice in one process (tests, multi-platform builds) compiles once.
_MEMO: dict[tuple[object, ...], tuple[str, bytes | None, str]] = {}


def _interpreter_id(host: Path) -> tuple[object, ...]:
    st = os.stat(host)
    return (str(host), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _compile(
    host: Path, sources: list[tuple[str, bytes]], optimize: int
) -> tuple[str, list[tuple[int, bytes]]]:
    request = b"".join(
        [struct.pack(">II", optimize, len(sources)), *(_frame(p.encode()) + _frame(s) for p, s in sources)]
    )
    import subprocess  # only when a pyc is not cached: the interpreter runs

    try:
        proc = subprocess.run(  # the image's interpreter, from a host path the manifest names
            [str(host), *_FLAGS, "-c", _COMPILER],
            input=request,
            capture_output=True,
            env={"PYTHONHASHSEED": "0"},
            cwd="/",
            check=False,
            timeout=1800,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"python.bytecode: cannot run the image's interpreter {host}: {exc}") from exc
    if proc.returncode != 0 or len(proc.stdout) > _MAX_OUTPUT:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise BuildError(
            f"python.bytecode: the image's interpreter {host} failed to compile (exit {proc.returncode})",
            hint=" / ".join(tail) or None,
        )
    reader = _Reader(proc.stdout)
    _, info = reader.next()
    return info.decode(), [reader.next() for _ in sources]


# What a cached pyc depends on beyond its inputs: the compiler script, its flags and this file
# format. A change to any of them is a new key, so old entries are never reused.
_CACHE_FORMAT = 2
_CACHE_VERSION = hashlib.sha256(repr((_CACHE_FORMAT, _FLAGS, _COMPILER)).encode()).hexdigest()


def _disk_key(ident: tuple[object, ...], path: str, sha: str) -> str:
    return hashlib.sha256(repr((_CACHE_VERSION, *ident, path, sha)).encode()).hexdigest()


def _info_key(ident: tuple[object, ...]) -> str:
    return _disk_key(ident, "\0interpreter", "")  # NUL: no image path looks like it


def _from_disk(
    cache_dir: Path | None, key: str, magic: int, *, info: bool = False
) -> tuple[str, bytes | None, str] | None:
    """A cached answer, or ``None`` (a miss) for anything but a whole, intact entry: one status
    byte, the sha256 of the payload, the payload (a pyc of this magic number, or an error text;
    with ``info``, the interpreter's facts as :func:`_compile` gave them)."""
    if cache_dir is None:
        return None
    try:
        data = (cache_dir / key[:2] / key).read_bytes()
    except OSError:
        return None
    status, digest, payload = data[:1], data[1:33], data[33:]
    if len(digest) != 32 or hashlib.sha256(payload).digest() != digest:
        return None
    if info:
        return (payload.decode("utf-8", "replace"), None, "") if status == b"2" and payload else None
    if (
        status == b"0"
        and len(payload) > 16
        and payload[:4] == _pyc_magic(magic)
        and payload[4:8] == b"\x01\0\0\0"
    ):
        return ("", payload, "")
    if status == b"1" and payload:
        return ("", None, payload.decode("utf-8", "replace"))
    return None


def _pyc_magic(magic: int) -> bytes:
    return magic.to_bytes(2, "little") + b"\r\n"


def _to_disk(cache_dir: Path | None, key: str, value: tuple[str, bytes | None, str]) -> None:
    if cache_dir is None:
        return
    folder = cache_dir / key[:2]
    if value[0]:  # the interpreter's facts
        status, payload = b"2", value[0].encode()
    elif value[1] is not None:
        status, payload = b"0", value[1]
    else:
        status, payload = b"1", value[2].encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}"
        tmp.write_bytes(status + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, folder / key)
    except OSError:
        return  # a cache that cannot be written only costs time


def add_bytecode(tree: FileTree, *, optimize: int = 0, cache_dir: Path | None = None) -> Bytecode:
    """Add an unchecked-hash ``.pyc`` for every ``.py`` file of ``tree``; see the module docstring.

    ``cache_dir`` keeps compiled files between builds, keyed by the compiler script, its flags and
    the cache format, the interpreter's identity on this host (path, inode, size, mtime), the
    level, the image path and the source's sha256; an entry that is not whole is a miss."""
    py = find_python(tree)
    host = py.host
    ident = (*_interpreter_id(host), optimize)
    wanted = [
        (e, hashlib.sha256(_read(e)).hexdigest())
        for e in tree.entries()
        if e.kind is EntryKind.FILE and e.path.endswith(".py") and "/__pycache__/" not in e.path
    ]
    _fill_memo(host, ident, wanted, optimize=optimize, cache_dir=cache_dir, magic=py.magic)
    full_version, cache_tag = _check_interpreter(py, host, _MEMO[(*ident, "info")][0])
    suffix = f".{cache_tag}" + (f".opt-{optimize}" if optimize else "") + ".pyc"
    compiled = 0
    skipped: list[str] = []
    for entry, sha in wanted:
        pyc = _MEMO[(*ident, entry.path, sha)][1]
        if pyc is None:
            skipped.append(entry.path)
        elif _add_pyc(tree, entry, pyc, suffix):
            compiled += 1
    tag = f"cpython-{full_version}/magic-{py.magic}/unchecked-hash/opt-{optimize}"
    return Bytecode(tag=tag, compiled=compiled, skipped=tuple(skipped))


def _fill_memo(
    host: Path,
    ident: tuple[object, ...],
    wanted: list[tuple[Entry, str]],
    *,
    optimize: int,
    cache_dir: Path | None,
    magic: int,
) -> None:
    """Every wanted file's pyc in :data:`_MEMO`: from memory, the disk cache, or compiled now; and
    the interpreter's facts, which the disk cache keeps too, so that a build whose files are all
    cached runs no program at all (and can be answered from a warm-run record next time)."""
    if (*ident, "info") not in _MEMO:
        known = _from_disk(cache_dir, _info_key(ident), magic, info=True)
        if known is not None:
            _MEMO[(*ident, "info")] = known
    for e, sha in wanted:
        if (*ident, e.path, sha) not in _MEMO:
            hit = _from_disk(cache_dir, _disk_key(ident, e.path, sha), magic)
            if hit is not None:
                _MEMO[(*ident, e.path, sha)] = hit
    missing = [(e, sha) for e, sha in wanted if (*ident, e.path, sha) not in _MEMO]
    if not missing and (*ident, "info") in _MEMO:
        return
    info, results = _compile(host, [(e.path, _read(e)) for e, _ in missing], optimize)
    _MEMO[(*ident, "info")] = (info, None, "")
    _to_disk(cache_dir, _info_key(ident), (info, None, ""))
    for (e, sha), (status, data) in zip(missing, results, strict=True):
        value = ("", data if status == 0 else None, data.decode("utf-8", "replace"))
        _MEMO[(*ident, e.path, sha)] = value
        _to_disk(cache_dir, _disk_key(ident, e.path, sha), value)


def _check_interpreter(py: _Python, host: Path, info: str) -> tuple[str, str]:
    """The interpreter's full version and cache tag, once it is known to be the stdlib's."""
    facts, _, stdlib_file = info.partition("\n")
    try:
        impl, full_version, short, cache_tag, magic_hex = facts.split(" ")
        magic = int.from_bytes(bytes.fromhex(magic_hex)[:2], "little")
    except ValueError:
        raise BuildError(f"python.bytecode: {host} answered {info[:80]!r}, not its version") from None
    if impl != "cpython" or short != py.version:
        raise BuildError(
            f"python.bytecode: the image's interpreter {py.interpreter.path} ({host}) is {impl} "
            f"{full_version}, but its standard library is {py.prefix}/lib/python{py.version}",
            hint="take the interpreter and the stdlib from the same installation",
        )
    if magic != py.magic:
        raise BuildError(
            f"python.bytecode: the image's interpreter {host} writes magic number {magic}, "
            f"its standard library's importlib expects {py.magic}",
            hint="take the interpreter and the stdlib from the same installation",
        )
    why = _unsafe_path(os.path.realpath(stdlib_file)) if stdlib_file.startswith("/") else "no path"
    if why is not None:
        raise BuildError(
            f"python.bytecode: the interpreter {host} imported its standard library from "
            f"{stdlib_file!r}, not from this host's system directories: {why}"
        )
    return full_version, cache_tag


def _add_pyc(tree: FileTree, entry: Entry, pyc: bytes, suffix: str) -> bool:
    folder, name = posixpath.split(entry.path)
    pycache = f"{folder}/__pycache__"
    target = f"{pycache}/{name[:-3]}{suffix}"
    if target in tree:
        return False  # a pyc the manifest names itself stays
    if pycache not in tree:
        parent = tree.get(folder)
        tree.add(
            Entry(
                path=pycache,
                kind=EntryKind.DIR,
                mode=0o755,
                uid=parent.uid if parent else 0,
                gid=parent.gid if parent else 0,
                category=entry.category,
                origin=f"bytecode of {entry.origin}",
            )
        )
    tree.add(
        Entry(
            path=target,
            kind=EntryKind.FILE,
            mode=0o644,
            uid=entry.uid,
            gid=entry.gid,
            size=len(pyc),
            data=pyc,
            category=entry.category,
            origin=f"bytecode of {entry.origin}",
            source_index=entry.source_index,
        )
    )
    return True


def bake(
    manifest: ImageManifest, tree: FileTree, *, cache_dir: Path | None = None, say: Callable[[str], None]
) -> str | None:
    """The manifest's ``python.bytecode`` applied to ``tree``: the recorded tag, or ``None``."""
    if not manifest.python.bytecode:
        return None
    done = add_bytecode(tree, optimize=manifest.python.optimize, cache_dir=cache_dir)
    skipped = f", {len(done.skipped)} sources do not compile" if done.skipped else ""
    say(f"bytecode: {done.compiled} .pyc files ({done.tag}){skipped}")
    return done.tag
