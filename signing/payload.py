"""cosign's simple-signing payload: what an image signature signs.

The payload is compact JSON with exactly these keys::

    {"critical": {"identity": {"docker-reference": "REPO[:TAG]"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {...} | null}

kiln writes it through the canonical serializer. Parsing is strict because the parsed bytes are
signed bytes: unknown keys, duplicate keys, non-UTF-8, and any byte after the closing brace are
refused (reason ``payload``). Keys are matched exactly (Go's decoder is case-insensitive; kiln is not).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.vocabulary import Reason

__all__ = ["SIMPLE_SIGNING_TYPE", "MAX_PAYLOAD_BYTES", "SimpleSigningPayload", "split_reference"]

SIMPLE_SIGNING_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 64 * 1024


def split_reference(reference: str) -> tuple[str, str | None]:
    """``registry/repo:tag`` -> (``registry/repo``, ``tag``); a colon in a host:port is not a tag."""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, None


def _refuse(message: str) -> VerificationError:
    return VerificationError(f"signature payload: {message}", reason=Reason.PAYLOAD)


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _refuse(f"duplicate key {k!r}")
        out[k] = v
    return out


def _exact_keys(d: object, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _refuse(f"{where} must be an object")
    extra = sorted(set(d) - keys)
    if extra:
        raise _refuse(f"{where}: unknown key {extra[0]!r}")
    missing = sorted(keys - set(d))
    if missing:
        raise _refuse(f"{where}: missing key {missing[0]!r}")
    return d


@dataclass(frozen=True, slots=True, kw_only=True)
class SimpleSigningPayload:
    docker_reference: str
    manifest_digest: Digest
    optional: Mapping[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "critical": {
                "identity": {"docker-reference": self.docker_reference},
                "image": {"docker-manifest-digest": str(self.manifest_digest)},
                "type": SIMPLE_SIGNING_TYPE,
            },
            "optional": dict(self.optional) if self.optional is not None else None,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> SimpleSigningPayload:
        """Strictly parse payload bytes (already signature-checked, still hostile-shaped)."""
        if len(data) > MAX_PAYLOAD_BYTES:
            raise _refuse(f"{len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte cap")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("not UTF-8") from None
        decoder = json.JSONDecoder(object_pairs_hook=_pairs_no_duplicates)
        try:
            value, end = decoder.raw_decode(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _refuse(f"not valid JSON: {exc}") from None
        if end != len(text):
            raise _refuse(f"{len(text) - end} trailing bytes after the JSON object")
        top = _exact_keys(value, {"critical", "optional"}, "payload")
        critical = _exact_keys(top["critical"], {"identity", "image", "type"}, "critical")
        identity = _exact_keys(critical["identity"], {"docker-reference"}, "critical.identity")
        image = _exact_keys(critical["image"], {"docker-manifest-digest"}, "critical.image")
        if critical["type"] != SIMPLE_SIGNING_TYPE:
            raise _refuse(f"critical.type is {critical['type']!r}, expected {SIMPLE_SIGNING_TYPE!r}")
        ref = identity["docker-reference"]
        if not isinstance(ref, str) or not ref:
            raise _refuse("critical.identity.docker-reference must be a non-empty string")
        digest_text = image["docker-manifest-digest"]
        if not isinstance(digest_text, str):
            raise _refuse("critical.image.docker-manifest-digest must be a string")
        try:
            digest = Digest.parse(digest_text)
        except DocumentError as exc:
            raise _refuse(f"critical.image.docker-manifest-digest: {exc.message}") from None
        optional = top["optional"]
        if optional is not None and not isinstance(optional, dict):
            raise _refuse("optional must be an object or null")
        return cls(
            docker_reference=ref,
            manifest_digest=digest,
            optional=MappingProxyType(optional) if optional is not None else None,
        )
