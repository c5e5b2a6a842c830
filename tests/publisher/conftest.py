"""Registry fixtures: Debian's docker-registry on loopback, plain, with Basic auth, and with tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from publisher.auth import Credentials
from publisher.client import RegistryClient
from publisher.retry import RetryPolicy
from tests.publisher.registry import RegistryProcess, TokenAuthConfig
from tests.publisher.tokenserver import TokenServer
from tests.support import require_tool

BASIC_USER = ("kiln-user", "correct horse battery staple")
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0)


@dataclass(frozen=True, slots=True)
class Target:
    """A running registry and how to make a client for it."""

    kind: str
    registry: RegistryProcess
    credentials: Credentials | None
    tokens: TokenServer | None

    def client(self, **kwargs: object) -> RegistryClient:
        kwargs.setdefault("credentials", self.credentials)
        kwargs.setdefault("retry", FAST_RETRY)
        return RegistryClient(self.registry.host, insecure=True, **kwargs)  # type: ignore[arg-type]


def _registry(tmp: Path, kind: str) -> Iterator[Target]:
    require_tool("docker-registry", "docker-registry")
    tokens: TokenServer | None = None
    creds: Credentials | None = None
    if kind == "plain":
        reg = RegistryProcess(root=tmp / "registry")
    elif kind == "basic":
        reg = RegistryProcess(root=tmp / "registry", htpasswd=BASIC_USER)
        creds = Credentials(username=BASIC_USER[0], password=BASIC_USER[1])
    else:
        tokens = TokenServer(root=tmp / "tokens")
        tokens.start()
        reg = RegistryProcess(
            root=tmp / "registry",
            token=TokenAuthConfig(
                realm=tokens.realm,
                service=tokens.service,
                issuer=tokens.issuer,
                rootcertbundle=tokens.cert_path,
            ),
        )
        creds = Credentials(username=tokens.username, password=tokens.password)
    try:
        with reg:
            yield Target(kind, reg, creds, tokens)
    finally:
        if tokens is not None:
            tokens.stop()


@pytest.fixture(scope="module", params=["plain", "basic", "token"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The same registry in each of its three auth setups (one per module, shared by its tests)."""
    yield from _registry(tmp_path_factory.mktemp(f"reg-{request.param}"), request.param)


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[Target]:
    """A registry of the test's own, which the test may kill and restart."""
    yield from _registry(tmp_path, "plain")


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[Target]:
    yield from _registry(tmp_path, "token")


@pytest.fixture
def make_blob(tmp_path: Path) -> Callable[[int, int], Path]:
    """Write ``size`` pseudo-random bytes (seeded) to a file; returns its path."""
    import random

    counter = [0]

    def make(size: int, seed: int = 0) -> Path:
        counter[0] += 1
        path = tmp_path / f"blob-{counter[0]}"
        rng = random.Random(seed * 1_000_003 + size)
        with path.open("wb") as fh:
            left = size
            while left:
                n = min(left, 1 << 20)
                fh.write(rng.randbytes(n))
                left -= n
        return path

    return make
