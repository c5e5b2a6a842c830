"""Evaluating image trust: policy objects that take one signed image and return ``None`` or raise.

The policy *document* is parsed in exactly one place, :mod:`manifests.trustpolicy` (a policy file,
or a trust root's ``images:`` section); this module only loads its keys and evaluates it.

Every policy implements :class:`Policy`: ``verify(image, now=...)`` returns ``None`` or raises
:class:`~manifests.errors.VerificationError`. They compose:

- :class:`SignedBy`: a threshold of distinct trusted keys signed the image for its identity;
- :class:`PolicyRule`: :class:`SignedBy` with key expiry and required attestations (a rule of a
  policy document);
- :class:`AllOf` / :class:`AnyOf`: every / at least one child passes. An empty one is an error, never
  a pass;
- :class:`TrustPolicy`: the document: not expired, and :class:`AllOf` the rules whose repository
  globs match the image's repository (no rule matching is a refusal);
- :class:`UnsafeNoOp`: passes everything and logs a warning each time it is used (for tests and
  break-glass tools only, as its name says).

Repository globs: ``*`` matches within one path segment, ``**`` across segments, ``?`` one character.
Evaluation is pure: the policy, the signature and attestation layers (bytes) and the time come in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from manifests.digest import Digest
from manifests.errors import KilnError, VerificationError
from manifests.trustpolicy import MAX_POLICY_BYTES, ImageRules, parse_trust_policy
from manifests.vocabulary import Reason
from signing.attestation import PredicateKind, verify_attestation_layers
from signing.cosign import CosignLayer
from signing.keys import KeyAlgorithm, PublicKey
from signing.verify import Identity, signature_key_ids, verify_signature_layers

__all__ = [
    "MAX_POLICY_BYTES",
    "SignedImage",
    "Policy",
    "SignedBy",
    "PolicyKey",
    "PolicyRule",
    "AllOf",
    "AnyOf",
    "UnsafeNoOp",
    "TrustPolicy",
    "check_key",
    "load_policy",
    "repository_glob",
]

_log = logging.getLogger(__name__)


def repository_glob(pattern: str) -> re.Pattern[str]:
    """Compile a repository glob: ``*`` within a segment, ``**`` across segments, ``?`` one char."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedImage:
    """What a policy judges: one manifest or index, who it is, and what is stored beside it.

    Signatures are about ``digest``. Attestations are about the image as a whole: ``attested`` is
    the digest their statements name (an index's own digest for each of its platform manifests, as
    ``kiln attest`` attests the image it is given); None means ``digest``.
    """

    identity: Identity
    digest: Digest
    signatures: Sequence[CosignLayer]
    attestations: Sequence[CosignLayer] = ()
    attested: Digest | None = None


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        """``None`` if ``image`` satisfies the policy at ``now``; otherwise raise VerificationError."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedBy:
    """``threshold`` distinct keys of ``keys`` signed the image for its identity."""

    keys: tuple[PublicKey, ...]
    threshold: int = 1
    name: str = "signed-by"

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        del now
        if not image.signatures:
            raise VerificationError(
                f"no signature for {image.digest}", reason=Reason.SIGNATURE, hint="sign it with kiln sign"
            )
        verify_signature_layers(
            image.signatures,
            image_digest=image.digest,
            identity=image.identity,
            keys=self.keys,
            threshold=self.threshold,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyKey:
    name: str
    key: PublicKey
    expires: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    """One rule of a policy document: keys (with their expiry), a threshold, attestations."""

    repositories: tuple[str, ...]
    keys: tuple[PolicyKey, ...]
    threshold: int = 1
    attestations: tuple[PredicateKind, ...] = ()
    name: str = "rule"

    def matches(self, repository: str) -> bool:
        return any(repository_glob(p).match(repository) for p in self.repositories)

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        keys = [k.key for k in self.keys if k.valid_at(now)]
        if not keys:
            raise VerificationError(f"{self.name}: every key it names has expired", reason=Reason.EXPIRED)
        found, first = signature_key_ids(
            image.signatures, image_digest=image.digest, identity=image.identity, keys=keys
        )
        if not found:
            raise first or VerificationError(f"no signatures for {image.digest}", reason=Reason.SIGNATURE)
        if len(found) < self.threshold:
            raise VerificationError(
                f"{image.identity.repository}: {len(found)} distinct policy key(s) signed {image.digest}, "
                f"rule requires {self.threshold}",
                reason=Reason.THRESHOLD,
            )
        for kind in self.attestations:
            verify_attestation_layers(
                image.attestations,
                image_digest=image.attested or image.digest,
                keys=keys,
                predicate_type=kind.predicate_type,
            )


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every child passes. An empty AllOf refuses: nothing was required is never a pass."""

    policies: tuple[Policy, ...]
    name: str = "all-of"

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        if not self.policies:
            raise VerificationError(
                f"{self.name}: an empty all-of policy allows nothing", reason=Reason.POLICY
            )
        for policy in self.policies:
            policy.verify(image, now=now)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one child passes; when none does, the first child's refusal is raised."""

    policies: tuple[Policy, ...]
    name: str = "any-of"

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        if not self.policies:
            raise VerificationError(
                f"{self.name}: an empty any-of policy allows nothing", reason=Reason.POLICY
            )
        first: VerificationError | None = None
        for policy in self.policies:
            try:
                policy.verify(image, now=now)
            except VerificationError as exc:
                first = first or exc
            else:
                return
        assert first is not None  # noqa: S101 - at least one child ran and raised
        raise first


