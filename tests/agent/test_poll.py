"""Cheap release polls: the channel tag is looked at every time, the envelope fetched only when the
tag moved, on an oci:DIR source and on a real registry (Debian's docker-registry)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.poll import ReleasePoller
from publisher.endpoint import Endpoint
from publisher.release_artifact import ReleaseNotFound, open_release_endpoint, publish_release
from tests.agent.agentkit import make_release, service_yaml, signed
from tests.kit.services import private_registry
from tests.support import require_tool


class Recording:
    """An endpoint that records which of its methods were called."""

    def __init__(self, inner: Endpoint) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if callable(value):

            def call(*args: Any, **kw: Any) -> Any:
                self.calls.append(name)
                return value(*args, **kw)

            return call
        return value


def _envelope(version: int, channel: str = "stable") -> bytes:
    svc = service_yaml("web", f"localhost/web@sha256:{'a' * 64}", listen="127.0.0.1:8080")
    return signed(make_release(version, [svc], channel=channel))


@contextmanager
def _layout(tmp_path: Path) -> Iterator[str]:
    yield f"oci:{tmp_path / 'releases'}"


@contextmanager
def _registry(tmp_path: Path) -> Iterator[str]:
    require_tool("docker-registry", "docker-registry")
    with private_registry(tmp_path / "registry") as host:
        yield f"{host}/releases"


@pytest.mark.parametrize("source", [_layout, _registry], ids=["oci-dir", "registry"])
def test_a_poll_fetches_the_envelope_only_when_the_tag_moved(tmp_path: Path, source: Any) -> None:
    poller = ReleasePoller()
    with source(tmp_path) as where:
        with open_release_endpoint(where, insecure=True, create=True) as endpoint:
            with pytest.raises(ReleaseNotFound):
                poller.fetch(endpoint, "stable")
            one = _envelope(1)
            publish_release(endpoint, one)
        for _ in range(3):
            with open_release_endpoint(where, insecure=True) as endpoint:
                rec = Recording(endpoint)
                assert poller.fetch(rec, "stable") == one  # type: ignore[arg-type]
        assert rec.calls == ["tag_target"]  # the last two polls: the tag only
        assert poller.fetches == 1
        with open_release_endpoint(where, insecure=True) as endpoint:
            two = _envelope(2)
            publish_release(endpoint, two)
            rec = Recording(endpoint)
            assert poller.fetch(rec, "stable") == two  # type: ignore[arg-type]
        assert rec.calls == ["tag_target", "get_manifest", "read_blob"]
        assert poller.fetches == 2
        assert poller.polls == 4  # the refused first poll is not counted
        with open_release_endpoint(where, insecure=True) as endpoint:
            beta = _envelope(3, channel="beta")
            publish_release(endpoint, beta)
            assert poller.fetch(endpoint, "beta") == beta  # another channel: not the cached one
        assert poller.fetches == 3
