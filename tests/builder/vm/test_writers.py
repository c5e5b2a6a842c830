"""The VM writers against the real tools: veritysetup (cryptsetup-bin), fsck.erofs (erofs-utils),
sfdisk (fdisk) and GNU cpio; properties with hypothesis."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import stat
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.tree import Entry, EntryKind, FileTree
from builder.vm.cpio import write_cpio
from builder.vm.erofs import write_erofs
from builder.vm.gpt import ROOT_VERITY_X86_64, ROOT_X86_64, Partition, partition_uuids, plan_gpt, write_gpt
from builder.vm.verity import build_verity, derive_salt, derive_uuid
from tests.support import require_tool

UUID = "01234567-89ab-4def-8123-456789abcdef"


def _data(blocks: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < blocks * 4096:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[: blocks * 4096])


# -- dm-verity


@pytest.mark.integration
@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 16385])
def test_verity_is_byte_identical_to_veritysetup(blocks: int, tmp_path: Path) -> None:
    veritysetup = require_tool("veritysetup", "cryptsetup-bin")
    data = _data(blocks, blocks)
    (tmp_path / "data").write_bytes(data)
    salt = derive_salt(hashlib.sha256(data).digest())
    uuid = derive_uuid(hashlib.sha256(data).digest(), "verity")
    tree = build_verity(io.BytesIO(data), len(data), salt=salt, uuid=uuid)
    out = subprocess.run(
        [
            veritysetup,
            "format",
            str(tmp_path / "data"),
            str(tmp_path / "hash"),
            "--salt",
            salt.hex(),
            "--uuid",
            uuid,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"Root hash:      \t{tree.root_hash.hex()}" in out
    assert (tmp_path / "hash").read_bytes() == tree.hash_device
    # And veritysetup accepts ours, and refuses it once one data byte changes.
    (tmp_path / "ours").write_bytes(tree.hash_device)
    verify = [veritysetup, "verify", str(tmp_path / "data"), str(tmp_path / "ours"), tree.root_hash.hex()]
    subprocess.run(verify, check=True, capture_output=True)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    (tmp_path / "data").write_bytes(bytes(flipped))
    assert subprocess.run(verify, capture_output=True, check=False).returncode != 0


def _reference_root(data: bytes, salt: bytes) -> bytes:
    """An independent, level-by-level statement of the tree's root (for the property test)."""
    level = [hashlib.sha256(salt + data[i : i + 4096]).digest() for i in range(0, len(data), 4096)]
    while len(level) > 1:
        blob = b"".join(level)
        blob += b"\0" * (-len(blob) % 4096)
        level = [hashlib.sha256(salt + blob[i : i + 4096]).digest() for i in range(0, len(blob), 4096)]
    return level[0]


@settings(max_examples=25, deadline=None)
@given(blocks=st.integers(1, 400), salt=st.binary(min_size=0, max_size=64), seed=st.integers(0, 9))
def test_verity_root_property(blocks: int, salt: bytes, seed: int) -> None:
    data = _data(blocks, seed)
    tree = build_verity(io.BytesIO(data), len(data), salt=salt, uuid=UUID)
    assert tree.root_hash == _reference_root(data, salt)
    assert tree.hash_device[:8] == b"verity\0\0"
    assert len(tree.hash_device) % 4096 == 0
    assert build_verity(io.BytesIO(data), len(data), salt=salt, uuid=UUID) == tree


def test_verity_refuses_partial_blocks() -> None:
    with pytest.raises(Exception, match="not a positive multiple of 4096"):
        build_verity(io.BytesIO(b"x" * 100), 100, salt=b"", uuid=UUID)


# -- GPT


