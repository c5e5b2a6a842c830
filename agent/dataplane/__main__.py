"""``python -m agent.dataplane --state STATE [--takeover]``: the embedded data plane process.

Started detached by :class:`agent.dataplane.embedded.ProcessDataPlane`; see
:mod:`agent.dataplane.server`. ``--protocol`` exists for tests that stand in for another kiln
version (a data plane answering another protocol version must be replaced, not adopted).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.dataplane.server import DataPlaneServer
from agent.dataplane.wire import PROTOCOL_VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.dataplane", description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="the agent's state directory")
    parser.add_argument("--takeover", action="store_true", help="take over from the running data plane")
    parser.add_argument("--protocol", type=int, default=PROTOCOL_VERSION, help=argparse.SUPPRESS)
    parser.add_argument(
        "--detach", action="store_true", help="fork: print the server's pid on stdout, and exit at once"
    )
    args = parser.parse_args(argv)
    if args.detach:
        # The server is no child of whoever started us: it is never its zombie, nor its to reap.
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            os._exit(0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return DataPlaneServer(args.state, protocol=args.protocol).run(takeover=args.takeover)


if __name__ == "__main__":
    sys.exit(main())
