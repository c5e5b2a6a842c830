"""``kiln agent``: the host agent's loop and its operator commands.

::

    kiln agent run        [--config FILE]            reconcile every poll_interval; status endpoint on
                                                     STATE/agent.sock (and status_listen)
    kiln agent reconcile  --once [--config FILE]     one reconcile, then exit (exit codes below)
    kiln agent reconcile  --now [--config FILE]      wake the running agent: it reconciles at once
                                                     (SIGHUP to ``kiln agent run`` does the same)
    kiln agent status     [--config FILE] [--json]   release, version, instances, health, the release
                                                     source's state, last refusal
    kiln agent rollback   [--config FILE]            back to the previous good release (local only)
    kiln agent trust-update [--config FILE] ROOT     install trust root N+1 (signed envelope)
    kiln agent down       [--config FILE]            stop every instance, the data plane, the
                                                     namespaces (journaled; again: a no-op)

``status`` and ``rollback`` talk to a running agent through its Unix socket; with no agent
running, ``status`` reads the journal and ``rollback`` runs in this process.

Exit codes of ``kiln agent reconcile --once`` (:data:`RECONCILE_EXIT`, from
:attr:`manifests.vocabulary.Outcome.exit_code`): 0 the release is current or was rolled out; 1 it
failed (its health, or earlier attempts: ``skipped``) or waits for a fleet slot (``waiting``); 3 it
was refused (signature, policy, parse, internal, ...); 4 the source or the images were unavailable
(auth, unreachable, not-found). A notice a library logs (e.g. plain http to a loopback registry) is
printed once per process, however often the loop polls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.output import Output, UsageError
from manifests.errors import KilnError, VerificationError
from manifests.vocabulary import Outcome

__all__ = ["register", "DEFAULT_CONFIG", "RECONCILE_EXIT", "OncePerProcess", "notices_once"]

DEFAULT_CONFIG = Path("/etc/kiln/agent.yaml")
#: ``kiln agent reconcile --once``: outcome -> exit code (see the module docstring).
RECONCILE_EXIT = {str(outcome): outcome.exit_code for outcome in Outcome}
_RECONCILE_EPILOG = (
    "exit codes: 0 current or rolled out; 1 failed (or skipped: failed max_attempts times before); "
    "3 refused (signature, policy, parse, internal, ...); 4 unavailable (source or images: auth, "
    "unreachable, not-found)"
)


class OncePerProcess(logging.Filter):
    """Lets each distinct message through once per process (the plain-http notice repeats on every
    poll otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = f"{record.name}:{record.levelno}:{record.getMessage()}"
        with self._lock:
            if text in self._seen:
                return False
            self._seen.add(text)
            return True


@contextlib.contextmanager
def notices_once() -> Iterator[None]:
    """While an agent command runs (for ``kiln agent run``: the whole process), each distinct
    notice of the registry client is printed once."""
    logger = logging.getLogger("kiln.publisher")
    once = OncePerProcess()
    logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agent = sub.add_parser("agent", help="run the host agent and operate it")
    verbs = agent.add_subparsers(dest="agent_verb", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE", help=f"default {DEFAULT_CONFIG}"
        )

    p = verbs.add_parser("run", help="reconcile in a loop until SIGTERM")
    common(p)
    p.set_defaults(handler=cmd_agent_run)
    p = verbs.add_parser(
        "reconcile",
        help="one reconcile (--once), or wake the running agent (--now)",
        epilog=_RECONCILE_EPILOG,
    )
    common(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="run exactly one reconcile")
    when.add_argument("--now", action="store_true", help="the running agent reconciles at once")
    p.set_defaults(handler=cmd_agent_reconcile)
    p = verbs.add_parser("status", help="what the agent runs, and its last refusal")
    common(p)
    p.set_defaults(handler=cmd_agent_status)
    p = verbs.add_parser("rollback", help="return to the previous good release (local, recorded)")
    common(p)
    p.set_defaults(handler=cmd_agent_rollback)
    p = verbs.add_parser("chaos", help="terminate random instances on purpose, under a budget")
    common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--kill-rate", metavar="N/UNIT", help="average kills: N/s, N/m, N/h or N/d (e.g. 1/h)")
    which.add_argument("--off", action="store_true", help="stop (back to the release's chaos block, if any)")
    p.add_argument(
        "--min-healthy", type=int, default=1, metavar="N", help="healthy instances kept (default 1)"
    )
    p.add_argument("--for", dest="duration", metavar="DURATION", help="then stop by itself (e.g. 10m, 8h)")
    p.set_defaults(handler=cmd_agent_chaos)
    p = verbs.add_parser("trust-update", help="install the next trust root (N+1 only)")
    common(p)
    p.add_argument("root", type=Path, metavar="ROOT", help="the new root's signed envelope")
    p.set_defaults(handler=cmd_agent_trust_update)
    p = verbs.add_parser("down", help="stop everything this agent runs (instances, data plane, namespaces)")
    common(p)
    p.set_defaults(handler=cmd_agent_down)


def _config(args: argparse.Namespace) -> Any:
    from manifests.agentconfig import load_agent_config

    return load_agent_config(args.config)


def _printer(out: Output) -> Any:
    def sink(line: str) -> None:
        out.progress(line)

    return sink


def cmd_agent_run(args: argparse.Namespace, out: Output) -> int:
    with notices_once():
        return _agent_run(args, out)


def _agent_run(args: argparse.Namespace, out: Output) -> int:
    from agent.reconcile import Agent
    from agent.status import StatusServer

    config = _config(args)
    stop = threading.Event()
    agent = Agent(config, event_sink=_printer(out))

    def on_signal(signum: int, _frame: object) -> None:
        out.progress(f"kiln agent: signal {signum}, stopping after this step")
        stop.set()
        agent.wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: agent.nudge())  # reconcile now
    tcp = (config.status_listen.host, config.status_listen.port) if config.status_listen is not None else None
    server = StatusServer(
        config.state,
        status=agent.status,
        metrics=agent.metrics_text,
        rollback=lambda: {"release": agent.rollback().to_dict()},
        chaos=agent.chaos_request,
        tcp=tcp,
        wake=agent.nudge,
    )
    try:
        agent.start()
        server.start()
        out.progress(f"kiln agent: following {config.channel} from {config.source}; status on {server.path}")
        agent.run(stop)
    finally:
        server.stop()
        agent.close()
    out.result("kiln agent stopped", {"stopped": True, "status": agent.status()})
    return 0


