"""Content digests: the identity of everything kiln handles."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from manifests.errors import DocumentError, VerificationError
from manifests.vocabulary import Reason

__all__ = ["Digest", "sha256_bytes", "sha256_file", "HashingReader"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A ``sha256:<hex>`` digest. Only sha256 is accepted."""

    hex: str

    def __post_init__(self) -> None:
        if not _HEX64.match(self.hex):
            raise DocumentError(f"not a sha256 hex digest: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algo, sep, hexpart = text.partition(":")
        if not sep or algo != "sha256" or not _HEX64.match(hexpart):
            raise DocumentError(
                f"invalid digest {text!r}", hint="expected sha256: followed by 64 lowercase hex digits"
            )
        return cls(hexpart)

    @classmethod
    def trusted(cls, hexdigest: str) -> Digest:
        """A digest from ``hashlib``'s own ``hexdigest()`` of a sha256: nothing to check. The
        builder makes one per file of an image, and the pattern check was a tenth of its cost."""
        digest = object.__new__(cls)
        object.__setattr__(digest, "hex", hexdigest)
        return digest

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls.trusted(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def tag_form(self) -> str:
        """The ``sha256-<hex>`` form cosign uses in tags."""
        return f"sha256-{self.hex}"

    def check(self, data: bytes, *, what: str = "content") -> None:
        """Raise :class:`VerificationError` unless ``data`` hashes to this digest."""
        got = hashlib.sha256(data).hexdigest()
        if got != self.hex:
            raise VerificationError(
                f"{what}: digest mismatch: expected {self}, got sha256:{got}", reason=Reason.DIGEST
            )


def sha256_bytes(data: bytes) -> Digest:
    return Digest.of(data)


def sha256_file(path: str | bytes, *, chunk: int = _CHUNK) -> tuple[Digest, int]:
    """Hash a file by streaming; returns (digest, size)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return Digest(h.hexdigest()), size


class HashingReader:
    """Wrap a binary stream, hashing and counting every byte read; refuses past ``limit``."""

    def __init__(self, raw: BinaryIO, *, limit: int | None = None) -> None:
        self._raw = raw
        self._h = hashlib.sha256()
        self.size = 0
        self._limit = limit

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            raise VerificationError(f"stream exceeds its size cap of {self._limit} bytes", reason=Reason.SIZE)
        self._h.update(data)
        return data

    @property
    def digest(self) -> Digest:
        return Digest(self._h.hexdigest())
