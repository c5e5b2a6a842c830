"""Inspect a built image: an OCI layout directory, an oci-archive or a docker-archive tarball.

Everything read is treated as untrusted: documents are size-capped and hash-checked; layers are
streamed (never extracted) through a small tar header parser with caps on entry count, name length,
PAX/GNU long-name records and total uncompressed bytes, and both the compressed digest and the
uncompressed ``diff_id`` are verified on the way.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import zstandard
from isal import igzip, isal_zlib

from builder.archive import ArchiveReader
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.layerstream import Decompressor, HashingReader, Readable, open_layer
from manifests.layout import REF_NAME, OCILayout, select_manifest
from manifests.mediatypes import MediaType
from manifests.oci import MAX_DOCUMENT_BYTES, OCIManifest, parse_json_object
from manifests.tarformat import EXTENDED_FLAGS, TarCaps, TarWording, read_tar
from manifests.vocabulary import Reason

__all__ = ["TarMember", "Caps", "iter_tar", "inspect_image", "format_tree"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Caps:
    max_entries: int = 1_000_000
    max_name: int = 4096
    max_extended: int = 1 << 20  # one PAX or GNU long-name record
    max_bytes: int = 64 << 30  # uncompressed bytes per layer


@dataclass(frozen=True, slots=True, kw_only=True)
class TarMember:
    path: str  # absolute, normalized
    type: str  # file | dir | symlink | hardlink | other
    mode: int
    uid: int
    gid: int
    size: int
    target: str | None = None


_TAR_WORDING = TarWording(
    checksum="layer tar: header checksum mismatch",
    truncated_header="layer tar: truncated header",
    truncated_extended="layer tar is truncated",
    truncated_skip="layer tar: truncated file content",
    truncated_content="layer tar: truncated file content",
    bad_number="layer tar: bad {what} field {field!r}",
    negative="layer tar: negative {what}",
    extended="layer tar: extended header of {size} bytes exceeds the cap",
    pax_malformed="layer tar: malformed PAX record",
    pax_length="layer tar: PAX record length out of range",
    pax_equals="layer tar: PAX record without '='",
    pax_number="layer tar: bad PAX {key} {value!r}",
    name="layer tar: entry name too long or invalid ({length} chars)",
)
_TYPES = ("file", "dir", "symlink", "hardlink")


def _norm(name: str, caps: Caps) -> str:
    if len(name) > caps.max_name or "\x00" in name:
        raise DocumentError(f"layer tar: entry name too long or invalid ({len(name)} chars)")
    while name.startswith("./"):
        name = name[2:]
    return posixpath.normpath("/" + name.lstrip("/")) if name not in ("", ".") else "/"


def iter_tar(stream: HashingReader, caps: Caps) -> Iterator[TarMember]:
    """Headers of an uncompressed tar stream (:mod:`manifests.tarformat`); contents are skipped
    (and hashed by ``stream``)."""
    count = 0

    def counted(flag: bytes) -> None:
        nonlocal count
        if flag in EXTENDED_FLAGS:
            return
        count += 1
        if count > caps.max_entries:
            raise DocumentError(f"layer tar: more than {caps.max_entries} entries")

    tar_caps = TarCaps(max_name=caps.max_name, max_extended=caps.max_extended)
    for header, _content in read_tar(stream, wording=_TAR_WORDING, caps=tar_caps, on_header=counted):
        kind = header.kind if header.kind in _TYPES else "other"
        link = header.link
        yield TarMember(
            path=_norm(header.name, caps),
            type=kind,
            mode=header.mode,
            uid=header.uid,
            gid=header.gid,
            size=header.size,
            target=_norm(link, caps) if kind == "hardlink" else link if kind == "symlink" else None,
        )


class _Source:
    """Blobs by digest from a layout directory or a tarball."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self.path = path
        self.layout: OCILayout | None = None
        self.archive: ArchiveReader | None = None
        self.names: dict[str, str] = {}  # digest hex -> member name, for docker-only archives
        if path.is_dir():
            self.layout = OCILayout.open(path)
        else:
            self.archive = stack.enter_context(ArchiveReader(path))

    def has(self, name: str) -> bool:
        if self.layout is not None:
            return (self.layout.root / name).is_file()
        return self.archive is not None and self.archive.has(name)

    def read(self, name: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        if self.archive is not None:
            return self.archive.read(name, limit=limit)
        p = Path(self.path) / name
        if not _inside(name) or not p.is_file():
            raise DocumentError(f"{self.path}: {name} is missing")
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise DocumentError(f"{self.path}: {name} exceeds {limit} bytes")
        return data

    def blob(self, digest: Digest) -> bytes:
        data = self.read(f"blobs/sha256/{digest.hex}")
        digest.check(data, what=f"{self.path}: blob {digest}")
        return data

    def open_blob(self, digest: Digest) -> IO[bytes]:
        name = self.names.get(digest.hex, f"blobs/sha256/{digest.hex}")
        return self.open(name)

    def open(self, name: str) -> IO[bytes]:
        if self.archive is not None:
            return self.archive.open(name)
        if not _inside(name):
            raise DocumentError(f"{self.path}: member name {name!r} escapes the image")
        return open(Path(self.path) / name, "rb")


# What a corrupt compressed stream raises, by library (ISA-L's error is not an OSError).
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    cast(type[BaseException], isal_zlib.IsalError),
    zstandard.ZstdError,
)