def cmd_agent_reconcile(args: argparse.Namespace, out: Output) -> int:
    with notices_once():
        return _agent_reconcile(args, out)


def _agent_reconcile(args: argparse.Namespace, out: Output) -> int:
    from agent.reconcile import Agent

    config = _config(args)
    if args.now:
        return _wake(config, out)
    agent = Agent(config, event_sink=_printer(out))
    try:
        agent.start(monitor=False)
        result = agent.reconcile_once()
    finally:
        agent.close()
    code = result.outcome.exit_code
    data: dict[str, Any] = {
        "exit_code": code,
        "outcome": result.outcome,
        "release_version": result.version,
        "reason": result.reason,
        "detail": result.detail,
        "replaced": result.replaced,
    }
    human = f"reconcile: {result.outcome}"
    if result.version is not None:
        human += f" (release v{result.version})"
    if result.reason:
        # The outcome already says "refused": name the reason once, as `kiln release verify` does.
        release = f"release v{result.version}" if result.version is not None else "the release"
        human = f"reconcile: {release} refused ({result.reason}): {result.detail}"
    elif result.detail:
        human += f": {result.detail}"
    if (
        result.outcome is Outcome.UNAVAILABLE
        and agent.source_state.last_error_reason
        and agent.source_state.ok is False
    ):
        data["source_reason"] = agent.source_state.last_error_reason
        human = f"reconcile: unavailable ({agent.source_state.last_error_reason}): {result.detail}"
    if code:
        # A refused or failed reconcile is a failure like any other: --json carries the error too.
        data["error"] = {"message": human, "hint": None, "exit_code": code, "problems": []}
    out.result(human, data)
    return code