@pytest.mark.integration
def test_gpt_has_the_dps_partition_types(tmp_path: Path) -> None:
    sfdisk = require_tool("sfdisk", "fdisk")
    root_hash = hashlib.sha256(b"root").digest()
    root_uuid, verity_uuid = partition_uuids(root_hash)
    parts = [
        (
            Partition(type_uuid=ROOT_X86_64, uuid=root_uuid, name="root-x86-64", size=3 * 4096),
            io.BytesIO(b"r" * 3 * 4096),
        ),
        (
            Partition(type_uuid=ROOT_VERITY_X86_64, uuid=verity_uuid, name="root-x86-64-verity", size=4096),
            io.BytesIO(b"v" * 4096),
        ),
    ]
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        placed = write_gpt(fh, parts, disk_seed=root_hash)
    table = json.loads(
        subprocess.run([sfdisk, "--json", str(disk)], check=True, capture_output=True, text=True).stdout
    )
    got = table["partitiontable"]
    assert got["label"] == "gpt"
    assert [(p["type"].lower(), p["uuid"].lower(), p["name"], p["start"]) for p in got["partitions"]] == [
        (ROOT_X86_64, root_uuid, "root-x86-64", placed[0].first_lba),
        (ROOT_VERITY_X86_64, verity_uuid, "root-x86-64-verity", placed[1].first_lba),
    ]
    assert all(p["attrs"] == "GUID:60" for p in got["partitions"])  # read-only, as the DPS says
    # The partition UUIDs are the root hash's first and last 128 bits.
    assert root_uuid.replace("-", "") == root_hash[:16].hex()
    assert verity_uuid.replace("-", "") == root_hash[16:].hex()
    verify = subprocess.run([sfdisk, "--verify", str(disk)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    raw = disk.read_bytes()
    assert raw[placed[0].offset : placed[0].offset + 3 * 4096] == b"r" * 3 * 4096
    assert raw[placed[1].offset : placed[1].offset + 4096] == b"v" * 4096
    # The backup header at the last sector carries a valid CRC too.
    backup = bytearray(raw[-512:-420])
    crc = struct.unpack_from("<I", backup, 16)[0]
    backup[16:20] = b"\0\0\0\0"
    assert backup[:8] == b"EFI PART"
    assert zlib.crc32(bytes(backup)) == crc


@given(sizes=st.lists(st.integers(1, 64), min_size=1, max_size=4))
def test_gpt_plan_property(sizes: list[int]) -> None:
    parts = [
        Partition(type_uuid=ROOT_X86_64, uuid=UUID, name=f"p{i}", size=n * 512) for i, n in enumerate(sizes)
    ]
    placed, total = plan_gpt(parts)
    assert placed[0].first_lba == 2048
    for a, b in itertools.pairwise(placed):
        assert b.first_lba > a.last_lba
        assert b.first_lba % 8 == 0
    assert total % 4096 == 0
    assert total // 512 > placed[-1].last_lba + 33


# -- trees for EROFS and cpio

_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=40).filter(
    lambda n: n not in (".", "..")
)


@st.composite
def trees(draw: st.DrawFn) -> FileTree:
    tree = FileTree()
    dirs = ["/"]
    files: list[str] = []
    for i in range(draw(st.integers(1, 40))):
        parent = draw(st.sampled_from(dirs))
        path = parent.rstrip("/") + "/" + draw(_NAMES) + f"{i}"
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink"]))
        mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o1777]))
        uid = draw(st.sampled_from([0, 65532, 1000]))
        if kind == "dir":
            tree.add(Entry(path=path, kind=EntryKind.DIR, mode=mode, uid=uid, gid=uid))
            dirs.append(path)
        elif kind == "symlink":
            tree.add(
                Entry(
                    path=path,
                    kind=EntryKind.SYMLINK,
                    mode=0o777,
                    target=draw(_NAMES) * draw(st.integers(1, 3)),
                )
            )
        elif kind == "hardlink" and files:
            tree.add(
                Entry(path=path, kind=EntryKind.HARDLINK, mode=0o644, target=draw(st.sampled_from(files)))
            )
        else:
            size = draw(st.sampled_from([0, 1, 100, 4031, 4032, 4033, 4096, 5000, 8192, 12289]))
            data = (draw(st.binary(min_size=1, max_size=16)) * (size // 1 + 1))[:size]
            tree.add(Entry(path=path, kind=EntryKind.FILE, mode=mode, uid=uid, gid=uid, size=size, data=data))
            files.append(path)
    return tree


def _describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root``: kind, permission bits, owner, content or target, inode group."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st_ = p.lstat()
            rel = "/" + str(p.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid)
            else:
                first = inodes.setdefault(st_.st_ino, rel)
                out[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, p.read_bytes(), first)
    return out


def _expected(tree: FileTree) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for e in tree.entries():
        if e.kind is EntryKind.DIR:
            out[e.path] = ("dir", e.mode, e.uid, e.gid)
        elif e.kind is EntryKind.SYMLINK:
            out[e.path] = ("symlink", e.target)
        elif e.kind is EntryKind.FILE:
            out[e.path] = ("file", e.mode, e.uid, e.gid, e.data, e.path)
    for e in tree.entries():
        if e.kind is EntryKind.HARDLINK:
            leader = out[e.target or ""]
            out[e.path] = (*leader[:5], min(e.path, e.target or ""))
    # Hard-link groups are named by their first path in walk order: normalize both sides to sets.
    return out


def _groups(d: dict[str, tuple[object, ...]]) -> tuple[dict[str, tuple[object, ...]], set[frozenset[str]]]:
    by_first: dict[object, set[str]] = {}
    plain: dict[str, tuple[object, ...]] = {}
    for path, value in d.items():
        if value[0] == "file":
            plain[path] = value[:5]
            by_first.setdefault(value[5], set()).add(path)
        else:
            plain[path] = value
    return plain, {frozenset(v) for v in by_first.values()}


def _expected_groups(tree: FileTree) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for e in tree.entries():
        if e.kind is EntryKind.FILE:
            groups.setdefault(e.path, {e.path})
    for e in tree.entries():
        if e.kind is EntryKind.HARDLINK:
            groups[e.target or ""].add(e.path)
    return {frozenset(v) for v in groups.values()}


def _perm_only(d: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for path, value in d.items():
        if value[0] in ("file", "dir"):
            mode = value[1]
            assert isinstance(mode, int)
            out[path] = (value[0], mode & 0o777, *value[2:])
        else:
            out[path] = value
    return out


@pytest.mark.integration
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_erofs_fsck_and_extract_match_the_tree(
    tree: FileTree, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fsck = require_tool("fsck.erofs", "erofs-utils")
    work = tmp_path_factory.mktemp("erofs")
    image = work / "root.erofs"
    with open(image, "wb") as fh:
        size = write_erofs(tree.entries(), fh, mtime=1_700_000_000, uuid=UUID)
    assert size == image.stat().st_size
    assert size % 4096 == 0
    subprocess.run([fsck, str(image)], check=True, capture_output=True)
    subprocess.run([fsck, f"--extract={work / 'out'}", str(image)], check=True, capture_output=True)
    plain, _ = _groups(_describe(work / "out"))
    want_plain, _ = _groups(_expected(tree))
    # fsck.erofs 1.5 extracts hard links as copies and drops setuid/setgid/sticky bits when it
    # chmods; the kernel mounts the real thing in the boot tests.
    assert _perm_only(plain) == _perm_only(want_plain)
    again = io.BytesIO()
    write_erofs(tree.entries(), again, mtime=1_700_000_000, uuid=UUID)
    assert again.getvalue() == image.read_bytes()


@pytest.mark.integration
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_cpio_extracts_with_gnu_cpio(tree: FileTree, tmp_path_factory: pytest.TempPathFactory) -> None:
    cpio = require_tool("cpio", "cpio")
    work = tmp_path_factory.mktemp("cpio")
    buf = io.BytesIO()
    n = write_cpio(tree.entries(), buf, mtime=1_700_000_000)
    data = buf.getvalue()
    assert n == len(data)
    assert n % 512 == 0
    assert data.count(b"TRAILER!!!") == 1
    (work / "out").mkdir()
    subprocess.run(
        [cpio, "-idm", "--quiet", "--no-absolute-filenames"],
        input=data,
        cwd=work / "out",
        check=True,
        capture_output=True,
    )
    plain, groups = _groups(_describe(work / "out"))
    want_plain, _ = _groups(_expected(tree))
    # GNU cpio applies the umask-free modes it is given; setuid bits survive as root.
    assert plain == want_plain
    assert groups == _expected_groups(tree)
    again = io.BytesIO()
    write_cpio(tree.entries(), again, mtime=1_700_000_000)
    assert again.getvalue() == data


def test_erofs_refuses_overlong_names() -> None:
    tree = FileTree()
    tree.add(Entry(path="/" + "n" * 256, kind=EntryKind.FILE, mode=0o644, size=0, data=b""))
    with pytest.raises(Exception, match="longer than 255 bytes"):
        write_erofs(tree.entries(), io.BytesIO(), mtime=0, uuid=UUID)
