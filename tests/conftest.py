"""Shared fixtures: real external components started privately on loopback, and stopped after.

Under ``CI=true`` a missing tool is a failure, never a skip: ``make test`` installs every tool.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kit.services import PrivateDockerd, private_dockerd
from tests.support import require_root, require_tool


@pytest.fixture(scope="session")
def dockerd() -> Iterator[PrivateDockerd]:
    """A private Docker engine for the whole session (no iptables, no bridge, temporary state)."""
    require_tool("dockerd", "docker.io")
    require_tool("docker", "docker.io")
    require_root("dockerd runs as root here")
    with private_dockerd() as engine:
        yield engine
