"""One manifest, two platforms, from the real archive: each platform's image is made from its own
architecture's packages, and a host file of the wrong machine is refused naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder.debian.cache import default_cache
from kiln.cli import main
from manifests.debianlock import DebianLock
from manifests.digest import Digest
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import OCIIndex, OCIManifest
from tests.builder.debian.records import sbom_of

pytestmark = pytest.mark.integration

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: hello-debian
version: 1.0.0
platforms: [linux/amd64, linux/arm64]
contents:
  - debian:
      suite: bookworm
      packages: [hello]
{extra}accounts: {{user: app, uid: 65532, gid: 65532}}
entrypoint: [/usr/bin/hello]
"""


def test_two_platform_index_from_one_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "hello.yaml"
    m.write_text(MANIFEST.format(extra=""))
    assert main(["lock", str(m), "-q"]) == 0
    lock = DebianLock.from_bytes(m.with_suffix(".lock").read_bytes())
    assert set(lock.packages) == {"amd64", "arm64"}
    libc = {arch: next(p for p in pkgs if p.name == "libc6") for arch, pkgs in lock.packages.items()}
    assert libc["amd64"].filename.endswith("_amd64.deb")
    assert libc["arm64"].filename.endswith("_arm64.deb")
    assert libc["amd64"].sha256 != libc["arm64"].sha256
    capsys.readouterr()
    assert main(["build", str(m), "-o", str(tmp_path / "out"), "--json", "-q", "--no-cache"]) == 0
    digest = Digest.parse(json.loads(capsys.readouterr().out)["digest"])
    layout = OCILayout.open(tmp_path / "out")
    top = layout.resolve("1.0.0")
    assert top.media_type == MediaType.OCI_INDEX
    assert top.digest == digest
    index = OCIIndex.from_bytes(layout.read_blob(digest))
    assert [str(e.platform) for e in index.manifests] == ["linux/amd64", "linux/arm64"]
    for entry in index.manifests:
        assert entry.platform is not None
        man = OCIManifest.from_bytes(layout.read_blob(entry.digest))
        config = json.loads(layout.read_blob(man.config.digest))
        assert config["architecture"] == entry.platform.architecture
        sbom = sbom_of(tmp_path / "out", entry.digest)
        purls = [r["referenceLocator"] for p in sbom["packages"] for r in p.get("externalRefs", ())]
        assert any(
            u.startswith("pkg:deb/debian/libc6@") and f"arch={entry.platform.architecture}&" in u
            for u in purls
        )
    assert index.manifests[0].digest != index.manifests[1].digest


def test_a_host_binary_in_a_two_platform_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tmp_path / "hello.yaml"
    shutil.copyfile(shutil.which("true") or "/bin/true", tmp_path / "hostbin")
    m.write_text(MANIFEST.format(extra="  - files:\n      - {src: hostbin, dst: /app/true}\n"))
    assert main(["lock", str(m), "-q"]) == 0
    assert main(["build", str(m), "-o", str(tmp_path / "out"), "-q", "--no-cache"]) == 1
    assert "/app/true: an ELF64 x86-64 file in a linux/arm64 image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert default_cache().is_dir()
