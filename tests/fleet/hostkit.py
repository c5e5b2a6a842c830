"""Test hosts: one network namespace per host, joined to this machine by a veth pair.

Host *i* of a fleet gets the namespace ``kiln-fleet-<tag>-<i>`` with ``eth0`` = 10.<net>.<i>.2/30
and a default route to 10.<net>.<i>.1, the root side of its veth pair. Services a test starts
listen on loopback (etcd on 127.0.0.1 *and* on every root-side address, so hosts reach it), and
processes run "on a host" with ``nsenter --net`` (only the network namespace changes: /run/netns
and the file system stay shared, so a test sees every namespace and runc container an agent made).
Deleting a host's namespace deletes its veth pair with it. Nothing leaves this machine: the
addresses exist only on these veth pairs.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    netns: str
    address: str
    gateway: str

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace (and nothing else of it)."""
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]


def _veth_name(tag: str, index: int) -> str:
    return f"kf{tag[:6]}{index}"[:15]


@contextlib.contextmanager
def fleet_hosts(names: Sequence[str]) -> Iterator[list[Host]]:
    """Create one namespace per name (at most 250), yield the hosts, remove everything after."""
    if os.geteuid() != 0:
        raise RuntimeError("test hosts need root (network namespaces and veth pairs)")
    tag = f"{random.randrange(16**6):06x}"
    net = 200 + random.randrange(50)
    made: list[Host] = []
    try:
        for i, name in enumerate(names, start=1):
            ns = f"kiln-fleet-{tag}-{i}"
            host = Host(name=name, index=i, netns=ns, address=f"10.{net}.{i}.2", gateway=f"10.{net}.{i}.1")
            _ip("netns", "add", ns)
            made.append(host)
            veth = _veth_name(tag, i)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("addr", "add", f"{host.gateway}/30", "dev", veth)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{host.address}/30", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "default", "via", host.gateway)
        yield made
    finally:
        for host in made:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "delete", host.netns)
