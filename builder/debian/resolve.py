"""Dependency resolution over one architecture's :class:`~builder.debian.index.PackageIndex`.

Deterministic by construction (the same index and request give the same set, on any machine):

- Requested packages are taken in the order written; each package's dependency groups
  (``Pre-Depends`` first, then ``Depends``) are walked breadth-first.
- A group already satisfied by a chosen package is done. Otherwise its alternatives are tried in
  the order written; for each, the highest version of a real package of that name that satisfies
  the relation wins; failing that, a package that ``Provides`` the name (with a version that
  satisfies the relation, when it has one), preferring one already chosen, then by name.
- A name in ``exclude`` is never chosen, and a dependency group that names an excluded package
  is dropped whole (recorded in :attr:`Resolution.dropped`): ``exclude: [debconf]`` means no
  debconf, not another provider of ``debconf-2.0``.
- ``Recommends``, ``Suggests``, ``Conflicts`` and ``Breaks`` are not considered; ``Essential``
  packages come in only when something depends on them (an image is not a whole system).

Every chosen package records why (:class:`Choice`), which ``kiln lock --why`` prints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from debian.debian_support import version_compare

from builder.debian.index import PackageIndex, PackageRecord, Relation
from builder.errors import SourceError

__all__ = ["Choice", "Resolution", "resolve", "satisfies"]

MAX_PACKAGES = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    record: PackageRecord
    reason: str  # "requested" or "NAME Depends: relation group"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    architecture: str
    choices: tuple[Choice, ...]  # sorted by package name
    dropped: tuple[str, ...]  # dependency groups dropped because every candidate was excluded


def satisfies(version: str, op: str | None, wanted: str | None) -> bool:
    """Whether ``version`` satisfies the relation ``op wanted`` (Debian ordering)."""
    if op is None or wanted is None:
        return True
    c = version_compare(version, wanted)
    if op in ("<<", "<"):
        return c < 0
    if op == "<=":
        return c <= 0
    if op == "=":
        return c == 0
    if op == ">=":
        return c >= 0
    return c > 0  # >> and >


def _group_text(group: Sequence[Relation]) -> str:
    return " | ".join(str(r) for r in group)


class _Resolver:
    def __init__(self, index: PackageIndex, exclude: Iterable[str]) -> None:
        self.index = index
        self.exclude = frozenset(exclude)
        self.chosen: dict[str, Choice] = {}
        self.provided: dict[str, list[tuple[PackageRecord, Relation]]] = {}
        self.dropped: list[str] = []

    def real(self, rel: Relation) -> PackageRecord | None:
        best: PackageRecord | None = None
        for rec in self.index.packages.get(rel.name, ()):
            if not satisfies(rec.version, rel.op, rel.version):
                continue
            if best is None or version_compare(rec.version, best.version) > 0:
                best = rec
        return best

    def satisfied(self, rel: Relation) -> bool:
        have = self.chosen.get(rel.name)
        if have is not None and satisfies(have.record.version, rel.op, rel.version):
            return True
        return any(
            rel.op is None or (prov.version is not None and satisfies(prov.version, rel.op, rel.version))
            for _rec, prov in self.provided.get(rel.name, ())
        )

    def candidate(self, rel: Relation) -> PackageRecord | None:
        if rel.name in self.exclude:
            return None
        rec = self.real(rel)
        if rec is not None:
            return rec
        providers = [
            p
            for p, prov in self.index.providers.get(rel.name, ())
            if p.name not in self.exclude
            and (
                rel.op is None or (prov.version is not None and satisfies(prov.version, rel.op, rel.version))
            )
        ]
        if not providers:
            return None
        providers.sort(key=lambda p: (p.name not in self.chosen, p.name, p.version))
        return providers[0]

    def take(self, rec: PackageRecord, reason: str, queue: deque[PackageRecord]) -> None:
        if rec.name in self.chosen:
            return
        if len(self.chosen) >= MAX_PACKAGES:
            raise SourceError(f"more than {MAX_PACKAGES} packages resolved", hint="exclude something")
        self.chosen[rec.name] = Choice(record=rec, reason=reason)
        for prov in rec.provides:
            self.provided.setdefault(prov.name, []).append((rec, prov))
        queue.append(rec)

    def run(self, requested: Sequence[str]) -> Resolution:
        queue: deque[PackageRecord] = deque()
        for name in requested:
            rec = self.candidate(Relation(name))
            if rec is None:
                known = name in self.index.packages or name in self.index.providers
                why = "is excluded" if name in self.exclude else "is not in the archive"
                raise SourceError(
                    f"package {name} {why} (architecture {self.index.architecture})",
                    hint=None if known else "check the name and the suite's components",
                )
            self.take(rec, "requested", queue)
        while queue:
            rec = queue.popleft()
            for group in rec.depends():
                if any(self.satisfied(r) for r in group):
                    continue
                text = _group_text(group)
                if any(r.name in self.exclude for r in group):
                    self.dropped.append(f"{rec.name} Depends: {text}")
                    continue
                pick = None
                for rel in group:
                    pick = self.candidate(rel)
                    if pick is not None:
                        break
                if pick is None:
                    raise SourceError(
                        f"{rec.name} {rec.version} depends on {text}, which nothing in the archive "
                        f"satisfies (architecture {self.index.architecture})",
                        hint="add the component that has it, or exclude the dependent package",
                    )
                self.take(pick, f"{rec.name} Depends: {text}", queue)
        return Resolution(
            architecture=self.index.architecture,
            choices=tuple(self.chosen[n] for n in sorted(self.chosen)),
            dropped=tuple(self.dropped),
        )


def resolve(index: PackageIndex, requested: Sequence[str], exclude: Iterable[str] = ()) -> Resolution:
    """The packages ``requested`` need, with every dependency, chosen as the module describes."""
    return _Resolver(index, exclude).run(requested)
