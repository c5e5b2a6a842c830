"""Fixtures for the agent tests: the python-web example built once, pulled and unpacked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.store import ContentStore, LayoutSource, PulledImage
from agent.unpack import UnpackedRoot, unpack_image
from builder.build import build_image
from manifests.image_parse import load_image_manifest

REPO = Path(__file__).resolve().parents[2]
PYTHON_WEB = REPO / "examples" / "python-web" / "python-web.yaml"


@dataclass(frozen=True)
class WebImage:
    layout: Path
    state: Path
    store: ContentStore
    image: PulledImage
    root: UnpackedRoot


@pytest.fixture(scope="session")
def python_web(tmp_path_factory: pytest.TempPathFactory) -> WebImage:
    """examples/python-web built into a layout, pulled into a store and unpacked (once a session)."""
    base = tmp_path_factory.mktemp("python-web")
    result = build_image(load_image_manifest(PYTHON_WEB), output=base / "layout")
    state = base / "state"
    store = ContentStore(state)
    image = store.pull_image(LayoutSource.open(result.output), result.digest)
    root = unpack_image(store, image, state / "roots")
    return WebImage(layout=result.output, state=state, store=store, image=image, root=root)
