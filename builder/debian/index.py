"""The Packages index of a Debian archive, read with a plain parser (stdlib string operations).

bookworm's ``main/binary-amd64/Packages`` holds about 63,000 stanzas (50 MB); python-debian's
``deb822`` takes 13-28 s over it, this parser about a second (ADR 0017). It keeps only the fields
resolution and the lock need, and ignores continuation lines (descriptions). Small files
(``control`` of one .deb, ``Release``) are read with :func:`parse_stanza` too; version comparison
comes from python-debian.

The index bytes are verified against Release before they get here (:mod:`builder.debian.archive`);
the parser still bounds what it keeps (:data:`MAX_FIELD`) because a mirror may serve any bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from builder.errors import SourceError

__all__ = ["MAX_FIELD", "Relation", "PackageRecord", "PackageIndex", "parse_stanza", "parse_relations"]

MAX_FIELD = 1 << 20  # characters of one kept field (some Provides lists pass 64 KiB)
_KEPT = frozenset(
    {
        "Package",
        "Version",
        "Architecture",
        "Source",
        "Depends",
        "Pre-Depends",
        "Provides",
        "Filename",
        "Size",
        "SHA256",
        "Multi-Arch",
        "Essential",
        "Priority",
        "Maintainer",
        "Section",
    }
)
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")
_REL = re.compile(
    r"\s*([^\s(\[<]+)\s*(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^\s()<>=][^\s()]*)\s*\))?\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*\Z"
)


@dataclass(frozen=True, slots=True)
class Relation:
    """One alternative of a dependency: ``name`` with an optional version relation."""

    name: str
    op: str | None = None  # << <= = >= >>
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.op is None else f"{self.name} ({self.op} {self.version})"


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageRecord:
    """The fields of one binary package that kiln uses."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    filename: str
    size: int
    sha256: str
    pre_depends: str  # as written; parsed when resolution needs it (most records never are)
    depends_text: str
    provides: tuple[Relation, ...]
    multi_arch: str
    essential: bool
    priority: str
    maintainer: str

    def depends(self) -> tuple[tuple[Relation, ...], ...]:
        """Pre-Depends then Depends: each an OR-group of alternatives."""
        here = f"Packages: {self.name} {self.version}"
        return parse_relations(self.pre_depends, where=here) + parse_relations(self.depends_text, where=here)


def parse_stanza(text: str) -> dict[str, str]:
    """The fields of one deb822 stanza; continuation lines are appended to their field."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line[0] in " \t":
            if last is not None and len(fields[last]) < MAX_FIELD:
                fields[last] += "\n" + line
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            fields[last] = value.strip()
    return fields


def parse_relations(text: str, *, where: str) -> tuple[tuple[Relation, ...], ...]:
    """A Depends-style field: comma-separated groups of ``|``-separated alternatives.

    Architecture qualifiers (``:any``, ``:native``) are dropped: kiln resolves one architecture
    at a time. Architecture restriction lists (``[amd64]``) and build profiles are ignored: they
    do not appear in binary package fields.
    """
    groups: list[tuple[Relation, ...]] = []
    for group in text.split(","):
        if not group.strip():
            continue
        alts: list[Relation] = []
        for alt in group.split("|"):
            m = _REL.match(alt)
            if m is None:
                raise SourceError(f"{where}: cannot read the relation {alt.strip()[:80]!r}")
            name = m.group(1).split(":", 1)[0]
            alts.append(Relation(name, m.group(2), m.group(3)))
        groups.append(tuple(alts))
    return tuple(groups)


class PackageIndex:
    """Every package of one architecture (plus ``all``) from one or more Packages files."""

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture
        self.packages: dict[str, list[PackageRecord]] = {}
        self.providers: dict[str, list[tuple[PackageRecord, Relation]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.packages.values())

    def add_text(self, text: str, *, where: str) -> int:
        """Add every stanza of a Packages file; returns how many were added."""
        added = 0
        for fields in _stanzas(text):
            record = self._record(fields, where)
            if record is None:
                continue
            self.packages.setdefault(record.name, []).append(record)
            for p in record.provides:
                self.providers.setdefault(p.name, []).append((record, p))
            added += 1
        return added

    def _record(self, f: dict[str, str], where: str) -> PackageRecord | None:
        name = f.get("Package", "")
        arch = f.get("Architecture", "")
        if arch not in (self.architecture, "all"):
            return None
        missing = [k for k in ("Package", "Version", "Filename", "SHA256") if not f.get(k)]
        if missing:
            what = name[:60] or "no Package"
            raise SourceError(f"{where}: a stanza ({what}) lacks {', '.join(missing)}")
        if not _NAME.match(name):
            raise SourceError(f"{where}: invalid package name {name[:60]!r}")
        size = f.get("Size", "")
        if not size.isdigit() or len(size) > 15:
            raise SourceError(f"{where}: {name}: Size {size[:40]!r} is not a number")
        sha = f["SHA256"]
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            raise SourceError(f"{where}: {name}: SHA256 is not 64 hex digits")
        source, _, rest = f.get("Source", name).partition(" ")
        source_version = rest.strip("() ") or f["Version"]
        provides_text = f.get("Provides")
        provides: tuple[Relation, ...] = ()
        if provides_text:
            provides = tuple(g[0] for g in parse_relations(provides_text, where=f"{where}: {name}"))
        return PackageRecord(
            name=name,
            version=f["Version"],
            architecture=arch,
            source=source,
            source_version=source_version,
            filename=f["Filename"],
            size=int(size),
            sha256=sha,
            pre_depends=f.get("Pre-Depends", ""),
            depends_text=f.get("Depends", ""),
            provides=provides,
            multi_arch=f.get("Multi-Arch", "no"),
            essential=f.get("Essential", "no") == "yes",
            priority=f.get("Priority", "optional"),
            maintainer=f.get("Maintainer", ""),
        )


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """Kept fields of each stanza; continuation lines (descriptions) are skipped unread."""
    fields: dict[str, str] = {}
    kept = _KEPT
    for line in text.split("\n"):
        if not line:
            if fields:
                yield fields
                fields = {}
            continue
        c = line[0]
        if c in {" ", "\t"}:
            continue
        colon = line.find(":")
        if colon <= 0:
            continue
        key = line[:colon]
        if key in kept:
            value = line[colon + 1 :].strip()
            if len(value) > MAX_FIELD:
                raise SourceError(f"Packages: field {key} longer than {MAX_FIELD} characters")
            fields[key] = value
    if fields:
        yield fields
