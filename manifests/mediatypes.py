"""Closed vocabularies: media types and compression."""

from __future__ import annotations

import enum

__all__ = ["MediaType", "Compression"]


class MediaType(enum.StrEnum):
    OCI_LAYOUT_VERSION = "1.0.0"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
    DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
    IN_TOTO = "application/vnd.in-toto+json"
    SPDX_JSON = "application/spdx+json"
    KILN_RELEASE = "application/vnd.kiln.release.v1+json"
    # VM images (issue 9): the artifactType and config of a VM artifact is vm.json; one layer per part.
    KILN_VM = "application/vnd.kiln.vm.v1+json"
    KILN_VM_KERNEL = "application/vnd.kiln.vm.kernel.v1"
    KILN_VM_INITRD_GZIP = "application/vnd.kiln.vm.initrd.v1.cpio+gzip"
    KILN_VM_INITRD_ZSTD = "application/vnd.kiln.vm.initrd.v1.cpio+zstd"
    KILN_VM_DISK = "application/vnd.kiln.vm.disk.v1.gpt"
    KILN_VM_ROOTFS = "application/vnd.kiln.vm.rootfs.v1.erofs"
    KILN_VM_VERITY = "application/vnd.kiln.vm.verity.v1"

    @property
    def is_manifest(self) -> bool:
        return self in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST)

    @property
    def is_index(self) -> bool:
        return self in (MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST)

    @property
    def is_layer(self) -> bool:
        return self in (
            MediaType.OCI_LAYER_TAR,
            MediaType.OCI_LAYER_GZIP,
            MediaType.OCI_LAYER_ZSTD,
            MediaType.DOCKER_LAYER_GZIP,
        )

    @property
    def is_vm_part(self) -> bool:
        """A layer of a VM artifact (kernel, initrd, disk, rootfs or verity tree)."""
        return self in (
            MediaType.KILN_VM_KERNEL,
            MediaType.KILN_VM_INITRD_GZIP,
            MediaType.KILN_VM_INITRD_ZSTD,
            MediaType.KILN_VM_DISK,
            MediaType.KILN_VM_ROOTFS,
            MediaType.KILN_VM_VERITY,
        )


class Compression(enum.StrEnum):
    """Layer compression named in an image manifest."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"

    @property
    def layer_media_type(self) -> MediaType:
        return {
            Compression.GZIP: MediaType.OCI_LAYER_GZIP,
            Compression.ZSTD: MediaType.OCI_LAYER_ZSTD,
            Compression.NONE: MediaType.OCI_LAYER_TAR,
        }[self]

    @property
    def default_level(self) -> int:
        # ISA-L gzip levels are 0-3; zstd 3 is its usual default.
        return {Compression.GZIP: 2, Compression.ZSTD: 3, Compression.NONE: 0}[self]
