"""OCI image-spec documents: descriptors, image manifests, indexes and image configs.

These are documents we *receive* as well as write, so unknown fields are kept untouched in
``extra`` and documents parsed from bytes remember those bytes in ``raw``: a digest is always
over the exact stored bytes, never over a re-serialization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypedDict

from manifests.bounded import JsonCaps, read_json_object
from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError

__all__ = [
    "Descriptor",
    "Platform",
    "OCIManifest",
    "OCIIndex",
    "parse_json_object",
    "MAX_DOCUMENT_BYTES",
]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d)) if d else _EMPTY


def parse_json_object(data: bytes, *, what: str, limit: int = MAX_DOCUMENT_BYTES) -> dict[str, Any]:
    """Parse untrusted JSON bytes into an object through the bounded reader
    (:func:`manifests.bounded.read_json`): size cap, strict UTF-8, nesting depth, number length and
    range, no duplicate keys. Raises :class:`~manifests.errors.ParseError` (a DocumentError)."""
    return read_json_object(data, what=what, caps=JsonCaps(max_bytes=max(limit, 2)))


def _str(d: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise DocumentError(f"{what}: missing {key!r}")
        return None
    if not isinstance(v, str):
        raise DocumentError(f"{what}: {key!r} must be a string")
    return v


def _req(d: Mapping[str, Any], key: str, what: str) -> str:
    v = _str(d, key, what)
    if v is None:  # pragma: no cover - _str raises for a missing required key
        raise DocumentError(f"{what}: missing {key!r}")
    return v


def _annotations(d: Mapping[str, Any], what: str) -> Mapping[str, str]:
    ann = d.get("annotations")
    if ann is None:
        return _EMPTY
    if not isinstance(ann, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in ann.items()
    ):
        raise DocumentError(f"{what}: annotations must map strings to strings")
    return _frozen(ann)


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise DocumentError(f"invalid platform {text!r}", hint="use os/arch[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls(
            os=_req(d, "os", "platform"),
            architecture=_req(d, "architecture", "platform"),
            variant=_str(d, "variant", "platform", required=False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    platform: Platform | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d["mediaType"] = self.media_type
        d["digest"] = str(self.digest)
        d["size"] = self.size
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_dict()
        if self.artifact_type is not None:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, what: str = "descriptor") -> Descriptor:
        if not isinstance(d, Mapping):
            raise DocumentError(f"{what}: expected an object")
        mt = _req(d, "mediaType", what)
        dg = _req(d, "digest", what)
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DocumentError(f"{what}: 'size' must be a non-negative integer")
        plat = d.get("platform")
        if plat is not None and not isinstance(plat, Mapping):
            raise DocumentError(f"{what}: 'platform' must be an object")
        known = {"mediaType", "digest", "size", "annotations", "platform", "artifactType"}
        return cls(
            media_type=mt,
            digest=Digest.parse(dg),
            size=size,
            annotations=_annotations(d, what),
            platform=Platform.from_dict(plat) if plat is not None else None,
            artifact_type=_str(d, "artifactType", what, required=False),
            extra=_frozen({k: v for k, v in d.items() if k not in known}),
        )


class _EnvelopeFields(TypedDict):
    annotations: Mapping[str, str]
    subject: Descriptor | None
    artifact_type: str | None
    extra: Mapping[str, Any]


def _schema_version(d: Mapping[str, Any], what: str) -> None:
    if d.get("schemaVersion") != 2:
        raise DocumentError(f"{what}: schemaVersion must be 2")


def _envelope(d: Mapping[str, Any], what: str, body: tuple[str, ...]) -> _EnvelopeFields:
    """The fields manifests and indexes share; every key not in ``body`` or shared is kept as is."""
    subject = d.get("subject")
    known = {"schemaVersion", "mediaType", "annotations", "subject", "artifactType", *body}
    return {
        "annotations": _annotations(d, what),
        "subject": Descriptor.from_dict(subject, what=f"{what} subject") if subject else None,
        "artifact_type": _str(d, "artifactType", what, required=False),
        "extra": _frozen({k: v for k, v in d.items() if k not in known}),
    }


class _Envelope:
    """What image manifests and indexes share: ``schemaVersion`` 2, ``mediaType``,
    ``artifactType``, ``subject``, ``annotations``, unknown fields kept in ``extra``, and the exact
    bytes a parsed document came from in ``raw``."""

    __slots__ = ()

    media_type: str | None
    annotations: Mapping[str, str]
    subject: Descriptor | None
    artifact_type: str | None
    extra: Mapping[str, Any]
    raw: bytes | None

    def _to_dict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d["schemaVersion"] = 2
        if self.media_type is not None:
            d["mediaType"] = self.media_type
        if self.artifact_type is not None:
            d["artifactType"] = self.artifact_type
        d.update(body)
        if self.subject is not None:
            d["subject"] = self.subject.to_dict()
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - every document defines its body

    def to_bytes(self) -> bytes:
        """The exact bytes: those parsed, or the canonical serialization of a new document."""
        return self.raw if self.raw is not None else canonical_json(self.to_dict())

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())


@dataclass(frozen=True, slots=True, kw_only=True)
class OCIManifest(_Envelope):
    """An OCI image manifest (schemaVersion 2)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = "application/vnd.oci.image.manifest.v1+json"
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict({"config": self.config.to_dict(), "layers": [x.to_dict() for x in self.layers]})

    @classmethod
    def from_bytes(cls, data: bytes) -> OCIManifest:
        d = parse_json_object(data, what="image manifest")
        return cls._from_dict(d, raw=data)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], *, raw: bytes | None) -> OCIManifest:
        what = "image manifest"
        _schema_version(d, what)
        mt = d.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
        if mt not in (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ):
            raise DocumentError(f"{what}: unexpected mediaType {mt!r}")
        cfg = d.get("config")
        layers = d.get("layers")
        if not isinstance(cfg, Mapping):
            raise DocumentError(f"{what}: missing 'config'")
        if not isinstance(layers, list):
            raise DocumentError(f"{what}: 'layers' must be a list")
        return cls(
            config=Descriptor.from_dict(cfg, what=f"{what} config"),
            layers=tuple(Descriptor.from_dict(x, what=f"{what} layers[{i}]") for i, x in enumerate(layers)),
            media_type=mt,
            **_envelope(d, what, ("config", "layers")),
            raw=raw,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OCIIndex(_Envelope):
    """An OCI image index (also the ``index.json`` of an image layout)."""

    manifests: tuple[Descriptor, ...]
    media_type: str | None = "application/vnd.oci.image.index.v1+json"
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict({"manifests": [m.to_dict() for m in self.manifests]})

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "image index") -> OCIIndex:
        """``what`` names the document in errors (a layout passes its index.json's path)."""
        d = parse_json_object(data, what=what)
        _schema_version(d, what)
        mans = d.get("manifests")
        if not isinstance(mans, list):
            raise DocumentError(f"{what}: 'manifests' must be a list")
        mt = d.get("mediaType")
        if mt is not None and not isinstance(mt, str):
            raise DocumentError(f"{what}: 'mediaType' must be a string")
        return cls(
            manifests=tuple(
                Descriptor.from_dict(x, what=f"{what} manifests[{i}]") for i, x in enumerate(mans)
            ),
            media_type=mt,
            **_envelope(d, what, ("manifests",)),
            raw=data,
        )
