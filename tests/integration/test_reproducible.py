"""Acceptance: the same manifest built from two checkouts, under a different umask, different file
mtimes and a different TZ, gives the same manifest digest."""

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


def test_source_date_epoch_changes_the_digest(tmp_path: Path) -> None:
    manifest = copy_example("hello-static", tmp_path)
    a = build_json(manifest, tmp_path / "a", "--no-cache")
    b = build_json(manifest, tmp_path / "b", "--no-cache", env={"SOURCE_DATE_EPOCH": "1700000000"})
    c = build_json(manifest, tmp_path / "c", "--no-cache", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert a["digest"] != b["digest"]
    assert b["digest"] == c["digest"]
