"""Waves: which hosts may start a release now. Pure: values in, values out.

Every agent evaluates this on one consistent read of the fleet's state (:class:`FleetSnapshot`),
so the fleet needs no controller: hosts agree because they compute the same function of the same
revision. See :mod:`manifests.fleet` for the ``rollout`` block's meaning.

A host's progress on one release is one of :class:`Progress`. A wave is:

- ``pending``: an earlier wave has not finished soaking;
- ``open``: hosts of it may take a slot and start;
- ``soaking``: every host of it runs the release healthy, for less than its soak;
- ``done``: soaked (the next wave is open);
- ``halted``: a host rolled the release back; no host of any wave starts it any more.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from manifests.fleet import ANY_GROUP, Rollout, Wave

__all__ = [
    "Progress",
    "WaveState",
    "HostProgress",
    "WaveStatus",
    "Decision",
    "assign_waves",
    "evaluate",
    "decide",
]


class Progress(enum.StrEnum):
    UPDATING = "updating"
    DONE = "done"
    ROLLED_BACK = "rolled-back"

    @property
    def finished(self) -> bool:
        return self is not Progress.UPDATING


class WaveState(enum.StrEnum):
    PENDING = "pending"
    OPEN = "open"
    SOAKING = "soaking"
    DONE = "done"
    HALTED = "halted"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostProgress:
    state: Progress
    at: float
    group: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveStatus:
    index: int
    wave: Wave
    hosts: tuple[str, ...]
    state: WaveState
    parallel: int | None
    soaked_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """May this host start the release now? ``reason`` says why not (or which wave it is in)."""

    allowed: bool
    reason: str
    wave: int | None = None
    parallel: int | None = None


DEFAULT_ROLLOUT = Rollout(waves=(Wave(group=ANY_GROUP),))


def _matches(wave: Wave, group: str) -> bool:
    return wave.group in (ANY_GROUP, group)


def assign_waves(rollout: Rollout, hosts: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """The hosts of each wave, from ``hosts`` (id -> group), deterministic for the same inputs."""
    taken: set[str] = set()
    out: list[tuple[str, ...]] = []
    ordered = sorted(hosts)
    for wave in rollout.waves or DEFAULT_ROLLOUT.waves:
        members = [h for h in ordered if h not in taken and _matches(wave, hosts[h])]
        if wave.hosts is not None:
            members = members[: wave.hosts]
        taken.update(members)
        out.append(tuple(members))
    return tuple(out)


def evaluate(
    rollout: Rollout,
    hosts: Mapping[str, str],
    progress: Mapping[str, HostProgress],
    *,
    halted: bool,
    now: float,
) -> tuple[WaveStatus, ...]:
    """Every wave's state for one release.

    ``progress`` is the release's per-host progress. A host that was assigned to a wave and then
    left the fleet (its heartbeat expired) no longer counts: the remaining hosts decide.
    """
    waves = rollout.waves or DEFAULT_ROLLOUT.waves
    # hosts that already took part keep their place even when they left the live set
    population = {h: p.group for h, p in progress.items()} | dict(hosts)
    members = assign_waves(rollout, population)
    out: list[WaveStatus] = []
    previous_done = True
    for i, (wave, ids) in enumerate(zip(waves, members, strict=True)):
        parallel = wave.parallel_for(len(ids))
        if halted:
            out.append(WaveStatus(index=i, wave=wave, hosts=ids, state=WaveState.HALTED, parallel=parallel))
            continue
        if not previous_done:
            out.append(WaveStatus(index=i, wave=wave, hosts=ids, state=WaveState.PENDING, parallel=parallel))
            continue
        healthy = [progress[h] for h in ids if h in progress and progress[h].state is Progress.DONE]
        if len(healthy) < len(ids):
            state, soaked = WaveState.OPEN, None
        else:
            finished = max((p.at for p in healthy), default=now)
            soaked = finished + wave.soak
            state = WaveState.DONE if now >= soaked else WaveState.SOAKING
        previous_done = state is WaveState.DONE
        out.append(
            WaveStatus(index=i, wave=wave, hosts=ids, state=state, parallel=parallel, soaked_at=soaked)
        )
    return tuple(out)


def decide(host: str, statuses: Sequence[WaveStatus], progress: Mapping[str, HostProgress]) -> Decision:
    """Whether ``host`` may start the release, given :func:`evaluate`'s answer."""
    mine = progress.get(host)
    if mine is not None and mine.state is Progress.ROLLED_BACK:
        return Decision(allowed=False, reason="this host rolled the release back")
    for status in statuses:
        if host not in status.hosts:
            continue
        if status.state is WaveState.HALTED:
            return Decision(allowed=False, reason="the release is halted", wave=status.index)
        if status.state is WaveState.PENDING:
            return Decision(
                allowed=False,
                reason=f"wave {status.index + 1} is pending: an earlier wave has not soaked yet",
                wave=status.index,
            )
        return Decision(
            allowed=True,
            reason=f"wave {status.index + 1} is open",
            wave=status.index,
            parallel=status.parallel,
        )
    return Decision(allowed=False, reason="this host is in no wave of the release's rollout")
