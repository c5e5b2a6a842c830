"""Layer snapshots and composed roots: each layer unpacked once, roots as read-only overlays.

Whiteouts, opaque directories, hard links, modes and owners through a real overlayfs mount; the
fingerprint computed while unpacking equals the one read back; a changed layer is the only one
unpacked again; GC by reference; no mount outlives its root; the full-copy fallback.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from agent.compose import (
    compose_image,
    composed_fingerprint,
    composed_layers,
    park,
    remove_composed,
    unmount_strays,
)
from agent.snapshots import SnapshotStore, snapshot_fingerprint
from agent.store import ContentStore, LayoutSource, PulledImage
from agent.unpack import Layer, UnpackLimits, _Budget, root_fingerprint
from builder.build import build_image
from manifests.digest import Digest
from manifests.errors import VerificationError
from manifests.image_parse import load_image_manifest
from manifests.layout import OCILayout
from tests.agent.conftest import PYTHON_WEB, WebImage
from tests.agent.imagekit import M, layer_file, tar_bytes, write_image
from tests.agent.snapkit import mounts
from tests.support import require_root

BASE = [
    M("etc", "dir"),
    M("etc/a", data=b"A"),
    M("etc/b", data=b"B"),
    M("opq", "dir", mode=0o755),
    M("opq/old", data=b"old"),
    M("opq/sub", "dir"),
    M("opq/sub/deep", data=b"deep"),
    M("bin", "dir", mode=0o711),
    M("bin/tool", data=b"x" * 10, mode=0o4755),
    M("bin/alias", "hardlink", target="bin/tool"),
    M("srv", "dir", mode=0o2770, uid=7, gid=8),
    M("srv/data", data=b"d", mode=0o640, uid=7, gid=8),
    M("gone", "dir"),
    M("gone/inner", data=b"i"),
]
UPPER = [
    M("etc", "dir"),
    M("etc/.wh.a"),  # a file of the lower layer deleted
    M("etc/c", data=b"C"),
    M("opq", "dir", mode=0o750),
    M("opq/.wh..wh..opq"),  # the directory emptied of what lower layers put there
    M("opq/new", data=b"new"),
    M(".wh.gone"),  # a whole directory deleted
    M("keep", data=b"same layer"),
    M(".wh.keep"),  # a whiteout does not hide its own layer's entry
    M("link", "symlink", target="/etc/b"),
]


@pytest.fixture
def root_only() -> None:
    require_root("overlayfs mounts, whiteout devices and trusted.* attributes need root")


def _image(
    tmp_path: Path, layers: list[bytes], name: str = "layout", **kw: object
) -> tuple[ContentStore, PulledImage]:
    built = write_image(tmp_path / name, layers, labels={"dev.kiln.allow-setuid": "true"}, **kw)  # type: ignore[arg-type]
    store = ContentStore(tmp_path / "state")
    return store, store.pull_image(LayoutSource.open(tmp_path / name), built.digest)


def test_a_composed_root_applies_whiteouts_opaque_dirs_hard_links_and_modes(
    root_only: None, tmp_path: Path
) -> None:
    store, image = _image(tmp_path, [tar_bytes(BASE), tar_bytes(UPPER)])
    snaps = SnapshotStore(tmp_path / "state")
    roots = tmp_path / "state" / "roots"
    root = compose_image(store, image, roots, snaps).path
    try:
        assert mounts(tmp_path / "state") == [f"roots/{image.manifest_digest.hex}"]
        assert sorted(os.listdir(root / "etc")) == ["b", "c"]  # etc/a deleted by the upper layer
        assert not os.path.lexists(root / "etc" / "a")
        assert not os.path.lexists(root / "gone")
        assert sorted(os.listdir(root / "opq")) == ["new"]  # opaque: old and sub/ hidden
        assert stat.S_IMODE(os.stat(root / "opq").st_mode) == 0o750
        assert (root / "keep").read_bytes() == b"same layer"
        assert os.readlink(root / "link") == "/etc/b"
        tool, alias = os.stat(root / "bin" / "tool"), os.stat(root / "bin" / "alias")
        assert tool.st_ino == alias.st_ino
        assert tool.st_nlink == 2
        assert stat.S_IMODE(tool.st_mode) == 0o4755
        assert stat.S_IMODE(os.stat(root / "bin").st_mode) == 0o711
        srv = os.stat(root / "srv")
        assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid) == (0o2770, 7, 8)
        data = os.stat(root / "srv" / "data")
        assert (stat.S_IMODE(data.st_mode), data.st_uid, data.st_gid) == (0o640, 7, 8)
        for mp in ("proc", "dev", "sys"):  # made by the mountpoint layer, absent from the image
            assert (root / mp).is_dir()
        with pytest.raises(OSError, match="Read-only file system"):
            (root / "etc" / "b").write_bytes(b"x")
        # Each snapshot holds overlayfs' own formats: a 0/0 character device and the opaque attribute.
        upper = snaps.path(Digest.of(tar_bytes(UPPER)).hex)
        wh = os.stat(upper / "etc" / "a", follow_symlinks=False)
        assert stat.S_ISCHR(wh.st_mode)
        assert wh.st_rdev == os.makedev(0, 0)
        assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
        assert (upper / "keep").is_file()
        # The fingerprints recorded while unpacking are what is read back.
        for diff in image.config["rootfs"]["diff_ids"]:
            snap = snaps.get(Digest.parse(diff))
            assert snap is not None
            assert snapshot_fingerprint(snap.path) == snap.fingerprint
        assert (
            composed_fingerprint(roots, image.manifest_digest, snaps)
            == compose_image(store, image, roots, snaps).fingerprint
        )
    finally:
        remove_composed(roots, image.manifest_digest)
    assert mounts(tmp_path / "state") == []
    assert os.listdir(roots) == []


FINGERPRINT_CASES = {
    "plain": [M("a", data=b"1"), M("d", "dir", mode=0o700), M("d/f", data=b"2", mode=0o600)],
    "implicit parents": [M("x/y/z/f", data=b"deep")],
    "overwritten file": [M("f", data=b"one"), M("f", data=b"two", mode=0o600)],
    "dir replaced by a file": [M("d", "dir"), M("d/f", data=b"1"), M("d", data=b"now a file")],
    "link target overwritten": [M("t", data=b"1"), M("l", "hardlink", target="t"), M("t", data=b"22")],
    "dir re-declared": [M("d", "dir", mode=0o700), M("d/f", data=b"1"), M("d", "dir", mode=0o751)],
    "whiteouts": [M("d", "dir"), M("d/.wh.x"), M(".wh.y"), M(".wh..wh..opq"), M("d/.wh..wh..opq")],
    "whiteout then the same name": [M(".wh.n"), M("n", data=b"back")],
    "owners and setgid": [M("g", "dir", mode=0o2775, uid=5, gid=6), M("g/f", data=b"", uid=5, gid=6)],
    "symlinks": [M("d/s", "symlink", target="../x"), M("s", "symlink", target="/abs")],
}


@pytest.mark.parametrize("members", FINGERPRINT_CASES.values(), ids=FINGERPRINT_CASES.keys())
def test_the_fingerprint_made_while_unpacking_equals_the_one_read_back(
    root_only: None, tmp_path: Path, members: list[M]
) -> None:
    snaps = SnapshotStore(tmp_path / "state")
    layer = layer_file(tmp_path, tar_bytes(members))
    snap = snaps.ensure(layer, allow_setuid=False, budget=_Budget(limits=UnpackLimits()))
    assert snapshot_fingerprint(snap.path) == snap.fingerprint
    again = snaps.ensure(layer, allow_setuid=False, budget=_Budget(limits=UnpackLimits()))
    assert again == snap
    assert snaps.unpacked == [layer.diff_id]  # once
    (snap.path / "tampered").write_bytes(b"")
    assert snapshot_fingerprint(snap.path) != snap.fingerprint


def test_python_web_fingerprints_match_and_an_opaque_attribute_counts(
    root_only: None, python_web: WebImage, tmp_path: Path
) -> None:
    snaps = SnapshotStore(tmp_path / "state")
    root = compose_image(python_web.store, python_web.image, tmp_path / "roots", snaps)
    try:
        assert python_web.image.config["rootfs"]["diff_ids"]
        for name in composed_layers(tmp_path / "roots", python_web.image.manifest_digest):
            if name.startswith("m-"):
                continue
            snap = snaps.get(Digest(name))
            assert snap is not None
            assert snapshot_fingerprint(snap.path) == snap.fingerprint
        first = snaps.path(composed_layers(tmp_path / "roots", python_web.image.manifest_digest)[0])
        os.setxattr(first, "trusted.overlay.opaque", b"y")
        cache: dict[str, str] = {}
        assert composed_fingerprint(tmp_path / "roots", python_web.image.manifest_digest, snaps, cache) != (
            root.fingerprint
        )
        os.removexattr(first, "trusted.overlay.opaque")
        assert composed_fingerprint(tmp_path / "roots", python_web.image.manifest_digest, snaps) == (
            root.fingerprint
        )
    finally:
        remove_composed(tmp_path / "roots", python_web.image.manifest_digest)


def test_a_hostile_layer_is_refused_and_leaves_no_snapshot(root_only: None, tmp_path: Path) -> None:
    snaps = SnapshotStore(tmp_path / "state")
    hostile = layer_file(
        tmp_path, tar_bytes([M("d", "symlink", target="/etc"), M("d/passwd", data=b"root::0:0::/:/bin/sh")])
    )
    with pytest.raises(VerificationError, match="symlink") as info:
        snaps.ensure(hostile, allow_setuid=False, budget=_Budget(limits=UnpackLimits()))
    assert info.value.reason == "unpack"
    benign = layer_file(tmp_path, tar_bytes([M("f", data=b"1")]), name="benign")
    lying = Layer(
        digest=benign.digest, media_type=benign.media_type, diff_id=Digest.of(b"x"), path=benign.path
    )
    with pytest.raises(VerificationError, match="diff_id") as info:
        snaps.ensure(lying, allow_setuid=False, budget=_Budget(limits=UnpackLimits()))
    assert info.value.reason == "digest"
    assert snaps.names() == []


def _web_variant(tmp_path: Path, text: str) -> Path:
    """examples/python-web with another server.py (its app layer only differs)."""
    src = tmp_path / "src"
    shutil.copytree(PYTHON_WEB.parent, src)
    server = src / "app" / "server.py"
    server.write_text(server.read_text() + text)
    out = tmp_path / "layout"
    build_image(load_image_manifest(src / PYTHON_WEB.name), output=out)
    return out


@pytest.mark.integration
def test_a_release_changing_only_the_app_layer_unpacks_only_that_layer(
    root_only: None, python_web: WebImage, tmp_path: Path
) -> None:
    layout = _web_variant(tmp_path / "v2", "\n# version 2\n")
    state = tmp_path / "state"
    store = ContentStore(state)
    one = store.pull_image(LayoutSource.open(python_web.layout), python_web.image.digest)
    two_digest = OCILayout.open(layout).resolve("1.0.0").digest
    two = store.pull_image(LayoutSource.open(layout), two_digest)
    ids_one, ids_two = one.config["rootfs"]["diff_ids"], two.config["rootfs"]["diff_ids"]
    changed = [d for d in ids_two if d not in ids_one]
    assert len(ids_two) > 1
    assert len(changed) == 1
    snaps = SnapshotStore(state)
    roots = state / "roots"
    compose_image(store, one, roots, snaps)
    first_bytes = snaps.written
    assert len(snaps.unpacked) == len(ids_one)
    snaps.unpacked.clear()
    snaps.written = 0
    root = compose_image(store, two, roots, snaps)
    try:
        assert [str(d) for d in snaps.unpacked] == changed
        # the bytes of the app layer's files: server.py and the bytecode baked beside it
        app = sorted(
            p.relative_to(root.path).as_posix() for p in (root.path / "app").rglob("*") if p.is_file()
        )
        assert "app/server.py" in app
        assert snaps.written == sum((root.path / p).stat().st_size for p in app)
        assert snaps.written < first_bytes / 100
        assert (root.path / "app" / "server.py").read_text().endswith("# version 2\n")
        assert mounts(state) == sorted(f"roots/{i.manifest_digest.hex}" for i in (one, two))
        shared = set(composed_layers(roots, one.manifest_digest)) & set(
            composed_layers(roots, two.manifest_digest)
        )
        assert len(shared) >= len(ids_one) - 1
        # GC by reference: with only v2 kept, v1's app layer goes (nothing unreferenced is kept
        # within a zero budget); every layer v2 uses stays.
        remove_composed(roots, one.manifest_digest)
        removed = snaps.gc(composed_layers(roots, two.manifest_digest), budget=0)
        old_app = [d for d in ids_one if d not in ids_two]
        assert [f"sha256:{n}" for n in removed if not n.startswith("m-")] == old_app
        assert compose_image(store, two, roots, snaps) == root
        assert composed_fingerprint(roots, two.manifest_digest, snaps) == root.fingerprint
        # Within a budget, an unreferenced snapshot stays as a cache.
        compose_image(store, one, roots, snaps)
        remove_composed(roots, one.manifest_digest)
        assert snaps.gc(composed_layers(roots, two.manifest_digest), budget=1 << 30) == ()
    finally:
        for image in (one, two):
            remove_composed(roots, image.manifest_digest)
    assert mounts(state) == []


def test_parked_roots_are_remounted_and_stray_mounts_unmounted(root_only: None, tmp_path: Path) -> None:
    store, image = _image(tmp_path, [tar_bytes(BASE)])
    snaps = SnapshotStore(tmp_path / "state")
    roots = tmp_path / "state" / "roots"
    first = compose_image(store, image, roots, snaps)
    park(roots, image.manifest_digest)
    assert mounts(tmp_path / "state") == []
    unpacked = list(snaps.unpacked)
    assert compose_image(store, image, roots, snaps) == first  # remounted, nothing unpacked
    assert snaps.unpacked == unpacked
    # A crash between the mount and the record: the mount is a stray.
    (roots / f"{image.manifest_digest.hex}.json").unlink()
    assert unmount_strays(roots, keep=[image.manifest_digest]) == (first.path,)
    assert mounts(tmp_path / "state") == []
    again = compose_image(store, image, roots, snaps)
    assert again.fingerprint == first.fingerprint
    assert unmount_strays(roots, keep=[image.manifest_digest]) == ()
    assert unmount_strays(roots) == (first.path,)
    assert mounts(tmp_path / "state") == []


def test_without_overlayfs_the_root_is_a_full_copy(tmp_path: Path) -> None:
    store, image = _image(tmp_path, [tar_bytes(BASE), tar_bytes(UPPER)])
    snaps = SnapshotStore(tmp_path / "state", overlay=False)
    roots = tmp_path / "state" / "roots"
    root = compose_image(store, image, roots, snaps)
    assert mounts(tmp_path / "state") == []
    assert sorted(os.listdir(root.path / "etc")) == ["b", "c"]
    assert sorted(os.listdir(root.path / "opq")) == ["new"]
    assert root.fingerprint == root_fingerprint(root.path)
    assert composed_fingerprint(roots, image.manifest_digest, snaps) == root.fingerprint
    assert composed_layers(roots, image.manifest_digest) == ()
    remove_composed(roots, image.manifest_digest)
    assert os.listdir(roots) == []


def test_two_instances_of_one_image_share_one_root_and_its_snapshots(root_only: None, tmp_path: Path) -> None:
    """An agent rolling out two replicas of one image: both instances get the same composed root,
    and every layer is unpacked into one snapshot, once."""
    from agent.reconcile import Agent
    from tests.agent.agentkit import (
        NOW,
        FakeRuntime,
        Workspace,
        free_port,
        loopback_connector,
        make_release,
        make_root,
        service_yaml,
        signed,
        tiny_image,
    )
    from tests.agent.test_reconcile import Clock

    ws = Workspace(tmp_path)
    ws.write_root(make_root())
    layout, desc = tiny_image(tmp_path / "src-web", marker="web")
    web = ws.add_image("localhost/web", layout.root, desc)
    runtime = FakeRuntime()
    agent = Agent(ws.config(), runtime=runtime, connector=loopback_connector, wall=Clock(NOW), stop_grace=0.1)
    agent.start()
    try:
        svc = service_yaml("web", web.pin, replicas=2, listen=f"127.0.0.1:{free_port()}")
        ws.publish(signed(make_release(1, [svc])))
        assert agent.reconcile_once().outcome == "rolled-out"
        roots = {runtime.specs[i].rootfs for i in runtime.started}
        assert len(runtime.started) == 2
        assert len(roots) == 1, f"two instances, one composed root: {roots}"
        image = agent.store.image(web.digest)
        layers = list(image.config["rootfs"]["diff_ids"])
        names = [p.name for p in (ws.state / "snapshots").iterdir()]
        unpacked = sorted(n for n in names if len(n) == 64 and all(c in "0123456789abcdef" for c in n))
        assert unpacked == sorted(d.removeprefix("sha256:") for d in layers)
    finally:
        agent.close(stop_instances=True)
        runtime.close_all()
