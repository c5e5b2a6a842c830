"""A VM artifact in the agent's store: pulled by digest, placed as a root, checked, repaired (no boot)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.store import ContentStore, LayoutSource
from agent.vmimage import is_vm_image, place_vm, prepared_vm
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from manifests.release import Service, parse_release
from tests.agent.agentkit import service_yaml
from tests.agent.vmkit import KERNEL, make_vm_dir, vm_layout
from tests.support import IN_CI


@pytest.fixture
def vm_image(tmp_path: Path) -> tuple[Path, Descriptor]:
    if not KERNEL.exists():
        if IN_CI:
            pytest.fail(f"{KERNEL} is missing (linux-image-cloud-amd64)")
        pytest.skip(f"{KERNEL} is missing")
    image = tmp_path / "image"
    make_vm_dir(image, body="placed\n")
    return image, vm_layout(image)


def _service(digest: Digest) -> Service:
    doc = {
        "apiVersion": "kiln.dev/v1",
        "kind": "Release",
        "channel": "stable",
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "services": [service_yaml("vm", f"localhost/vm@{digest}")],
    }
    return parse_release(json.dumps(doc).encode(), source="r.yaml").services[0]


def test_a_vm_artifact_is_pulled_placed_checked_and_repaired(
    tmp_path: Path, vm_image: tuple[Path, Descriptor]
) -> None:
    image_dir, desc = vm_image
    store = ContentStore(tmp_path / "state")
    image = store.pull_image(LayoutSource.open(image_dir), desc.digest)
    assert is_vm_image(image)
    roots = tmp_path / "state" / "roots"
    prep = prepared_vm(store, image, roots, service=_service(desc.digest), release=1, pin=desc.digest)
    placed = roots / image.manifest_digest.hex
    assert prep.rootfs == placed
    assert sorted(p.name for p in placed.iterdir()) == ["initrd", "kernel", "vm.json"]
    assert (placed / "initrd").read_bytes() == (image_dir / "initrd").read_bytes()
    assert prep.port == 8080
    assert prep.health is not None  # the release's check
    # A placed part changed on disk: placed again from the store.
    initrd = placed / "initrd"
    initrd.chmod(0o644)
    initrd.write_bytes(b"tampered")
    again = prepared_vm(store, image, roots, service=_service(desc.digest), release=1, pin=desc.digest)
    assert initrd.read_bytes() == (image_dir / "initrd").read_bytes()
    assert again.fingerprint == prep.fingerprint
    # The store's own blob changed: refused (digest), the blob discarded.
    part = json.loads((placed / "vm.json").read_bytes())["parts"]["initrd"]["digest"]
    blob = store.path(Digest.parse(part))
    blob.chmod(0o644)
    blob.write_bytes(b"tampered in the store")
    initrd.write_bytes(b"tampered again")
    with pytest.raises(VerificationError) as err:
        prepared_vm(store, image, roots, service=_service(desc.digest), release=1, pin=desc.digest)
    assert err.value.reason == "digest"
    assert not blob.exists()


def test_a_vm_json_naming_a_part_the_artifact_lacks_is_refused(
    tmp_path: Path, vm_image: tuple[Path, Descriptor]
) -> None:
    image_dir, desc = vm_image
    store = ContentStore(tmp_path / "state")
    image = store.pull_image(LayoutSource.open(image_dir), desc.digest)
    short = replace(image, layers=image.layers[:1])
    with pytest.raises(VerificationError, match="is not a layer of the artifact"):
        place_vm(store, short, tmp_path / "roots")


def test_vm_part_media_types_are_refused_outside_a_vm_artifact(
    tmp_path: Path, vm_image: tuple[Path, Descriptor]
) -> None:
    image_dir, desc = vm_image
    layout = OCILayout.open(image_dir)
    manifest = OCIManifest.from_bytes(layout.read_blob(desc.digest))
    plain = replace(manifest, artifact_type=None, raw=None)
    data = plain.to_bytes()
    digest = layout.write_blob(data)
    store = ContentStore(tmp_path / "state")
    with pytest.raises(DocumentError, match=f"unsupported media type '{MediaType.KILN_VM_KERNEL}'"):
        store.pull_image(LayoutSource.open(image_dir), digest)