def _wake(config: Any, out: Output) -> int:
    from agent.errors import AgentError
    from agent.status import query

    try:
        code, body = query(config.state, "/reconcile", method="POST", timeout=10.0)
    except OSError as exc:
        raise AgentError(
            f"no agent answers on {config.state}/agent.sock: {exc}",
            hint="start it with `kiln agent run`, or run one reconcile here with --once",
        ) from None
    if code != 202:
        raise AgentError(f"the agent refused to wake: HTTP {code} {body[:200].decode(errors='replace')}")
    out.result("reconcile: the agent was woken", {"woken": True})
    return 0


def _status_from_journal(config: Any) -> dict[str, Any]:
    from agent.journal import Journal, JournalState, read_source_state
    from agent.status import status_document

    # A query: never create the state directory (Journal() would, for its first commit).
    if not Path(config.state).is_dir():
        doc = status_document(JournalState(), instances=[], metrics=None, config=config)
        doc["state_exists"] = False
        doc["state_dir"] = str(config.state)
        return doc
    st = Journal(config.state).state
    instances = [
        {
            "id": r.id,
            "service": r.service,
            "release": r.release,
            "image": r.image,
            "started_at": r.started_at,
            "health": "unknown",
        }
        for r in st.instances
    ]
    return status_document(
        st, instances=instances, metrics=None, config=config, source=read_source_state(config.state)
    )


def cmd_agent_status(args: argparse.Namespace, out: Output) -> int:
    from agent.status import query

    config = _config(args)
    running = True
    try:
        code, body = query(config.state, "/status", timeout=10.0)
        doc = json.loads(body) if code == 200 else None
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        running = False
        doc = _status_from_journal(config)
    doc["agent_running"] = running
    out.result(_status_table(doc), doc)
    return 0


def _status_table(doc: dict[str, Any]) -> str:
    def ver(r: Any) -> str:
        return f"v{r['version']}" if isinstance(r, dict) else "-"

    root = doc.get("root_version")
    lines = [
        f"channel {doc['channel']}  release {ver(doc['release'])}  previous {ver(doc['previous'])}  "
        f"highest accepted {ver(doc['highest_accepted'])}  "
        f"root {f'v{root}' if root is not None else 'none known'}  "
        f"agent {'running' if doc.get('agent_running') else 'not running'}",
    ]
    if doc.get("state_exists") is False:
        lines.append(
            f"no agent state yet: {doc.get('state_dir')} does not exist (the agent has not run here)"
        )
    lines.append(_source_line(doc.get("source")))
    if doc.get("rollout"):
        lines.append(f"rollout in progress: {ver(doc['rollout']['from'])} -> {ver(doc['rollout']['to'])}")
    lines.append(f"{'SERVICE':<16} {'INSTANCE':<28} {'RELEASE':<8} HEALTH")
    for i in doc["instances"]:
        lines.append(f"{i['service']:<16} {i['id']:<28} v{i['release']:<7} {i['health']}")
    for i in doc.get("standby") or []:
        lines.append(f"{i['service']:<16} {i['id']:<28} v{i['release']:<7} standby until {_when(i['until'])}")
    refusal = doc.get("last_refusal")
    if refusal:
        version = f" v{refusal['version']}" if refusal.get("version") is not None else ""
        lines.append(f"last refusal{version}: {refusal['reason']}: {refusal['detail']}")
    for f in doc.get("failures") or []:
        lines.append(f"failed v{f['version']} ({f['attempts']} attempt(s)): {f['reason']}")
    return "\n".join(lines)


