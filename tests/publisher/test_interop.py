"""Interop with the peers: what kiln publishes, skopeo and a Docker engine pull with the same digest
(and the engine runs it); what skopeo pushes, kiln pulls byte for byte, signs and verifies."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from manifests.digest import Digest, sha256_file
from manifests.layout import OCILayout
from tests.integration.helpers import build_json, copy_example
from tests.kit.services import PrivateDockerd, free_port, wait_http
from tests.publisher.conftest import Target, _registry
from tests.support import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _registry(tmp_path_factory.mktemp("interop-reg"), "plain")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """python-web, built once for the module as an OCI layout and as a docker-archive."""
    root = tmp_path_factory.mktemp("interop-build")
    manifest = copy_example("python-web", root / "src")
    cache = ["--cache-dir", str(root / "cache")]
    layout = build_json(manifest, root / "python-web", *cache)
    archive = build_json(manifest, root / "python-web.docker.tar", "--format", "docker-archive", *cache)
    return {"layout": layout, "archive": archive}


def kiln_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result: dict[str, Any] = json.loads(captured.out)
    return result


def skopeo(*args: str) -> str:
    require_tool("skopeo", "skopeo")
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def published(
    registry: Target, built: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """python-web published by kiln (CLI, in process) to the registry as interop/web."""
    host = registry.registry.host
    code = main(["publish", str(built["layout"]["output"]), f"{host}/interop/web", "--insecure", "-q"])
    assert code == 0
    return {"ref": f"{host}/interop/web", "digest": built["layout"]["digest"]}


def test_skopeo_pulls_what_kiln_published_with_the_same_digest(
    published: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "skopeo-oci"
    skopeo("copy", "--src-tls-verify=false", f"docker://{published['ref']}:1.0.0", f"oci:{out}:1.0.0")
    layout = OCILayout.open(out)
    assert str(layout.resolve("1.0.0").digest) == published["digest"]
    source = Path(built["layout"]["output"]) / "blobs" / "sha256"
    for blob in (out / "blobs" / "sha256").iterdir():
        assert blob.read_bytes() == (source / blob.name).read_bytes()
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{published['ref']}:1.0.0")
    assert str(Digest.of(raw.encode())) == published["digest"]


def test_kiln_pulls_what_skopeo_pushed_byte_for_byte_then_signs_and_verifies(
    registry: Target,
    built: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = registry.registry.host
    ref = f"{host}/skopeo/web:v1"
    skopeo(
        "copy", "--dest-tls-verify=false", f"docker-archive:{built['archive']['output']}", f"docker://{ref}"
    )
    theirs = tmp_path / "skopeo-dir"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{theirs}")
    manifest_bytes = (theirs / "manifest.json").read_bytes()
    digest = Digest.of(manifest_bytes)

    pulled = kiln_json(capsys, "pull", ref, str(tmp_path / "pulled"), "--insecure")
    assert pulled["digest"] == str(digest)
    ours = tmp_path / "pulled" / "blobs" / "sha256"
    assert (ours / digest.hex).read_bytes() == manifest_bytes
    skopeo_blobs = {p.name for p in theirs.iterdir() if len(p.name) == 64}
    assert skopeo_blobs, "skopeo's dir: transport should name blobs by hex digest"
    for name in skopeo_blobs:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes()
        assert sha256_file(ours / name)[0] == Digest(name)

    # Sign it in the registry with kiln, pull again, verify the pulled copy offline.
    monkeypatch.setenv("KILN_PASSWORD", "interop")
    kiln_json(capsys, "key", "generate", "--out", str(tmp_path / "k"))
    kiln_json(capsys, "sign", "--key", str(tmp_path / "k.key"), ref, "--insecure")
    kiln_json(capsys, "verify", "--key", str(tmp_path / "k.pub"), ref, "--insecure")
    again = kiln_json(capsys, "pull", ref, str(tmp_path / "signed"), "--insecure")
    assert again["signatures"] == [f"sha256-{digest.hex}.sig"]
    verified = kiln_json(
        capsys,
        "verify",
        "--key",
        str(tmp_path / "k.pub"),
        "--identity",
        f"{host}/skopeo/web",
        f"oci:{tmp_path / 'signed'}:v1",
    )
    assert verified["verified"] == [str(digest)]


def test_docker_pulls_and_runs_what_kiln_published(
    published: dict[str, Any], dockerd: PrivateDockerd
) -> None:
    image = f"{published['ref']}:1.0.0"
    # dockerd treats registries on 127.0.0.0/8 as plain-http without --insecure-registry.
    dockerd.cli("pull", image, timeout=300)
    repo_digests = dockerd.cli("image", "inspect", "--format", "{{json .RepoDigests}}", image).stdout
    assert f"{published['ref']}@{published['digest']}" in json.loads(repo_digests)
    port = free_port()
    name = f"kiln-interop-{port}"
    dockerd.cli(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--user",
        "65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/tmp",
        "--network",
        "host",
        "-e",
        f"PORT={port}",
        f"{published['ref']}@{published['digest']}",
    )
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/healthz", attempts=200)
        assert status == 200, body
    finally:
        dockerd.cli("rm", "-f", name, check=False)
