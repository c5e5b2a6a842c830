"""Acceptance: the same manifest built from two checkouts, under a different umask, different file
mtimes and a different TZ, gives the same manifest digest (OCI images), and the same vm.json and
part digests (VM images, every profile)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.helpers import EXAMPLE_MANIFESTS, build_json, copy_example

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("example", sorted(EXAMPLE_MANIFESTS))
def test_two_checkouts_build_the_same_digest(example: str, tmp_path: Path) -> None:
    first = copy_example(example, tmp_path / "checkout-a", umask=0o022)
    second = copy_example(example, tmp_path / "some" / "other" / "checkout-b", umask=0o077)
    # Scramble the second checkout's mtimes and atimes.
    for i, path in enumerate(sorted(second.parent.rglob("*"))):
        os.utime(path, (1_000_000_000 + 7 * i, 1_500_000_000 + 13 * i), follow_symlinks=False)

    a = build_json(
        first,
        tmp_path / "out-a",
        "--cache-dir",
        str(tmp_path / "cache-a"),
        env={"TZ": "UTC"},
        umask=0o022,
    )
    b = build_json(
        second,
        tmp_path / "out-b",
        "--cache-dir",
        str(tmp_path / "cache-b"),
        env={"TZ": "Pacific/Kiritimati"},
        umask=0o077,
    )
    assert a["digest"].startswith("sha256:")
    assert a["digest"] == b["digest"]
    assert [layer["digest"] for layer in a["layers"]] == [layer["digest"] for layer in b["layers"]]


@pytest.mark.parametrize(
    ("example", "profile"), [("hello-vm", "verity"), ("hello-vm", "initramfs"), ("python-web", "verity")]
)
def test_two_checkouts_build_the_same_vm(example: str, profile: str, tmp_path: Path) -> None:
    from tests.builder.vm.kit import point_at_kernel

    first = point_at_kernel(copy_example(example, tmp_path / "checkout-a", umask=0o022), profile=profile)
    second = copy_example(example, tmp_path / "some" / "other" / "checkout-b", umask=0o077)
    point_at_kernel(second, profile=profile)
    for i, path in enumerate(sorted(second.parent.rglob("*"))):
        os.utime(path, (1_000_000_000 + 7 * i, 1_500_000_000 + 13 * i), follow_symlinks=False)
    a = build_json(first, tmp_path / "out-a", "--format", "vm", env={"TZ": "UTC"}, umask=0o022)
    b = build_json(
        second, tmp_path / "out-b", "--format", "vm", env={"TZ": "Pacific/Kiritimati"}, umask=0o077
    )
    assert a["vm"]["profile"] == profile
    assert a["vm"] == b["vm"]  # every part's digest, the root hash, the tree digest
    assert a["digest"] == b["digest"]
    assert (tmp_path / "out-a" / "vm.json").read_bytes() == (tmp_path / "out-b" / "vm.json").read_bytes()
    # The tree is the OCI image's tree: the same digest as the OCI build of the same checkout.
    oci = build_json(first, tmp_path / "oci-a", "--no-cache")
    from manifests.layout import OCILayout
    from manifests.oci import OCIManifest

    layout = OCILayout.open(tmp_path / "oci-a")
    man = OCIManifest.from_bytes(layout.read_blob(layout.resolve(None).digest))
    assert oci["digest"] == str(layout.resolve(None).digest)
    assert man.annotations["dev.kiln.tree"] == a["vm"]["treeDigest"]
    # Baked bytecode (python-web: python.bytecode) is recorded alike in both families (ADR 0023),
    # and it is part of the tree both digests name.
    assert man.annotations.get("dev.kiln.bytecode") == a["vm"].get("bytecode")
    if example == "python-web":
        assert a["vm"]["bytecode"].startswith("cpython-3.11.")


def test_source_date_epoch_changes_the_digest(tmp_path: Path) -> None:
    manifest = copy_example("hello-static", tmp_path)
    a = build_json(manifest, tmp_path / "a", "--no-cache")
    b = build_json(manifest, tmp_path / "b", "--no-cache", env={"SOURCE_DATE_EPOCH": "1700000000"})
    c = build_json(manifest, tmp_path / "c", "--no-cache", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert a["digest"] != b["digest"]
    assert b["digest"] == c["digest"]
