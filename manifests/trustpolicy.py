"""The image trust policy: which keys may sign which repositories, how many, and which attestations.

This module is the one parser of that format. It is written by people in two places: as the
``images:`` section of a trust root (:mod:`manifests.trustroot`) and as a policy file of its own
(``kiln verify --policy FILE``)::

    version: 1
    expires: 2030-01-01T00:00:00Z          # optional (file only): refuses everything after this
    keys:
      release-a:
        algorithm: ecdsa-p256               # ecdsa-p256 | ed25519
        public_key: |
          -----BEGIN PUBLIC KEY-----
          ...
          -----END PUBLIC KEY-----
        expires: 2029-01-01T00:00:00Z       # optional: signatures by this key stop counting
    rules:
      - repositories: ["registry.example.com/apps/*"]
        keys: [release-a, release-b]
        threshold: 2                        # distinct key ids (sha256 of the SPKI)
        attestations: [slsaprovenance, spdx]

Both ``keys`` and ``rules`` are required and must not be empty: an empty policy is an error, never a
pass. Problems come out all at once, in position order. Only the structure of a key is checked here
(PEM armour, base64, a DER sequence); :mod:`signing.policy` loads the keys and passes a
``check_key`` function in so an unsupported key is reported at its position too.
:mod:`signing.policy` evaluates the model; nothing else reads the format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from manifests.fields import CONTROL_CHARS, FieldChecker, format_utc_time
from manifests.source import SourceDocument, join_index, join_key, load_document, parse_document

__all__ = [
    "MAX_POLICY_BYTES",
    "ATTESTATION_KINDS",
    "KEY_ALGORITHMS",
    "KeyCheck",
    "ImageKey",
    "ImageRule",
    "ImageRules",
    "PolicyChecker",
    "load_trust_policy",
    "parse_trust_policy",
    "pem_key_id",
    "normalize_pem",
]

MAX_POLICY_BYTES = 1024 * 1024
# The attestation kinds and key algorithms signing/ knows (signing.attestation.PredicateKind,
# signing.keys.KeyAlgorithm); manifests/ may not import signing/, a test keeps them equal.
ATTESTATION_KINDS = ("slsaprovenance", "spdx")
KEY_ALGORITHMS = ("ecdsa-p256", "ed25519")

# (normalized PEM, algorithm or None, key name) -> None, or (message, hint) when the key is refused.
KeyCheck = Callable[[str, str | None, str], tuple[str, str | None] | None]

_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"
_MAX_PEM = 16 * 1024
_FILE_REQUIRED = ("keys", "rules")
_FILE_OPTIONAL = ("version", "expires")


def pem_key_id(pem: str) -> str | None:
    """The key id of a PEM ``PUBLIC KEY`` (sha256 of its DER), or None if it is not one."""
    der = _pem_der(pem)
    return None if der is None else hashlib.sha256(der).hexdigest()


def normalize_pem(pem: str) -> str:
    """Re-armour a PEM public key: 64-character lines, one trailing newline."""
    der = _pem_der(pem)
    if der is None:
        raise ValueError("not a PEM public key")
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"{_PEM_BEGIN}\n{body}\n{_PEM_END}\n"


def _pem_der(pem: str) -> bytes | None:
    if len(pem) > _MAX_PEM:
        return None
    text = pem.strip()
    if not text.startswith(_PEM_BEGIN) or not text.endswith(_PEM_END):
        return None
    body = "".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    # A DER SEQUENCE (0x30) is the least a SubjectPublicKeyInfo is; signing/ parses the rest.
    return der if len(der) > 2 and der[0] == 0x30 else None


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageKey:
    name: str
    public_key: str  # normalized PEM
    algorithm: str | None = None
    expires: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"public_key": self.public_key}
        if self.algorithm is not None:
            out["algorithm"] = self.algorithm
        if self.expires is not None:
            out["expires"] = format_utc_time(self.expires)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRule:
    repositories: tuple[str, ...]
    keys: tuple[str, ...]  # ImageKey names
    threshold: int = 1
    attestations: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "repositories": list(self.repositories),
            "keys": list(self.keys),
            "threshold": self.threshold,
            "attestations": list(self.attestations),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRules:
    """The image trust policy, kept as data: :mod:`signing.policy` evaluates it.

    ``expires`` is the policy file's own expiry; in a trust root it is None (the root's governs).
    """

    keys: tuple[ImageKey, ...]  # sorted by name
    rules: tuple[ImageRule, ...]
    expires: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keys": {k.name: k.to_dict() for k in self.keys},
            "rules": [r.to_dict() for r in self.rules],
        }
        if self.expires is not None:
            out["expires"] = format_utc_time(self.expires)
        return out


# --------------------------------------------------------------------------------------------
# Entry points (the policy file)


def load_trust_policy(path: Path, *, check_key: KeyCheck | None = None) -> ImageRules:
    """Read, parse and validate a policy file (YAML; JSON is YAML too)."""
    return PolicyChecker(load_document(path, limit=MAX_POLICY_BYTES), check_key=check_key).policy_file()


def parse_trust_policy(data: bytes, *, source: str, check_key: KeyCheck | None = None) -> ImageRules:
    doc = parse_document(data, source=source, fmt="yaml", limit=MAX_POLICY_BYTES)
    return PolicyChecker(doc, check_key=check_key).policy_file()


# --------------------------------------------------------------------------------------------
# The schema (shared with the trust root's ``images:`` section)


class PolicyChecker(FieldChecker):
    """Checks the policy format; :class:`manifests.trustroot` extends it for the whole root."""

    def __init__(self, doc: SourceDocument, *, check_key: KeyCheck | None = None) -> None:
        super().__init__(doc)
        self.check_key = check_key
        self._pems: dict[str, str] = {}  # every key id given as PEM anywhere -> normalized PEM
        self._key_table_path = "keys"  # where rules' key names are defined, for hints

    def policy_file(self) -> ImageRules:
        d = self.doc.data
        self.keys(d, "", required=_FILE_REQUIRED, optional=_FILE_OPTIONAL)
        if "version" in d:
            version = self.integer(d["version"], "version")
            if version is not None and version != 1:
                self.report("version", f"unsupported version {version}", "use version: 1")
        expires = self.utc_time(d["expires"], "expires") if "expires" in d else None
        rules = self.image_rules(d, "")
        self.finish()
        if rules is None:  # pragma: no cover - finish() raised
            raise AssertionError("problems were not reported")
        return ImageRules(keys=rules.keys, rules=rules.rules, expires=expires)

    def image_rules(self, m: Mapping[str, Any], base: str) -> ImageRules | None:
        """The ``keys`` and ``rules`` of mapping ``m`` found at ``base``."""
        self._key_table_path = join_key(base, "keys")
        keys = self._image_keys(m["keys"], self._key_table_path) if "keys" in m else ()
        if "rules" not in m:
            return None
        rules = self._image_rules(m["rules"], join_key(base, "rules"), {k.name for k in keys})
        return ImageRules(keys=keys, rules=rules)

    def pem(self, value: object, where: str) -> str | None:
        """The key id of a PEM public key written at ``where`` (remembered with its PEM)."""
        text = self.string(value, where)
        if text is None:
            return None
        kid = pem_key_id(text)
        if kid is None:
            self.report(
                where,
                "not a PEM public key",
                "expected -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----",
            )
            return None
        self._pems.setdefault(kid, normalize_pem(text))
        return kid

    def _image_keys(self, value: object, where: str) -> tuple[ImageKey, ...]:
        table = self.mapping(value, where)
        if table is None:
            return ()
        if not table:
            self.report(where, "must not be empty", "name the keys that sign images")
        out = [k for name, raw in table.items() if (k := self._image_key(name, raw, join_key(where, name)))]
        return tuple(sorted(out, key=lambda k: k.name))

    def _image_key(self, name: str, raw: object, where: str) -> ImageKey | None:
        if not name or CONTROL_CHARS.search(name):
            self.report(where, "invalid key name")
            return None
        k = self.mapping(raw, where)
        if k is None or not self.keys(k, where, required=("public_key",), optional=("algorithm", "expires")):
            return None
        algorithm = None
        if "algorithm" in k:
            algorithm = self.choice(k["algorithm"], join_key(where, "algorithm"), KEY_ALGORITHMS)
            if algorithm is None:
                return None
        expires = self.utc_time(k["expires"], join_key(where, "expires")) if "expires" in k else None
        kid = self.pem(k["public_key"], join_key(where, "public_key"))
        if kid is None:
            return None
        pem = self._pems[kid]
        refused = self.check_key(pem, algorithm, name) if self.check_key is not None else None
        if refused is not None:
            self.report(join_key(where, "public_key"), *refused)
            return None
        return ImageKey(name=name, public_key=pem, algorithm=algorithm, expires=expires)

    def _image_rules(self, value: object, where: str, names: set[str]) -> tuple[ImageRule, ...]:
        items = self.sequence(value, where, of=" of rules")
        if items is None:
            return ()
        if not items:
            self.report(where, "must not be empty", "an empty policy allows nothing")
        rules = (self._image_rule(raw, join_index(where, i), names) for i, raw in enumerate(items))
        return tuple(r for r in rules if r is not None)

    def _image_rule(self, raw: object, where: str, names: set[str]) -> ImageRule | None:
        r = self.mapping(raw, where)
        if r is None or not self.keys(
            r, where, required=("repositories", "keys"), optional=("threshold", "attestations")
        ):
            return None
        repos = self.strings(r["repositories"], join_key(where, "repositories"))
        if repos is not None and (not repos or not all(repos)):
            self.report(join_key(where, "repositories"), "needs non-empty repository globs")
        keys = self._rule_keys(r["keys"], join_key(where, "keys"), names)
        threshold = self._threshold(r, where, len(set(keys or ())))
        attestations: tuple[str, ...] = ()
        if "attestations" in r:
            sub = join_key(where, "attestations")
            attestations = self.strings(r["attestations"], sub) or ()
            for j, a in enumerate(attestations):
                self.choice(a, join_index(sub, j), ATTESTATION_KINDS)
        if not repos or not keys:
            return None
        return ImageRule(repositories=repos, keys=keys, threshold=threshold, attestations=attestations)

    def _rule_keys(self, value: object, where: str, names: set[str]) -> tuple[str, ...] | None:
        keys = self.strings(value, where)
        if keys is not None and not keys:
            self.report(where, "must not be empty", "name at least one key")
        for j, k in enumerate(keys or ()):
            if k not in names:
                hint = f"define it under {self._key_table_path}"
                self.report(join_index(where, j), f"unknown key '{k}'", hint)
        return keys

    def _threshold(self, r: Mapping[str, Any], where: str, distinct: int) -> int:
        if "threshold" not in r:
            return 1
        sub = join_key(where, "threshold")
        t = self.integer(r["threshold"], sub)
        if t is not None and not 1 <= t <= max(distinct, 1):
            self.report(sub, f"out of range (1 to {distinct}, the distinct keys named)")
            return 1
        return t or 1
