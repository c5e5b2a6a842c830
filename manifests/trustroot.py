"""The agent's trust root: who may sign releases, images and the next trust root.

Written by people as YAML (the first root is installed on hosts out of band), signed as its
canonical JSON (:meth:`TrustRoot.to_bytes`) and rotated TUF-style: root N+1 must be signed by a
threshold of root N's ``root`` keys and of its own (see :mod:`signing.root`)::

    apiVersion: kiln.dev/v1
    kind: TrustRoot
    version: 1                           # root versions go up by exactly one per rotation
    expires: 2027-01-01T00:00:00Z        # RFC 3339 UTC; an expired root refuses everything
    root:                                # who may sign the NEXT root
      keys: [<PEM>, <PEM>, <PEM>]
      threshold: 2
    releases:                            # who may sign releases
      keys: [<PEM>, <64-hex key id>]
      threshold: 2
      channels: [production, "staging-*"]   # optional, default ["*"]: every channel
    images:                              # the trust policy format (manifests.trustpolicy)
      keys:
        team-a: {public_key: <PEM>, algorithm: ecdsa-p256, expires: 2028-01-01T00:00:00Z}
      rules:
        - repositories: ["registry.example/team/**"]
          keys: [team-a]
          threshold: 1
          attestations: [slsaprovenance]
    keys:                                # optional: key id -> PEM, so roles may list ids only
      <64-hex key id>: <PEM>

A role key is a PEM ``PUBLIC KEY`` or the 64-hex key id (sha256 of the DER SubjectPublicKeyInfo)
of a key written as PEM elsewhere in the document. Only the structure of a key is checked here
(armour, base64, its id); :mod:`signing.root` loads the keys and refuses unsupported types.

Canonical form: role keys become sorted key ids with their PEMs (re-armoured) under ``keys``,
thresholds and channels always written, image keys sorted by name. :meth:`TrustRoot.from_payload`
accepts only that form, so one root has exactly one signed spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError, ManifestError, VerificationError
from manifests.fields import format_utc_time
from manifests.image import API_VERSION
from manifests.payload import payload_document, require_canonical
from manifests.source import SourceDocument, join_index, join_key, load_document, parse_document
from manifests.trustpolicy import (
    ATTESTATION_KINDS,
    KEY_ALGORITHMS,
    ImageKey,
    ImageRule,
    ImageRules,
    PolicyChecker,
    normalize_pem,
    pem_key_id,
)
from manifests.vocabulary import Reason

__all__ = [
    "KIND",
    "MAX_ROOT_BYTES",
    "ATTESTATION_KINDS",
    "KEY_ALGORITHMS",
    "Role",
    "ReleaseRole",
    "ImageKey",
    "ImageRule",
    "ImageRules",
    "TrustRoot",
    "load_trust_root",
    "parse_trust_root",
    "trust_root_from_document",
    "pem_key_id",
    "normalize_pem",
]

KIND = "TrustRoot"
MAX_ROOT_BYTES = 1024 * 1024
MAX_ROLE_KEYS = 64

_TOP_REQUIRED = ("apiVersion", "kind", "version", "expires", "root", "releases")
_TOP_OPTIONAL = ("images", "keys")
_KEY_ID = re.compile(r"[0-9a-f]{64}\Z")
_GLOB = re.compile(r"[a-z0-9*?._-]{1,64}\Z")
_KEY_HINT = "write a PEM public key (-----BEGIN PUBLIC KEY-----) or the 64-hex id of a key given elsewhere"


# --------------------------------------------------------------------------------------------
# The document model


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """Keys (by id) and how many distinct ones must sign."""

    key_ids: tuple[str, ...]
    threshold: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.key_ids), "threshold": self.threshold}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRole(Role):
    channels: tuple[str, ...] = ("*",)  # globs: '*' any run of characters, '?' one

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.key_ids), "threshold": self.threshold, "channels": list(self.channels)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustRoot:
    version: int
    expires: datetime
    root: Role
    releases: ReleaseRole
    images: ImageRules | None = None
    keys: tuple[tuple[str, str], ...] = field(default=())  # (key id, normalized PEM), sorted

    def pem(self, key_id: str) -> str:
        for kid, pem in self.keys:
            if kid == key_id:
                return pem
        raise KeyError(key_id)

    def expired(self, now: datetime) -> bool:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now >= self.expires

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "version": self.version,
            "expires": format_utc_time(self.expires),
            "keys": dict(self.keys),
            "root": self.root.to_dict(),
            "releases": self.releases.to_dict(),
        }
        if self.images is not None:
            out["images"] = self.images.to_dict()
        return out

    def to_bytes(self) -> bytes:
        """The canonical JSON that is signed."""
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())

    def to_yaml(self) -> str:
        """The canonical content as YAML for people (PEMs as literal blocks); parses back equal."""
        d = self.to_dict()
        ordered = {k: d[k] for k in ("apiVersion", "kind", "version", "expires", "root", "releases")}
        if "images" in d:
            ordered["images"] = d["images"]
        ordered["keys"] = d["keys"]
        return yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)

    @classmethod
    def from_payload(cls, data: bytes, *, limit: int = MAX_ROOT_BYTES) -> TrustRoot:
        """Strictly parse a received canonical root; VerificationError (reason ``parse``)."""
        doc = payload_document(data, what="trust root payload", limit=limit, name_errors=False)
        try:
            root = trust_root_from_document(doc)
        except ManifestError as exc:
            raise VerificationError("; ".join(str(p) for p in exc.problems), reason=Reason.PARSE) from None
        require_canonical(
            data, root.to_bytes(), what="trust root payload", hint="sign trust roots with kiln root sign"
        )
        return root


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


# --------------------------------------------------------------------------------------------
# Entry points


def load_trust_root(path: Path) -> TrustRoot:
    """Read, parse and validate a trust root people wrote (``.yaml``/``.yml``; JSON is YAML too)."""
    if path.suffix in (".yaml", ".yml"):
        return trust_root_from_document(load_document(path, limit=MAX_ROOT_BYTES))
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    return parse_trust_root(data, source=str(path))


def parse_trust_root(data: bytes, *, source: str) -> TrustRoot:
    return trust_root_from_document(parse_document(data, source=source, fmt="yaml", limit=MAX_ROOT_BYTES))


def trust_root_from_document(doc: SourceDocument) -> TrustRoot:
    return _RootSchema(doc).root()


# --------------------------------------------------------------------------------------------
# The schema


class _RootSchema(PolicyChecker):
    def __init__(self, doc: SourceDocument) -> None:
        super().__init__(doc)  # the PEMs seen anywhere (self._pems) come from PolicyChecker.pem
        self._pending: list[tuple[str, str]] = []  # (key id written by id, where)

    def root(self) -> TrustRoot:
        d = self.doc.data
        self.keys(d, "", required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
        self.header(d, KIND, escape=False)
        version = self._version(d)
        expires = self._time(d["expires"], "expires") if "expires" in d else None
        self._key_table(d)
        images = self._images(d["images"]) if "images" in d else None
        root = self._role(d, "root")
        releases = self._role(d, "releases")
        channels = self._channels(d)
        for kid, where in self._pending:
            if kid not in self._pems:
                self.report(where, f"unknown key id {kid[:16]}...", "give its PEM here or under keys:")
        self.finish()
        if expires is None or root is None or releases is None:  # pragma: no cover - finish() raised
            raise AssertionError("problems were not reported")
        used = sorted(set(root.key_ids) | set(releases.key_ids))
        return TrustRoot(
            version=version,
            expires=expires,
            root=root,
            releases=ReleaseRole(key_ids=releases.key_ids, threshold=releases.threshold, channels=channels),
            images=images,
            keys=tuple((kid, self._pems[kid]) for kid in used),
        )

    def _version(self, d: Mapping[str, Any]) -> int:
        if "version" not in d:
            return 0
        number = self.integer(d["version"], "version")
        if number is not None and not 1 <= number <= 2**63 - 1:
            self.report("version", "out of range (1 to 2**63-1)", "root versions start at 1")
            return 0
        return number or 0

    def _time(self, value: object, where: str) -> datetime | None:
        return self.utc_time(value, where, example="2027-01-01T00:00:00Z", specific=False)

    def _key_table(self, d: Mapping[str, Any]) -> None:
        if "keys" not in d:
            return
        table = self.mapping(d["keys"], "keys")
        if table is None:
            return
        for kid, value in table.items():
            where = join_key("keys", kid)
            if not _KEY_ID.match(kid):
                self.report(where, "not a key id", "key ids are 64 lowercase hex digits (sha256 of the key)")
                continue
            got = self.pem(value, where)
            if got is not None and got != kid:
                self.report(where, f"key id does not match its key (the key's id is {got})")

    def _role(self, d: Mapping[str, Any], name: str) -> Role | None:
        if name not in d:
            return None
        m = self.mapping(d[name], name)
        if m is None:
            return None
        optional = ("threshold", "channels") if name == "releases" else ("threshold",)
        if not self.keys(m, name, required=("keys",), optional=optional):
            return None
        where = join_key(name, "keys")
        items = self.sequence(m["keys"], where, of=" of public keys")
        if items is None:
            return None
        if not items:
            self.report(where, "must not be empty", "list the public keys of this role")
            return None
        if len(items) > MAX_ROLE_KEYS:
            self.report(where, f"more than {MAX_ROLE_KEYS} keys")
            return None
        ids: dict[str, str] = {}
        for i, raw in enumerate(items):
            item = join_index(where, i)
            kid = self._role_key(raw, item)
            if kid is None:
                continue
            if kid in ids:
                self.report(item, f"the same key as {ids[kid]}", "a key counts once towards a threshold")
                continue
            ids[kid] = item
        threshold = 1
        if "threshold" in m:
            sub = join_key(name, "threshold")
            value = self.integer(m["threshold"], sub)
            distinct = max(len(ids), 1)
            if value is not None and not 1 <= value <= distinct:
                self.report(sub, f"out of range (1 to {distinct}, the number of distinct keys)")
            elif value is not None:
                threshold = value
        return Role(key_ids=tuple(sorted(ids)), threshold=threshold)

    def _role_key(self, raw: object, where: str) -> str | None:
        if isinstance(raw, str) and _KEY_ID.match(raw):
            self._pending.append((raw, where))
            return raw
        if isinstance(raw, str) and raw.strip().startswith("-----BEGIN"):
            return self.pem(raw, where)
        if isinstance(raw, str):
            self.report(where, "not a public key or key id", _KEY_HINT)
            return None
        self.wrong_type(where, raw, "a PEM public key or a key id", _KEY_HINT)
        return None

    def _channels(self, d: Mapping[str, Any]) -> tuple[str, ...]:
        m = d.get("releases")
        if not isinstance(m, dict) or "channels" not in m:
            return ("*",)
        where = "releases.channels"
        globs = self.strings(m["channels"], where)
        if globs is None:
            return ("*",)
        if not globs:
            self.report(where, "must not be empty", "leave channels out to allow every channel")
            return ("*",)
        for i, g in enumerate(globs):
            if not _GLOB.match(g):
                self.invalid(join_index(where, i), "channel glob", g, "channel names with * and ?")
        return globs

    def _images(self, value: object) -> ImageRules | None:
        m = self.mapping(value, "images")
        if m is None or not self.keys(m, "images", required=("keys", "rules")):
            return None
        return self.image_rules(m, "images")
