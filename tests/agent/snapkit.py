"""Helpers for tests of composed roots: where a file of a root really lives, and what is mounted."""

from __future__ import annotations

import os
from pathlib import Path

from agent.compose import composed_layers, mounts_under
from manifests.digest import Digest


def layer_file(state: Path, manifest: str, rel: str) -> Path:
    """The file ``rel`` of a composed root, in the topmost snapshot that holds it (a root is a
    read-only overlay: tampering with it from outside means tampering with a snapshot)."""
    names = composed_layers(state / "roots", Digest.parse(manifest))
    assert names, f"{manifest} is not a composed root"
    for name in reversed(names):  # the mountpoint layer is last, then the topmost image layer
        path = state / "snapshots" / name / rel
        if os.path.lexists(path):
            return path
    raise AssertionError(f"no snapshot of {manifest} holds {rel}")


def mounts(state: Path) -> list[str]:
    """Every mount point under ``state`` (relative), sorted."""
    return sorted(str(p.relative_to(os.path.realpath(state))) for p in mounts_under(state))
