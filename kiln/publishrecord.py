"""The republish record: a no-change ``kiln publish`` to a loopback registry in one ``HEAD`` per tag.

After a publish over plain http (``--insecure``, loopback only) :func:`record_publish` writes
``fast/publish-<key>.json`` into kiln's cache directory: every local input the publish read (the
layout's ``index.json`` and manifests, as :class:`kiln.buildrecord.InputRecorder` saw them, with
the modules loaded), every tag the image is reachable by at the registry and the digest each names
(the version and channel tags, the ``.sig``/``.att`` tags, the ``sha256-<hex>`` referrers tag),
and what a no-change publish prints. :func:`replay` runs before the command line parser, httpx and
the publisher are loaded: if the local inputs are as recorded, it asks the registry with the
standard library's sockets (one connection, one ``HEAD`` per tag) whether each tag still
names its digest. All of them do: the registry holds what a real publish would find, and nothing
would be sent. Any other answer (a missing tag, another digest, a 401, an error) and the real
publish runs, through httpx, as always. ADR 0025 records why and the options rejected.

No record is written for TLS registries (their trust settings are httpx's; the fast path would
need a second TLS configuration), when a proxy is configured, when a credential helper ran, or
when the registry has the referrers API (no tag would show a referrer gone).
"""

from __future__ import annotations

import os
import sys

from kiln.buildrecord import (
    InputRecorder,
    base_key,
    default_cache_dir,
    inputs_hold,
    print_result,
    read_record,
    record_file,
    scan_argv,
    stable_inputs,
    write_record,
)

TYPE_CHECKING = False  # typing itself is not imported: this module runs before anything else loads
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TextIO

__all__ = ["PublishRequest", "parse_publish", "replay", "recorder_for", "record_publish"]

_TIMEOUT = 5.0
_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


class PublishRequest:
    """``kiln publish SRC HOST[:PORT]/REPO --insecure [--jobs N] [--channel NAME]...``."""

    __slots__ = ("channels", "dest", "json", "quiet", "src")

    def __init__(self, src: str, dest: str, channels: list[str], *, json_mode: bool, quiet: bool) -> None:
        self.src = src
        self.dest = dest
        self.channels = channels
        self.json = json_mode
        self.quiet = quiet

    def key(self) -> dict[str, Any]:
        return base_key() | {"src": self.src, "dest": self.dest, "channels": self.channels}

    def record_path(self) -> str:
        return record_file(default_cache_dir(), "publish-", self.key())


