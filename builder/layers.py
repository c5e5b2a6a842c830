"""Layer planning: which tree entries go into which layer. Pure: entries in, plans out.

- ``auto``: one layer per :class:`~builder.tree.Category`, most stable first: ``system`` (accounts,
  generated directories), ``runtime`` (ELF closures, library trees), ``app`` (``files`` items and
  other trees). A change to the application alone leaves the other layers byte-identical. Files of
  a ``debian`` source are one ``deb:PACKAGE`` group per package (by name) in the runtime place,
  so the merge below keeps the large packages in layers of their own and an update of one
  package changes the fewest layers.
- ``single``: everything in one layer.
- ``per-source``: one layer per contents item in manifest order, generated entries first.

Then adjacent layers are merged, smallest pair first, until at most ``max`` remain. Every layer
carries the directories above its entries (with their tree attributes), so each layer unpacks the
same way on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from builder.errors import BuildError
from builder.tree import Category, Entry, EntryKind, sort_key
from manifests.image import LayerPolicy, LayerStrategy

__all__ = ["LayerPlan", "plan_layers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerPlan:
    """One layer to write: its label (``system``, ``runtime+app``, ``contents[2]``...) and entries."""

    category: str
    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind is EntryKind.FILE)

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.kind in (EntryKind.FILE, EntryKind.HARDLINK))


@dataclass(slots=True)
class _Group:
    label: str
    members: list[Entry]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.members) + 512 * len(self.members)


def plan_layers(entries: Sequence[Entry], policy: LayerPolicy) -> tuple[LayerPlan, ...]:
    """Split the tree's ``entries`` into at most ``policy.max`` layers, most stable first."""
    if policy.max < 1:
        raise BuildError(f"layers.max must be at least 1, not {policy.max}")
    by_path = {e.path: e for e in entries}
    groups = _strategy_groups([e for e in entries if not e.implicit], policy.strategy)
    groups = _merge_down([g for g in groups if g.members] or [_Group("empty", [])], policy.max)
    return tuple(_materialize(g, by_path) for g in groups)


def _strategy_groups(own: list[Entry], strategy: LayerStrategy) -> list[_Group]:
    """The groups a strategy asks for, in layer order (some may be empty)."""
    if strategy is LayerStrategy.SINGLE:
        return [_Group("all", own)]
    groups: list[_Group] = []
    if strategy is LayerStrategy.AUTO:
        for cat in Category:
            members = [e for e in own if e.category is cat]
            groups.extend(_by_package(members) if cat is Category.RUNTIME else [_Group(str(cat), members)])
        return groups
    for idx in sorted({e.source_index for e in own}):
        label = "system" if idx < 0 else f"contents[{idx}]"
        groups.append(_Group(label, [e for e in own if e.source_index == idx]))
    return groups


def _merge_down(groups: list[_Group], most: int) -> list[_Group]:
    """Merge the adjacent pair with the smallest total size until at most ``most`` groups are left
    (adjacent, so the order from most to least stable holds)."""
    groups = list(groups)
    while len(groups) > most:
        best = min(range(len(groups) - 1), key=lambda i: (groups[i].size + groups[i + 1].size, i))
        a, b = groups[best], groups[best + 1]
        groups[best : best + 2] = [_Group(f"{a.label}+{b.label}", a.members + b.members)]
    return groups


def _by_package(members: list[Entry]) -> list[_Group]:
    """Runtime entries from Debian packages (origin ``contents[N].debian:PACKAGE``) in one group
    per package, by name; other runtime entries in one ``runtime`` group before them."""
    plain: list[Entry] = []
    packages: dict[str, list[Entry]] = {}
    for e in members:
        _, sep, package = e.origin.partition(".debian:")
        if sep:
            packages.setdefault(package, []).append(e)
        else:
            plain.append(e)
    groups = [_Group("runtime", plain)] if plain else []
    groups += [_Group(f"deb:{name}", packages[name]) for name in sorted(packages)]
    return groups


def _materialize(group: _Group, by_path: dict[str, Entry]) -> LayerPlan:
    chosen: dict[str, Entry] = {}
    for e in group.members:
        chosen[e.path] = e
        parent = e.path.rsplit("/", 1)[0]
        while parent and parent not in chosen:
            anc = by_path.get(parent)
            if anc is None:
                raise BuildError(f"{e.path}: parent directory {parent} is missing from the tree")
            chosen[parent] = anc
            parent = parent.rsplit("/", 1)[0]
    for e in group.members:
        if e.kind is EntryKind.HARDLINK and e.target not in chosen:
            raise BuildError(
                f"{e.path}: hard link target {e.target} landed in another layer",
                hint="use the 'single' or 'auto' layer strategy for this source",
            )
    ordered = tuple(chosen[p] for p in sorted(chosen, key=sort_key))
    return LayerPlan(category=group.label, entries=ordered)
