"""The data plane: what holds the service addresses and moves bytes to the instances.

The agent decides, the data plane serves. It runs OUTSIDE the agent process, so a service address
keeps answering while the agent is stopped, killed, restarted or replaced by another kiln version
(``docs/adr/0010-data-plane.md``). The agent drives it through one small interface,
:class:`DataPlane`, with three implementations:

- :class:`agent.dataplane.embedded.ProcessDataPlane` (``dataplane: embedded``, the default): kiln's
  own TCP forwarder (:mod:`agent.forwarder`) in a detached process (``python -m agent.dataplane``),
  driven over a Unix control socket (:mod:`agent.dataplane.wire`, :mod:`agent.dataplane.server`).
- :class:`agent.dataplane.haproxy.HAProxyDataPlane` (``dataplane: haproxy``): Debian's HAProxy in
  master-worker mode; servers are reached inside their instance's network namespace with HAProxy's
  ``namespace`` keyword; every change is a seamless reload.
- :class:`agent.dataplane.inprocess.InProcessDataPlane`: the forwarder inside the calling process,
  for tests that inject a connector (it dies with its process: never the agent's choice).

A backend is plain data (:class:`Target`: an id, the instance's network namespace, a port), so any
process can reach it. The journal stays the source of truth: the agent commits a serving set, then
calls :meth:`DataPlane.serve`; after a restart it calls ``serve`` again with what the journal says
(equal sets are no-ops) and :meth:`DataPlane.retain` drops addresses the journal no longer has.

::

    DataPlane (Protocol)  .serve(service, listen, targets)  .drain(service, id, timeout)
                          .remove(service)  .retain(names)  .services()  .detach()  .stop()
    Target / ServiceView  data: what a backend is, what an address serves
    DataPlaneError        the data plane cannot be reached, started or told (UnavailableError)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AgentError
from manifests.agentconfig import DataPlaneKind
from manifests.errors import UnavailableError

__all__ = [
    "DataPlane",
    "DataPlaneError",
    "DataPlaneKind",
    "ServiceView",
    "Target",
    "make_dataplane",
]


class DataPlaneError(AgentError, UnavailableError):
    """The data plane cannot be reached, started, or did not do what it was told."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One instance behind a service address: ``host:port`` inside the network namespace at
    ``netns`` (an empty ``netns`` means the host's own network, as for tests' loopback servers)."""

    id: str
    netns: str
    port: int
    host: str = "127.0.0.1"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "netns": self.netns, "port": self.port, "host": self.host}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        tid, netns, port, host = d.get("id"), d.get("netns", ""), d.get("port"), d.get("host", "127.0.0.1")
        if not isinstance(tid, str) or not tid or len(tid) > 256:
            raise DataPlaneError(f"backend id {tid!r} is not a short non-empty string")
        if not isinstance(netns, str) or len(netns) > 4096 or (netns and not netns.startswith("/")):
            raise DataPlaneError(f"backend {tid}: netns {netns!r} is not an absolute path")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise DataPlaneError(f"backend {tid}: port {port!r} is not 1..65535")
        if not isinstance(host, str) or not host or len(host) > 255:
            raise DataPlaneError(f"backend {tid}: host {host!r} is not an address")
        return cls(id=tid, netns=netns, port=port, host=host)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceView:
    """What a data plane serves for one service: its address and backend set, and the connections
    it holds now (``open``), to the set and to backends switched out that still drain."""

    name: str
    listen: tuple[str, int]
    targets: tuple[Target, ...]
    open: int = 0
    dropped: int = 0  # clients closed because no backend of the set answered
    connect_failures: int = 0  # backend connects that failed (the client tried the next backend)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": [self.listen[0], self.listen[1]],
            "backends": [t.to_dict() for t in self.targets],
            "open": self.open,
            "dropped": self.dropped,
            "connect_failures": self.connect_failures,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServiceView:
        name, listen, backends = d.get("name"), d.get("listen"), d.get("backends")
        if not isinstance(name, str) or not name:
            raise DataPlaneError(f"service name {name!r} is not a string")
        return cls(
            name=name,
            listen=parse_listen(listen, where=f"service {name}"),
            targets=tuple(Target.from_dict(b) for b in _list(backends, f"service {name}: backends")),
            open=_count(d.get("open")),
            dropped=_count(d.get("dropped")),
            connect_failures=_count(d.get("connect_failures")),
        )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_listen(value: object, *, where: str) -> tuple[str, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or not 0 <= value[1] <= 65535
    ):
        raise DataPlaneError(f"{where}: listen {value!r} is not [host, port]")
    return (value[0], value[1])


def _list(value: object, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise DataPlaneError(f"{where}: expected a list of objects")
    return value


class DataPlane(Protocol):
    """How the agent drives a data plane (see the module docstring)."""

    kind: str

    def serve(self, service: str, listen: tuple[str, int], targets: Sequence[Target]) -> None:
        """Hold ``listen`` for ``service`` (bound once; kept across calls) and send new connections
        to ``targets`` from now on. Connections already open stay on their backend."""
        ...

    def drain(self, service: str, backend_id: str, timeout: float) -> bool:
        """Wait until no connection uses ``backend_id`` (switched out before); on timeout close
        what is left and return False."""
        ...

    def remove(self, service: str) -> None:
        """Close ``service``'s address (nothing of it serves any more). Unknown names are fine."""
        ...

    def retain(self, names: Collection[str]) -> None:
        """Remove every service address not in ``names`` (after a restart: what the journal lost)."""
        ...

    def services(self) -> dict[str, ServiceView]:
        """What the data plane serves now, by service name."""
        ...

    def detach(self) -> None:
        """The agent is going away: release what the agent holds; the data plane keeps serving."""
        ...

    def stop(self) -> bool:
        """Close every address and stop the data plane (``kiln agent down``); True if one was
        running. Idempotent, and starts nothing."""
        ...


def make_dataplane(kind: DataPlaneKind | str, state_dir: Path) -> DataPlane:
    """The data plane an agent config selects, over the agent's state directory."""
    if DataPlaneKind(kind) is DataPlaneKind.HAPROXY:
        from agent.dataplane.haproxy import HAProxyDataPlane

        return HAProxyDataPlane(state_dir)
    from agent.dataplane.embedded import ProcessDataPlane

    return ProcessDataPlane(state_dir)
