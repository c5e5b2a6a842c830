"""Small builders for the agent tests: layer tarballs and OCI layouts holding test images."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from agent.netns import connect_in_netns
from agent.unpack import Layer
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest, Platform


@dataclass(frozen=True)
class M:
    """One tar member: ``kind`` is file, dir, symlink, hardlink, char, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    target: str = ""
    uid: int = 0
    gid: int = 0


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(members: Iterable[M], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode = m.mode if m.mode is not None else (0o755 if m.kind == "dir" else 0o644)
            info.uid, info.gid = m.uid, m.gid
            info.mtime = 0
            info.linkname = m.target
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, media_type: str) -> bytes:
    if media_type == MediaType.OCI_LAYER_GZIP:
        return gzip.compress(data, mtime=0)
    if media_type == MediaType.OCI_LAYER_ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer_file(
    directory: Path, tar: bytes, media_type: str = MediaType.OCI_LAYER_TAR, *, name: str | None = None
) -> Layer:
    """Write ``tar`` (compressed per ``media_type``) to a file and describe it as a :class:`Layer`."""
    blob = compress(tar, media_type)
    digest = Digest(hashlib.sha256(blob).hexdigest())
    path = directory / (name or f"layer-{digest.hex[:12]}")
    path.write_bytes(blob)
    return Layer(digest=digest, media_type=media_type, diff_id=Digest.of(tar), path=path)


def raw_layer(path: Path, media_type: str, diff_id: Digest | None = None) -> Layer:
    data = path.read_bytes()
    return Layer(digest=Digest.of(data), media_type=media_type, diff_id=diff_id, path=path)


def image_config(
    diff_ids: Sequence[Digest],
    *,
    labels: Mapping[str, str] | None = None,
    user: str | None = "1000:1000",
    entrypoint: Sequence[str] = ("/bin/app",),
    env: Sequence[str] = ("PATH=/usr/bin:/bin",),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"Env": list(env), "Entrypoint": list(entrypoint), "Labels": dict(labels or {})}
    if user is not None:
        cfg["User"] = user
    cfg.update(extra or {})
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
    }


@dataclass(frozen=True)
class BuiltImage:
    layout: OCILayout
    digest: Digest  # the manifest
    manifest: bytes
    config: dict[str, Any]


def write_image(
    root: Path,
    layers: Sequence[bytes],
    *,
    media_type: str = MediaType.OCI_LAYER_GZIP,
    config: dict[str, Any] | None = None,
    tag: str = "1.0.0",
    **config_kw: Any,
) -> BuiltImage:
    """An OCI layout at ``root`` with one image made of the given uncompressed layer tars."""
    layout = OCILayout.create(root)
    descs = []
    for tar in layers:
        blob = compress(tar, media_type)
        descs.append(Descriptor(media_type=media_type, digest=layout.write_blob(blob), size=len(blob)))
    cfg = config if config is not None else image_config([Digest.of(t) for t in layers], **config_kw)
    cfg_bytes = canonical_json(cfg)
    cfg_digest = layout.write_blob(cfg_bytes)
    man = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=cfg_digest, size=len(cfg_bytes)),
        layers=tuple(descs),
    )
    raw = man.to_bytes()
    digest = layout.write_blob(raw)
    layout.tag(Descriptor(media_type=MediaType.OCI_MANIFEST, digest=digest, size=len(raw)), tag)
    return BuiltImage(layout=layout, digest=digest, manifest=raw, config=cfg)


def write_index(layout: OCILayout, entries: Sequence[tuple[Digest, int, Platform]]) -> Digest:
    index = OCIIndex(
        manifests=tuple(
            Descriptor(media_type=MediaType.OCI_MANIFEST, digest=d, size=n, platform=p) for d, n, p in entries
        )
    )
    return layout.write_blob(index.to_bytes())


def http_in_netns(netns: str, port: int, path: str, *, attempts: int = 100) -> bytes:
    """GET ``path`` from 127.0.0.1:``port`` inside ``netns`` (HTTP/1.0), retrying a bounded number
    of times while nothing listens yet; the whole raw response."""
    last: OSError | None = None
    for _ in range(attempts):
        try:
            sock = connect_in_netns(netns, "127.0.0.1", port, timeout=2)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
            continue
        with sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    raise AssertionError(f"nothing answered on {port} in {netns}: {last}")
