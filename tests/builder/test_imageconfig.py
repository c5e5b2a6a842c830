"""The builder writes the image config through the one type the agent reads it with."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.imageconfig import image_config
from manifests.digest import Digest
from manifests.image_parse import load_image_manifest
from manifests.imageconfig import ImageConfig, KilnLabel

DATA = Path(__file__).resolve().parent.parent / "data" / "manifests"


@pytest.mark.parametrize("name", ["hello-web.yaml", "hello-web.toml", "minimal.yaml"])
def test_what_the_builder_writes_the_agent_reads_back_unchanged(name: str) -> None:
    m = load_image_manifest(DATA / name)
    built = image_config(m, diff_ids=[Digest.of(b"x")], layer_labels=["app"], source_date_epoch=0)
    data = built.to_bytes()
    read = ImageConfig.from_bytes(data)
    assert read == built
    assert read.to_bytes() == data
    assert read.config.ids() == ((m.accounts.uid, m.accounts.gid) if m.accounts else (65532, 65532))
    assert read.policy.ports == tuple(str(p) for p in m.ports)
    assert read.policy.health == m.health
    assert read.policy.writable == tuple(m.writable)
    assert all(not k.startswith("dev.kiln.") for k, _ in read.config.labels)
    assert KilnLabel.READ_ONLY in built.to_dict()["config"]["Labels"]
