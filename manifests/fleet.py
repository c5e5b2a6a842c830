"""Fleet documents: the fleet configuration ``kiln fleet serve`` reads, and a release's rollout waves.

The fleet configuration, written by people (YAML or TOML)::

    apiVersion: kiln.dev/v1
    kind: FleetConfig
    name: prod                      # the fleet's name: its etcd key prefix is /kiln/fleet/prod/
    default_max: 1                  # hosts of one group updating at once, unless the group says
    groups:
      canary: {max: 1}
      web: {max: 2}
    lease_ttl: 15s                  # an agent's slot and heartbeat lease: a dead host frees its
                                    # slot after this long

A release's ``rollout`` block (see :mod:`manifests.release`)::

    rollout:
      waves:
        - {group: canary, hosts: 1}          # one canary host first
        - {group: canary, soak: 10m}         # then the other canaries; 10 minutes healthy after
        - {group: "*", max_parallel: 25%}    # then everyone else, a quarter of them at a time

Waves are taken in order. A wave takes the hosts of its group (``*``: any group) that no earlier
wave took, sorted by host id, at most ``hosts`` of them. Wave *n* opens when every host of wave
*n-1* runs the release healthy and has for ``soak`` (wave *n-1*'s soak). A host of no wave never
starts the release. How a fleet evaluates this is :mod:`fleet.waves`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.fields import LOWER_NAME, FieldChecker
from manifests.image import API_VERSION
from manifests.source import SourceDocument, join_index, join_key, load_document, parse_document

__all__ = [
    "FLEET_KIND",
    "ANY_GROUP",
    "GroupLimit",
    "FleetConfig",
    "Wave",
    "Rollout",
    "parse_fleet_config",
    "load_fleet_config",
    "check_rollout",
]

FLEET_KIND = "FleetConfig"
ANY_GROUP = "*"
MAX_FLEET_CONFIG_BYTES = 256 * 1024
MAX_WAVES = 32
MAX_HOSTS_PER_GROUP = 100_000
_NAME_HINT = "lowercase letters, digits, '.', '_', '-'"
_PERCENT = re.compile(r"^(100|[1-9][0-9]?)%$")


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLimit:
    name: str
    max: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    name: str
    default_max: int = 1
    groups: tuple[GroupLimit, ...] = ()
    lease_ttl: float = 15.0

    def max_for(self, group: str) -> int:
        """How many hosts of ``group`` may update at once."""
        for g in self.groups:
            if g.name == group:
                return g.max
        return self.default_max

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FleetConfig:
        """From :meth:`to_dict`'s form (kiln stored it in etcd after validating it)."""
        groups = d.get("groups", {})
        return cls(
            name=str(d["name"]),
            default_max=int(d.get("default_max", 1)),
            groups=tuple(GroupLimit(name=str(k), max=int(v["max"])) for k, v in sorted(groups.items())),
            lease_ttl=float(str(d.get("lease_ttl", "15s")).removesuffix("s")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": FLEET_KIND,
            "name": self.name,
            "default_max": self.default_max,
            "groups": {g.name: {"max": g.max} for g in self.groups},
            "lease_ttl": f"{self.lease_ttl:g}s",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Wave:
    """One wave: hosts of ``group`` (``*``: any), at most ``hosts`` of them (None: all left)."""

    group: str
    hosts: int | None = None
    soak: float = 0.0
    max_parallel: int | None = None
    max_parallel_percent: int | None = None

    def parallel_for(self, members: int) -> int | None:
        """The wave's own cap on hosts updating at once, for a wave of ``members`` hosts."""
        if self.max_parallel is not None:
            return self.max_parallel
        if self.max_parallel_percent is not None:
            return max(1, (members * self.max_parallel_percent) // 100)
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.group}
        if self.hosts is not None:
            out["hosts"] = self.hosts
        if self.soak:
            out["soak"] = f"{self.soak:g}s"
        if self.max_parallel is not None:
            out["max_parallel"] = self.max_parallel
        if self.max_parallel_percent is not None:
            out["max_parallel"] = f"{self.max_parallel_percent}%"
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Wave:
        """From :meth:`to_dict`'s form (a document kiln wrote itself and already validated)."""
        parallel = d.get("max_parallel")
        percent = None
        if isinstance(parallel, str) and parallel.endswith("%"):
            percent, parallel = int(parallel[:-1]), None
        soak = d.get("soak")
        return cls(
            group=str(d["group"]),
            hosts=d.get("hosts"),
            soak=float(soak[:-1]) if isinstance(soak, str) else 0.0,
            max_parallel=parallel,
            max_parallel_percent=percent,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    waves: tuple[Wave, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"waves": [w.to_dict() for w in self.waves]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        return cls(waves=tuple(Wave.from_dict(w) for w in d.get("waves", ())))


def check_rollout(checker: FieldChecker, value: object, path: str) -> Rollout | None:
    """Validate a release's ``rollout`` block at ``path``; problems go to ``checker``."""
    m = checker.mapping(value, path)
    if m is None or not checker.keys(m, path, required=("waves",)):
        return None
    where = join_key(path, "waves")
    items = checker.sequence(m["waves"], where, of=" of {group, hosts, soak, max_parallel}")
    if items is None:
        return None
    if not items:
        checker.report(where, "must list at least one wave")
        return None
    if len(items) > MAX_WAVES:
        checker.report(where, f"{len(items)} waves, more than {MAX_WAVES}")
        return None
    waves: list[Wave] = []
    for i, raw in enumerate(items):
        wave = _wave(checker, raw, join_index(where, i))
        if wave is not None:
            waves.append(wave)
    if len(waves) != len(items):
        return None
    return Rollout(waves=tuple(waves))


def _wave(checker: FieldChecker, raw: object, path: str) -> Wave | None:
    m = checker.mapping(raw, path)
    optional = ("hosts", "soak", "max_parallel")
    if m is None or not checker.keys(m, path, required=("group",), optional=optional):
        return None
    ok = True
    group = checker.string(m["group"], join_key(path, "group"))
    if group is not None and group != ANY_GROUP and not LOWER_NAME.match(group):
        checker.report(join_key(path, "group"), f"invalid group '{group}'", f"{_NAME_HINT}, or '*'")
        ok = False
    hosts = None
    if "hosts" in m:
        hosts = checker.bounded(m["hosts"], join_key(path, "hosts"), 1, MAX_HOSTS_PER_GROUP)
        ok = ok and hosts is not None
    soak = 0.0
    if "soak" in m:
        got = checker.duration(m["soak"], join_key(path, "soak"), example="10m", examples="30s, 10m or 1h")
        ok = ok and got is not None
        soak = got or 0.0
    parallel = percent = None
    if "max_parallel" in m:
        where = join_key(path, "max_parallel")
        value = m["max_parallel"]
        if isinstance(value, str):
            match = _PERCENT.match(value)
            if match is None:
                checker.invalid(where, "share", value, "a number of hosts, or a percentage from 1% to 100%")
                ok = False
            else:
                percent = int(value[:-1])
        else:
            parallel = checker.bounded(value, where, 1, MAX_HOSTS_PER_GROUP)
            ok = ok and parallel is not None
    if not ok or group is None:
        return None
    return Wave(group=group, hosts=hosts, soak=soak, max_parallel=parallel, max_parallel_percent=percent)


class _FleetSchema(FieldChecker):
    def config(self) -> FleetConfig:
        d = self.doc.data
        self.keys(
            d,
            "",
            required=("apiVersion", "kind", "name"),
            optional=("default_max", "groups", "lease_ttl"),
        )
        self.header(d, FLEET_KIND)
        name = ""
        if "name" in d:
            name = self.matching(d["name"], "name", LOWER_NAME, "fleet name", _NAME_HINT) or ""
        default_max = 1
        if "default_max" in d:
            default_max = self.bounded(d["default_max"], "default_max", 1, MAX_HOSTS_PER_GROUP) or 1
        groups: list[GroupLimit] = []
        if "groups" in d:
            m = self.mapping(d["groups"], "groups")
            for gname, spec in (m or {}).items():
                where = join_key("groups", gname)
                if not LOWER_NAME.match(gname):
                    self.report(where, f"invalid group '{gname}'", _NAME_HINT)
                    continue
                gm = self.mapping(spec, where)
                if gm is None or not self.keys(gm, where, required=("max",)):
                    continue
                limit = self.bounded(gm["max"], join_key(where, "max"), 1, MAX_HOSTS_PER_GROUP)
                if limit is not None:
                    groups.append(GroupLimit(name=gname, max=limit))
        ttl = 15.0
        if "lease_ttl" in d:
            got = self.duration(d["lease_ttl"], "lease_ttl", example="15s", examples="5s, 15s or 1m")
            if got is not None and not 2 <= got <= 3600:
                self.report("lease_ttl", "out of range (2s to 1h)")
            elif got is not None:
                ttl = got
        self.finish()
        return FleetConfig(name=name, default_max=default_max, groups=tuple(groups), lease_ttl=ttl)


def parse_fleet_config(data: bytes, *, source: str, fmt: str = "yaml") -> FleetConfig:
    """Parse a fleet configuration; every problem at once as a ManifestError."""
    doc = parse_document(data, source=source, fmt=fmt, limit=MAX_FLEET_CONFIG_BYTES)
    return _FleetSchema(doc).config()


def load_fleet_config(path: Path) -> FleetConfig:
    doc: SourceDocument = load_document(path, limit=MAX_FLEET_CONFIG_BYTES)
    return _FleetSchema(doc).config()
