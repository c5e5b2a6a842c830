"""Safe unpack: the attack table (one hostile tarball per attack), OCI semantics, fingerprints, fuzz."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.store import ContentStore, LayoutSource
from agent.unpack import Layer, UnpackLimits, root_fingerprint, unpack_image, unpack_layers
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.mediatypes import MediaType
from tests.agent.imagekit import M, layer_file, raw_layer, tar_bytes, write_image

ATTACKS = Path(__file__).resolve().parents[1] / "data" / "attacks"
PLANTED = Path("/tmp/kiln-attack-planted")
SMALL = UnpackLimits(max_file_bytes=1 << 20, max_entries=1000)


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("attack_generator", ATTACKS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attack_files_are_what_the_generator_writes() -> None:
    gen = _generator()
    for name, make in gen.ATTACKS.items():
        assert (ATTACKS / name).read_bytes() == make(), f"{name} is stale: run tests/data/attacks/generate.py"


@contextlib.contextmanager
def _no_planting() -> Iterator[None]:
    with contextlib.suppress(FileNotFoundError):
        PLANTED.unlink()
    yield
    assert not PLANTED.exists(), "an attack planted a file outside the root"


# file -> the refusal after "layer <digest>: "
ATTACK_TABLE = {
    "dotdot-path.tar": "member '../../../../../../tmp/kiln-attack-planted': member name has a '..' component",
    "dotdot-inner-path.tar": (
        "member 'usr/../../../../../../tmp/kiln-attack-planted': member name has a '..' component"
    ),
    "absolute-path.tar": "member '/tmp/kiln-attack-planted': absolute member name",
    "pax-path-traversal.tar": (
        "member '../../../../../../tmp/kiln-attack-planted': member name has a '..' component"
    ),
    "gnu-longname-traversal.tar": (
        f"member '{'a' * 120}/../../../../../../../tmp/kiln-attack-planted': member name has a '..' component"
    ),
    "absolute-symlink-write-through.tar": (
        "member 'escape/tmp/kiln-attack-planted': goes through the symlink /escape"
    ),
    "relative-symlink-escape.tar": "member 'etc/up': symlink target '../../../../../../tmp' escapes the root",
    "inside-symlink-write-through.tar": "member 'alias/f': goes through the symlink /alias",
    "hardlink-outside.tar": "member 'passwd': hardlink target has a '..' component",
    "hardlink-absolute.tar": "member 'passwd': absolute hardlink target",
    "hardlink-through-symlink.tar": "member 'passwd': goes through the symlink /hostetc",
    "hardlink-to-directory.tar": "member 'h': hardlink target /d is not a regular file",
    "device-node.tar": "member 'dev/mem': device nodes are not allowed",
    "block-device.tar": "member 'dev/sda': device nodes are not allowed",
    "fifo.tar": "member 'run/pipe': FIFOs are not allowed",
    "setuid-without-label.tar": (
        "member 'usr/bin/su': setuid/setgid mode 4755 without the dev.kiln.allow-setuid label"
    ),
    "setgid-without-label.tar": (
        "member 'usr/bin/wall': setuid/setgid mode 2755 without the dev.kiln.allow-setuid label"
    ),
    "size-bomb.tar.gz": "member 'bomb': file of 2097152 bytes exceeds the 1048576-byte cap",
    "too-many-entries.tar.gz": "more than 1000 tar entries",
    "whiteout-through-symlink.tar": (
        "member 'escape/.wh.kiln-attack-planted': goes through the symlink /escape"
    ),
    "whiteout-dotdot.tar": "member '../.wh.kiln-attack-planted': member name has a '..' component",
    "whiteout-parent.tar": "member 'etc/.wh..': whiteout of '.'",
    "pax-header-bomb.tar": "extended header of 67108864 bytes exceeds the 1048576-byte cap",
    "unsupported-type.tar": "member 'sparse': unsupported tar member type b'S'",
}


def test_the_table_covers_every_attack_file() -> None:
    on_disk = {p.name for p in ATTACKS.iterdir() if p.name != "generate.py"}
    assert on_disk == set(ATTACK_TABLE)


@pytest.mark.parametrize(("name", "refusal"), sorted(ATTACK_TABLE.items()), ids=sorted(ATTACK_TABLE))
def test_attack_is_refused(tmp_path: Path, name: str, refusal: str) -> None:
    media = MediaType.OCI_LAYER_GZIP if name.endswith(".gz") else MediaType.OCI_LAYER_TAR
    layer = raw_layer(ATTACKS / name, media)
    dest = tmp_path / "root"
    with _no_planting(), pytest.raises(VerificationError) as err:
        unpack_layers([layer], dest, limits=SMALL)
    assert err.value.reason == "unpack"
    assert err.value.message == f"layer {layer.digest}: {refusal}"
    assert err.value.hint == "the image's layers are unsafe; nothing was unpacked"
    assert not dest.exists()
    assert os.listdir(tmp_path) == []


def test_whiteout_through_a_symlink_deletes_nothing_outside(tmp_path: Path) -> None:
    PLANTED.write_bytes(b"victim")
    try:
        layer = raw_layer(ATTACKS / "whiteout-through-symlink.tar", MediaType.OCI_LAYER_TAR)
        with pytest.raises(VerificationError, match="goes through the symlink /escape"):
            unpack_layers([layer], tmp_path / "root")
        assert PLANTED.read_bytes() == b"victim"
    finally:
        PLANTED.unlink()


def test_a_symlink_planted_by_an_earlier_layer_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = [
        layer_file(tmp_path, tar_bytes([M("d", "dir")])),
        layer_file(tmp_path, tar_bytes([M("d", "symlink", target=str(outside))])),  # replaces the dir
        layer_file(tmp_path, tar_bytes([M("d/evil", data=b"x")])),
    ]
    with pytest.raises(VerificationError, match="member 'd/evil': goes through the symlink /d"):
        unpack_layers(layers, tmp_path / "root")
    assert os.listdir(outside) == []
    assert not (tmp_path / "root").exists()


def test_total_uncompressed_bytes_are_capped_across_layers(tmp_path: Path) -> None:
    layers = [
        layer_file(tmp_path, tar_bytes([M(f"f{i}", data=b"z" * 30_000)]), MediaType.OCI_LAYER_GZIP)
        for i in range(3)
    ]
    with pytest.raises(VerificationError, match="image exceeds 100000 uncompressed bytes") as err:
        unpack_layers(layers, tmp_path / "root", limits=UnpackLimits(max_total_bytes=100_000))
    assert str(layers[2].digest) in err.value.message
    assert not (tmp_path / "root").exists()


def test_a_layer_whose_bytes_differ_from_its_digest_is_refused(tmp_path: Path) -> None:
    good = layer_file(tmp_path, tar_bytes([M("f", data=b"x")]))
    forged = Layer(
        digest=Digest.of(b"something else"), media_type=good.media_type, diff_id=None, path=good.path
    )
    with pytest.raises(VerificationError, match="content hashes to") as err:
        unpack_layers([forged], tmp_path / "root")
    assert err.value.reason == "digest"
    assert not (tmp_path / "root").exists()


def test_a_layer_not_matching_its_diff_id_is_refused(tmp_path: Path) -> None:
    good = layer_file(tmp_path, tar_bytes([M("f", data=b"x")]), MediaType.OCI_LAYER_ZSTD)
    forged = Layer(
        digest=good.digest, media_type=good.media_type, diff_id=Digest.of(b"other"), path=good.path
    )
    with pytest.raises(VerificationError, match="does not match diff_id") as err:
        unpack_layers([forged], tmp_path / "root")
    assert err.value.reason == "digest"


@pytest.mark.parametrize(
    ("media_type", "blob", "message"),
    [
        (MediaType.OCI_LAYER_GZIP, b"\x1f\x8b\x08\x00not really gzip", "cannot read the layer"),
        (MediaType.OCI_LAYER_ZSTD, b"\x28\xb5\x2f\xfd garbage", "cannot read the layer"),
        (MediaType.OCI_LAYER_TAR, b"x" * 512, "bad checksum field in a tar header"),
        (MediaType.OCI_LAYER_TAR, b"g" + tar_bytes([M("f")])[1:], "tar header checksum mismatch"),
        (MediaType.OCI_LAYER_TAR, tar_bytes([M("f", data=b"abc" * 400)])[:1024], "tar stream is truncated"),
        ("application/x-rar", b"", "unsupported layer media type 'application/x-rar'"),
    ],
    ids=["bad-gzip", "bad-zstd", "bad-checksum-field", "bad-checksum", "truncated", "unknown-media-type"],
)
def test_malformed_layers_are_refused(tmp_path: Path, media_type: str, blob: bytes, message: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with pytest.raises(VerificationError, match=message) as err:
        unpack_layers([raw_layer(path, media_type)], tmp_path / "root")
    assert err.value.reason == "unpack"
    assert not (tmp_path / "root").exists()


# -- what a valid image becomes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type", [MediaType.OCI_LAYER_TAR, MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ZSTD]
)
def test_layers_unpack_with_oci_semantics(tmp_path: Path, media_type: str) -> None:
    l1 = tar_bytes(
        [
            M("./usr", "dir"),
            M("usr/bin", "dir", mode=0o750, uid=0, gid=10),
            M("usr/bin/app", data=b"app-v1", mode=0o755, uid=1000, gid=1000),
            M("usr/bin/gone", data=b"x"),
            M("usr/lib64", "symlink", target="/usr/lib"),
            M("usr/lib/libc.so", data=b"libc"),  # parent directory implied
            M("usr/lib/libc.so.6", "hardlink", target="usr/lib/libc.so"),
            M("opaque", "dir"),
            M("opaque/old", data=b"old"),
            M("replaced", "dir"),
            M("replaced/inner", data=b"i"),
            M("link-then-dir", "symlink", target="/etc"),
            M("var/mail", "dir", mode=0o2775),  # setgid directory: kept
        ]
    )
    l2 = tar_bytes(
        [
            M("usr/bin/app", data=b"app-v2", mode=0o700),
            M("usr/bin/.wh.gone"),
            M("opaque/.wh..wh..opq"),
            M("opaque/new", data=b"new"),
            M("replaced", data=b"now a file"),
            M("link-then-dir", "dir"),
            M("link-then-dir/f", data=b"f"),
            M("absent/.wh.nothing"),  # a whiteout for a missing directory: nothing to do
        ]
    )
    root = tmp_path / "root"
    unpack_layers(
        [layer_file(tmp_path, l1, media_type), layer_file(tmp_path, l2, media_type)],
        root,
        mountpoints=("/proc", "/data/cache"),
    )
    app = root / "usr/bin/app"
    assert app.read_bytes() == b"app-v2"
    assert stat.S_IMODE(app.stat().st_mode) == 0o700
    assert (app.stat().st_uid, app.stat().st_gid) == (0, 0)
    assert stat.S_IMODE((root / "usr/bin").stat().st_mode) == 0o750
    assert (root / "usr/bin").stat().st_gid == 10
    assert not (root / "usr/bin/gone").exists()
    assert os.readlink(root / "usr/lib64") == "/usr/lib"
    assert (root / "usr/lib/libc.so.6").stat().st_ino == (root / "usr/lib/libc.so").stat().st_ino
    assert sorted(os.listdir(root / "opaque")) == ["new"]
    assert (root / "replaced").read_bytes() == b"now a file"
    assert not (root / "link-then-dir").is_symlink()
    assert (root / "link-then-dir/f").read_bytes() == b"f"
    assert stat.S_IMODE((root / "var/mail").stat().st_mode) == 0o2775
    assert (root / "proc").is_dir()
    assert (root / "data/cache").is_dir()
    assert not (root / "absent").exists()


def test_app_layer_file_owner_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    unpack_layers([layer_file(tmp_path, tar_bytes([M("home/app/f", data=b"x", uid=65532, gid=65532)]))], root)
    st_ = (root / "home/app/f").stat()
    assert (st_.st_uid, st_.st_gid) == (65532, 65532)


def test_setuid_is_kept_when_the_image_allows_it(tmp_path: Path) -> None:
    layer = raw_layer(ATTACKS / "setuid-without-label.tar", MediaType.OCI_LAYER_TAR)
    unpack_layers([layer], tmp_path / "root", allow_setuid=True)
    assert stat.S_IMODE((tmp_path / "root/usr/bin/su").stat().st_mode) == 0o4755


# -- whole images through the store ------------------------------------------------------------------


def _pulled(tmp_path: Path, layers: list[bytes], **kw):  # type: ignore[no-untyped-def]
    img = write_image(tmp_path / "layout", layers, **kw)
    store = ContentStore(tmp_path / "state")
    return store, store.pull_image(LayoutSource(img.layout), img.digest)


def test_unpack_image_renames_into_place_and_records_the_fingerprint(tmp_path: Path) -> None:
    store, image = _pulled(
        tmp_path,
        [tar_bytes([M("bin/app", data=b"#!", mode=0o755)])],
        labels={"dev.kiln.writable": '["/tmp","/var/cache/app"]', "dev.kiln.volumes": '["/data"]'},
    )
    roots = tmp_path / "state" / "roots"
    result = unpack_image(store, image, roots)
    assert result.path == roots / image.manifest_digest.hex
    assert stat.S_IMODE(roots.stat().st_mode) == 0o700
    assert sorted(os.listdir(roots)) == [image.manifest_digest.hex, f"{image.manifest_digest.hex}.json"]
    for mp in ("proc", "dev", "sys", "tmp", "var/cache/app", "data"):
        assert (result.path / mp).is_dir(), mp
    assert result.fingerprint == root_fingerprint(result.path)
    # A second call reuses the root and its record.
    assert unpack_image(store, image, roots) == result


def test_drift_is_visible_in_the_fingerprint(tmp_path: Path) -> None:
    store, image = _pulled(
        tmp_path,
        [tar_bytes([M("etc/conf", data=b"a=1"), M("etc/link", "symlink", target="conf"), M("empty", "dir")])],
    )
    result = unpack_image(store, image, tmp_path / "roots")
    root = result.path
    edits = [
        lambda: (root / "etc/conf").write_bytes(b"a=2"),
        lambda: (root / "etc/conf").chmod(0o600),
        lambda: os.chown(root / "etc/conf", 1, 1),
        lambda: (root / "etc/new").write_bytes(b""),
        lambda: ((root / "etc/link").unlink(), (root / "etc/link").symlink_to("/etc/shadow")),
        (root / "empty").rmdir,
    ]
    seen = {result.fingerprint}
    for edit in edits:
        edit()
        fp = root_fingerprint(root)
        assert fp not in seen
        seen.add(fp)
    # The recorded fingerprint still names the root as it was unpacked.
    assert unpack_image(store, image, tmp_path / "roots").fingerprint == result.fingerprint


def test_the_same_image_fingerprints_the_same_wherever_it_is_unpacked(tmp_path: Path) -> None:
    store, image = _pulled(tmp_path, [tar_bytes([M("a/b/c", data=b"c"), M("a/l", "symlink", target="b/c")])])
    one = unpack_image(store, image, tmp_path / "r1")
    two = unpack_image(store, image, tmp_path / "r2")
    assert one.fingerprint == two.fingerprint
    assert one.fingerprint.startswith("sha256:")


def test_the_allow_setuid_label_is_honoured(tmp_path: Path) -> None:
    suid = [tar_bytes([M("bin/ping", data=b"x", mode=0o4755)])]
    store, image = _pulled(tmp_path, suid, labels={"dev.kiln.allow-setuid": "true"})
    assert (
        stat.S_IMODE((unpack_image(store, image, tmp_path / "roots").path / "bin/ping").stat().st_mode)
        == 0o4755
    )
    store2, image2 = _pulled(tmp_path / "other", suid)
    with pytest.raises(VerificationError, match=r"without the dev\.kiln\.allow-setuid label"):
        unpack_image(store2, image2, tmp_path / "roots2")
    assert os.listdir(tmp_path / "roots2") == []  # neither the .tmp nor the final root


# -- fuzz -------------------------------------------------------------------------------------------


def _snapshot(path: Path) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, dirnames, files in os.walk(path):
        for n in sorted(dirnames + files):
            p = Path(dirpath) / n
            out.append(
                (str(p.relative_to(path)), p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            )
    return sorted(out)


def _check_confined(base: Path, before: list[tuple[str, bytes]]) -> None:
    assert sorted(os.listdir(base)) in (["outside"], ["outside", "root"])
    assert _snapshot(base / "outside") == before


def _sandbox(base: Path) -> list[tuple[str, bytes]]:
    (base / "outside").mkdir()
    (base / "outside" / "keep").write_bytes(b"keep")
    return _snapshot(base / "outside")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=4096), media=st.sampled_from([MediaType.OCI_LAYER_TAR, MediaType.OCI_LAYER_GZIP])
)
def test_fuzz_random_bytes(data: bytes, media: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        before = _sandbox(base)
        blob = base / "outside" / "blob"
        blob.write_bytes(data)
        before = _snapshot(base / "outside")
        with contextlib.suppress(VerificationError):
            unpack_layers([raw_layer(blob, media)], base / "root", limits=SMALL)
        _check_confined(base, before)


VALID = tar_bytes(
    [
        M("a", "dir"),
        M("a/f", data=b"hello" * 50),
        M("a/l", "symlink", target="f"),
        M("a/h", "hardlink", target="a/f"),
        M("b/.wh.x"),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_tar(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        before = _sandbox(base)
        blob = base / "outside" / "blob"
        blob.write_bytes(bytes(data))
        before = _snapshot(base / "outside")
        with contextlib.suppress(VerificationError):
            unpack_layers([raw_layer(blob, MediaType.OCI_LAYER_TAR)], base / "root", limits=SMALL)
        _check_confined(base, before)


# Names and links that chain (a link, then a write, link or whiteout below it); names refused on
# sight (absolute, '..', devices, setuid) are left to the table and the byte-level fuzzers, so that
# most examples get deep into a layer.
_NAMES = st.sampled_from(
    ["a"] * 4 + ["a/b"] * 4 + ["a/b/c", "b", "b/a", "./a/b", "a/.wh.b", "a/.wh..wh..opq", ".wh.a", "a//b/"]
)
_KINDS = st.sampled_from(["file"] * 3 + ["dir"] * 2 + ["symlink"] * 3 + ["hardlink"] * 2)
_MODES = st.sampled_from([0o644, 0o755, 0o1777])


_TARGETS = st.sampled_from(["SANDBOX"] * 3 + ["SANDBOX/keep", "../outside", "..", "/", "a", "b", "a/b"])


@st.composite
def _members(draw: st.DrawFn, sandbox: str) -> list[M]:
    """Member lists biased towards links into the sandbox followed by writes below them."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(_KINDS)
        target = draw(_TARGETS).replace("SANDBOX", sandbox)
        out.append(
            M(
                draw(_NAMES),
                kind,
                data=b"planted" if kind == "file" else b"",
                mode=draw(_MODES),
                target=target if kind in ("symlink", "hardlink") else "",
            )
        )
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_link_chains(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        before = _sandbox(base)
        layers = [
            layer_file(base, tar_bytes(data.draw(_members(str(base / "outside")))), name=f"layer{i}")
            for i in range(data.draw(st.integers(1, 2)))
        ]
        with contextlib.suppress(VerificationError):
            unpack_layers(layers, base / "root", limits=SMALL)
        for layer in layers:
            layer.path.unlink()
        _check_confined(base, before)
