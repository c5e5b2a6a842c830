from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from builder.build import build_image, docker_repo_tag
from builder.cache import BuildCache, CacheKey
from builder.errors import BuildError, SourceError
from builder.inspect import format_tree, inspect_image
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.image import HealthCheck, HttpCheck, Port, TreeSource
from manifests.layout import OCILayout
from manifests.mediatypes import Compression
from manifests.oci import OCIManifest

from .helpers import files, manifest, write


def host(base: Path) -> None:
    write(base, "app/server", "#!/bin/sh\nexec sleep 1\n", 0o755)
    write(base, "app/static/index.html", "<h1>hi</h1>" * 100)
    write(base, "libs/libfoo.so.1", os.urandom(20000), 0o755)
    write(base, "libs/share/data.txt", "data")


def image(base: Path, **kw: object):  # type: ignore[no-untyped-def]
    return manifest(
        base,
        TreeSource(src="libs", dst="/usr/lib/foo"),
        files(("app/server", "/app/server"), ("app/static/", "/app/static/")),
        entrypoint=("/app/server",),
        ports=(Port(number=8080),),
        writable=("/tmp",),
        volumes=("/data",),
        health=HealthCheck(check=HttpCheck(port=8080, path="/healthz")),
        env=(("MODE", "prod"),),
        labels=(("org.example.team", "web"),),
        **kw,
    )


