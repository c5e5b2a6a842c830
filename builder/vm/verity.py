"""The dm-verity hash device, byte-identical to ``veritysetup format`` (format version 1).

Layout of the hash device: one hash block holding the verity superblock (512 bytes, zero padded),
then the hash tree, top level first. Each hash is ``sha256(salt || block)`` (version 1: the salt
comes first); a hash block holds ``hash_block_size // 32`` hashes, zero padded. Level 0 hashes the
data blocks; each next level hashes the blocks of the level below, until one block remains; the
root hash is the hash of that top block. The data must be a whole number of data blocks.

The salt and the superblock UUID are inputs: the builder derives both from the content (see
:func:`derive_salt`), so the same data always gives the same hash device and root hash.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import BuildError

__all__ = ["VerityTree", "build_verity", "derive_salt", "derive_uuid", "SUPERBLOCK_SIZE"]

SUPERBLOCK_SIZE = 512
_DIGEST = 32
_SIGNATURE = b"verity\0\0"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerityTree:
    """The result: the hash device's bytes, the root hash and the parameters used."""

    hash_device: bytes
    root_hash: bytes
    salt: bytes
    uuid: str
    data_blocks: int
    data_block_size: int
    hash_block_size: int


def derive_salt(content_digest: bytes) -> bytes:
    """A 32-byte salt derived from the data's own digest (no randomness, no clock)."""
    return hashlib.sha256(b"kiln verity salt\0" + content_digest).digest()


def derive_uuid(content_digest: bytes, purpose: str) -> str:
    """A version-4-shaped UUID derived from content (for superblocks, partitions, filesystems)."""
    raw = hashlib.sha256(b"kiln uuid\0" + purpose.encode() + b"\0" + content_digest).digest()[:16]
    return str(uuidlib.UUID(bytes=raw, version=4))


def _superblock(*, uuid: str, data_blocks: int, salt: bytes, data_bs: int, hash_bs: int) -> bytes:
    sb = struct.pack(
        "<8sII16s32sIIQH6x256s168x",
        _SIGNATURE,
        1,  # superblock version
        1,  # hash type: format version 1 (salt first)
        uuidlib.UUID(uuid).bytes,
        b"sha256",
        data_bs,
        hash_bs,
        data_blocks,
        len(salt),
        salt,
    )
    return sb + b"\0" * (hash_bs - SUPERBLOCK_SIZE)


def _blocks(fh: BinaryIO, size: int, bs: int) -> Iterator[bytes]:
    done = 0
    while done < size:
        block = fh.read(bs)
        if len(block) != bs:
            raise BuildError(f"verity: data ended after {done + len(block)} of {size} bytes")
        done += bs
        yield block


def build_verity(
    data: BinaryIO,
    size: int,
    *,
    salt: bytes,
    uuid: str,
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
) -> VerityTree:
    """Hash ``size`` bytes of ``data`` (a multiple of the data block size) into a hash device."""
    if size <= 0 or size % data_block_size:
        raise BuildError(f"verity: the data size {size} is not a positive multiple of {data_block_size}")
    if len(salt) > 256:
        raise BuildError("verity: the salt is longer than 256 bytes")
    data_blocks = size // data_block_size
    prefix = hashlib.sha256(salt)

    def digest(block: bytes) -> bytes:
        h = prefix.copy()
        h.update(block)
        return h.digest()

    levels: list[bytes] = []
    hashes = b"".join(digest(b) for b in _blocks(data, size, data_block_size))
    # Each level hashes the blocks below it until one hash is left: that is the root hash (a single
    # data block has no tree at all, its own hash is the root).
    while len(hashes) > _DIGEST:
        level = hashes + b"\0" * (-len(hashes) % hash_block_size)
        levels.append(level)
        hashes = b"".join(
            digest(level[i : i + hash_block_size]) for i in range(0, len(level), hash_block_size)
        )
    root = hashes
    tree = b"".join(reversed(levels))
    sb = _superblock(
        uuid=uuid, data_blocks=data_blocks, salt=salt, data_bs=data_block_size, hash_bs=hash_block_size
    )
    return VerityTree(
        hash_device=sb + tree,
        root_hash=root,
        salt=salt,
        uuid=uuid,
        data_blocks=data_blocks,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
    )
