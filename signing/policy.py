"""Trust policy: which keys may sign which repositories, how many, and which attestations.

A policy is a YAML document people write::

    version: 1
    expires: 2030-01-01T00:00:00Z          # optional: the policy refuses everything after this
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

Repository globs: ``*`` matches within one path segment, ``**`` across segments, ``?`` one
character. Every rule whose globs match the repository must be satisfied (all-of); a repository
no rule matches is refused, and so is a policy with no rules or no keys: an empty policy is an
error, never a pass.

Evaluation is pure: the policy, the signature and attestation layers (bytes), and the time come in;
``None`` or a :class:`~manifests.errors.VerificationError` comes out.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import yaml

from manifests.digest import Digest
from manifests.errors import KilnError, ManifestError, Problem, VerificationError
from signing.attestation import PredicateKind, verify_attestation_layers
from signing.cosign import CosignLayer
from signing.keys import KeyAlgorithm, PublicKey
from signing.verify import Identity, signature_key_ids

__all__ = ["PolicyKey", "PolicyRule", "TrustPolicy", "repository_glob", "MAX_POLICY_BYTES"]

MAX_POLICY_BYTES = 1024 * 1024


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
class PolicyKey:
    name: str
    key: PublicKey
    expires: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    repositories: tuple[str, ...]
    keys: tuple[str, ...]
    threshold: int = 1
    attestations: tuple[PredicateKind, ...] = ()

    def matches(self, repository: str) -> bool:
        return any(repository_glob(p).match(repository) for p in self.repositories)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustPolicy:
    keys: Mapping[str, PolicyKey] = field(default_factory=lambda: MappingProxyType({}))
    rules: tuple[PolicyRule, ...] = ()
    expires: datetime | None = None

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "policy.yaml") -> TrustPolicy:
        return _Parser(source).parse(data)

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
        """``None`` if the image satisfies every rule for ``repository``; otherwise raise."""
        if not self.rules or not self.keys:
            raise VerificationError("trust policy is empty: it allows nothing", reason="policy")
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if self.expires is not None and now >= self.expires:
            raise VerificationError(
                f"trust policy expired at {self.expires.isoformat()}",
                reason="expired",
                hint="renew the policy",
            )
        rules = [r for r in self.rules if r.matches(repository)]
        if not rules:
            raise VerificationError(f"no trust policy rule covers repository {repository!r}", reason="policy")
        identity = Identity(repository=repository, tag=tag)
        for n, rule in enumerate(rules):
            keys = [
                self.keys[name].key
                for name in rule.keys
                if name in self.keys and self.keys[name].valid_at(now)
            ]
            if not keys:
                raise VerificationError(f"rule {n}: every key it names has expired", reason="expired")
            found, first = signature_key_ids(
                signatures, image_digest=image_digest, identity=identity, keys=keys
            )
            if not found:
                raise first or VerificationError(f"no signatures for {image_digest}", reason="signature")
            if len(found) < rule.threshold:
                raise VerificationError(
                    f"{repository}: {len(found)} distinct policy key(s) signed {image_digest}, "
                    f"rule requires {rule.threshold}",
                    reason="threshold",
                )
            for kind in rule.attestations:
                verify_attestation_layers(
                    attestations, image_digest=image_digest, keys=keys, predicate_type=kind.predicate_type
                )


# -- parsing ---------------------------------------------------------------------------------------

_TOP = ("version", "expires", "keys", "rules")
_KEY = ("algorithm", "public_key", "expires")
_RULE = ("repositories", "keys", "threshold", "attestations")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, node: yaml.Node | None, path: str, message: str, hint: str | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        col = node.start_mark.column + 1 if node is not None else None
        self.problems.append(
            Problem(file=self.source, line=line, col=col, path=path, message=message, hint=hint)
        )

    def mapping(
        self, node: yaml.Node, path: str, allowed: Sequence[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.add(node, path, "expected a mapping")
            return {}
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else "?"
            sub = f"{path}.{name}" if path else name
            if name in out:
                self.add(k, sub, "duplicate key")
            elif allowed and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                self.add(k, sub, "unknown key", f"did you mean {close[0]!r}?" if close else None)
            else:
                out[name] = (k, v)
        return out

    def scalar(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.add(node, path, "expected a scalar")
            return None
        return str(node.value)

    def time(self, node: yaml.Node, path: str) -> datetime | None:
        text = self.scalar(node, path)
        if text is None:
            return None
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            self.add(node, path, f"not an ISO 8601 time: {text!r}")
            return None
        if t.tzinfo is None:
            self.add(node, path, "time needs a timezone", "end it with Z")
            return None
        return t.astimezone(UTC)

    def strings(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.add(node, path, "expected a list")
            return ()
        out = []
        for i, item in enumerate(node.value):
            s = self.scalar(item, f"{path}[{i}]")
            if s is not None:
                out.append(s)
        return tuple(out)

    def parse(self, data: bytes) -> TrustPolicy:
        if len(data) > MAX_POLICY_BYTES:
            raise ManifestError(
                [Problem(file=self.source, line=None, col=None, path="", message="file too large")]
            )
        try:
            root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ManifestError(
                [Problem(file=self.source, line=None, col=None, path="", message=f"not valid YAML: {exc}")]
            ) from None
        if root is None:
            return TrustPolicy()
        top = self.mapping(root, "", _TOP)
        if "version" in top:
            v = self.scalar(top["version"][1], "version")
            if v is not None and v != "1":
                self.add(top["version"][1], "version", f"unsupported version {v!r}", "use version: 1")
        expires = self.time(top["expires"][1], "expires") if "expires" in top else None
        keys: dict[str, PolicyKey] = {}
        if "keys" in top:
            for name, (knode, vnode) in self.mapping(top["keys"][1], "keys", ()).items():
                key = self.key(name, vnode, f"keys.{name}")
                if key is not None:
                    keys[name] = key
                del knode
        rules: list[PolicyRule] = []
        if "rules" in top:
            rnode = top["rules"][1]
            if not isinstance(rnode, yaml.SequenceNode):
                self.add(rnode, "rules", "expected a list")
            else:
                for i, item in enumerate(rnode.value):
                    rule = self.rule(item, f"rules[{i}]", keys)
                    if rule is not None:
                        rules.append(rule)
        if self.problems:
            raise ManifestError(self.problems)
        return TrustPolicy(keys=MappingProxyType(keys), rules=tuple(rules), expires=expires)

    def key(self, name: str, node: yaml.Node, path: str) -> PolicyKey | None:
        m = self.mapping(node, path, _KEY)
        if "public_key" not in m:
            self.add(node, path, "missing 'public_key'")
            return None
        algorithm: KeyAlgorithm | None = None
        if "algorithm" in m:
            text = self.scalar(m["algorithm"][1], f"{path}.algorithm")
            try:
                algorithm = KeyAlgorithm(text or "")
            except ValueError:
                self.add(
                    m["algorithm"][1],
                    f"{path}.algorithm",
                    f"unknown algorithm {text!r}",
                    "use ecdsa-p256 or ed25519",
                )
                return None
        pem = self.scalar(m["public_key"][1], f"{path}.public_key")
        expires = self.time(m["expires"][1], f"{path}.expires") if "expires" in m else None
        if pem is None:
            return None
        try:
            key = PublicKey.from_pem(pem.encode("utf-8"), expect=algorithm, what=f"key {name!r}")
        except KilnError as exc:
            self.add(m["public_key"][1], f"{path}.public_key", exc.message, exc.hint)
            return None
        return PolicyKey(name=name, key=key, expires=expires)

    def rule(self, node: yaml.Node, path: str, keys: Mapping[str, PolicyKey]) -> PolicyRule | None:
        m = self.mapping(node, path, _RULE)
        ok = True
        for req in ("repositories", "keys"):
            if req not in m:
                self.add(node, path, f"missing {req!r}")
                ok = False
        if not ok:
            return None
        repos = self.strings(m["repositories"][1], f"{path}.repositories")
        names = self.strings(m["keys"][1], f"{path}.keys")
        if not repos:
            self.add(m["repositories"][1], f"{path}.repositories", "needs at least one repository glob")
        if not names:
            self.add(m["keys"][1], f"{path}.keys", "needs at least one key")
        for i, n in enumerate(names):
            if n not in keys:
                close = difflib.get_close_matches(n, list(keys), n=1)
                self.add(
                    m["keys"][1],
                    f"{path}.keys[{i}]",
                    f"unknown key {n!r}",
                    f"did you mean {close[0]!r}?" if close else "define it under keys:",
                )
        threshold = 1
        if "threshold" in m:
            t = self.scalar(m["threshold"][1], f"{path}.threshold")
            if t is None or not (t.isascii() and t.isdigit() and len(t) <= 9) or int(t) < 1:
                self.add(m["threshold"][1], f"{path}.threshold", "must be a positive integer")
            else:
                threshold = int(t)
                if threshold > len(set(names)):
                    self.add(
                        m["threshold"][1],
                        f"{path}.threshold",
                        f"threshold {threshold} exceeds the {len(set(names))} distinct key(s) named",
                    )
        kinds: list[PredicateKind] = []
        if "attestations" in m:
            for i, a in enumerate(self.strings(m["attestations"][1], f"{path}.attestations")):
                try:
                    kinds.append(PredicateKind(a))
                except ValueError:
                    self.add(
                        m["attestations"][1],
                        f"{path}.attestations[{i}]",
                        f"unknown attestation {a!r}",
                        "use slsaprovenance or spdx",
                    )
        return PolicyRule(repositories=repos, keys=names, threshold=threshold, attestations=tuple(kinds))