def loopback(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``::1``, with or without a port: the hosts a record may name
    (without :mod:`ipaddress`; ``publisher.session.is_loopback_host`` decides when recording)."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    parts = name.split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and int(p) < 256 for p in parts):
        return parts[0] == "127"
    return name in ("localhost", "::1")


def _proxied() -> bool:
    return any(k.lower().endswith("_proxy") and v for k, v in os.environ.items())


def parse_publish(argv: Sequence[str]) -> PublishRequest | None:
    """The command line if the fast path understands it (``--insecure`` given, no proxy set)."""
    scanned = scan_argv(argv, {"--jobs": "jobs", "--channel": "channel"}, frozenset({"--insecure"}))
    if scanned is None:
        return None
    flags, given, options, positional = scanned
    if len(positional) != 3 or positional[0] != "publish" or "--insecure" not in given or _proxied():
        return None
    src, dest = positional[1], positional[2]
    channels = options.get("channel", [])
    return PublishRequest(src, dest, channels, json_mode=flags["json"], quiet=flags["quiet"])


_MAX_HEAD = 64 << 10  # a HEAD answer's status line and headers


def _head_answers(host: str, requests: list[bytes]) -> list[tuple[int, dict[str, str]]] | None:
    """Send ``HEAD`` requests on one connection; each answer's status and headers (``None`` on any
    error or anything unexpected: the caller then does the real publish).

    A few lines of socket code, not ``http.client``: that module loads the ``email`` package,
    ~35 ms, a third of the whole budget. A ``HEAD`` answer has no body, so one answer ends at its
    blank line and the next begins after it."""
    import socket
    import time

    # One deadline for the whole exchange: a per-call timeout alone lets a registry that sends a
    # byte every few seconds hold the command for as long as the size cap allows.
    deadline = time.monotonic() + _TIMEOUT
    name, _, port = host.rpartition(":")
    try:
        with socket.create_connection((name.strip("[]"), int(port)), timeout=_TIMEOUT) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(b"".join(requests))
            answers: list[tuple[int, dict[str, str]]] = []
            buf = b""
            while len(answers) < len(requests):
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        return None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    buf += chunk
                    continue
                head, buf = buf[:end].decode("latin-1"), buf[end + 4 :]
                status_line, *lines = head.split("\r\n")
                version, _, rest = status_line.partition(" ")
                if not version.startswith("HTTP/1."):
                    return None
                headers = {}
                for line in lines:
                    key, sep, value = line.partition(":")
                    if not sep:
                        return None
                    headers[key.strip().lower()] = value.strip()
                answers.append((int(rest[:3]), headers))
            return answers
    except (OSError, ValueError):
        return None


def _tags_hold(host: str, repo: str, tags: list[list[str]]) -> bool:
    requests = [
        (
            f"HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {host}\r\nAccept: {_ACCEPT}\r\n"
            "User-Agent: kiln\r\n\r\n"
        ).encode()
        for tag, _digest in tags
    ]
    answers = _head_answers(host, requests)
    if answers is None:
        return False
    return all(
        status == 200 and headers.get("docker-content-digest") == digest
        for (status, headers), (_tag, digest) in zip(answers, tags, strict=True)
    )


def replay(argv: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int | None:
    """Exit code 0 after printing the no-change result, if the recorded publish still holds.

    Never raises for what it finds (a damaged record, a working directory gone, a registry's odd
    answer): any surprise means "run the real publish", which reports what it finds."""
    try:
        found = _still_holds(argv)
    except Exception:  # noqa: BLE001 - the real path runs, and reports any error properly
        return None
    if found is None:
        return None
    request, host, repo, human, doc = found
    gone = print_result(human, doc, json_mode=request.json, out=stdout or sys.stdout)
    if gone is not None:
        return gone
    err = stderr or sys.stderr
    print(
        f"kiln: warning: --insecure: talking plain http to the loopback registry {host}: no TLS, so "
        "layers and credentials travel in the clear and anyone on the path can change them (only "
        "digests still protect you)",
        file=err,
        flush=True,
    )
    if not request.quiet:
        print(f"kiln: every tag at {host}/{repo} names what this layout holds: nothing to send", file=err)
    return 0


def _still_holds(argv: Sequence[str]) -> tuple[PublishRequest, str, str, str, dict[str, Any]] | None:
    request = parse_publish(argv)
    if request is None:
        return None
    record = read_record(request.record_path())
    if record is None or record.get("key") != request.key() or not inputs_hold(record):
        return None
    host, repo, tags = record["host"], record["repo"], record["tags"]
    human, doc = record["human"], record["json"]
    if not all(isinstance(v, str) for v in (host, repo, human)) or not isinstance(doc, dict):
        return None
    if not isinstance(tags, list) or not tags or not loopback(host):
        return None
    if not all(isinstance(t, list) and len(t) == 2 and all(isinstance(v, str) for v in t) for t in tags):
        return None
    if not _tags_hold(host, repo, tags):
        return None
    return request, host, repo, human, doc


def recorder_for(argv: Sequence[str] | None) -> InputRecorder | None:
    """An input recorder for a publish the fast path understands, else ``None``."""
    if argv is None or parse_publish(argv) is None:
        return None
    return InputRecorder(skip=[], network=True)


def record_publish(
    argv: Sequence[str],
    recorder: InputRecorder,
    *,
    host: str,
    repo: str,
    tags: list[tuple[str, str]],
    human: str,
    doc: dict[str, Any],
    warn: Callable[[str], None] | None = None,
) -> bool:
    """Write the record of a finished publish (``human``/``doc``: what a no-change one prints)."""
    request = parse_publish(argv)
    if request is None:
        return False
    inputs = stable_inputs(recorder, warn=warn)
    if inputs is None:
        return False
    record = {
        "key": request.key(),
        "inputs": inputs,
        "host": host,
        "repo": repo,
        "tags": [list(t) for t in tags],
        "human": human,
        "json": doc,
    }
    write_record(request.record_path(), record)
    return True
