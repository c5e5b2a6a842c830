"""Helpers shared by the publish, copy and interop tests: small built layouts and destinations.

(Named ``test_publish_*`` to sit with the tests it serves; it holds no tests itself.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from manifests.canonical import canonical_json
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest, Platform
from publisher.endpoint import Endpoint
from publisher.layoutstore import LayoutRepository
from publisher.registrystore import RegistryArtifactStore, RegistryRepository
from signing.image import attest_image, sign_image
from signing.signer import LocalSigner
from signing.store import ArtifactStore, LayoutStore
from tests.publisher.conftest import Target
from tests.signing.conftest import p256

__all__ = ["ALICE", "BOB", "Dest", "make_image", "make_index", "statement_for"]

ALICE = p256(0xA11CE)
BOB = p256(0xB0B)
IDENTITY = "example.test/app"
_names = itertools.count()


def _image(layout: OCILayout, *, version: str | None, layer: bytes, arch: str = "amd64") -> Descriptor:
    config = canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"User": "65532:65532"},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )
    cdig = layout.write_blob(config)
    ldig = layout.write_blob(layer)
    annotations = {"org.opencontainers.image.version": version} if version is not None else {}
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=cdig, size=len(config)),
        layers=(Descriptor(media_type=MediaType.OCI_LAYER_GZIP, digest=ldig, size=len(layer)),),
        annotations=annotations,
    )
    raw = manifest.to_bytes()
    return Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=layout.write_blob(raw),
        size=len(raw),
        platform=Platform(os="linux", architecture=arch),
    )


def statement_for(desc: Descriptor) -> bytes:
    return canonical_json(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "app", "digest": {"sha256": desc.digest.hex}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {"buildDefinition": {"buildType": "test"}},
        }
    )


def make_image(
    root: Path,
    *,
    version: str | None = "1.0.0",
    layer: bytes = b"layer bytes",
    tag: str | None = None,
    signer: LocalSigner | None = ALICE,
    attest: bool = False,
) -> Descriptor:
    """A built-looking layout: one image annotated with ``version``, tagged, signed (and attested)."""
    layout = OCILayout.create(root)
    desc = _image(layout, version=version, layer=layer)
    name = tag or version
    if name is not None:
        layout.tag(desc, name)
    else:
        layout.add(desc)
    store = LayoutStore(layout)
    if signer is not None:
        sign_image(store, desc, signer, reference=f"{IDENTITY}:{name}" if name else IDENTITY)
    if attest:
        attest_image(store, desc, [signer or ALICE], statement_for(desc))
    return desc


def make_index(root: Path, *, version: str = "2.0.0", signer: LocalSigner | None = ALICE) -> Descriptor:
    """A two-platform index annotated with ``version``; the index and each child signed."""
    layout = OCILayout.create(root)
    children = (
        _image(layout, version=None, layer=b"amd64 layer", arch="amd64"),
        _image(layout, version=None, layer=b"arm64 layer", arch="arm64"),
    )
    index = OCIIndex(
        manifests=children,
        media_type=MediaType.OCI_INDEX,
        annotations={"org.opencontainers.image.version": version},
    )
    raw = index.to_bytes()
    desc = Descriptor(media_type=MediaType.OCI_INDEX, digest=layout.write_blob(raw), size=len(raw))
    layout.tag(desc, version)
    if signer is not None:
        sign_image(LayoutStore(layout), desc, signer, reference=f"{IDENTITY}:{version}")
    return desc


@dataclass
class Dest:
    """A destination of either kind, and an ArtifactStore view of it for verification."""

    kind: str
    endpoint: Endpoint
    store: ArtifactStore
    path: Path | None = None
    target: Target | None = None
    repository: str | None = None


def open_dest(kind: str, tmp_path: Path, target: Target | None) -> Iterator[Dest]:
    if kind == "layout":
        repo = LayoutRepository(tmp_path / "dest", create=True)
        yield Dest(kind, repo, LayoutStore(repo.layout), path=repo.root)
        return
    assert target is not None
    name = f"pub{next(_names)}/app"
    with target.client() as client, RegistryArtifactStore(client, name) as store:
        yield Dest(kind, RegistryRepository(client, name), store, target=target, repository=name)
