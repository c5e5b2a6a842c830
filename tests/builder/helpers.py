"""Small builders for image manifests and host trees used by the builder tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from manifests.image import Accounts, ContentItem, FileSpec, FilesSource, ImageManifest
from manifests.oci import Platform


def manifest(base: Path, *contents: ContentItem, **kw: Any) -> ImageManifest:
    kw.setdefault("accounts", Accounts(user="app", uid=1000, gid=1000))
    return ImageManifest(
        name=kw.pop("name", "hello"),
        version=kw.pop("version", "1.0.0"),
        platform=kw.pop("platform", Platform()),
        contents=tuple(contents),
        base_dir=base,
        source=str(base / "kiln.yaml"),
        **kw,
    )


def files(*pairs: tuple[str, str], **kw: Any) -> FilesSource:
    return FilesSource(files=tuple(FileSpec(src=s, dst=d, **kw) for s, d in pairs))


def write(base: Path, rel: str, data: bytes | str = b"x", mode: int = 0o644) -> Path:
    p = base / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(mode)
    return p
