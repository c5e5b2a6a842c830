"""A deterministic GPT disk writer for the Discoverable Partitions Specification (DPS).

A ``verity`` VM disk has two partitions: the root (EROFS) with the DPS type *Root Partition
(x86-64)* and the root-verity partition with the DPS type *Root Verity Partition (x86-64)*, both
flagged read-only (GPT attribute bit 60). As the DPS suggests, the root partition's UUID is the
first 128 bits of the root hash and the verity partition's the last 128 bits; the disk GUID is
derived from the root hash too. The first partition starts at 1 MiB, the next one on the next
4 KiB boundary; a protective MBR, the primary header and entry array, and the backup entry array
and header at the end follow UEFI 2.x. Nothing depends on the clock or randomness.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import BuildError

__all__ = [
    "ROOT_X86_64",
    "ROOT_VERITY_X86_64",
    "READ_ONLY",
    "Partition",
    "PlacedPartition",
    "plan_gpt",
    "write_gpt",
    "partition_uuids",
]

SECTOR = 512
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_VERITY_X86_64 = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
READ_ONLY = 1 << 60
_ENTRIES = 128
_ENTRY_SIZE = 128
_ARRAY_SECTORS = _ENTRIES * _ENTRY_SIZE // SECTOR  # 32
_FIRST_LBA = 2048  # 1 MiB
_ALIGN = 8  # 4 KiB


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    type_uuid: str
    uuid: str
    name: str
    size: int  # bytes, a multiple of 512
    attributes: int = READ_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedPartition:
    partition: Partition
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR


def partition_uuids(root_hash: bytes) -> tuple[str, str]:
    """The DPS UUIDs of the root and root-verity partitions: the root hash's first and last 128 bits."""
    if len(root_hash) < 32:
        raise BuildError("a root hash has at least 32 bytes")
    return str(uuidlib.UUID(bytes=root_hash[:16])), str(uuidlib.UUID(bytes=root_hash[-16:]))


def plan_gpt(parts: Sequence[Partition]) -> tuple[tuple[PlacedPartition, ...], int]:
    """Where each partition goes, and the disk's size in bytes."""
    placed = []
    lba = _FIRST_LBA
    for p in parts:
        if p.size <= 0 or p.size % SECTOR:
            raise BuildError(f"partition {p.name}: size {p.size} is not a positive multiple of {SECTOR}")
        lba += -lba % _ALIGN
        count = p.size // SECTOR
        placed.append(PlacedPartition(partition=p, first_lba=lba, last_lba=lba + count - 1))
        lba += count
    total = lba + _ARRAY_SECTORS + 1
    total += -total % _ALIGN
    return tuple(placed), total * SECTOR


def _guid(text: str) -> bytes:
    return uuidlib.UUID(text).bytes_le


def _entry(p: PlacedPartition) -> bytes:
    name = p.partition.name.encode("utf-16-le")
    if len(name) > 72:
        raise BuildError(f"partition name {p.partition.name!r} is longer than 36 UTF-16 units")
    return struct.pack(
        "<16s16sQQQ72s",
        _guid(p.partition.type_uuid),
        _guid(p.partition.uuid),
        p.first_lba,
        p.last_lba,
        p.partition.attributes,
        name,
    )


def _header(
    *, current: int, backup: int, entries_lba: int, last_lba: int, disk_guid: str, array_crc: int
) -> bytes:
    body = struct.pack(
        "<8sIIIIQQQQ16sQIII",
        b"EFI PART",
        0x00010000,
        92,
        0,  # header CRC, filled below
        0,
        current,
        backup,
        2 + _ARRAY_SECTORS,  # first usable LBA
        last_lba - _ARRAY_SECTORS - 1,  # last usable LBA
        _guid(disk_guid),
        entries_lba,
        _ENTRIES,
        _ENTRY_SIZE,
        array_crc,
    )
    crc = zlib.crc32(body)
    body = body[:16] + struct.pack("<I", crc) + body[20:]
    return body + b"\0" * (SECTOR - len(body))


def _mbr(total_sectors: int) -> bytes:
    size = min(total_sectors - 1, 0xFFFFFFFF)
    entry = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    return b"\0" * 446 + entry + b"\0" * 48 + b"\x55\xaa"


def write_gpt(
    out: BinaryIO, parts: Sequence[tuple[Partition, BinaryIO]], *, disk_seed: bytes
) -> tuple[PlacedPartition, ...]:
    """Write a whole disk image to ``out`` (seekable, empty): headers, then each partition's bytes
    copied from its stream (exactly ``size`` bytes). ``disk_seed`` derives the disk GUID."""
    placed, size = plan_gpt([p for p, _ in parts])
    total = size // SECTOR
    last = total - 1
    disk_guid = str(
        uuidlib.UUID(bytes=hashlib.sha256(b"kiln gpt disk\0" + disk_seed).digest()[:16], version=4)
    )
    array = b"".join(_entry(p) for p in placed)
    array += b"\0" * (_ENTRIES * _ENTRY_SIZE - len(array))
    crc = zlib.crc32(array)
    out.write(_mbr(total))
    out.write(
        _header(current=1, backup=last, entries_lba=2, last_lba=last, disk_guid=disk_guid, array_crc=crc)
    )
    out.write(array)
    pos = (2 + _ARRAY_SECTORS) * SECTOR
    for p, (_part, stream) in zip(placed, parts, strict=True):
        out.write(b"\0" * (p.offset - pos))
        pos = p.offset
        left = p.partition.size
        while left:
            block = stream.read(min(left, 1 << 20))
            if not block:
                raise BuildError(f"partition {p.partition.name}: its data ended {left} bytes early")
            out.write(block)
            left -= len(block)
        pos += p.partition.size
    backup_array = (last - _ARRAY_SECTORS) * SECTOR
    out.write(b"\0" * (backup_array - pos))
    out.write(array)
    out.write(
        _header(
            current=last,
            backup=1,
            entries_lba=last - _ARRAY_SECTORS,
            last_lba=last,
            disk_guid=disk_guid,
            array_crc=crc,
        )
    )
    return placed