def _when(at: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(at, int | float):
        return "never"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _source_line(src: Any) -> str:
    if not isinstance(src, dict):
        return "source: unknown"
    state = {True: "ok", False: "failing", None: "not fetched yet"}.get(src.get("ok"), "unknown")
    line = f"source {src.get('source')}: {state}; last successful fetch {_when(src.get('last_success'))}"
    if src.get("last_error_reason"):
        line += (
            f"; last error ({src['last_error_reason']}) at {_when(src.get('last_error_at'))}: "
            f"{src.get('last_error')}"
        )
    return line


def cmd_agent_rollback(args: argparse.Namespace, out: Output) -> int:
    from agent.reconcile import Agent
    from agent.status import query

    config = _config(args)
    try:
        code, body = query(config.state, "/rollback", method="POST")
    except OSError:
        code, body = 0, b""
    if code == 200:
        doc = json.loads(body)
        version = doc["release"]["version"]
        out.result(f"rolled back to release v{version} (by the running agent)", {"release_version": version})
        return 0
    if code != 0:
        try:
            err = json.loads(body)
        except ValueError:
            err = {"error": body.decode("utf-8", "replace")}
        raise KilnError(f"the running agent refused: {err.get('error')}", hint=err.get("hint"))
    agent = Agent(config, event_sink=_printer(out))
    try:
        agent.start(monitor=False)
        target = agent.rollback()
    finally:
        agent.close()
    out.result(
        f"rolled back to release v{target.version}",
        {"release_version": target.version, "payload_digest": target.payload_digest},
    )
    return 0


def cmd_agent_trust_update(args: argparse.Namespace, out: Output) -> int:
    from agent.reconcile import Agent
    from manifests.trustroot import MAX_ROOT_BYTES
    from signing.root import envelope_cap

    config = _config(args)
    try:
        with args.root.open("rb") as fh:
            data = fh.read(envelope_cap(MAX_ROOT_BYTES) + 1)
    except OSError as exc:
        raise KilnError(f"trust root {args.root}: {exc.strerror or exc}") from None
    agent = Agent(config, event_sink=_printer(out))
    try:
        agent.open()
        try:
            new = agent.trust_update(data)
        except VerificationError as exc:
            raise VerificationError(
                f"refused ({exc.reason}): {exc.message}", reason=exc.reason, hint=exc.hint
            ) from None
    finally:
        agent.close()
    out.result(
        f"trust root v{new.version} installed ({new.digest})",
        {"root_version": new.version, "digest": str(new.digest)},
    )
    return 0


def cmd_agent_down(args: argparse.Namespace, out: Output) -> int:
    from agent.down import down

    config = _config(args)
    report = down(config, event_sink=_printer(out))
    data = {
        "stopped": list(report.stopped),
        "failed": list(report.failed),
        "dataplanes": list(report.dataplanes),
        "noop": report.noop,
    }
    if report.noop:
        human = "kiln agent down: nothing runs"
    else:
        human = f"kiln agent down: stopped {len(report.stopped)} instances"
        if report.dataplanes:
            human += f" and the {', '.join(report.dataplanes)} data plane"
        if report.failed:
            human += f"; could not stop {', '.join(report.failed)} (run it again)"
    out.result(human, data)
    return 1 if report.failed else 0


def cmd_agent_chaos(args: argparse.Namespace, out: Output) -> int:
    """Set the running agent's chaos policy over its control socket (there is no chaos offline)."""
    import urllib.parse

    from agent.status import query
    from manifests.chaos import RATE_HINT, parse_rate
    from manifests.durations import DurationError, parse_duration

    config = _config(args)
    if args.off:
        params: dict[str, str] = {"off": "1"}
    else:
        if parse_rate(args.kill_rate) is None:
            raise UsageError(f"--kill-rate: invalid rate {args.kill_rate!r}", hint=RATE_HINT)
        params = {"kill_rate": args.kill_rate, "min_healthy": str(args.min_healthy)}
        if args.duration is not None:
            try:
                params["seconds"] = f"{parse_duration(args.duration):g}"
            except DurationError:
                hint = "e.g. 10m or 8h"
                raise UsageError(f"--for: invalid duration {args.duration!r}", hint=hint) from None
    try:
        code, body = query(config.state, "/chaos?" + urllib.parse.urlencode(params), method="POST")
    except OSError:
        raise KilnError(
            f"{config.state}: no agent is running there", hint="chaos runs inside `kiln agent run`"
        ) from None
    doc = json.loads(body) if body else {}
    if code != 200:
        raise KilnError(f"the running agent refused: {doc.get('error')}", hint=doc.get("hint"))
    if not doc.get("active"):
        out.result("chaos is off", {"chaos": doc})
    else:
        policy = doc["policy"]
        left = doc.get("seconds_left")
        until = f" for {left:.0f}s" if left is not None else ""
        out.result(
            f"chaos on: kill rate {policy['kill_rate']}, at least {policy['min_healthy']} healthy{until}",
            {"chaos": doc},
        )
    return 0