def _gunzip(raw: HashingReader) -> Readable:
    return cast(Readable, igzip.IGzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]


def _unzstd(raw: HashingReader) -> Readable:
    return cast(
        Readable, zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, raw), read_across_frames=True)
    )


_DECOMPRESSORS: dict[str, Decompressor] = {
    MediaType.OCI_LAYER_GZIP: _gunzip,
    MediaType.DOCKER_LAYER_GZIP: _gunzip,
    MediaType.OCI_LAYER_ZSTD: _unzstd,
}


def _too_large(limit: int) -> VerificationError:
    return VerificationError(f"layer exceeds {limit} bytes", reason=Reason.SIZE)


def _scan_layer(
    src: _Source, *, digest: Digest, size: int, media_type: str, diff_id: Digest | None, caps: Caps
) -> list[TarMember]:
    with src.open_blob(digest) as fh:
        raw = HashingReader(fh, limit=size, over_limit=_too_large)
        plain = HashingReader(
            open_layer(raw, media_type, _DECOMPRESSORS), limit=caps.max_bytes, over_limit=_too_large
        )
        try:
            members = list(iter_tar(plain, caps))
            plain.drain()
        except _DECOMPRESS_ERRORS as exc:
            raise DocumentError(f"layer {digest}: cannot decompress: {exc}") from exc
        raw.drain()
    if raw.hexdigest != digest.hex or raw.n != size:
        raise VerificationError(f"layer {digest}: digest or size mismatch", reason=Reason.DIGEST)
    if diff_id is not None and plain.hexdigest != diff_id.hex:
        raise VerificationError(
            f"layer {digest}: uncompressed content does not match diff_id {diff_id}", reason=Reason.DIGEST
        )
    return members


def _apply(fs: dict[str, TarMember], members: list[TarMember]) -> None:
    """Apply one layer's entries on top of ``fs``, honouring OCI whiteouts."""
    for m in members:
        parent, base = posixpath.split(m.path)
        if base == ".wh..wh..opq":
            prefix = parent.rstrip("/") + "/"
            for p in [p for p in fs if p.startswith(prefix)]:
                del fs[p]
            continue
        if base.startswith(".wh."):
            gone = posixpath.join(parent, base[4:])
            for p in [p for p in fs if p == gone or p.startswith(gone + "/")]:
                del fs[p]
            continue
        if m.path == "/":
            continue
        fs[m.path] = m


_LayerSpec = tuple[Digest, int, str, dict[str, str]]  # digest, size, media type, annotations


@dataclass(frozen=True, slots=True, kw_only=True)
class _Found:
    """What an archive says the image is, before any layer is read."""

    digest: str | None
    tag: str | None
    annotations: dict[str, str]
    config_raw: bytes
    config_digest: Digest
    layers: list[_LayerSpec]


def inspect_image(
    path: Path, *, ref: str | None = None, files: bool = True, caps: Caps | None = None
) -> dict[str, Any]:
    """Describe the image at ``path`` as a JSON-ready dict (digest, config, layers, files)."""
    caps = caps or Caps()
    path = Path(path)
    from builder.vm.inspect import inspect_vm, is_vm_dir

    if is_vm_dir(path):
        return inspect_vm(path)
    with ExitStack() as stack:
        src = _Source(path, stack)
        if src.has("index.json"):
            found = _find_oci(src, path, ref)
        elif src.has("manifest.json"):
            found = _find_docker(src)
        else:
            raise DocumentError(f"{path}: neither an OCI layout nor a docker archive")
        config = parse_json_object(found.config_raw, what="image config")
        diff_ids = _diff_ids(config)
        if len(diff_ids) != len(found.layers):
            raise DocumentError(
                f"{path}: config lists {len(diff_ids)} diff_ids for {len(found.layers)} layers"
            )
        fs: dict[str, TarMember] = {}
        layers_out: list[dict[str, Any]] = []
        for (ldigest, lsize, mtype, ann), diff_id in zip(found.layers, diff_ids, strict=True):
            members = _scan_layer(
                src, digest=ldigest, size=lsize, media_type=mtype, diff_id=diff_id, caps=caps
            )
            _apply(fs, members)
            layers_out.append(
                {
                    "digest": str(ldigest),
                    "diff_id": str(diff_id),
                    "size": lsize,
                    "media_type": mtype,
                    "files": sum(1 for m in members if m.type in ("file", "hardlink")),
                    "entries": len(members),
                    "annotations": ann,
                }
            )
    info: dict[str, Any] = {
        "path": str(path),
        "digest": found.digest,
        "tag": found.tag,
        "config_digest": str(found.config_digest),
        "annotations": found.annotations,
        "platform": f"{config.get('os')}/{config.get('architecture')}",
        "created": config.get("created"),
        "config": _run_config(config),
        "layers": layers_out,
    }
    if files:
        info["files"] = [_file_dict(fs[p]) for p in sorted(fs, key=lambda p: p.split("/"))]
    return info


