"""Unpack an image's layers into a root directory, treating every layer as hostile.

The rules (any breach is :class:`~manifests.errors.VerificationError` with ``reason="unpack"``
naming the member and the layer digest, and the partly unpacked root is removed):

- Member names are relative: an absolute name, a ``..`` component or a NUL is refused.
- **Nothing is ever written, linked or deleted through a symlink.** Every parent directory of a
  member is opened component by component from the root's file descriptor with ``O_NOFOLLOW |
  O_DIRECTORY``; a symlink anywhere on the way (from this layer or an earlier one) is refused,
  whatever it points at, even inside the root (layers written by a build never need that). Files
  are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` after the old entry is removed, so a member
  never lands outside the root or in another file.
- Symlinks are created as links only. A relative target is resolved lexically from the link's
  directory and refused if it climbs above the root. An absolute target (``/etc/shadow``) is
  allowed: inside the container it resolves within the root, and no member can be written through
  it.
- Hardlinks must name an already unpacked *regular file* inside the root (found the same
  no-follow way).
- Device nodes, FIFOs and every other special or unsupported member type are refused.
- Setuid/setgid bits on files are refused unless the image config label
  ``dev.kiln.allow-setuid`` is ``"true"`` (setgid on directories, which grants nothing, is kept).
  Extended attributes (file capabilities among them) are never applied.
- Caps: bytes per file, uncompressed bytes per image, entries per image, name and extended-header
  lengths, components (depth) and characters of a member's path.
- A work budget per image: entries times path depth (every member's directories are opened one
  component at a time, so a deep tree times many entries is the unpacker's real cost) and wall
  time. Past either the unpack is refused (``reason="unpack"``) instead of running for hours.
- Free space: the state filesystem keeps ``free_space_margin`` bytes free. A layer whose
  compressed size already crosses the margin is refused before anything is written, and every
  file's declared size is checked against what is left before it is written (statvfs is read
  again when the estimate runs out), so a compression bomb stops before it fills the disk.
- OCI whiteouts: ``.wh.NAME`` removes ``NAME`` from lower layers; ``.wh..wh..opq`` empties its
  directory of what lower layers put there. A whiteout's directory is found the no-follow way too,
  so it cannot delete anything outside the root.
- The compressed bytes must hash to the layer digest and the uncompressed bytes to the config's
  ``diff_id`` (``reason="digest"`` otherwise).

:func:`unpack_image` unpacks into ``ROOTS/<manifest-hex>.tmp`` and renames it to
``ROOTS/<manifest-hex>`` when everything passed, records :func:`root_fingerprint` beside it (drift
detection), and makes sure the directories the runtime mounts over already exist so that runc never
has to create anything in the root. The ``ROOTS`` directory is 0700: only root reaches the trees,
and the runtimes mount them read-only.

Nothing here recurses over a tree that came from an image: removal (:func:`remove_tree`) and
:func:`root_fingerprint` walk iteratively, holding one or two directory descriptors whatever the
depth, and removal that still fails quarantines the tree under a ``.trash-`` name so a restart
is never blocked by a hostile leftover.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from agent.bundle import ImagePolicy
from agent.store import ContentStore, PulledImage
from manifests.atomic import atomic_write, fsync_dir
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, ParseError, UnavailableError, VerificationError
from manifests.imageconfig import ImageConfig
from manifests.layerstream import Decompressor, HashingReader, open_layer
from manifests.limits import AgentLimits
from manifests.mediatypes import MediaType
from manifests.tarformat import TarCaps, TarContent, TarFormatError, TarHeader, TarWording, read_tar
from manifests.vocabulary import Reason

__all__ = [
    "UnpackLimits",
    "Layer",
    "UnpackedRoot",
    "unpack_layers",
    "unpack_image",
    "root_fingerprint",
    "layers_of",
    "remove_root",
    "remove_interrupted",
    "remove_tree",
]

_CHUNK = 1 << 20
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID = 0xFFFFFFFE
_ENV_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.ENOMEM, errno.EMFILE})
_OPQ = ".wh..wh..opq"
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # the stubs declare it as an instance


_DEFAULTS = AgentLimits()
_TRASH = ".trash-"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpackLimits:
    """Caps for one image (all layers together, except ``max_file_bytes``); the defaults are
    :class:`~manifests.limits.AgentLimits`' (:meth:`from_agent` takes a configured one)."""

    max_entries: int = _DEFAULTS.unpack_entries
    max_file_bytes: int = _DEFAULTS.unpack_file_bytes
    max_total_bytes: int = _DEFAULTS.unpack_bytes
    max_name: int = 4096
    max_extended: int = 1 << 20
    max_path_depth: int = _DEFAULTS.unpack_path_depth
    max_path_chars: int = _DEFAULTS.unpack_path_chars
    max_work: int = _DEFAULTS.unpack_work
    max_seconds: float = _DEFAULTS.unpack_time
    free_space_margin: int = _DEFAULTS.free_space_margin

    @classmethod
    def from_agent(cls, limits: AgentLimits) -> UnpackLimits:
        return cls(
            max_entries=limits.unpack_entries,
            max_file_bytes=limits.unpack_file_bytes,
            max_total_bytes=limits.unpack_bytes,
            max_name=max(4096, limits.unpack_path_chars),
            max_path_depth=limits.unpack_path_depth,
            max_path_chars=limits.unpack_path_chars,
            max_work=limits.unpack_work,
            max_seconds=limits.unpack_time,
            free_space_margin=limits.free_space_margin,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    """One layer blob to unpack: where its bytes are and what they must hash to."""

    digest: Digest
    media_type: str
    diff_id: Digest | None
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class UnpackedRoot:
    path: Path
    manifest_digest: Digest
    fingerprint: str


class _Refused(Exception):
    """Internal: a member breaks a rule; turned into VerificationError with the layer and member."""


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


# -- streams ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    """Counters shared by every layer of one image: entries, bytes, work, time and disk space."""

    limits: UnpackLimits
    entries: int = 0
    total: int = 0
    work: int = 0
    started: float = field(default_factory=time.monotonic)
    space_dir: str | None = None  # where statvfs is read (the root being written)
    allowance: int | None = None  # bytes that may still be written before the margin

    def uncompressed(self, n: int) -> None:
        """``n`` more uncompressed bytes read; refuse past the image's total."""
        self.total += n
        if self.total > self.limits.max_total_bytes:
            raise _Refused(f"image exceeds {self.limits.max_total_bytes} uncompressed bytes")

    def spend(self, depth: int) -> None:
        """One member at ``depth`` components: its cost in the work budget and the clock."""
        self.work += depth + 1
        if self.work > self.limits.max_work:
            raise _Refused(
                f"the image exceeds its unpack work budget ({self.limits.max_work} path components "
                f"opened, after {self.entries} entries)"
            )
        if time.monotonic() - self.started > self.limits.max_seconds:
            raise _Refused(f"unpacking took longer than its {self.limits.max_seconds:g}s budget")

    def _free(self) -> int:
        if self.space_dir is None:
            return 1 << 62
        st = os.statvfs(self.space_dir)
        return st.f_bavail * st.f_frsize - self.limits.free_space_margin

    def reserve(self, size: int, what: str) -> None:
        """Refuse ``size`` more bytes if they would leave less than the free-space margin."""
        if self.allowance is None or size > self.allowance:
            self.allowance = self._free()
        if size > self.allowance:
            free = self.allowance + self.limits.free_space_margin
            raise _Refused(
                f"{what} of {size} bytes would leave less than the {self.limits.free_space_margin}-byte "
                f"free-space margin ({max(free, 0)} bytes free)"
            )
        self.allowance -= size


def _gunzip(raw: HashingReader) -> _Readable:
    return cast(_Readable, igzip.IGzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]


def _unzstd(raw: HashingReader) -> _Readable:
    return cast(
        _Readable, zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, raw), read_across_frames=True)
    )


