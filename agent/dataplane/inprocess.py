"""The forwarder inside the calling process, behind the :class:`agent.dataplane.DataPlane` interface.

For tests and tools that inject a connector (``connector(netns, port) -> connect(timeout)``):
loopback servers standing in for instances. Its addresses close with its process, so the agent
never picks it for real instances (:func:`agent.dataplane.make_dataplane` does not offer it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from agent.dataplane import ServiceView, Target
from agent.forwarder import Backend, Forwarder

__all__ = ["InProcessDataPlane"]

ConnectorFactory = Callable[[str, int], Callable[[float], Any]]


class InProcessDataPlane:
    """One :class:`agent.forwarder.Forwarder` per service, in this process."""

    kind = "in-process"

    def __init__(
        self,
        connector: ConnectorFactory,
        *,
        forwarder_factory: Callable[[tuple[str, int], str], Forwarder] | None = None,
    ) -> None:
        self._connector = connector
        self._factory = forwarder_factory or _default_forwarder
        self.forwarders: dict[str, Forwarder] = {}
        self._served: dict[str, tuple[tuple[str, int], tuple[Target, ...]]] = {}

    def serve(self, service: str, listen: tuple[str, int], targets: Sequence[Target]) -> None:
        fw = self.forwarders.get(service)
        known = self._served.get(service)
        if fw is not None and known is not None and known[0] != listen:
            fw.stop()
            fw = None
        if fw is None:
            fw = self._factory(listen, service)
            fw.start()
            self.forwarders[service] = fw
        fw.set_backends([Backend(id=t.id, connect=self._connector(t.netns, t.port)) for t in targets])
        self._served[service] = (listen, tuple(targets))

    def drain(self, service: str, backend_id: str, timeout: float) -> bool:
        fw = self.forwarders.get(service)
        if fw is None or fw.drain(backend_id, timeout):
            return True
        fw.close_backend_connections(backend_id)
        return False

    def remove(self, service: str) -> None:
        fw = self.forwarders.pop(service, None)
        self._served.pop(service, None)
        if fw is not None:
            fw.stop()

    def retain(self, names: Collection[str]) -> None:
        for name in sorted(set(self.forwarders) - set(names)):
            self.remove(name)

    def services(self) -> dict[str, ServiceView]:
        out = {}
        for name, (listen, targets) in sorted(self._served.items()):
            fw = self.forwarders[name]
            st = fw.stats()
            out[name] = ServiceView(
                name=name,
                listen=listen,
                targets=targets,
                open=st.open,
                dropped=st.dropped,
                connect_failures=st.connect_failures,
            )
        return out

    def detach(self) -> None:
        """In-process forwarders cannot outlive their process: detaching closes them."""
        self.stop()

    def stop(self) -> bool:
        running = bool(self.forwarders)
        for fw in self.forwarders.values():
            fw.stop()
        self.forwarders.clear()
        self._served.clear()
        return running


def _default_forwarder(listen: tuple[str, int], name: str) -> Forwarder:
    return Forwarder(listen, connect_timeout=1.0, max_attempts=4, name=f"kiln-fwd-{name}")
