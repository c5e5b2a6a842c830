"""Acceptance: real, independent tools read what kiln writes: oci-image-tool, skopeo, umoci,
``docker load`` + ``docker run`` on a private engine, and runc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.testing import PrivateDockerd, free_port, wait_http
from tests.integration.helpers import build_json, copy_example
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Both examples, built once per module as an OCI layout (and python-web as a docker-archive)."""
    root = tmp_path_factory.mktemp("built")
    out: dict[str, dict[str, object]] = {}
    for name in ("hello-static", "python-web"):
        manifest = copy_example(name, root / "src")
        out[name] = build_json(manifest, root / name, "--cache-dir", str(root / "cache"))
    manifest = copy_example("python-web", root / "src2")
    out["python-web-docker"] = build_json(
        manifest, root / "web.tar", "--format", "docker-archive", "--cache-dir", str(root / "cache")
    )
    return out


def _layout(built: dict[str, dict[str, object]], name: str) -> str:
    return str(built[name]["output"])


@pytest.mark.parametrize("name", ["hello-static", "python-web"])
def test_oci_image_tool_validates_the_layout(
    built: dict[str, dict[str, object]], name: str, tmp_path: Path
) -> None:
    require_tool("oci-image-tool", "oci-image-tool")
    # Debian's oci-image-tool says `--type imageLayout` is unimplemented; `--type image` validates the
    # layout by checking every reference in index.json (manifest, config, layers, media types).
    # Restricted to the image's entry: this 2017 tool predates OCI 1.1, refuses the empty config
    # (application/vnd.oci.empty.v1+json) of the SBOM and provenance artifacts (ADR 0018), and its
    # --ref filter matches entries without a ref.name too. So it checks a copy of the layout whose
    # index.json lists the image alone (blobs hard-linked, bytes unchanged).
    source = Path(_layout(built, name))
    layout = tmp_path / "image-only"
    shutil.copytree(source, layout, copy_function=os.link)
    index = json.loads((source / "index.json").read_bytes())
    index["manifests"] = [d for d in index["manifests"] if d["digest"] == built[name]["digest"]]
    assert len(index["manifests"]) == 1
    (layout / "index.json").unlink()
    (layout / "index.json").write_text(json.dumps(index))
    proc = subprocess.run(
        ["oci-image-tool", "validate", "--type", "image", str(layout)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation succeeded" in proc.stdout + proc.stderr


def test_skopeo_reads_the_layout_with_our_digest(built: dict[str, dict[str, object]]) -> None:
    require_tool("skopeo", "skopeo")
    info = built["python-web"]
    ref = f"oci:{info['output']}:{info['name']}:{info['image_version']}"  # the full reference
    proc = subprocess.run(["skopeo", "inspect", ref], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(proc.stdout)
    assert data["Digest"] == info["digest"]
    assert len(data["Layers"]) == len(info["layers"])  # type: ignore[arg-type]
    assert data["Architecture"] == "amd64"


def test_umoci_unpacks_python_web(built: dict[str, dict[str, object]], tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    require_root("umoci unpack without --rootless")
    info = built["python-web"]
    bundle = tmp_path / "bundle"
    subprocess.run(
        [
            "umoci",
            "unpack",
            "--image",
            f"{info['output']}:{info['name']}:{info['image_version']}",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rootfs = bundle / "rootfs"
    assert (rootfs / "app" / "server.py").is_file()
    assert (rootfs / "usr" / "bin" / "python3.11").stat().st_mode & 0o111
    passwd = (rootfs / "etc" / "passwd").read_text()
    assert ":65532:65532:" in passwd
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"]["uid"] == 65532


def test_docker_load_and_run_read_only_as_non_root(
    built: dict[str, dict[str, object]], dockerd: PrivateDockerd
) -> None:
    info = built["python-web-docker"]
    loaded = dockerd.cli("load", "-i", str(info["output"]), timeout=300)
    tag = f"{info['name']}:{info['image_version']}"
    assert tag in loaded.stdout
    port = free_port()
    name = f"kiln-web-{port}"
    dockerd.cli(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--user",
        "65532:65532",
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/tmp",
        "-e",
        f"PORT={port}",
        tag,
    )
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/healthz", attempts=200)
        assert status == 200
        assert body.strip() == b"ok"
        user = dockerd.cli("exec", name, "/usr/bin/python3", "-c", "import os; print(os.getuid())")
        assert user.stdout.strip() == "65532"
        # The root really is read-only.
        probe = dockerd.cli("exec", name, "/usr/bin/python3", "-c", "open('/app/x', 'w')", check=False)
        assert probe.returncode != 0
        assert "Read-only file system" in probe.stderr
    finally:
        dockerd.cli("rm", "-f", name, check=False)


def test_runc_runs_hello_static(built: dict[str, dict[str, object]], tmp_path: Path) -> None:
    require_tool("runc", "runc")
    require_tool("umoci", "umoci")
    require_root("runc as root")
    info = built["hello-static"]
    bundle = tmp_path / "bundle"
    subprocess.run(
        [
            "umoci",
            "unpack",
            "--image",
            f"{info['output']}:{info['name']}:{info['image_version']}",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = False
    cfg["root"]["readonly"] = True
    cfg_path.write_text(json.dumps(cfg))
    cid = f"kiln-hello-{tmp_path.name[-12:]}"
    proc = subprocess.run(
        ["runc", "--root", str(tmp_path / "runc-state"), "run", "-b", str(bundle), cid],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    subprocess.run(
        ["runc", "--root", str(tmp_path / "runc-state"), "delete", "-f", cid],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello from kiln" in proc.stdout
