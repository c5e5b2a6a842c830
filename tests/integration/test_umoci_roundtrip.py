"""Property: any tree kiln's tar writer produces is unpacked by umoci (an independent OCI
implementation) into exactly that tree: names, types, modes, owners, contents, link targets."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.tarwriter import write_tar
from builder.tree import Entry, EntryKind
from manifests.canonical import canonical_json
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from tests.builder.test_tarwriter import _before, trees
from tests.support import require_root, require_tool

pytestmark = pytest.mark.integration


def _layout_with(entries: list[Entry], root: Path, mtime: int) -> None:
    buf = io.BytesIO()
    stats = write_tar(entries, buf, mtime=mtime)
    layout = OCILayout.create(root)
    layer = layout.write_blob(buf.getvalue())
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [str(stats.diff_id)]},
        }
    )
    config_digest = layout.write_blob(config)
    manifest = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_CONFIG, digest=config_digest, size=len(config)),
        layers=(Descriptor(media_type=MediaType.OCI_LAYER_TAR, digest=layer, size=len(buf.getvalue())),),
    ).to_bytes()
    layout.tag(
        Descriptor(media_type=MediaType.OCI_MANIFEST, digest=layout.write_blob(manifest), size=len(manifest)),
        "t",
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.integers(min_value=1, max_value=2**31 - 1))
def test_umoci_unpacks_exactly_what_was_written(entries: list[Entry], mtime: int) -> None:
    require_tool("umoci", "umoci")
    require_root("umoci unpack keeps owners and modes only as root")
    entries = [e for e in entries if e.kind is not EntryKind.HARDLINK or _before(entries, e)]
    # A hard link shares its target's inode, so it can only carry the target's owner and mode
    # (kiln's tree makes links only between files that already share an inode).
    by_path = {e.path: e for e in entries}
    entries = [
        replace(e, uid=t.uid, gid=t.gid, mode=t.mode)
        if e.kind is EntryKind.HARDLINK and (t := by_path[str(e.target)])
        else e
        for e in entries
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _layout_with(entries, work / "layout", mtime)
        proc = subprocess.run(
            ["umoci", "unpack", "--image", f"{work / 'layout'}:t", str(work / "bundle")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        rootfs = work / "bundle" / "rootfs"
        for e in entries:
            path = rootfs / e.path.lstrip("/")
            st_ = os.lstat(path)
            assert (st_.st_uid, st_.st_gid) == (e.uid, e.gid), e.path
            if e.kind is EntryKind.SYMLINK:
                assert stat.S_ISLNK(st_.st_mode)
                assert os.readlink(path) == e.target
                continue
            assert stat.S_IMODE(st_.st_mode) == e.mode, e.path
            if e.kind is EntryKind.DIR:
                assert stat.S_ISDIR(st_.st_mode)
            elif e.kind is EntryKind.FILE:
                assert stat.S_ISREG(st_.st_mode)
                assert path.read_bytes() == e.data
                assert int(st_.st_mtime) == mtime
            else:
                target = rootfs / str(e.target).lstrip("/")
                assert os.path.samefile(path, target), e.path
        on_disk = {"/" + str(p.relative_to(rootfs)) for p in rootfs.rglob("*")}
        assert on_disk == {e.path for e in entries}
