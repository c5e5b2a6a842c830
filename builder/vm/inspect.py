"""``kiln inspect DIR`` for a VM image directory: vm.json, and every part checked against it.

``vm.json`` is read through :class:`manifests.vm.VMConfig` (bounded and strict). Each part file is
hashed while streamed and must have the recorded size and digest; a mismatch is a
:class:`~manifests.errors.VerificationError` naming the part (reason ``digest``). When the
directory is also an OCI layout, the manifest's config blob must be ``vm.json``'s exact bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.layout import REF_NAME, OCILayout
from manifests.oci import OCIManifest
from manifests.vm import MAX_VM_JSON_BYTES, VMConfig
from manifests.vocabulary import Reason

__all__ = ["is_vm_dir", "inspect_vm", "check_parts"]

_CHUNK = 1 << 20


def is_vm_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "vm.json").is_file()


def _read_vm_json(path: Path) -> bytes:
    try:
        with open(path / "vm.json", "rb") as fh:
            data = fh.read(MAX_VM_JSON_BYTES + 1)
    except OSError as exc:
        raise DocumentError(f"{path}/vm.json: cannot read it: {exc.strerror}") from exc
    if len(data) > MAX_VM_JSON_BYTES:
        raise DocumentError(f"{path}/vm.json: larger than {MAX_VM_JSON_BYTES} bytes")
    return data


def check_parts(path: Path, config: VMConfig) -> None:
    """Every part file of ``config`` in ``path`` has its recorded size and digest."""
    for part in config.parts:
        file = path / part.file
        h = hashlib.sha256()
        n = 0
        try:
            with open(file, "rb") as fh:
                while n <= part.size and (block := fh.read(_CHUNK)):
                    h.update(block)
                    n += len(block)
        except OSError as exc:
            raise VerificationError(
                f"{file}: cannot read the {part.name} part: {exc.strerror}", reason=Reason.DIGEST
            ) from exc
        if n != part.size:
            more = "+" if n > part.size else ""
            raise VerificationError(
                f"{file}: the {part.name} part has {n}{more} bytes, vm.json says {part.size}",
                reason=Reason.DIGEST,
            )
        got = Digest(h.hexdigest())
        if got != part.digest:
            raise VerificationError(
                f"{file}: the {part.name} part's digest is {got}, vm.json says {part.digest}",
                reason=Reason.DIGEST,
            )


def inspect_vm(path: Path) -> dict[str, Any]:
    """Describe the VM image directory at ``path`` as a JSON-ready dict."""
    path = Path(path)
    data = _read_vm_json(path)
    config = VMConfig.from_bytes(data)
    check_parts(path, config)
    digest: str | None = None
    tag: str | None = None
    if (path / "oci-layout").is_file():
        layout = OCILayout.open(path)
        desc = layout.resolve(None)
        man = OCIManifest.from_bytes(layout.read_blob(desc.digest))
        if man.config.digest != Digest.of(data):
            raise VerificationError(
                f"{path}: the OCI manifest's config is not this vm.json", reason=Reason.DIGEST
            )
        digest, tag = str(desc.digest), desc.annotations.get(REF_NAME)
    return {
        "version": 1,
        "kind": "vm",
        "digest": digest,
        "tag": tag,
        "vm_json_digest": str(Digest.of(data)),
        "vm": config.to_dict(),
        "parts": [
            {
                "name": str(p.name),
                "file": p.file,
                "media_type": str(p.media_type),
                "digest": str(p.digest),
                "size": p.size,
            }
            for p in config.parts
        ],
        "verified": True,
    }