_DECOMPRESSORS: dict[str, Decompressor] = {
    MediaType.OCI_LAYER_GZIP: _gunzip,
    MediaType.DOCKER_LAYER_GZIP: _gunzip,
    MediaType.OCI_LAYER_ZSTD: _unzstd,
}


# -- the tar reader -----------------------------------------------------------------------------

_TAR_WORDING = TarWording(
    checksum="tar header checksum mismatch",
    truncated_header="tar stream is truncated",
    truncated_extended="tar stream is truncated",
    truncated_skip="tar stream is truncated",
    truncated_content="tar stream is truncated inside a file",
    bad_number="bad {what} field in a tar header",
    negative="negative {what} in a tar header",
    extended="extended header of {size} bytes exceeds the {max}-byte cap",
    pax_malformed="malformed PAX record",
    pax_length="PAX record length out of range",
    pax_equals="PAX record without '='",
    pax_number="bad PAX {key} {value!r}",
    name="name or link target longer than {max} characters",
)


def _members(stream: HashingReader, budget: _Budget) -> Iterator[tuple[TarHeader, TarContent]]:
    """Each member with a reader for its content (:mod:`manifests.tarformat`), entries counted
    in the image's budget; a malformed stream is refused like any other rule breach."""
    limits = budget.limits

    def count(flag: bytes) -> None:
        budget.entries += 1
        if budget.entries > limits.max_entries:
            raise _Refused(f"more than {limits.max_entries} tar entries")

    caps = TarCaps(max_name=limits.max_name, max_extended=limits.max_extended)
    try:
        yield from read_tar(stream, wording=_TAR_WORDING, caps=caps, on_header=count)
    except TarFormatError as exc:
        raise _Refused(exc.message) from None


