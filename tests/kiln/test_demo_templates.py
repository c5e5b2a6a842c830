"""The demo's release template and agent config (examples/release/), and the demo's file helpers.

The demo itself starts runc and dockerd and is run by `make demo`; these tests check what it
relies on without starting anything: the template gives valid releases whose versions differ in
the instance config (so a release of the same image still starts new instances), the agent
config resolves every path inside the directory it is copied to, altering a blob never touches a
hard-linked twin, and the demo refuses to remove anything that is not its own directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from string import Template
from types import ModuleType

import pytest

from agent.rollout import config_digest
from manifests.agentconfig import ImageLocation, RuntimeKind, load_agent_config
from manifests.digest import Digest
from manifests.release import Release, parse_release

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "examples" / "release"
DIGEST = "sha256:" + "ab" * 32


def _release(version: int, health_path: str = "/healthz", listen: str = "127.0.0.1:18080") -> Release:
    text = Template((TEMPLATES / "release.yaml.in").read_text()).substitute(
        version=version, expires="2099-01-01T00:00:00Z", digest=DIGEST, listen=listen, health_path=health_path
    )
    return parse_release(text.encode(), source=f"v{version}.yaml")


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kiln_demo", REPO / "examples" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_template_gives_the_release_the_demo_means() -> None:
    release = _release(1)
    assert (release.channel, release.version) == ("stable", 1)
    (web,) = release.services
    assert (web.name, str(web.image), str(web.listen)) == (
        "web",
        f"localhost/python-web@{DIGEST}",
        "127.0.0.1:18080",
    )
    assert web.health is not None
    assert (web.health.check.port, getattr(web.health.check, "path", None)) == (8080, "/healthz")
    assert dict(web.env) == {"DEMO_RELEASE": "1"}
    # What is signed round-trips to the same bytes.
    assert Release.from_payload(release.to_bytes()).to_bytes() == release.to_bytes()


def test_a_new_version_of_the_same_image_runs_new_instances() -> None:
    """v2 pins v1's image; unless its instance config differs, the agent would keep v1's instance
    and never run v2's (failing) health check."""
    v1, v2 = _release(1).services[0], _release(2, "/nope").services[0]
    assert v1.image == v2.image
    manifest = Digest.parse(DIGEST)
    assert config_digest(v1, v1.image.digest, manifest, 8080) != config_digest(
        v2, v2.image.digest, manifest, 8080
    )
    assert v2.health is not None
    assert getattr(v2.health.check, "path", None) == "/nope"


def test_the_agent_config_resolves_inside_the_directory_it_is_copied_to(tmp_path: Path) -> None:
    shutil.copyfile(TEMPLATES / "agent.yaml", tmp_path / "agent.yaml")
    config = load_agent_config(tmp_path / "agent.yaml")
    assert config.source == f"oci:{tmp_path / 'releases'}"
    assert (config.trust_root, config.state) == (tmp_path / "trust" / "root.yaml", tmp_path / "agent-state")
    assert (config.channel, config.runtime, config.max_attempts) == ("stable", RuntimeKind.RUNC, 1)
    assert config.images == (
        ImageLocation(
            repository="localhost/python-web", location=f"oci:{tmp_path / 'registry' / 'python-web'}"
        ),
    )


def test_tampering_replaces_the_blob_and_leaves_its_hard_linked_twin_alone(tmp_path: Path) -> None:
    demo = _demo()
    original = bytes(range(256)) * 8
    built = tmp_path / "build-blob"
    built.write_bytes(original)
    registry = tmp_path / "registry-blob"
    os.link(built, registry)
    demo.tamper(registry)
    changed = registry.read_bytes()
    assert built.read_bytes() == original
    assert len(changed) == len(original)
    assert [i for i, (a, b) in enumerate(zip(original, changed, strict=True)) if a != b] == [
        len(original) // 2
    ]
    assert os.stat(built).st_nlink == 1


@pytest.mark.parametrize(
    "where",
    [
        "outside",  # a directory that is not under demo-out/
        "demo-out itself",
        "a symlink in demo-out",
    ],
)
def test_the_demo_removes_only_its_own_directories(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = _demo()
    out = tmp_path / "demo-out"
    victim = tmp_path / "precious"
    victim.mkdir(parents=True)
    (victim / "keep").write_text("keep")
    out.mkdir()
    monkeypatch.setattr(demo, "OUT", out)
    target = {"outside": victim, "demo-out itself": out, "a symlink in demo-out": out / "registry"}[where]
    if where == "a symlink in demo-out":
        target.symlink_to(victim)
    with pytest.raises(SystemExit, match="refusing to remove"):
        demo.remove_demo_dir(target)
    assert (victim / "keep").read_text() == "keep"
    assert out.is_dir()


def test_the_demo_removes_a_directory_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = _demo()
    out = tmp_path / "demo-out"
    monkeypatch.setattr(demo, "OUT", out)
    (out / "registry" / "blobs").mkdir(parents=True)
    demo.remove_demo_dir(out / "registry")
    assert not (out / "registry").exists()
    assert out.is_dir()
    demo.remove_demo_dir(out / "registry")  # absent: nothing to do