def _find_oci(src: _Source, path: Path, ref: str | None) -> _Found:
    """The image an OCI layout (directory or oci-archive) names by ``ref`` (or its only image)."""
    if src.layout is not None:
        desc = OCILayout.open(path).resolve(ref)
    else:
        from manifests.oci import OCIIndex

        index = OCIIndex.from_bytes(src.read("index.json"))
        desc = select_manifest(index.manifests, ref, where=str(path))
    if MediaType(desc.media_type).is_index if desc.media_type in set(MediaType) else False:
        raise DocumentError(f"{path}: nested image indexes are not supported by inspect")
    man = OCIManifest.from_bytes(src.blob(desc.digest))
    return _Found(
        digest=str(desc.digest),
        tag=desc.annotations.get(REF_NAME),
        annotations=dict(man.annotations),
        config_raw=src.blob(man.config.digest),
        config_digest=man.config.digest,
        layers=[(d.digest, d.size, d.media_type, dict(d.annotations)) for d in man.layers],
    )


def _find_docker(src: _Source) -> _Found:
    """The image of a docker-archive: its layers are named by file, so they are hashed here."""
    doc = _docker_manifest(src.read("manifest.json"))
    config_raw = src.read(doc["Config"])
    layers: list[_LayerSpec] = []
    for name in doc["Layers"]:
        h = hashlib.sha256()
        n = 0
        with src.open(name) as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
                n += len(block)
        src.names[h.hexdigest()] = name
        layers.append((Digest(h.hexdigest()), n, str(MediaType.OCI_LAYER_TAR), {}))
    return _Found(
        digest=None,
        tag=(doc.get("RepoTags") or [None])[0],
        annotations={},
        config_raw=config_raw,
        config_digest=Digest.of(config_raw),
        layers=layers,
    )


def _run_config(config: dict[str, Any]) -> dict[str, Any]:
    """What the image runs, as its config says (user, command, environment, ports, volumes)."""
    value = config.get("config")
    cfg: dict[str, Any] = value if isinstance(value, dict) else {}
    return {
        "user": cfg.get("User"),
        "env": cfg.get("Env") or [],
        "entrypoint": cfg.get("Entrypoint") or [],
        "cmd": cfg.get("Cmd") or [],
        "workdir": cfg.get("WorkingDir"),
        "ports": sorted(cfg.get("ExposedPorts") or {}),
        "volumes": sorted(cfg.get("Volumes") or {}),
        "labels": cfg.get("Labels") or {},
    }


def _inside(name: str) -> bool:
    norm = posixpath.normpath(name)
    return not (name.startswith("/") or norm == ".." or norm.startswith("../"))


def _docker_manifest(data: bytes) -> dict[str, Any]:
    import json

    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError("manifest.json exceeds its size cap")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"manifest.json: not valid JSON: {exc}") from exc
    if not isinstance(doc, list) or len(doc) != 1 or not isinstance(doc[0], dict):
        raise DocumentError("manifest.json: expected a list with exactly one image")
    entry = doc[0]
    if not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
        raise DocumentError("manifest.json: missing Config or Layers")
    if not all(isinstance(x, str) for x in entry["Layers"]):
        raise DocumentError("manifest.json: Layers must be strings")
    return entry


def _diff_ids(config: dict[str, Any]) -> list[Digest]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise DocumentError("image config: rootfs.diff_ids must be a list of digests")
    return [Digest.parse(x) for x in ids]


def _file_dict(m: TarMember) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": m.path,
        "type": m.type,
        "mode": f"{m.mode:04o}",
        "owner": f"{m.uid}:{m.gid}",
        "size": m.size,
    }
    if m.target is not None:
        d["target"] = m.target
    return d


def _mode_string(kind: str, mode: int) -> str:
    letter = {"file": "-", "dir": "d", "symlink": "l", "hardlink": "h"}.get(kind, "?")
    ftype = {"-": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}.get(letter, stat.S_IFREG)
    return letter + stat.filemode(ftype | mode)[1:]


def format_tree(files: list[dict[str, Any]]) -> str:
    """A human tree listing of :func:`inspect_image`'s ``files``: mode, owner, size, name."""
    lines: list[str] = []
    children: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        children.setdefault(posixpath.dirname(f["path"]), []).append(f)

    def walk(directory: str, prefix: str) -> None:
        kids = children.get(directory, [])
        for i, f in enumerate(kids):
            last = i == len(kids) - 1
            name = posixpath.basename(f["path"])
            if f.get("target") is not None:
                name += (" -> " if f["type"] == "symlink" else " => ") + f["target"]
            size = str(f["size"]) if f["type"] == "file" else ""
            mode = _mode_string(f["type"], int(f["mode"], 8))
            lines.append(f"{mode} {f['owner']:>11} {size:>10}  {prefix}{'└── ' if last else '├── '}{name}")
            if f["type"] == "dir":
                walk(f["path"], prefix + ("    " if last else "│   "))

    walk("/", "")
    return "\n".join(lines)
