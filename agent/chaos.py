"""The chaos monkey: terminate random instances on purpose, under a budget, never below min_healthy.

:class:`ChaosMonkey` is pure apart from its injected clock and random source. The agent calls
:meth:`ChaosMonkey.tick` once per loop with the serving instances and their health; it answers at
most one instance to kill. Kills follow a Poisson process of ``kill_rate`` (exponential waits
between them), so they are spread at random and a long pause between ticks does not turn into a
burst: a tick never returns more than one victim, and a kill that was due while nothing could be
killed is dropped, not saved up. A service is a candidate only when killing one of its healthy
instances leaves at least ``min_healthy`` healthy ones; unhealthy instances are not touched (the
health monitor replaces those already).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from manifests.chaos import Chaos

__all__ = ["Candidate", "ChaosMonkey"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    service: str
    instance: str
    healthy: bool


class ChaosMonkey:
    """One host's chaos: ``policy`` until ``until`` (None: while the policy is set)."""

    def __init__(
        self,
        policy: Chaos,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        until: float | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - choosing victims, not secrets
        self.until = until
        self.kills = 0
        self._next = self.clock() + self.rng.expovariate(policy.kill_rate)

    @property
    def active(self) -> bool:
        return self.until is None or self.clock() < self.until

    def tick(self, serving: Mapping[str, Sequence[Candidate]]) -> Candidate | None:
        """The instance to kill now, if one is due and allowed."""
        now = self.clock()
        if not self.active or now < self._next:
            return None
        # schedule the next kill from now: a due kill is taken once, never accumulated
        self._next = now + self.rng.expovariate(self.policy.kill_rate)
        eligible = []
        for service in sorted(serving):
            healthy = [c for c in serving[service] if c.healthy]
            if len(healthy) - 1 >= self.policy.min_healthy:
                eligible.extend(sorted(healthy, key=lambda c: c.instance))
        if not eligible:
            return None
        victim = self.rng.choice(eligible)
        self.kills += 1
        return victim
