from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.builder.debian.debkit import stop_gpg_agents


@pytest.fixture(autouse=True)
def _no_gpg_agent_left() -> Iterator[None]:
    """Each local archive's gpg home starts a gpg-agent; none may outlive its test."""
    yield
    stop_gpg_agents()
