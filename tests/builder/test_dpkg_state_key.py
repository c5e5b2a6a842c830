"""dpkg's state is an input of a build: the SBOM names each closure file's Debian owner, so a
changed ``/var/lib/dpkg`` in the sysroot must invalidate the whole-build cache record
(builder.build) and the warm-run record (kiln.buildrecord), never reuse an SBOM with old owners."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from builder.build import build_image
from builder.cache import BuildCache
from kiln.cmd_sign import build_records
from manifests.image_parse import load_image_manifest
from manifests.layout import OCILayout
from signing.attestation import PredicateKind
from tests.kiln.test_buildrecord import kiln_process

from .test_elf import HOST_LIBDIR, IS_X86_64_DEBIAN

pytestmark = pytest.mark.skipif(not IS_X86_64_DEBIAN, reason="needs an x86_64 Debian host C library")

REPLAYED = "every input as recorded"

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: dpkg-key
version: 1.0.0
contents:
  - closure: {{paths: [/usr/bin/true], sysroot: {root}}}
entrypoint: [/usr/bin/true]
"""


def _status(version: str) -> str:
    return (
        "Package: coreutils\nStatus: install ok installed\nArchitecture: amd64\n"
        f"Version: {version}\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n"
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest and a test sysroot with /usr/bin/true, the C library and a dpkg database."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the owner index's own cache
    root = tmp_path / "root"
    for src, dst in (
        (Path("/usr/bin/true"), "usr/bin/true"),
        (HOST_LIBDIR / "libc.so.6", "usr/lib/x86_64-linux-gnu/libc.so.6"),
        (HOST_LIBDIR / "ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    ):
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / dst)
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "coreutils.list").write_text("/usr\n/usr/bin\n/usr/bin/true\n")
    (info / "libc6:amd64.list").write_text("/usr/lib/x86_64-linux-gnu/libc.so.6\n")
    (root / "var/lib/dpkg/status").write_text(_status("9.1-1"))
    (tmp_path / "image.yaml").write_text(MANIFEST.format(root=root))
    _settle()
    return tmp_path


def _settle() -> None:
    time.sleep(0.06)  # past kiln.buildrecord's racy window for the files just written


def _owner_of_true(out: Path) -> str:
    layout = OCILayout.open(out)
    records = build_records(layout, layout.resolve(None).digest)
    sbom = json.loads(records[PredicateKind.SPDX])
    packages = {f"{p['name']} {p.get('versionInfo', '')}".strip() for p in sbom["packages"]}
    coreutils = [p for p in packages if p.startswith("coreutils")]
    assert len(coreutils) == 1, packages
    return coreutils[0]


def _reinstall(project: Path, version: str) -> None:
    """What dpkg does on an upgrade: a new status file, renamed into place."""
    status = project / "root/var/lib/dpkg/status"
    new = status.with_name("status-new")
    new.write_text(_status(version))
    os.replace(new, status)
    _settle()


def test_a_changed_dpkg_status_invalidates_the_cached_build(project: Path) -> None:
    cache = BuildCache(project / "cache")
    manifest = load_image_manifest(project / "image.yaml")
    first = build_image(manifest, output=project / "o1", cache=cache)
    assert "9.1-1" in _owner_of_true(project / "o1")
    again = build_image(manifest, output=project / "o2", cache=cache)
    assert again.digest == first.digest
    _reinstall(project, "9.4-3")
    after = build_image(manifest, output=project / "o3", cache=cache)
    assert "9.4-3" in _owner_of_true(project / "o3")
    assert after.digest == first.digest  # the image itself is the same; its SBOM is not


def test_a_new_dpkg_list_file_invalidates_the_cached_build(project: Path) -> None:
    """dpkg also rewrites ``status`` whenever it adds a ``.list`` file; the key does not rely on it."""
    cache = BuildCache(project / "cache")
    manifest = load_image_manifest(project / "image.yaml")
    said: list[str] = []
    build_image(manifest, output=project / "o1", cache=cache)
    build_image(manifest, output=project / "o2", cache=cache, progress=said.append)
    assert any("unchanged since the last build" in m for m in said)
    info = project / "root/var/lib/dpkg/info"
    (info / "coreutils-extra.list").write_text("/usr/share/doc/coreutils-extra\n")
    _settle()
    said.clear()
    build_image(manifest, output=project / "o3", cache=cache, progress=said.append)
    assert not any("unchanged since the last build" in m for m in said)


def _cli_build(project: Path, out: str, capsys: pytest.CaptureFixture[str]) -> bool:
    argv = ["build", str(project / "image.yaml"), "-o", str(project / out), "--force"]
    return REPLAYED in kiln_process([*argv, "--cache-dir", str(project / "cache"), "--json"]).stderr


def test_a_changed_dpkg_status_is_noticed_by_the_warm_run_record(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not _cli_build(project, "out", capsys)
    _settle()
    assert _cli_build(project, "out", capsys), "an unchanged rebuild is replayed"
    # Another output: a new warm-run record, written by a run whose build came whole from the
    # cache and so never read dpkg's files itself.
    assert not _cli_build(project, "other", capsys)
    _settle()
    assert _cli_build(project, "other", capsys)
    _reinstall(project, "9.4-3")
    assert not _cli_build(project, "out", capsys)
    assert not _cli_build(project, "other", capsys)
    assert "9.4-3" in _owner_of_true(project / "out")
    assert "9.4-3" in _owner_of_true(project / "other")
