"""The build records what the image is made of: an SPDX SBOM and a SLSA provenance statement,
stored as blobs beside the image and named by annotations on its index entry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import builder.dpkg
from builder.build import BuildResult, build_image
from builder.cache import BuildCache
from kiln.cmd_sign import build_records
from manifests.image_parse import load_image_manifest
from manifests.layout import OCILayout
from signing.attestation import PredicateKind

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: bom-test
version: 0.3.0
contents:
  - closure: {paths: [/usr/bin/true]}
  - files:
      - {src: app/run.sh, dst: /app/run.sh, mode: "0755"}
entrypoint: [/app/run.sh]
"""


def _build(tmp: Path, out: str, *, cache: BuildCache | None = None, epoch: int = 0) -> BuildResult:
    (tmp / "app").mkdir(exist_ok=True)
    (tmp / "app" / "run.sh").write_text("#!/bin/sh\nexec /usr/bin/true\n")
    (tmp / "image.yaml").write_text(MANIFEST)
    manifest = load_image_manifest(tmp / "image.yaml")
    return build_image(manifest, output=tmp / out, cache=cache, source_date_epoch=epoch)


def _records(result: BuildResult) -> tuple[dict[str, object], dict[str, object], dict[str, str]]:
    layout = OCILayout.open(result.output)
    desc = layout.resolve(None)
    records = build_records(layout, desc.digest)  # the referrers of the image (ADR 0018)
    sbom = json.loads(records[PredicateKind.SPDX])
    prov = json.loads(records[PredicateKind.SLSAPROVENANCE])
    return sbom, prov, dict(desc.annotations)


def test_sbom_lists_every_file_and_the_host_packages(tmp_path: Path) -> None:
    result = _build(tmp_path, "out")
    sbom, _, _ = _records(result)
    assert sbom["spdxVersion"] == "SPDX-2.3"
    files = sbom["files"]
    assert isinstance(files, list)
    by_name = {f["fileName"]: f for f in files}
    assert set(by_name) == {f".{f.path}" for f in result.files}  # SPDX file names are "./..."
    run_sh = hashlib.sha256(b"#!/bin/sh\nexec /usr/bin/true\n").hexdigest()
    assert {"algorithm": "SHA256", "checksumValue": run_sh} in by_name["./app/run.sh"]["checksums"]
    package_names = {p["name"] for p in sbom["packages"]}  # type: ignore[union-attr]
    assert "coreutils" in " ".join(package_names)  # /usr/bin/true
    assert "libc6" in " ".join(package_names)


def test_provenance_names_the_image_the_manifest_and_relative_file_inputs(tmp_path: Path) -> None:
    result = _build(tmp_path, "out", epoch=1_700_000_000)
    _, prov, _ = _records(result)
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    assert prov["subject"] == [{"name": "bom-test:0.3.0", "digest": {"sha256": result.digest.hex}}]
    definition = prov["predicate"]["buildDefinition"]  # type: ignore[index]
    manifest_sha = hashlib.sha256((tmp_path / "image.yaml").read_bytes()).hexdigest()
    assert definition["externalParameters"]["manifest"] == {
        "uri": "image.yaml",
        "digest": {"sha256": manifest_sha},
    }
    names = {d["name"]: d for d in definition["resolvedDependencies"]}
    assert "app/run.sh" in names  # relative to the manifest: no checkout path in the record
    assert "uri" not in names["app/run.sh"]
    assert str(tmp_path) not in json.dumps(prov)
    assert names["/usr/bin/true"]["uri"] == "file:///usr/bin/true"
    assert names["/usr/bin/true"]["annotations"]["kind"] == "closure"
    assert names["/usr/bin/true"]["annotations"]["package"].startswith("coreutils")
    assert names["/usr/bin/true"]["annotations"]["purl"].startswith("pkg:deb/debian/coreutils@")
    meta = prov["predicate"]["runDetails"]["metadata"]  # type: ignore[index]
    assert meta["startedOn"] == "2023-11-14T22:13:20Z"


def test_records_are_reproducible_across_checkouts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    a = _build(tmp_path / "a", "out")
    b = _build(tmp_path / "elsewhere" / "b", "out")
    assert a.digest == b.digest
    assert _records(a)[2] == _records(b)[2]


def test_owner_answers_come_from_the_cache_when_dpkg_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = BuildCache(tmp_path / "cache")
    first = _build(tmp_path, "one", cache=cache)
    assert list((tmp_path / "xdg" / "kiln" / "dpkg-index").glob("*.json"))

    def no_dpkg(*_args: object, **_kw: object) -> None:
        raise AssertionError("dpkg's database was read although the cache had every answer")

    monkeypatch.setattr(builder.dpkg.DpkgIndex, "_load", no_dpkg)
    monkeypatch.setattr(builder.dpkg.DpkgIndex, "owning_package_of_host_path", no_dpkg)
    second = _build(tmp_path, "two", cache=cache)
    assert _records(first)[2] == _records(second)[2]


def test_an_image_without_accounts_still_runs_as_non_root(tmp_path: Path) -> None:
    result = _build(tmp_path, "out")
    layout = OCILayout.open(result.output)
    config = json.loads(layout.read_blob(result.config_digest, limit=1 << 20))
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Labels"]["dev.kiln.user"] == "65532:65532"


def test_sbom_packages_hook_and_the_name_are_part_of_the_cached_build(tmp_path: Path) -> None:
    """Extra SBOM packages (the Debian lock's hook) and --name change the records, so a cached
    build is reused only when they are the same."""
    from builder.attestations import SbomPackage

    cache = BuildCache(tmp_path / "cache")
    _build(tmp_path, "one", cache=cache)
    (tmp_path / "app").mkdir(exist_ok=True)
    manifest = load_image_manifest(tmp_path / "image.yaml")
    extra = SbomPackage(name="zlib1g", version="1:1.2.13", purl="pkg:deb/debian/zlib1g@1:1.2.13?arch=amd64")
    two = build_image(
        manifest, output=tmp_path / "two", cache=cache, sbom_packages=[extra], name="reg.example/bom:9"
    )
    sbom, prov, _ = _records(two)
    assert any(p["name"] == "zlib1g" for p in sbom["packages"])  # type: ignore[union-attr]
    assert prov["subject"][0]["name"] == "reg.example/bom:9"  # type: ignore[index]
    three = build_image(manifest, output=tmp_path / "three", cache=cache)
    sbom, prov, _ = _records(three)
    assert not any(p["name"] == "zlib1g" for p in sbom["packages"])  # type: ignore[union-attr]
    assert prov["subject"][0]["name"] == "bom-test:0.3.0"  # type: ignore[index]