def test_build_oci_layout(tmp_path: Path) -> None:
    host(tmp_path)
    out = tmp_path / "out"
    msgs: list[str] = []
    r = build_image(image(tmp_path), output=out, source_date_epoch=1_700_000_000, progress=msgs.append)
    assert msgs
    layout = OCILayout.open(out)
    desc = layout.resolve("1.0.0")
    assert desc.digest == r.digest
    assert desc.platform is not None
    assert str(desc.platform) == "linux/amd64"
    man = OCIManifest.from_bytes(layout.read_blob(r.digest))
    assert man.annotations["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert man.annotations["dev.kiln.compression"] == r.compression
    assert all(d.annotations["dev.kiln.compression"] == r.compression for d in man.layers)
    assert [layer.category for layer in r.layers] == ["system", "runtime", "app"]
    cfg = json.loads(layout.read_blob(r.config_digest))
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    c = cfg["config"]
    assert c["User"] == "1000:1000"
    assert c["Env"][0].startswith("PATH=/usr/local/sbin")
    assert c["Env"][1] == "MODE=prod"
    assert c["Entrypoint"] == ["/app/server"]
    assert c["ExposedPorts"] == {"8080/tcp": {}}
    assert c["Volumes"] == {"/data": {}}
    assert c["Labels"]["org.example.team"] == "web"
    assert c["Labels"]["dev.kiln.read-only"] == "true"
    assert json.loads(c["Labels"]["dev.kiln.writable"]) == ["/tmp"]
    assert json.loads(c["Labels"]["dev.kiln.health"])["path"] == "/healthz"
    assert cfg["rootfs"]["diff_ids"] == [str(layer.diff_id) for layer in r.layers]
    assert r.size == sum(layer.size for layer in r.layers) + man.config.size + len(man.to_bytes())
    by_path = {f.path: f for f in r.files}
    assert by_path["/app/server"].sha256 == Digest.of(b"#!/bin/sh\nexec sleep 1\n")
    assert "/etc/passwd" in by_path
    assert [i.path for i in r.inputs if i.kind == "files"] == ["app/server", "app/static/"]


def test_reproducible_across_checkouts_and_app_change_keeps_other_layers(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "deeper" / "b"
    host(a)
    host(b)
    (b / "libs/libfoo.so.1").write_bytes((a / "libs/libfoo.so.1").read_bytes())
    os.utime(b / "app/server", (1, 1))
    r1 = build_image(image(a), output=tmp_path / "o1")
    r2 = build_image(image(b), output=tmp_path / "o2")
    assert r1.digest == r2.digest
    write(b, "app/server", "#!/bin/sh\nexec sleep 2\n", 0o755)
    r3 = build_image(image(b), output=tmp_path / "o3")
    assert r3.digest != r1.digest
    assert [x.digest for x in r3.layers[:2]] == [x.digest for x in r1.layers[:2]]
    assert r3.layers[2].digest != r1.layers[2].digest


def test_refuses_overwrite_without_force_and_replaces_with_it(tmp_path: Path) -> None:
    host(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(BuildError) as exc:
        build_image(image(tmp_path), output=out)
    assert str(exc.value) == f"{out} already exists (hint: pass --force to replace it)"
    assert (out / "keep").exists()
    build_image(image(tmp_path), output=out, force=True)
    assert not (out / "keep").exists()
    assert (out / "index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "libs", "out"]  # no staging left


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    host(tmp_path)
    m = manifest(tmp_path, files(("app/server", "/x")), files(("missing", "/y")))
    with pytest.raises(SourceError, match=r"contents\[1\].files\[0\].src"):
        build_image(m, output=tmp_path / "out")
    write(tmp_path, "big", b"a" * 100)
    m = manifest(tmp_path, files(("big", "/big")), files(("app/server", "/x")))
    old = tmp_path / "prev.tar"
    old.write_bytes(b"previous")

    def shrink(msg: str) -> None:  # the input changes while the build runs
        (tmp_path / "big").write_bytes(b"a")

    with pytest.raises(SourceError, match="changed size"):
        build_image(m, output=old, fmt="oci-archive", force=True, progress=shrink)
    assert old.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "big", "libs", "prev.tar"]


def test_cache_hit_miss_and_corruption(tmp_path: Path) -> None:
    host(tmp_path)
    cache = BuildCache(tmp_path / "cache")
    r1 = build_image(image(tmp_path), output=tmp_path / "o1", cache=cache)
    assert not any(layer.cached for layer in r1.layers)
    r2 = build_image(image(tmp_path), output=tmp_path / "o2", cache=cache)
    assert all(layer.cached for layer in r2.layers)
    assert r2.digest == r1.digest
    # corrupt the cached runtime blob in place: detected, evicted, rebuilt
    runtime = r1.layers[1]
    blob = cache.blob_path(runtime.digest)
    blob.unlink()  # break the hard link shared with o1 first
    blob.write_bytes(b"\0" * runtime.size)
    r3 = build_image(image(tmp_path), output=tmp_path / "o3", cache=cache)
    assert [layer.cached for layer in r3.layers] == [True, False, True]
    assert r3.digest == r1.digest
    OCILayout.open(tmp_path / "o3").verify_blob(runtime.digest, size=runtime.size)
    library = f"{r1.compression.split('/')[0]}/blocks-1MiB"  # the library and the block scheme
    key = CacheKey(diff_id=runtime.diff_id, compression="gzip", library=library, level=2)
    assert cache.lookup(key) is not None  # re-stored after the rebuild
    # a garbage entry file is ignored and replaced
    entry = next((tmp_path / "cache" / "layers").iterdir())
    entry.write_bytes(b"{not json")
    r4 = build_image(image(tmp_path), output=tmp_path / "o4", cache=cache)
    assert r4.digest == r1.digest
    assert sum(not layer.cached for layer in r4.layers) == 1


def test_compression_change_is_visible(tmp_path: Path) -> None:
    host(tmp_path)
    rg = build_image(image(tmp_path), output=tmp_path / "g")
    rz = build_image(image(tmp_path, compression=Compression.ZSTD), output=tmp_path / "z")
    assert [x.diff_id for x in rg.layers] == [x.diff_id for x in rz.layers]
    assert rz.compression.startswith("zstandard-")
    assert rz.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    info = inspect_image(tmp_path / "z")
    assert info["annotations"]["dev.kiln.compression"] == rz.compression


def test_archives_round_trip_and_are_deterministic(tmp_path: Path) -> None:
    host(tmp_path)
    r = build_image(image(tmp_path), output=tmp_path / "dir")
    ra = build_image(image(tmp_path), output=tmp_path / "a.tar", fmt="oci-archive")
    ra2 = build_image(image(tmp_path), output=tmp_path / "a2.tar", fmt="oci-archive")
    assert ra.digest == r.digest
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "a2.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        names = tf.getnames()
        assert {m.mtime for m in tf.getmembers()} == {0}
        for name in names:
            member = tf.getmember(name)
            if member.isfile() and name != "index.json":
                assert tf.extractfile(member).read() == (tmp_path / "dir" / name).read_bytes()  # type: ignore[union-attr]
        # The archive's index lists the image alone (podman load takes one manifest); the layout
        # also lists the SBOM and provenance artifacts about it (ADR 0018).
        archived = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
    layout_index = json.loads((tmp_path / "dir" / "index.json").read_bytes())
    image_entries = [m for m in layout_index["manifests"] if m["digest"] == str(r.digest)]
    assert archived["manifests"] == image_entries
    assert len(layout_index["manifests"]) == 4  # image, 2 artifacts, the sha256-<hex> referrers index
    assert "oci-layout" in names
    assert "index.json" in names
    assert ra2.digest == r.digest

    rd = build_image(image(tmp_path), output=tmp_path / "d.tar", fmt="docker-archive")
    with tarfile.open(tmp_path / "d.tar") as tf:
        dm = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert dm[0]["RepoTags"] == ["hello:1.0.0"]
        assert dm[0]["Config"] == f"blobs/sha256/{rd.config_digest.hex}"
        for layer_name, layer in zip(dm[0]["Layers"], rd.layers, strict=True):
            data = tf.extractfile(layer_name).read()  # type: ignore[union-attr]
            assert Digest.of(data) == layer.diff_id == layer.digest  # uncompressed layers
            with tarfile.open(fileobj=io.BytesIO(data)) as layer_tar:
                assert layer_tar.getmembers()
    assert [x.diff_id for x in rd.layers] == [x.diff_id for x in r.layers]

    infos = [inspect_image(tmp_path / n) for n in ("dir", "a.tar", "d.tar")]
    assert infos[0]["digest"] == infos[1]["digest"] == str(r.digest)
    assert infos[0]["files"] == infos[1]["files"] == infos[2]["files"]
    assert infos[0]["config"]["user"] == "1000:1000"
    assert infos[0]["config"]["ports"] == ["8080/tcp"]
    f = {x["path"]: x for x in infos[0]["files"]}
    assert f["/app/server"] == {
        "path": "/app/server",
        "type": "file",
        "mode": "0755",
        "owner": "0:0",
        "size": 23,
    }
    assert f["/tmp"]["mode"] == "1777"
    assert [layer["files"] for layer in infos[0]["layers"]] == [layer.files for layer in r.layers]
    tree = format_tree(infos[0]["files"])
    assert "├── server" in tree
    assert "drwxrwxrwt" in tree


def test_inspect_detects_tampering(tmp_path: Path) -> None:
    host(tmp_path)
    r = build_image(image(tmp_path), output=tmp_path / "o")
    blob = tmp_path / "o" / "blobs" / "sha256" / r.layers[2].digest.hex
    data = bytearray(blob.read_bytes())
    data[-12] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises((VerificationError, DocumentError)):
        inspect_image(tmp_path / "o")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(DocumentError, match="neither an OCI layout nor a docker archive"):
        inspect_image(empty)


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [("Hello", "1.0.0", "hello:1.0.0"), ("a/b", "1.0+build.5", "a/b:1.0-build.5"), ("x", "", "x:latest")],
)
def test_docker_repo_tag(name: str, version: str, expected: str) -> None:
    assert docker_repo_tag(name, version) == expected


@pytest.mark.parametrize(
    ("out_rel", "named"),
    [
        ("", "the manifest"),  # the manifest's own directory
        ("kiln.yaml", "the manifest"),  # the manifest file itself (an archive would overwrite it)
        ("src", "contents[0].tree.src"),
        ("link-to-src", "contents[0].tree.src"),
        ("one", "contents[1].files[0].src"),
    ],
)
def test_force_never_replaces_the_builds_own_manifest_or_sources(
    tmp_path: Path, out_rel: str, named: str
) -> None:
    write(tmp_path, "kiln.yaml", "kind: Image\n")
    write(tmp_path, "src/app.txt", "app")
    write(tmp_path, "one", "one")
    (tmp_path / "link-to-src").symlink_to("src")
    m = manifest(tmp_path, TreeSource(src="src", dst="/app"), files(("one", "/one")))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    out = tmp_path / out_rel if out_rel else tmp_path
    with pytest.raises(BuildError, match=r"would delete it") as exc:
        build_image(m, output=out, force=True)
    assert named in str(exc.value)
    assert (
        sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    )  # nothing lost, nothing left
    # Beside the sources, or inside one (its content is then read before the output appears), it builds.
    build_image(m, output=tmp_path / "out", force=True)
    assert (tmp_path / "src/app.txt").read_text() == "app"


@pytest.mark.parametrize("out", ["", ".", "/", "sub/.."])
def test_an_output_path_that_names_nothing_is_refused_before_anything_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "src/app.txt", "app")
    m = manifest(tmp_path / "src", TreeSource(src=".", dst="/app"))
    with pytest.raises(BuildError, match="names no file or directory"):
        build_image(m, output=out, force=True)
    assert (tmp_path / "src/app.txt").read_text() == "app"


def test_an_output_that_cannot_be_made_is_named_not_kilns_staging_directory(tmp_path: Path) -> None:
    write(tmp_path, "src/app.txt", "app")
    m = manifest(tmp_path, TreeSource(src="src", dst="/app"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BuildError, match=rf"^cannot write {tmp_path}/afile/out: \w"):
        build_image(m, output=tmp_path / "afile/out")