# -- names --------------------------------------------------------------------------------------


def _parts(name: str, what: str = "member name", limits: UnpackLimits | None = None) -> tuple[str, ...]:
    """A member name as path components below the root; refuses absolute names, '..' and NUL,
    and (with ``limits``) paths deeper or longer than the caps."""
    if limits is not None and len(name) > limits.max_path_chars:
        raise _Refused(f"{what} of {len(name)} characters exceeds the {limits.max_path_chars}-character cap")
    if "\x00" in name:
        raise _Refused(f"{what} contains a NUL byte")
    if name.startswith("/"):
        raise _Refused(f"absolute {what}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused(f"{what} has a '..' component")
    if limits is not None and len(parts) > limits.max_path_depth:
        raise _Refused(f"{what} is {len(parts)} directories deep, more than {limits.max_path_depth}")
    return parts


def _symlink_escapes(parent: tuple[str, ...], target: str) -> bool:
    """True when a relative ``target`` from directory ``parent`` climbs above the root."""
    depth = len(parent)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


# -- the unpacker -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tree:
    """The root being written, addressed only through ``root_fd`` and no-follow lookups."""

    root_fd: int
    allow_setuid: bool
    chown: bool
    limits: UnpackLimits
    budget: _Budget
    dir_modes: dict[tuple[str, ...], int] = field(default_factory=dict)
    layer_paths: set[tuple[str, ...]] = field(default_factory=set)

    def open_dir(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        """An fd for the directory ``parts`` (None if missing and not ``create``); never follows links."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self._own(fd, part, 0, 0)
                    self.dir_modes.setdefault(parts[: i + 1], 0o755)
                    self.layer_paths.add(parts[: i + 1])
                    nxt = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    where = "/" + "/".join(parts[: i + 1])
                    if stat.S_ISLNK(st.st_mode):
                        raise _Refused(f"goes through the symlink {where}") from None
                    raise _Refused(f"{where} is not a directory") from None
                os.close(fd)
                fd = nxt
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd

    def _own(self, dir_fd: int, name: str, uid: int, gid: int) -> None:
        if self.chown:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def _clear(self, dir_fd: int, name: str) -> None:
        """Remove whatever is at ``name`` (a directory recursively, without following links)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            _remove_dir_at(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def apply(self, m: TarHeader, content: TarContent) -> None:
        parts = _parts(m.name, limits=self.limits)
        self.budget.spend(len(parts))
        if not parts:
            return  # the root itself: its mode stays kiln's
        if m.uid > _MAX_ID or m.gid > _MAX_ID:
            raise _Refused(f"owner {m.uid}:{m.gid} is out of range")
        *parent_l, base = parts
        parent = tuple(parent_l)
        if base.startswith(".wh."):
            self._whiteout(parent, base)
            return
        if m.kind in ("char", "block"):
            raise _Refused("device nodes are not allowed")
        if m.kind == "fifo":
            raise _Refused("FIFOs are not allowed")
        if m.kind.startswith("other:"):
            raise _Refused(f"unsupported tar member type {m.kind[6:]}")
        if (
            m.kind in ("file", "hardlink")
            and m.mode & (stat.S_ISUID | stat.S_ISGID)
            and not self.allow_setuid
        ):
            raise _Refused(f"setuid/setgid mode {m.mode:04o} without the dev.kiln.allow-setuid label")
        dfd = self.open_dir(parent, create=True)
        assert dfd is not None  # noqa: S101 - create=True never returns None
        try:
            self.layer_paths.add(parts)
            if m.kind == "dir":
                self._dir(dfd, parts, base, m)
            elif m.kind == "file":
                self._file(dfd, base, m, content)
            elif m.kind == "symlink":
                self._symlink(dfd, parent, base, m)
            else:
                self._hardlink(dfd, parts, base, m)
        finally:
            os.close(dfd)

    def _dir(self, dfd: int, parts: tuple[str, ...], base: str, m: TarHeader) -> None:
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
        except FileNotFoundError:
            is_dir = False
            st = None
        if not is_dir:
            if st is not None:
                self._clear(dfd, base)
            os.mkdir(base, 0o700, dir_fd=dfd)
        self._own(dfd, base, m.uid, m.gid)
        self.dir_modes[parts] = m.mode

    def _file(self, dfd: int, base: str, m: TarHeader, content: TarContent) -> None:
        if m.size > self.limits.max_file_bytes:
            raise _Refused(f"file of {m.size} bytes exceeds the {self.limits.max_file_bytes}-byte cap")
        self.budget.reserve(m.size, "a file")
        self._clear(dfd, base)
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
        )
        try:
            while chunk := content.read(_CHUNK):
                _write_all(fd, chunk)
            if self.chown:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode)
        finally:
            os.close(fd)

    def _symlink(self, dfd: int, parent: tuple[str, ...], base: str, m: TarHeader) -> None:
        target = m.link
        if not target or "\x00" in target:
            raise _Refused("symlink with an empty or NUL target")
        if len(target) > self.limits.max_path_chars:
            raise _Refused(f"symlink target of {len(target)} characters exceeds the cap")
        if not target.startswith("/") and _symlink_escapes(parent, target):
            raise _Refused(f"symlink target {target!r} escapes the root")
        self._clear(dfd, base)
        os.symlink(target, base, dir_fd=dfd)
        self._own(dfd, base, m.uid, m.gid)

    def _hardlink(self, dfd: int, parts: tuple[str, ...], base: str, m: TarHeader) -> None:
        tparts = _parts(m.link, "hardlink target", self.limits)
        if not tparts:
            raise _Refused("hardlink to the root")
        if tparts == parts:
            raise _Refused("hardlink to itself")
        tfd = self.open_dir(tparts[:-1], create=False)
        if tfd is None:
            raise _Refused(f"hardlink target /{'/'.join(tparts)} does not exist")
        try:
            try:
                st = os.stat(tparts[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise _Refused(f"hardlink target /{'/'.join(tparts)} does not exist") from None
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(f"hardlink target /{'/'.join(tparts)} is not a regular file")
            self._clear(dfd, base)
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _whiteout(self, parent: tuple[str, ...], base: str) -> None:
        if base == _OPQ:
            dfd = self.open_dir(parent, create=False)
            if dfd is None:
                return
            try:
                for name in os.listdir(dfd):
                    if (*parent, name) not in self.layer_paths:
                        self._clear(dfd, name)
            finally:
                os.close(dfd)
            return
        if base.startswith(".wh..wh."):
            return  # other AUFS metadata (.wh..wh.plnk and friends): ignored
        victim = base[4:]
        if victim in ("", ".", ".."):
            raise _Refused(f"whiteout of {victim!r}")
        dfd = self.open_dir(parent, create=False)
        if dfd is None:
            return
        try:
            self._clear(dfd, victim)
        finally:
            os.close(dfd)

    def finish(self, mountpoints: Sequence[str]) -> None:
        """Create missing mountpoint directories, then apply directory modes, deepest first."""
        for mp in mountpoints:
            with contextlib.suppress(_Refused):
                fd = self.open_dir(_parts(mp.lstrip("/")), create=True)
                if fd is not None:
                    os.close(fd)
        for parts in sorted(self.dir_modes, key=len, reverse=True):
            fd = self.open_dir(parts[:-1], create=False) if parts else None
            if fd is None:
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        os.chmod(parts[-1], self.dir_modes[parts], dir_fd=fd)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- layers and images --------------------------------------------------------------------------


def _unpack_one(tree: _Tree, layer: Layer, budget: _Budget) -> None:
    tree.layer_paths = set()
    # Before anything is written: the layer's compressed size is the least it can grow the root.
    size = os.stat(layer.path).st_size
    budget.allowance = None
    budget.reserve(size, "the layer (at least its compressed size)")
    budget.allowance = (budget.allowance or 0) + size  # only a floor: each file reserves what it declares
    with open(layer.path, "rb") as fh:
        raw = HashingReader(fh)
        plain = HashingReader(open_layer(raw, layer.media_type, _DECOMPRESSORS), on_read=budget.uncompressed)
        for member, content in _members(plain, budget):
            try:
                tree.apply(member, content)
            except (_Refused, TarFormatError) as exc:
                raise _Refused(f"member {member.name!r}: {exc}") from None
            except OSError as exc:
                if exc.errno in _ENV_ERRNOS:
                    raise
                raise _Refused(f"member {member.name!r}: {exc.strerror or exc}") from None
        plain.drain()
        raw.drain()
    if raw.hexdigest != layer.digest.hex:
        raise VerificationError(
            f"layer {layer.digest}: content hashes to sha256:{raw.hexdigest}", reason=Reason.DIGEST
        )
    if layer.diff_id is not None and plain.hexdigest != layer.diff_id.hex:
        raise VerificationError(
            f"layer {layer.digest}: uncompressed content does not match diff_id {layer.diff_id}",
            reason=Reason.DIGEST,
        )


def unpack_layers(
    layers: Sequence[Layer],
    dest: Path,
    *,
    allow_setuid: bool = False,
    limits: UnpackLimits | None = None,
    mountpoints: Sequence[str] = (),
    chown: bool | None = None,
) -> None:
    """Unpack ``layers`` in order into the new directory ``dest`` (removed again on any failure)."""
    dest = Path(dest)
    limits = limits or UnpackLimits()
    os.mkdir(dest, 0o755)
    root_fd = os.open(dest, _NOFOLLOW_DIR)
    budget = _Budget(limits=limits, space_dir=str(dest))
    tree = _Tree(
        root_fd=root_fd,
        allow_setuid=allow_setuid,
        chown=os.geteuid() == 0 if chown is None else chown,
        limits=limits,
        budget=budget,
    )
    current: Layer | None = None
    try:
        for layer in layers:
            current = layer
            _unpack_one(tree, layer, budget)
        current = None
        tree.finish(mountpoints)
    except BaseException as exc:
        os.close(root_fd)
        root_fd = -1
        remove_tree(dest)
        _translate(exc, f"layer {current.digest}" if current is not None else f"{dest}")
        raise
    finally:
        if root_fd >= 0:
            os.close(root_fd)


def _translate(exc: BaseException, where: str) -> None:
    """Raise the kiln error an unpack failure means (a refusal, bad data, the host failing);
    return (so the caller re-raises ``exc`` itself) for anything else, such as KeyboardInterrupt."""
    if isinstance(exc, _Refused):
        raise VerificationError(
            f"{where}: {exc}",
            reason=Reason.UNPACK,
            hint="the image's layers are unsafe; nothing was unpacked",
        ) from None
    if _is_bad_data(exc):
        raise VerificationError(f"{where}: cannot read the layer: {exc}", reason=Reason.UNPACK) from exc
    if isinstance(exc, OSError):
        raise UnavailableError(f"{where}: unpacking failed: {exc}") from exc
    if isinstance(exc, RecursionError | MemoryError):  # never expected: still a refusal, not a crash
        raise VerificationError(
            f"{where}: cannot unpack: {type(exc).__name__}", reason=Reason.UNPACK
        ) from None


def _is_bad_data(exc: BaseException) -> bool:
    """Whether ``exc`` means the layer bytes are malformed (rather than the host failing)."""
    if isinstance(exc, (DocumentError, EOFError, _ISAL_ERROR, zstandard.ZstdError)):
        return True
    return (
        isinstance(exc, OSError) and exc.errno not in _ENV_ERRNOS and not isinstance(exc, FileNotFoundError)
    )


def remove_tree(path: Path) -> None:
    """Remove a (possibly hostile) tree iteratively, never following links, whatever its depth.

    Never raises: what cannot be removed is renamed to ``.trash-<name>-<random>`` beside it (so
    its name is free again) and :func:`remove_interrupted` tries again later.
    """
    path = Path(path)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            _remove_dir_at(parent, path.name)
        else:
            os.unlink(path.name, dir_fd=parent)
    except OSError:
        if not path.name.startswith(_TRASH):
            with contextlib.suppress(OSError):
                trash = f"{_TRASH}{path.name}-{secrets.token_hex(4)}"
                os.rename(path.name, trash, src_dir_fd=parent, dst_dir_fd=parent)
    finally:
        os.close(parent)


def _remove_dir_at(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` of ``parent_fd`` with everything below it.

    Depth-first without recursion: the path from ``name`` to the current directory is a list of
    names, one directory descriptor is held, and the walk climbs back through ``..`` (the real
    parent of a directory opened without following links). Directories are made searchable and
    writable first, so a hostile 0000 mode does not stop it.
    """
    _writable_dir(parent_fd, name)
    fd = os.open(name, _NOFOLLOW_DIR, dir_fd=parent_fd)
    below: list[str] = []
    try:
        while True:
            child = _empty_but_dirs(fd)
            if child is not None:
                _writable_dir(fd, child)
                sub = os.open(child, _NOFOLLOW_DIR, dir_fd=fd)
                os.close(fd)
                fd = sub
                below.append(child)
                continue
            if not below:
                break
            up = os.open("..", _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(below.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _empty_but_dirs(fd: int) -> str | None:
    """Unlink every non-directory in ``fd``; return the name of one subdirectory, if any is left."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            os.unlink(entry.name, dir_fd=fd)
    return None


def _writable_dir(dir_fd: int, name: str) -> None:
    # ``name`` is a directory (not a link): chmod cannot be redirected through it.
    with contextlib.suppress(OSError):
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=True)


def layers_of(store: ContentStore, image: PulledImage) -> list[Layer]:
    """The image's layers as :class:`Layer` values over the store's blob files."""
    ids = ImageConfig.from_dict(image.config).diff_ids
    if len(ids) != len(image.layers):
        raise DocumentError(f"image config lists {len(ids)} diff_ids for {len(image.layers)} layers")
    return [
        Layer(digest=desc.digest, media_type=desc.media_type, diff_id=diff_id, path=store.path(desc.digest))
        for desc, diff_id in zip(image.layers, ids, strict=True)
    ]


def unpack_image(
    store: ContentStore,
    image: PulledImage,
    roots_dir: Path,
    *,
    limits: UnpackLimits | None = None,
) -> UnpackedRoot:
    """Unpack ``image`` to ``ROOTS/<manifest-hex>`` (once; an existing root is returned as is)."""
    roots_dir = Path(roots_dir)
    roots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(roots_dir, 0o700)
    hexd = image.manifest_digest.hex
    final = roots_dir / hexd
    meta = roots_dir / f"{hexd}.json"
    if final.is_dir() and meta.is_file():
        return UnpackedRoot(path=final, manifest_digest=image.manifest_digest, fingerprint=_read_meta(meta))
    policy = ImagePolicy.from_config(image.config)
    tmp = roots_dir / f"{hexd}.tmp"
    remove_tree(tmp)
    if final.exists():  # a root without its record: from an interrupted run; redo it
        remove_tree(final)
    unpack_layers(
        layers_of(store, image),
        tmp,
        allow_setuid=policy.allow_setuid,
        limits=limits,
        mountpoints=policy.mountpoints(),
    )
    try:
        fingerprint = root_fingerprint(tmp)
        os.replace(tmp, final)
        atomic_write(
            meta, canonical_json({"manifest": str(image.manifest_digest), "fingerprint": fingerprint})
        )
        fsync_dir(roots_dir)
    except BaseException:
        remove_tree(tmp)
        raise
    return UnpackedRoot(path=final, manifest_digest=image.manifest_digest, fingerprint=fingerprint)


def _read_meta(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            doc = read_json_object(fh.read(4097), what=f"{path}", caps=JsonCaps(max_bytes=4096, max_depth=4))
    except ParseError as exc:
        raise DocumentError(f"{path}: unreadable root record: {exc.message}") from None
    fp = doc.get("fingerprint")
    if not isinstance(fp, str):
        raise DocumentError(f"{path}: unreadable root record")
    return fp


def remove_interrupted(roots_dir: Path) -> tuple[str, ...]:
    """Remove the ``ROOTS/<hex>.tmp`` trees of unpacks that were interrupted (a killed agent) and
    the ``.trash-`` trees :func:`remove_tree` quarantined; returns their names. Never raises on
    what it finds (a removal that fails leaves a ``.trash-`` tree for the next call). Call it only
    when no unpack is running (the agent holds its lock and is between steps)."""
    removed = []
    with os.scandir(roots_dir) as entries:
        names = [e.name for e in entries if e.name.endswith(".tmp") or e.name.startswith(_TRASH)]
    for name in names:  # removed after the scan: a quarantine rename must not be seen again
        remove_tree(Path(roots_dir) / name)
        removed.append(name)
    return tuple(sorted(removed))


def remove_root(roots_dir: Path, manifest_digest: Digest) -> None:
    """Remove an unpacked root and its record."""
    roots_dir = Path(roots_dir)
    with contextlib.suppress(FileNotFoundError):
        (roots_dir / f"{manifest_digest.hex}.json").unlink()
    remove_tree(roots_dir / manifest_digest.hex)


# -- fingerprint --------------------------------------------------------------------------------


def walk_tree(fd: int, visit: Callable[[int, bytes, str], int | None]) -> None:
    """Visit every entry under the open directory ``fd`` depth-first in sorted order, iteratively
    (a stack of name lists, one directory descriptor held, back up through ``..``), so no depth
    can exhaust the interpreter's stack or the descriptor table. ``visit(dir_fd, prefix, name)``
    returns an open descriptor of ``name`` to descend into it, or None. Closes ``fd``."""
    try:
        stack: list[tuple[bytes, list[str], int]] = [(b"", sorted(os.listdir(fd)), 0)]
        while stack:
            prefix, names, i = stack[-1]
            if i == len(names):
                stack.pop()
                if stack:
                    up = os.open("..", _NOFOLLOW_DIR, dir_fd=fd)
                    os.close(fd)
                    fd = up
                continue
            stack[-1] = (prefix, names, i + 1)
            sub = visit(fd, prefix, names[i])
            if sub is not None:
                os.close(fd)
                fd = sub
                stack.append((prefix + b"/" + os.fsencode(names[i]), sorted(os.listdir(fd)), 0))
    finally:
        os.close(fd)


def root_fingerprint(rootfs: Path, *, progress: Callable[[str], None] | None = None) -> str:
    """``sha256:<hex>`` over the tree: paths, types, modes, owners, sizes, content digests, link targets.

    Symlinks are never followed; any change to the root (a file edited, added, removed, chmod'ed)
    changes the fingerprint. The walk is depth-first in sorted order, iterative (a stack of name
    lists, one directory descriptor held, back up through ``..``), so no depth can exhaust the
    interpreter's stack or the descriptor table.
    """
    h = hashlib.sha256()
    fd = os.open(rootfs, _NOFOLLOW_DIR)
    walk_tree(fd, lambda dir_fd, prefix, name: _fingerprint_entry(dir_fd, prefix, name, h))
    if progress is not None:
        progress(f"fingerprinted {rootfs}")
    return f"sha256:{h.hexdigest()}"


def _fingerprint_entry(dfd: int, prefix: bytes, name: str, h: hashlib._Hash) -> int | None:
    """Hash one entry of ``dfd``; for a directory, return its open descriptor (to walk into)."""
    path = prefix + b"/" + os.fsencode(name)
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    mode = stat.S_IMODE(st.st_mode)
    head = b"%s\0%o\0%d\0%d\0" % (path, mode, st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        h.update(b"d\0" + head + b"\n")
        return os.open(name, _NOFOLLOW_DIR, dir_fd=dfd)
    if stat.S_ISREG(st.st_mode):
        fh: IO[bytes]
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        with os.fdopen(fd, "rb") as fh:
            fh_hash = hashlib.sha256()
            while block := fh.read(_CHUNK):
                fh_hash.update(block)
        h.update(b"f\0" + head + b"%d\0%s\n" % (st.st_size, fh_hash.hexdigest().encode()))
    elif stat.S_ISLNK(st.st_mode):
        h.update(b"l\0" + head + os.readlink(name, dir_fd=dfd).encode("utf-8", "surrogateescape") + b"\n")
    else:
        h.update(b"o\0" + head + b"%o\n" % stat.S_IFMT(st.st_mode))
    return None
