"""Safe extraction of pinned .debs into a root directory, merged /usr, no maintainer scripts.

:func:`materialize` extracts every package of one architecture of a lock into
``CACHE/roots/<key>`` (``key``: the packages' sha256s and this module's format version), once; a
later build reuses the root and its recorded entry list. The root is what a ``debian`` source
copies into the image and what ``closure``/``tree`` sources with ``sysroot: debian`` read.

Path discipline (the agent's unpacker's rules, applied while the root is created):

- member names are relative (``./usr/bin/x``); an absolute name, a ``..`` component or a NUL is
  refused;
- ``/bin``, ``/sbin``, ``/lib*`` members land under ``/usr`` (merged /usr); the top-level names
  become symlinks afterwards;
- nothing is created beneath a symlink or a file: every parent must be a directory this
  extraction created (the root is new, so no other writer exists);
- a symlink whose relative target climbs above the root is refused; absolute targets are kept
  (they resolve inside the image);
- hard links must name a regular file extracted before; they become copies of it in the image;
- device nodes, FIFOs and other special members are refused; setuid/setgid bits are dropped
  (images run with no new privileges);
- the same file shipped by two packages is refused, naming both; a directory keeps the attributes
  of the first package (by name) that ships it, as dpkg keeps an existing directory.

No maintainer script runs. Their effects that matter in an image are applied declaratively by
:mod:`builder.debian.effects` (docs/debian.md lists them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.debian.archive import DEFAULT_LIMITS, DebianLimits
from builder.debian.deb import DebFormatError, members, open_deb, read_control
from manifests.atomic import atomic_write
from manifests.canonical import canonical_json
from manifests.debianlock import LockedPackage
from manifests.errors import VerificationError
from manifests.vocabulary import Reason

__all__ = ["EXTRACT_FORMAT", "RootEntry", "PackageInfo", "DebianRoot", "materialize", "MERGED_USR"]

EXTRACT_FORMAT = 2
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_CHUNK = 1 << 20
_KINDS = ("file", "dir", "symlink")
_KILN = "kiln"  # the owner of what the declarative effects add (not a package)


@dataclass(frozen=True, slots=True, kw_only=True)
class RootEntry:
    """One path of the root: ``package`` shipped it (``None``: a declarative effect of kiln's)."""

    path: str
    kind: str  # file | dir | symlink
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    target: str | None = None
    package: str | None = None

    def to_list(self) -> list[object]:
        return [self.path, self.kind, self.mode, self.uid, self.gid, self.size, self.target, self.package]


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageInfo:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    maintainer: str
    licenses: tuple[str, ...]  # Debian short license names from a machine-readable copyright file
    control: str  # the package's control stanza (written to status.d)


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianRoot:
    architecture: str
    path: Path
    entries: tuple[RootEntry, ...]
    packages: tuple[PackageInfo, ...]
    effects: tuple[str, ...]

    def owner_of(self) -> dict[str, str | None]:
        return {e.path: e.package for e in self.entries}


def _key(packages: Sequence[LockedPackage], architecture: str, extra: object) -> str:
    material = [EXTRACT_FORMAT, architecture, sorted((p.name, p.sha256) for p in packages), extra]
    return hashlib.sha256(canonical_json(material)).hexdigest()


def _refuse(what: str, message: str) -> VerificationError:
    return VerificationError(
        f"{what}: {message}",
        reason=Reason.UNPACK,
        hint="the package breaks the path rules kiln extracts by; exclude it or report it",
    )


def image_path(name: str, *, what: str) -> str | None:
    """The image path of a data.tar member (merged /usr), ``None`` for the root itself."""
    if "\x00" in name:
        raise _refuse(what, "member name contains a NUL")
    if name.startswith("/"):
        raise _refuse(what, f"absolute member name {name[:200]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(what, f"member name {name[:200]!r} contains '..'")
    if not parts:
        return None
    if parts[0] in MERGED_USR:
        parts.insert(0, "usr")
    return "/" + "/".join(parts)


def symlink_escapes(path: str, target: str) -> bool:
    """Whether the relative ``target`` of a link at ``path`` climbs above the root (lexically)."""
    if target.startswith("/"):
        return False
    depth = len([p for p in posixpath.dirname(path).split("/") if p])
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


class _Extractor:
    def __init__(self, root: Path, limits: DebianLimits) -> None:
        self.root = root
        self.limits = limits
        self.kinds: dict[str, tuple[str, str]] = {"/": ("dir", "")}  # path -> (kind, package)
        self.entries: dict[str, RootEntry] = {}

    def host(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def parents(self, path: str, package: str, what: str) -> None:
        chain: list[str] = []
        parent = posixpath.dirname(path)
        while parent not in self.kinds:
            chain.append(parent)
            parent = posixpath.dirname(parent)
        kind, owner = self.kinds[parent]
        if kind != "dir":
            raise _refuse(what, f"{path} would lie beneath the {kind} {parent} (from {owner})")
        for p in reversed(chain):
            os.mkdir(self.host(p), 0o755)
            self.kinds[p] = ("dir", package)
            shipped_by = None if package == _KILN else package
            self.entries[p] = RootEntry(path=p, kind="dir", mode=0o755, package=shipped_by)

    def claim(self, path: str, kind: str, package: str, what: str) -> bool:
        """False when ``path`` is a directory already there (kept as it is)."""
        self.parents(path, package, what)
        known = self.kinds.get(path)
        if known is None:
            self.kinds[path] = (kind, package)
            return True
        if known[0] == "dir" and kind == "dir":
            return False
        raise _refuse(what, f"{path} is shipped by {known[1]} and {package}")

    def package(self, pkg: LockedPackage, deb_path: Path) -> PackageInfo:
        what = f".deb {pkg.name} {pkg.version}"
        size = deb_path.stat().st_size
        with open(deb_path, "rb") as fh:
            h = hashlib.sha256()
            while block := fh.read(_CHUNK):
                h.update(block)
            if h.hexdigest() != pkg.sha256:
                raise VerificationError(
                    f"{what}: the cached file {deb_path} does not hash to the lock's sha256",
                    reason=Reason.DIGEST,
                    hint="delete it from the download cache; it will be downloaded again",
                )
            deb = open_deb(fh, size, what=what)
            control = read_control(fh, deb, what=what)
            copyright_path = f"/usr/share/doc/{pkg.name}/copyright"
            copyright_text = ""
            for header, content in members(
                fh,
                deb.data,
                what=what,
                limit=self.limits.max_deb_unpacked,
                max_entries=self.limits.max_entries,
            ):
                member = f"{what}: {header.name[:200]}"
                path = image_path(header.name, what=member)
                if path is None:
                    continue
                if header.kind == "dir":
                    if self.claim(path, "dir", pkg.name, member):
                        os.mkdir(self.host(path), 0o755)
                        self.entries[path] = RootEntry(
                            path=path,
                            kind="dir",
                            mode=header.mode & 0o1777,
                            uid=header.uid,
                            gid=header.gid,
                            package=pkg.name,
                        )
                elif header.kind == "file":
                    self.claim(path, "file", pkg.name, member)
                    mode = header.mode & 0o777
                    fd = os.open(self.host(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    written = 0
                    keep = path == copyright_path
                    kept: list[bytes] = []
                    with os.fdopen(fd, "wb") as out:
                        while chunk := content.read(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                            if keep and written <= 1 << 20:
                                kept.append(chunk)
                        os.fchmod(out.fileno(), mode)
                    if keep:
                        copyright_text = b"".join(kept).decode("utf-8", "replace")
                    self.entries[path] = RootEntry(
                        path=path,
                        kind="file",
                        mode=mode,
                        uid=header.uid,
                        gid=header.gid,
                        size=written,
                        package=pkg.name,
                    )
                elif header.kind == "symlink":
                    if not header.link or "\x00" in header.link:
                        raise _refuse(member, "symlink without a target")
                    if symlink_escapes(path, header.link):
                        raise _refuse(member, f"symlink {path} -> {header.link} climbs above the root")
                    self.claim(path, "symlink", pkg.name, member)
                    os.symlink(header.link, self.host(path))
                    self.entries[path] = RootEntry(
                        path=path,
                        kind="symlink",
                        mode=0o777,
                        uid=header.uid,
                        gid=header.gid,
                        target=header.link,
                        package=pkg.name,
                    )
                elif header.kind == "hardlink":
                    target = image_path(header.link, what=member)
                    if target is None or self.kinds.get(target, ("",))[0] != "file":
                        raise _refuse(
                            member, f"hard link to {header.link[:200]!r}, which is not a file before it"
                        )
                    self.claim(path, "file", pkg.name, member)
                    os.link(self.host(target), self.host(path), follow_symlinks=False)
                    src = self.entries[target]
                    self.entries[path] = RootEntry(
                        path=path,
                        kind="file",
                        mode=header.mode & 0o777,
                        uid=header.uid,
                        gid=header.gid,
                        size=src.size,
                        package=pkg.name,
                    )
                else:
                    raise _refuse(member, f"{header.kind} members are not allowed in an image")
        return _info(pkg, control, copyright_text)

    def add_generated(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.claim(path, "file", _KILN, f"kiln effect {path}")
        fd = os.open(self.host(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.entries[path] = RootEntry(path=path, kind="file", mode=mode, size=len(data), package=None)

    def add_symlink(self, path: str, target: str) -> None:
        self.claim(path, "symlink", _KILN, f"kiln effect {path}")
        os.symlink(target, self.host(path))
        self.entries[path] = RootEntry(path=path, kind="symlink", mode=0o777, target=target, package=None)

    def read(self, path: str, limit: int = 64 << 20) -> bytes | None:
        if self.kinds.get(path, ("",))[0] != "file":
            return None
        with open(self.host(path), "rb") as fh:
            return fh.read(limit)


def _info(pkg: LockedPackage, control: str, copyright_text: str) -> PackageInfo:
    from builder.debian.licenses import debian_licenses

    return PackageInfo(
        name=pkg.name,
        version=pkg.version,
        architecture=pkg.architecture,
        source=pkg.source,
        source_version=pkg.source_version,
        maintainer=pkg.maintainer,
        licenses=debian_licenses(copyright_text),
        control=control.strip("\n") + "\n",
    )


def materialize(
    packages: Sequence[LockedPackage],
    *,
    architecture: str,
    debs: Mapping[str, Path],
    cache: Path,
    limits: DebianLimits = DEFAULT_LIMITS,
    progress: Callable[[str], None] = lambda _m: None,
) -> DebianRoot:
    """The extracted root of ``packages`` (``debs``: sha256 -> cached .deb), made once per set."""
    from builder.debian.effects import apply_effects

    roots = cache / "roots"
    key = _key(packages, architecture, None)
    final = roots / key
    record = roots / f"{key}.json"
    loaded = _load(record, final, architecture)
    if loaded is not None:
        return loaded
    roots.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=roots, prefix=f".{key[:16]}-"))
    os.chmod(tmp, 0o755)  # noqa: S103 - a root directory, readable like any image root
    try:
        ex = _Extractor(tmp, limits)
        infos = []
        progress(f"extracting {len(packages)} packages ({architecture})")
        for pkg in sorted(packages, key=lambda p: p.name):
            infos.append(ex.package(pkg, debs[pkg.sha256]))
        effects = apply_effects(ex, infos, architecture)
        entries = tuple(ex.entries[p] for p in sorted(ex.entries))
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another build extracted the same packages meanwhile (a root only ever appears
            # whole, by this rename, and its content is decided by the packages): use that one,
            # never delete a root a concurrent build may be reading.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    root = DebianRoot(
        architecture=architecture, path=final, entries=entries, packages=tuple(infos), effects=effects
    )
    atomic_write(record, canonical_json(_to_json(root)), durable=False)
    return root


def _to_json(root: DebianRoot) -> dict[str, object]:
    return {
        "format": EXTRACT_FORMAT,
        "architecture": root.architecture,
        "entries": [e.to_list() for e in root.entries],
        "packages": [
            [
                p.name,
                p.version,
                p.architecture,
                p.source,
                p.source_version,
                p.maintainer,
                list(p.licenses),
                p.control,
            ]
            for p in root.packages
        ],
        "effects": list(root.effects),
    }


def _load(record: Path, final: Path, architecture: str) -> DebianRoot | None:
    """A root extracted before (``None`` when missing or unreadable: extract again)."""
    try:
        raw = json.loads(record.read_bytes())
        if raw["format"] != EXTRACT_FORMAT or not final.is_dir():
            return None
        entries = tuple(
            RootEntry(path=p, kind=k, mode=m, uid=u, gid=g, size=s, target=t, package=pkg)
            for p, k, m, u, g, s, t, pkg in raw["entries"]
        )
        packages = tuple(
            PackageInfo(
                name=n,
                version=v,
                architecture=a,
                source=src,
                source_version=sv,
                maintainer=mt,
                licenses=tuple(lic),
                control=c,
            )
            for n, v, a, src, sv, mt, lic, c in raw["packages"]
        )
        return DebianRoot(
            architecture=architecture,
            path=final,
            entries=entries,
            packages=packages,
            effects=tuple(raw["effects"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ += ["image_path", "symlink_escapes", "DebFormatError"]
