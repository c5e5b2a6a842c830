from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent.conftest import python_web  # noqa: F401 - the session's python-web build, shared
from tests.fleet.etcdkit import Etcd, private_etcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    with private_etcd() as server:
        yield server
