"""Instance roots composed of layer snapshots (:mod:`agent.snapshots`): a read-only overlayfs.

:func:`compose_image` mounts an image's root at ``ROOTS/<manifest-hex>``: a **read-only overlayfs
with lower directories only** (the topmost layer first), plus, on top, a tiny shared layer with
the directories the runtime mounts over (``/proc``, ``/tmp``, the writable paths) when the image
lacks them; overlayfs needs two lower directories without an upper one, so a one-layer image gets
an empty one below it. Writable paths stay tmpfs mounts made by the runtime, as before. The mount
ignores everything in a layer but whiteouts and opaque directories (no redirects, no metacopy, no
index), and both are part of each snapshot's fingerprint.

The record ``ROOTS/<manifest-hex>.json`` names the layers and holds the root's fingerprint, a
digest over every snapshot's fingerprint; :func:`composed_fingerprint` recomputes it per snapshot,
once per snapshot whatever the number of roots and instances that share it (drift detection per
snapshot). Two instances of one image share one mount; two images share every layer they have in
common; a release that changes one layer unpacks one layer.

Fallback: where overlayfs cannot be mounted (no overlay module, no CAP_SYS_ADMIN, a state path
with ``,``, ``:`` or ``\\``, more layers than a mount's option page holds) the root is a full copy
unpacked from the blobs as before (:func:`agent.unpack.unpack_image`, drift by
:func:`agent.unpack.root_fingerprint`); its record then has no ``layers``.

Mounts never leak: :func:`remove_composed` and :func:`park` unmount (detached, so an instance
still running from the root keeps its own view), and :func:`unmount_strays` unmounts what is
mounted under ``ROOTS`` and not wanted any more, after a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import ImagePolicy
from agent.snapshots import TOP_PREFIX, SnapshotStore
from agent.store import ContentStore, PulledImage
from agent.unpack import (
    _NOFOLLOW_DIR,
    UnpackedRoot,
    UnpackLimits,
    _Budget,
    layers_of,
    remove_interrupted,
    remove_root,
    root_fingerprint,
    unpack_image,
)
from manifests.atomic import atomic_write, fsync_dir
from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import ParseError, UnavailableError

__all__ = [
    "compose_image",
    "composed_fingerprint",
    "composed_layers",
    "mounts_under",
    "park",
    "remove_composed",
    "unmount_strays",
]

_MS_RDONLY = 1
_MS_NODEV = 4
_MNT_DETACH = 2
_MAX_MOUNT_DATA = 4000  # a mount's option string must fit in one page
_OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off,index=off,xino=off"
_RECORD_CAPS = JsonCaps(max_bytes=1 << 20, max_depth=6)


class OverlayUnavailable(Exception):
    """Internal: overlayfs cannot be mounted here; the caller falls back to a full unpack."""


# -- mounts -----------------------------------------------------------------------------------------


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _mount_overlay(lowers: Sequence[Path], target: Path) -> None:
    data = ("lowerdir=" + ":".join(str(p) for p in lowers) + "," + _OVERLAY_OPTIONS).encode()
    if len(data) > _MAX_MOUNT_DATA:
        raise OverlayUnavailable(f"{len(lowers)} layers do not fit in one overlay mount")
    libc = _libc()
    rc = libc.mount(b"overlay", os.fsencode(target), b"overlay", _MS_RDONLY | _MS_NODEV, data)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.ENODEV, errno.ENOSYS, errno.EACCES):
            raise OverlayUnavailable(os.strerror(err))
        raise UnavailableError(f"{target}: cannot mount the overlay root: {os.strerror(err)}")


def _umount(target: Path) -> None:
    """Detach every mount stacked on ``target`` (none: nothing happens)."""
    libc = _libc()
    for _ in range(64):
        if not os.path.ismount(target):
            return
        if libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                return
            raise UnavailableError(f"{target}: cannot unmount: {os.strerror(err)}")


def mounts_under(path: Path) -> list[Path]:
    """Every mount point at or below ``path`` in this mount namespace (from /proc/self/mountinfo)."""
    base = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.split(b" ")
            if len(fields) < 5:
                continue
            point = fields[4].decode("utf-8", "surrogateescape")
            point = point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            point = point.replace("\\134", "\\")
            if point == base or point.startswith(base.rstrip("/") + "/"):
                out.append(Path(point))
    return out


# -- composed roots -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Record:
    fingerprint: str
    layers: tuple[str, ...] | None  # snapshot names, bottom first (None: a full copy)
    top: str | None


def _read_record(path: Path) -> _Record | None:
    try:
        with open(path, "rb") as fh:
            doc = read_json_object(fh.read(1 << 20), what=f"{path}", caps=_RECORD_CAPS)
    except (OSError, ParseError):
        return None
    fp, layers, top = doc.get("fingerprint"), doc.get("layers"), doc.get("top")
    if not isinstance(fp, str):
        return None
    if layers is not None and (
        not isinstance(layers, list) or not all(isinstance(x, str) and len(x) == 64 for x in layers)
    ):
        return None
    if top is not None and not (isinstance(top, str) and top.startswith(TOP_PREFIX)):
        return None
    return _Record(fingerprint=fp, layers=None if layers is None else tuple(layers), top=top)


def composed_layers(roots_dir: Path, manifest_digest: Digest) -> tuple[str, ...]:
    """The snapshot names a composed root is made of (top layer included; () for a full copy)."""
    rec = _read_record(Path(roots_dir) / f"{manifest_digest.hex}.json")
    if rec is None or rec.layers is None:
        return ()
    return (*rec.layers, *((rec.top,) if rec.top else ()))


def _combine(layers: Sequence[tuple[str, str]], top: tuple[str, str] | None) -> str:
    doc = {"layers": [list(x) for x in layers], "top": list(top) if top else None}
    return f"sha256:{hashlib.sha256(canonical_json(doc)).hexdigest()}"


def composed_fingerprint(
    roots_dir: Path,
    manifest_digest: Digest,
    snapshots: SnapshotStore,
    cache: dict[str, str] | None = None,
) -> str:
    """The root's fingerprint read back now: each snapshot walked once per ``cache`` (instances
    and roots that share a snapshot share its walk); a full copy is walked whole. Raises OSError
    when the root is gone."""
    roots_dir = Path(roots_dir)
    rec = _read_record(roots_dir / f"{manifest_digest.hex}.json")
    if rec is None or rec.layers is None:
        return root_fingerprint(roots_dir / manifest_digest.hex)
    layers = [(f"sha256:{n}", snapshots.fingerprint_of(n, cache)) for n in rec.layers]
    top = (rec.top, snapshots.fingerprint_of(rec.top, cache)) if rec.top else None
    return _combine(layers, top)


def _missing_mountpoints(root: Path, mountpoints: Sequence[str]) -> list[tuple[str, int, int, int]]:
    """The directories a mountpoint layer must hold so that each of ``mountpoints`` exists in the
    composed ``root``: the missing ones (0755, root) and their existing parents (their own mode and
    owner, since the topmost layer's directory is what a merged directory shows). A mountpoint
    under a non-directory is skipped (as the full unpack does)."""
    out: dict[str, tuple[str, int, int, int]] = {}
    for mp in mountpoints:
        parts = [p for p in mp.split("/") if p not in ("", ".")]
        fd = os.open(root, _NOFOLLOW_DIR)
        chain: list[tuple[str, int, int, int]] = []
        missing = False
        try:
            for i, part in enumerate(parts):
                rel = "/".join(parts[: i + 1])
                if missing:
                    chain.append((rel, 0o755, 0, 0))
                    continue
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    missing = True
                    chain.append((rel, 0o755, 0, 0))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    chain = []
                    break
                chain.append((rel, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
                nxt = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
        finally:
            os.close(fd)
        if missing:
            for entry in chain:
                out.setdefault(entry[0], entry)
    return [out[k] for k in sorted(out, key=lambda p: (p.count("/"), p))]


def compose_image(
    store: ContentStore,
    image: PulledImage,
    roots_dir: Path,
    snapshots: SnapshotStore,
    *,
    limits: UnpackLimits | None = None,
) -> UnpackedRoot:
    """``image``'s read-only root at ``ROOTS/<manifest-hex>``, composed of its layers' snapshots
    (only the missing ones are unpacked); an existing composed root is reused, remounted after a
    reboot. Where overlayfs is unavailable: a full copy (see the module docstring)."""
    roots_dir = Path(roots_dir)
    roots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(roots_dir, 0o700)
    if snapshots.overlay is False:
        return unpack_image(store, image, roots_dir, limits=limits)
    hexd = image.manifest_digest.hex
    final = roots_dir / hexd
    meta = roots_dir / f"{hexd}.json"
    rec = _read_record(meta)
    if rec is not None and rec.layers is not None:
        names = [*reversed(rec.layers)]
        present = all(snapshots.get(Digest(n)) is not None for n in names)
        if present and (rec.top is None or snapshots.path(rec.top).is_dir()):
            if os.path.ismount(final):
                return UnpackedRoot(
                    path=final, manifest_digest=image.manifest_digest, fingerprint=rec.fingerprint
                )
            lowers = [snapshots.path(n) for n in ([rec.top] if rec.top else []) + names]
            if len(lowers) < 2:
                lowers.append(snapshots.empty())
            final.mkdir(mode=0o755, exist_ok=True)
            try:
                _mount_overlay(lowers, final)
            except OverlayUnavailable:
                snapshots.overlay = False
                remove_composed(roots_dir, image.manifest_digest)
                return unpack_image(store, image, roots_dir, limits=limits)
            return UnpackedRoot(
                path=final, manifest_digest=image.manifest_digest, fingerprint=rec.fingerprint
            )
    if rec is not None and rec.layers is None and final.is_dir() and not os.path.ismount(final):
        return unpack_image(store, image, roots_dir, limits=limits)  # a full copy made earlier
    remove_composed(roots_dir, image.manifest_digest)
    try:
        return _compose(store, image, roots_dir, snapshots, limits or UnpackLimits())
    except OverlayUnavailable:
        snapshots.overlay = False
        remove_composed(roots_dir, image.manifest_digest)
        return unpack_image(store, image, roots_dir, limits=limits)


def _compose(
    store: ContentStore, image: PulledImage, roots_dir: Path, snapshots: SnapshotStore, limits: UnpackLimits
) -> UnpackedRoot:
    hexd = image.manifest_digest.hex
    final = roots_dir / hexd
    policy = ImagePolicy.from_config(image.config)
    budget = _Budget(limits=limits)
    snaps = [
        snapshots.ensure(layer, allow_setuid=policy.allow_setuid, budget=budget)
        for layer in layers_of(store, image)
    ]
    lowers = [s.path for s in reversed(snaps)]
    final.mkdir(mode=0o755, exist_ok=True)
    _mount_overlay(lowers if len(lowers) > 1 else [*lowers, snapshots.empty()], final)
    top: str | None = None
    try:
        dirs = _missing_mountpoints(final, policy.mountpoints())
        if dirs:
            _umount(final)
            top = snapshots.mountpoint_layer(dirs)
            _mount_overlay([snapshots.path(top), *lowers], final)
        top_pair = (top, snapshots.fingerprint_of(top)) if top else None
        fingerprint = _combine([(str(s.diff_id), s.fingerprint) for s in snaps], top_pair)
        atomic_write(
            roots_dir / f"{hexd}.json",
            canonical_json(
                {
                    "manifest": str(image.manifest_digest),
                    "fingerprint": fingerprint,
                    "layers": [s.diff_id.hex for s in snaps],
                    "top": top,
                }
            ),
        )
        fsync_dir(roots_dir)
    except BaseException:
        _umount(final)
        raise
    return UnpackedRoot(path=final, manifest_digest=image.manifest_digest, fingerprint=fingerprint)


def park(roots_dir: Path, manifest_digest: Digest) -> None:
    """Unmount a composed root nothing runs from (its record stays: the next
    :func:`compose_image` mounts it again in a millisecond)."""
    _umount(Path(roots_dir) / manifest_digest.hex)


def remove_composed(roots_dir: Path, manifest_digest: Digest) -> None:
    """Unmount (lazily) and remove a root and its record, composed or a full copy."""
    _umount(Path(roots_dir) / manifest_digest.hex)
    remove_root(roots_dir, manifest_digest)


def unmount_strays(roots_dir: Path, keep: Iterable[Digest] = ()) -> tuple[Path, ...]:
    """After a crash: unmount what is mounted under ``ROOTS`` except the composed roots in
    ``keep`` that have their record, and remove interrupted unpacks; returns what was unmounted."""
    roots_dir = Path(roots_dir)
    if not roots_dir.is_dir():
        return ()
    wanted = {
        os.path.realpath(roots_dir / d.hex)
        for d in keep
        if _read_record(roots_dir / f"{d.hex}.json") is not None
    }
    gone = []
    for point in sorted(mounts_under(roots_dir), key=lambda p: len(str(p)), reverse=True):
        if str(point) in wanted or point == Path(os.path.realpath(roots_dir)):
            continue
        with contextlib.suppress(UnavailableError):
            _umount(point)
            gone.append(point)
    with contextlib.suppress(OSError):
        remove_interrupted(roots_dir)
    return tuple(gone)
