"""Shared fixtures for the signing tests: fixed keys and small OCI layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIIndex, OCIManifest, Platform
from signing.signer import LocalSigner


def p256(scalar: int) -> LocalSigner:
    return LocalSigner(ec.derive_private_key(scalar, ec.SECP256R1()))


@pytest.fixture
def alice() -> LocalSigner:
    return p256(0xA11CE)


@pytest.fixture
def bob() -> LocalSigner:
    return p256(0xB0B)


@pytest.fixture
def carol_ed25519() -> LocalSigner:
    return LocalSigner(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def write_image(layout: OCILayout, *, layer: bytes = b"layer-bytes", arch: str = "amd64") -> Descriptor:
    """A tiny single-layer image; returns its manifest descriptor (not tagged)."""
    config = canonical_json(
        {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    cdig = layout.write_blob(config)
    ldig = layout.write_blob(layer)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=cdig, size=len(config)),
        layers=(Descriptor(media_type=MediaType.OCI_LAYER_TAR, digest=ldig, size=len(layer)),),
    )
    raw = manifest.to_bytes()
    mdig = layout.write_blob(raw)
    return Descriptor(
        media_type=MediaType.OCI_MANIFEST,
        digest=mdig,
        size=len(raw),
        platform=Platform(os="linux", architecture=arch),
    )


@pytest.fixture
def image_layout(tmp_path: Path) -> tuple[OCILayout, Descriptor]:
    layout = OCILayout.create(tmp_path / "img")
    desc = write_image(layout)
    layout.tag(desc, "v1")
    return layout, layout.resolve("v1")


@pytest.fixture
def index_layout(tmp_path: Path) -> tuple[OCILayout, Descriptor]:
    layout = OCILayout.create(tmp_path / "multi")
    children = (
        write_image(layout, layer=b"amd", arch="amd64"),
        write_image(layout, layer=b"arm", arch="arm64"),
    )
    index = OCIIndex(manifests=children)
    raw = index.to_bytes()
    idig = layout.write_blob(raw)
    layout.tag(Descriptor(media_type=MediaType.OCI_INDEX, digest=idig, size=len(raw)), "v2")
    return layout, layout.resolve("v2")


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def digest_of(data: bytes) -> Digest:
    return Digest.of(data)
