"""One manifest, several platforms: ``platforms: [linux/amd64, linux/arm64]`` becomes one OCI
image index whose entries are the per-platform images, each built by
:func:`builder.build.build_image` from its own architecture's inputs (the Debian packages of that
architecture from the lock; a host file of another machine is refused by the ELF check).

The result is an OCI layout whose ``index.json`` tags the image index with the version; the
index lists each platform's manifest with its ``platform`` and the annotations that point at its
SBOM and provenance. Only the ``oci`` format is written for several platforms.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from builder.build import BuildResult, OutputFormat, build_image
from builder.cache import BuildCache
from builder.errors import BuildError
from manifests.image import ImageManifest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex

if TYPE_CHECKING:
    from builder.debian.prepare import PreparedDebian

__all__ = ["build_platforms"]


def build_platforms(
    manifest: ImageManifest,
    *,
    output: Path,
    fmt: OutputFormat | str = OutputFormat.OCI,
    cache: BuildCache | None = None,
    source_date_epoch: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    debian: PreparedDebian | None = None,
) -> BuildResult:
    """Build every platform of ``manifest`` and write one OCI index to ``output``."""
    if OutputFormat(fmt) is not OutputFormat.OCI:
        raise BuildError("several platforms are written as an OCI layout only", hint="use --format oci")
    output = Path(output)
    if (output.exists() or output.is_symlink()) and not force:
        raise BuildError(f"{output} already exists", hint="pass --force to replace it")
    say = progress or (lambda _m: None)
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.kiln-"))
    try:
        layout = OCILayout.create(stage / "layout")
        entries: list[Descriptor] = []
        records: list[tuple[tuple[Descriptor, ...], Descriptor]] = []  # each platform's SBOM, provenance
        results: list[BuildResult] = []
        for platform in manifest.platforms:
            one = dataclasses.replace(manifest, platform=platform)
            say(f"platform {platform}")
            result = build_image(
                one,
                output=stage / f"{platform}".replace("/", "-"),
                cache=cache,
                source_date_epoch=source_date_epoch,
                progress=progress,
                debian=debian,
            )
            part = OCILayout.open(result.output)
            entry = part.resolve(manifest.version)
            for blob in sorted(part.root.joinpath("blobs", "sha256").iterdir()):
                dest = layout.root / "blobs" / "sha256" / blob.name
                if not dest.exists():
                    os.link(blob, dest)  # the stage and the layout share a directory
            annotations = {
                k: v for k, v in entry.annotations.items() if not k.startswith("org.opencontainers.image.ref")
            }
            entries.append(dataclasses.replace(entry, annotations=annotations))
            records.append((part.referrers(entry.digest), entry))
            results.append(result)
        index = OCIIndex(manifests=tuple(entries))
        index_bytes = index.to_bytes()
        digest = layout.write_blob(index_bytes)
        layout.tag(
            Descriptor(media_type=MediaType.OCI_INDEX, digest=digest, size=len(index_bytes)), manifest.version
        )
        for referrers, entry in records:  # every platform keeps its build records (ADR 0018)
            layout.add_referrers(referrers, entry.digest)
        os.chmod(layout.root, 0o755)  # noqa: S103 - a layout is meant to be readable
        if output.exists() or output.is_symlink():
            shutil.rmtree(output) if output.is_dir() and not output.is_symlink() else output.unlink()
        os.replace(layout.root, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"{manifest.name} {manifest.version}: index {digest} ({len(entries)} platforms) -> {output}")
    return dataclasses.replace(
        results[0],
        digest=digest,
        size=len(index_bytes) + sum(r.size for r in results),
        layers=tuple(layer for r in results for layer in r.layers),
        output=output,
    )
