"""The agent's counters and gauges, rendered as Prometheus text (exposition format 0.0.4)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from agent.standby import Standby

__all__ = ["Metrics"]


class Metrics:
    """Thread-safe counters: reconciles, refusals by reason, rollouts by result, rollbacks,
    instance replacements by cause, and the last verify throughput (the standby instances are
    the journal's: :meth:`render` is handed them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reconciles = 0
        self.rollbacks = 0
        self.refusals: Counter[str] = Counter()
        self.rollouts: Counter[str] = Counter()
        self.replacements: Counter[str] = Counter()
        self.verify_bytes_per_second = 0.0
        self.instances = 0

    def count_reconcile(self) -> None:
        with self._lock:
            self.reconciles += 1

    def count_refusal(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1

    def count_rollout(self, result: str) -> None:
        with self._lock:
            self.rollouts[result] += 1

    def count_rollback(self) -> None:
        with self._lock:
            self.rollbacks += 1

    def count_replacement(self, cause: str) -> None:
        with self._lock:
            self.replacements[cause] += 1

    def set_verify_rate(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        with self._lock:
            self.verify_bytes_per_second = nbytes / seconds

    def set_instances(self, n: int) -> None:
        with self._lock:
            self.instances = n

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "reconciles": self.reconciles,
                "rollbacks": self.rollbacks,
                "refusals": dict(self.refusals),
                "rollouts": dict(self.rollouts),
                "replacements": dict(self.replacements),
                "verify_bytes_per_second": self.verify_bytes_per_second,
                "instances": self.instances,
            }

    def render(self, *, standby: Sequence[Standby] = ()) -> str:
        """Prometheus text: HELP/TYPE lines, one sample per label set. ``standby``: the journal's
        standby instances (``keep_previous``), per service and each with the time it stops."""
        per_service = Counter(s.record.service for s in standby)
        with self._lock:
            lines = [
                "# HELP kiln_agent_reconciles_total Reconcile passes run.",
                "# TYPE kiln_agent_reconciles_total counter",
                f"kiln_agent_reconciles_total {self.reconciles}",
                "# HELP kiln_agent_refusals_total Releases or images refused, by reason.",
                "# TYPE kiln_agent_refusals_total counter",
                *(f'kiln_agent_refusals_total{{reason="{r}"}} {n}' for r, n in sorted(self.refusals.items())),
                "# HELP kiln_agent_rollouts_total Rollouts finished, by result.",
                "# TYPE kiln_agent_rollouts_total counter",
                *(f'kiln_agent_rollouts_total{{result="{r}"}} {n}' for r, n in sorted(self.rollouts.items())),
                "# HELP kiln_agent_rollbacks_total Returns to the previous good release.",
                "# TYPE kiln_agent_rollbacks_total counter",
                f"kiln_agent_rollbacks_total {self.rollbacks}",
                "# HELP kiln_agent_replacements_total Instances replaced by enforcement, by cause.",
                "# TYPE kiln_agent_replacements_total counter",
                *(
                    f'kiln_agent_replacements_total{{cause="{r}"}} {n}'
                    for r, n in sorted(self.replacements.items())
                ),
                "# HELP kiln_agent_verify_bytes_per_second Throughput of the last image pull and verify.",
                "# TYPE kiln_agent_verify_bytes_per_second gauge",
                f"kiln_agent_verify_bytes_per_second {self.verify_bytes_per_second:.1f}",
                "# HELP kiln_agent_instances Instances serving.",
                "# TYPE kiln_agent_instances gauge",
                f"kiln_agent_instances {self.instances}",
                "# HELP kiln_agent_standby_instances Instances kept running out of rotation (keep_previous).",
                "# TYPE kiln_agent_standby_instances gauge",
                *(
                    f'kiln_agent_standby_instances{{service="{n}"}} {c}'
                    for n, c in sorted(per_service.items())
                ),
                "# HELP kiln_agent_standby_until_seconds When a standby instance is stopped (Unix time).",
                "# TYPE kiln_agent_standby_until_seconds gauge",
                *(
                    f'kiln_agent_standby_until_seconds{{service="{s.record.service}",instance="{s.record.id}",'
                    f'release="{s.record.release}"}} {s.until:.3f}'
                    for s in sorted(standby, key=lambda s: (s.record.service, s.record.id))
                ),
            ]
        return "\n".join(lines) + "\n"
