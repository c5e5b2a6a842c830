"""Shared fixtures: real external components started privately on loopback, and stopped after.

Under ``CI=true`` a missing tool is a failure, never a skip: ``make test`` installs every tool.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.testing import PrivateDockerd, private_dockerd

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def require_tool(name: str, package: str) -> str:
    """Return the tool's path; skip (or fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (Debian package {package}; `make test` installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        msg = f"needs root: {why}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[PrivateDockerd]:
    """A private Docker engine for the whole session (no iptables, no bridge, temporary state)."""
    require_tool("dockerd", "docker.io")
    require_tool("docker", "docker.io")
    require_root("dockerd runs as root here")
    with private_dockerd() as engine:
        yield engine