@dataclass(frozen=True, slots=True)
class UnsafeNoOp:
    """Passes every image and says so in the log every time. Never for production."""

    name: str = "unsafe-no-op"

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        del now
        _log.warning("%s: %s accepted WITHOUT verification (unsafe policy)", self.name, image.digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustPolicy:
    """A policy document, loaded: its rules apply to the repositories their globs match."""

    keys: Mapping[str, PolicyKey] = field(default_factory=lambda: MappingProxyType({}))
    rules: tuple[PolicyRule, ...] = ()
    expires: datetime | None = None
    name: str = "trust policy"

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "policy.yaml") -> TrustPolicy:
        """Parse (:mod:`manifests.trustpolicy`) and load a policy file."""
        return load_policy(parse_trust_policy(data, source=source, check_key=check_key))

    def for_repository(self, repository: str) -> AllOf:
        """The rules that apply to ``repository``, all required."""
        return AllOf(tuple(r for r in self.rules if r.matches(repository)), name=self.name)

    def verify(self, image: SignedImage, *, now: datetime) -> None:
        if not self.rules or not self.keys:
            raise VerificationError("trust policy is empty: it allows nothing", reason=Reason.POLICY)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if self.expires is not None and now >= self.expires:
            raise VerificationError(
                f"trust policy expired at {self.expires.isoformat()}",
                reason=Reason.EXPIRED,
                hint="renew the policy",
            )
        repository = image.identity.repository
        rules = self.for_repository(repository)
        if not rules.policies:
            raise VerificationError(
                f"no trust policy rule covers repository {repository!r}", reason=Reason.POLICY
            )
        rules.verify(image, now=now)

    def evaluate(
        self,
        *,
        repository: str,
        tag: str | None,
        image_digest: Digest,
        signatures: Sequence[CosignLayer],
        attestations: Sequence[CosignLayer] = (),
        now: datetime,
    ) -> None:
        """:meth:`verify` with the image's parts spelled out."""
        image = SignedImage(
            identity=Identity(repository=repository, tag=tag),
            digest=image_digest,
            signatures=signatures,
            attestations=attestations,
        )
        self.verify(image, now=now)


def _public_key(pem: str, algorithm: str | None, what: str) -> PublicKey:
    expect = KeyAlgorithm(algorithm) if algorithm is not None else None
    return PublicKey.from_pem(pem.encode("ascii"), expect=expect, what=what)


def check_key(pem: str, algorithm: str | None, name: str) -> tuple[str, str | None] | None:
    """The :data:`manifests.trustpolicy.KeyCheck` signing/ passes to the parser."""
    try:
        _public_key(pem, algorithm, f"key {name!r}")
    except KilnError as exc:
        return exc.message, exc.hint
    return None


def load_policy(document: ImageRules, *, expires: datetime | None = None) -> TrustPolicy:
    """Load a parsed policy's keys; ``expires`` (a trust root's) applies when the document has none.

    An unreadable or unsupported key is refused (``key``)."""
    keys: dict[str, PolicyKey] = {}
    for k in document.keys:
        try:
            public = _public_key(k.public_key, k.algorithm, f"image key {k.name!r}")
        except KilnError as exc:
            raise VerificationError(exc.message, reason=Reason.KEY, hint=exc.hint) from None
        keys[k.name] = PolicyKey(name=k.name, key=public, expires=k.expires)
    rules = tuple(
        PolicyRule(
            repositories=r.repositories,
            keys=tuple(keys[name] for name in r.keys if name in keys),
            threshold=r.threshold,
            attestations=tuple(PredicateKind(a) for a in r.attestations),
            name=f"rule {n}",
        )
        for n, r in enumerate(document.rules)
    )
    return TrustPolicy(keys=MappingProxyType(keys), rules=rules, expires=document.expires or expires)
