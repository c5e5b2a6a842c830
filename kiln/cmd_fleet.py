"""``kiln fleet``: coordinate hosts through etcd.

::

    kiln fleet serve   --etcd URL --config FLEET.yaml [--listen 127.0.0.1:8480]
                       the FleetLock protocol (Zincati and kiln agents share its slots) and the
                       read-only dashboard at http://LISTEN/
    kiln fleet status  --etcd URL (--config FLEET.yaml | --name NAME) [--json]
                       waves, hosts, versions, slots and halts of the newest releases
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kiln.output import Output

__all__ = ["register"]

DEFAULT_LISTEN = "127.0.0.1:8480"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fleet = sub.add_parser("fleet", help="coordinate rollouts across hosts (etcd, FleetLock, dashboard)")
    verbs = fleet.add_subparsers(dest="fleet_verb", metavar="ACTION", required=True)
    p = verbs.add_parser("serve", help="serve FleetLock and the fleet dashboard")
    p.add_argument(
        "--etcd", required=True, metavar="URL", help="etcd's client URL, e.g. http://127.0.0.1:2379"
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="the fleet configuration")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.set_defaults(handler=cmd_fleet_serve)
    p = verbs.add_parser("status", help="waves, hosts, versions, slots and halts")
    p.add_argument("--etcd", required=True, metavar="URL")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", type=Path, metavar="FILE", help="the fleet configuration")
    which.add_argument("--name", metavar="NAME", help="the fleet's name")
    p.set_defaults(handler=cmd_fleet_status)


def _listen(text: str) -> tuple[str, int]:
    from manifests.errors import KilnError
    from manifests.fields import parse_listen_address

    address, message, hint = parse_listen_address(text)
    if address is None:
        raise KilnError(f"--listen: {message}", hint=hint)
    return address.host, address.port


def cmd_fleet_serve(args: argparse.Namespace, out: Output) -> int:
    from fleet.etcd import EtcdClient
    from fleet.server import FleetServer
    from fleet.state import FleetStore
    from manifests.fleet import load_fleet_config

    config = load_fleet_config(args.config)
    host, port = _listen(args.listen)
    stop = threading.Event()
    with EtcdClient(args.etcd) as etcd:
        etcd.status()  # fail now, with a clear message, when etcd is not there
        server = FleetServer(FleetStore(etcd, config.name), config, host=host, port=port, log=out.progress)

        def on_signal(_signum: int, _frame: object) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        server.start()
        out.progress(f"kiln fleet: '{config.name}' on {args.etcd}; FleetLock and dashboard at {server.url}/")
        try:
            stop.wait()
        finally:
            server.close()
    out.result("kiln fleet stopped", {"stopped": True})
    return 0


def _human(doc: dict[str, Any]) -> str:
    lines = [f"fleet {doc['fleet']} (etcd revision {doc['revision']})"]
    for release in doc["releases"]:
        head = f"release v{release['version']}"
        if release["halted"]:
            halt = release["halt"] or {}
            head += f": HALTED by {halt.get('host')}: {halt.get('reason')}"
        lines.append(head)
        for wave in release["waves"]:
            hosts = ", ".join(f"{h['id']}={h['progress']}" for h in wave["hosts"]) or "no hosts"
            lines.append(f"  wave {wave['index']} ({wave['group']}): {wave['state']}: {hosts}")
    for name, group in doc["groups"].items():
        slots = ", ".join(s["id"] for s in group["slots"]) or "none"
        lines.append(f"group {name}: {len(group['slots'])}/{group['max']} updating (slots: {slots})")
        for h in group["hosts"]:
            version = f"v{h['version']}" if h["version"] is not None else "-"
            lines.append(f"  {h['id']:<20} {version:<6} {h['health']}")
    return "\n".join(lines)


def cmd_fleet_status(args: argparse.Namespace, out: Output) -> int:
    from fleet.etcd import EtcdClient
    from fleet.gate import read_config
    from fleet.state import FleetStore, status_document
    from manifests.fleet import load_fleet_config

    name = load_fleet_config(args.config).name if args.config is not None else args.name
    with EtcdClient(args.etcd) as etcd:
        store = FleetStore(etcd, name)
        config = read_config(store)
        doc = status_document(store.snapshot(), config, now=time.time())
    out.result(_human(doc), doc)
    return 0
