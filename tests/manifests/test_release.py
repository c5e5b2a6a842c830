"""Release manifests: valid and invalid documents (exact messages), canonical payloads, strict parsing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from manifests.errors import ManifestError, VerificationError
from manifests.image import HttpCheck, TcpCheck
from manifests.release import (
    MAX_RELEASE_BYTES,
    CanaryStep,
    ImagePin,
    ListenAddress,
    Release,
    Resources,
    Service,
    ServiceHealth,
    Strategy,
    StrategyKind,
    load_release,
    parse_release,
    parse_utc_time,
)

DATA = Path(__file__).parent.parent / "data" / "release"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
HEAD = (
    "apiVersion: kiln.dev/v1\nkind: Release\nchannel: production\nversion: 42\n"
    "expires: 2026-12-31T00:00:00Z\n"
)


def doc(services: str, head: str = HEAD) -> bytes:
    return (head + "services:\n" + services).encode()


def one(extra: str = "", image: str = f"registry.example/team/web@{D1}") -> bytes:
    return doc(f"  - name: web\n    image: {image}\n{extra}")


def parse(data: bytes) -> Release:
    return parse_release(data, source="r.yaml")


def test_example_file() -> None:
    r = load_release(DATA / "production-42.yaml")
    assert (r.channel, r.version, r.expires) == ("production", 42, datetime(2026, 12, 31, tzinfo=UTC))
    web, worker = r.services
    assert web == Service(
        name="web",
        image=ImagePin(repository="registry.example/team/hello-web", digest=web.image.digest),
        replicas=2,
        listen=ListenAddress(host="127.0.0.1", port=8080),
        strategy=Strategy(kind=StrategyKind.BLUE_GREEN),
        health=ServiceHealth(check=HttpCheck(port=8080, path="/healthz"), grace=5.0, timeout=1.0, retries=3),
        max_lifetime=86400.0,
        env=(("LOG_LEVEL", "info"),),
    )
    assert str(web.image.digest) == D1
    assert worker.strategy.steps == (
        CanaryStep(value=1),
        CanaryStep(value=50, percent=True),
        CanaryStep(value=100, percent=True),
    )
    assert [s.instances(4) for s in worker.strategy.steps] == [1, 2, 4]
    assert r.service("worker") is worker
    assert r.service("nope") is None


def test_canonical_payload_golden() -> None:
    r = load_release(DATA / "production-42.yaml")
    assert r.to_bytes() == (DATA / "production-42.json").read_bytes().rstrip(b"\n")
    assert Release.from_payload(r.to_bytes()) == r
    assert str(r.digest) == "sha256:" + hashlib.sha256(r.to_bytes()).hexdigest()


VALID = [
    ("defaults", one(), {"replicas": 1, "strategy": "blue-green", "listen": None, "health": None}),
    ("rolling", one("    strategy: rolling\n"), {"strategy": "rolling"}),
    ("canary default steps", one("    replicas: 3\n    strategy: canary\n"), {"steps": [1, "100%"]}),
    (
        "canary counts",
        one("    replicas: 3\n    strategy: {canary: {steps: [1, 2, 3]}}\n"),
        {"steps": [1, 2, 3]},
    ),
    ("ipv6 listen", one("    listen: '[0:0::1]:80'\n"), {"listen": "[::1]:80"}),
    ("wildcard listen", one("    listen: 0.0.0.0:80\n"), {"listen": "0.0.0.0:80"}),
    ("tcp health", one("    health: {tcp: {port: 5432}}\n"), {"health": {"tcp": {"port": 5432}}}),
    ("registry port", one(image=f"localhost:5000/a/b@{D1}"), {"image": f"localhost:5000/a/b@{D1}"}),
    ("no registry", one(image=f"hello@{D1}"), {"image": f"hello@{D1}"}),
    ("utc offset", one().replace(b"00:00Z", b"00:00+00:00"), {"expires": "2026-12-31T00:00:00Z"}),
    ("env sorted", one("    env: {B: '2', A: '1'}\n"), {"env": {"A": "1", "B": "2"}}),
    (
        "resources",
        one("    resources: {memory: 256Mi, cpus: 0.5, pids: 256}\n"),
        {"resources": {"memory": "256Mi", "cpus": 0.5, "pids": 256}},
    ),
    ("memory in bytes", one("    resources: {memory: 1073741824}\n"), {"resources": {"memory": "1Gi"}}),
    ("memory spelled big", one("    resources: {memory: 2048Mi}\n"), {"resources": {"memory": "2Gi"}}),
    ("memory odd bytes", one("    resources: {memory: 7000001}\n"), {"resources": {"memory": 7000001}}),
    ("whole cpus", one("    resources: {cpus: 2.0}\n"), {"resources": {"cpus": 2}}),
    ("milli cpus", one("    resources: {cpus: 0.125}\n"), {"resources": {"cpus": 0.125}}),
    ("user namespace", one("    user_namespace: true\n"), {"user_namespace": True}),
    ("no user namespace", one("    user_namespace: false\n"), {"user_namespace": None}),
]


@pytest.mark.parametrize(("data", "expect"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid(data: bytes, expect: dict[str, object]) -> None:
    r = parse(data)
    payload = json.loads(r.to_bytes())
    svc = payload["services"][0]
    for key, value in expect.items():
        if key == "steps":
            assert svc["strategy"] == {"canary": {"steps": value}}
        elif key == "expires":
            assert payload["expires"] == value
        elif key == "health" and value is not None:
            assert {k: v for k, v in svc["health"].items() if k in ("http", "tcp")} == value
            assert svc["health"]["interval"] == "2s"
        else:
            assert svc.get(key) == value
    assert Release.from_payload(r.to_bytes()) == r


def test_toml_release() -> None:
    text = f"""apiVersion = "kiln.dev/v1"
kind = "Release"
channel = "production"
version = 42
expires = 2026-12-31T00:00:00Z
[[services]]
name = "web"
image = "registry.example/team/web@{D1}"
"""
    r = parse_release(text.encode(), source="r.toml", fmt="toml")
    assert r.expires == datetime(2026, 12, 31, tzinfo=UTC)


INVALID = [
    (
        "tag not digest",
        one(image="registry.example/team/web:1.0"),
        "r.yaml:8:5: services[0].image: pins a tag, not a digest ('registry.example/team/web:1.0') "
        "(write REPOSITORY@sha256:<64 hex digits>: a tag can move, a digest cannot)",
    ),
    (
        "nothing pinned",
        one(image="registry.example/team/web"),
        "r.yaml:8:5: services[0].image: no digest ('registry.example/team/web') "
        "(write REPOSITORY@sha256:<64 hex digits>: a tag can move, a digest cannot)",
    ),
    (
        "short digest",
        one(image="registry.example/web@sha256:abc"),
        "r.yaml:8:5: services[0].image: invalid digest 'sha256:abc' "
        "(expected sha256: followed by 64 lowercase hex digits)",
    ),
    (
        "tag and digest",
        one(image=f"registry.example/web:1@{D1}"),
        f"r.yaml:8:5: services[0].image: has both a tag and a digest ('registry.example/web:1@{D1}') "
        "(drop the ':TAG': the digest names the image)",
    ),
    (
        "uppercase repository",
        one(image=f"registry.example/Team/web@{D1}"),
        "r.yaml:8:5: services[0].image: invalid repository 'registry.example/Team/web' "
        "(lowercase path components separated by '/', after an optional registry host[:port])",
    ),
    (
        "unknown key",
        one("    replicaz: 2\n"),
        "r.yaml:9:5: services[0].replicaz: unknown key (did you mean 'replicas'?)",
    ),
    (
        "zero replicas",
        one("    replicas: 0\n"),
        "r.yaml:9:5: services[0].replicas: out of range (1 to 1024) (a service runs at least one instance)",
    ),
    (
        "quoted version",
        doc("  - {name: web, image: 'r/w@" + D1 + "'}\n", HEAD.replace("42", "'42'")),
        "r.yaml:4:1: version: expected an integer, got string (drop the quotes: version: 42)",
    ),
    (
        "version zero",
        doc("  - {name: web, image: 'r/w@" + D1 + "'}\n", HEAD.replace("42", "0")),
        "r.yaml:4:1: version: out of range (1 to 9223372036854775807) (versions start at 1)",
    ),
    (
        "not utc",
        one().replace(b"00:00Z", b"00:00+02:00"),
        "r.yaml:5:1: expires: time '2026-12-31T00:00:00+02:00' is not in UTC "
        "(write it in UTC with a Z, e.g. 2026-12-31T00:00:00Z)",
    ),
    (
        "date only",
        one().replace(b"2026-12-31T00:00:00Z", b"2026-12-31"),
        "r.yaml:5:1: expires: invalid time '2026-12-31' "
        "(write an RFC 3339 UTC time such as 2026-12-31T00:00:00Z)",
    ),
    (
        "empty services",
        (HEAD + "services: []\n").encode(),
        "r.yaml:6:1: services: must not be empty (a release lists every service it runs)",
    ),
    (
        "bad strategy",
        one("    strategy: blue-gren\n"),
        "r.yaml:9:5: services[0].strategy: unknown value 'blue-gren' (did you mean 'blue-green'?)",
    ),
    (
        "canary not reaching all",
        one("    replicas: 4\n    strategy: {canary: {steps: [1, 50%]}}\n"),
        "r.yaml:10:36: services[0].strategy.canary.steps[1]: the last step reaches 2 of 4 instances "
        "(end with 100% so every instance runs the new version)",
    ),
    (
        "canary going back",
        one("    replicas: 4\n    strategy: {canary: {steps: [2, 25%, 100%]}}\n"),
        "r.yaml:10:36: services[0].strategy.canary.steps[1]: step 25% does not add instances "
        "(1 of 4 after the previous step already had 2) "
        "(each step must move more instances to the new version)",
    ),
    (
        "canary bad percent",
        one("    strategy: {canary: {steps: [150%]}}\n"),
        "r.yaml:9:33: services[0].strategy.canary.steps[0]: invalid step '150%' "
        "(an instance count (1) or a percentage (1% to 100%))",
    ),
    (
        "listen host name",
        one("    listen: localhost:8080\n"),
        "r.yaml:9:5: services[0].listen: invalid address 'localhost:8080' "
        "(write IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (a host name is not an address))",
    ),
    (
        "listen port",
        one("    listen: 127.0.0.1:70000\n"),
        "r.yaml:9:5: services[0].listen: port 70000 is out of range (1 to 65535)",
    ),
    (
        "health number duration",
        one("    health: {http: {port: 80}, timeout: 5}\n"),
        "r.yaml:9:32: services[0].health.timeout: expected a duration such as 5s, got integer "
        '(add a unit and quote it: timeout: "5s")',
    ),
    (
        "health two checks",
        one("    health: {http: {port: 80}, tcp: {port: 80}}\n"),
        "r.yaml:9:5: services[0].health: has both 'http' and 'tcp' (keep one check)",
    ),
    (
        "health no check",
        one("    health: {grace: 5s}\n"),
        "r.yaml:9:5: services[0].health: expected exactly one of: http, tcp (say how to probe the service)",
    ),
    (
        "zero lifetime",
        one("    max_lifetime: 0s\n"),
        "r.yaml:9:5: services[0].max_lifetime: must be greater than 0",
    ),
    (
        "env number",
        one("    env: {PORT: 8080}\n"),
        'r.yaml:9:11: services[0].env.PORT: expected a string, got integer (quote it: PORT: "8080")',
    ),
    (
        "resources unknown key",
        one("    resources:\n      memroy: 256Mi\n"),
        "r.yaml:10:7: services[0].resources.memroy: unknown key (did you mean 'memory'?)",
    ),
    (
        "resources empty",
        one("    resources: {}\n"),
        "r.yaml:9:5: services[0].resources: must not be empty "
        "(e.g. resources: {memory: 256Mi, cpus: 0.5, pids: 256})",
    ),
    (
        "resources not a mapping",
        one("    resources: 256Mi\n"),
        "r.yaml:9:5: services[0].resources: expected a mapping, got string",
    ),
    (
        "memory decimal unit",
        one("    resources:\n      memory: 256M\n"),
        "r.yaml:10:7: services[0].resources.memory: invalid memory size '256M' "
        "(write a binary unit (Ki, Mi, Gi, Ti): 'M' means 10^6 to some tools, 2^20 to others)",
    ),
    (
        "memory with a space",
        one("    resources:\n      memory: 256 Mi\n"),
        "r.yaml:10:7: services[0].resources.memory: invalid memory size '256 Mi' "
        "(a byte count or a number with a binary unit: 512Ki, 256Mi, 2Gi, 1Ti)",
    ),
    (
        "memory too small",
        one("    resources:\n      memory: 1Mi\n"),
        "r.yaml:10:7: services[0].resources.memory: 1Mi is out of range (6Mi to 4Ti)",
    ),
    (
        "memory too large",
        one("    resources:\n      memory: 8Ti\n"),
        "r.yaml:10:7: services[0].resources.memory: 8Ti is out of range (6Mi to 4Ti)",
    ),
    (
        "memory a list",
        one("    resources:\n      memory: [1]\n"),
        "r.yaml:10:7: services[0].resources.memory: expected a memory size such as 256Mi, got list",
    ),
    (
        "zero cpus",
        one("    resources:\n      cpus: 0\n"),
        "r.yaml:10:7: services[0].resources.cpus: 0 is out of range (0.01 to 1024)",
    ),
    (
        "too many cpus",
        one("    resources:\n      cpus: 5000\n"),
        "r.yaml:10:7: services[0].resources.cpus: 5000 is out of range (0.01 to 1024)",
    ),
    (
        "cpus not a number",
        one("    resources:\n      cpus: .nan\n"),
        "r.yaml:10:7: services[0].resources.cpus: nan is out of range (0.01 to 1024)",
    ),
    (
        "cpus too fine",
        one("    resources:\n      cpus: 0.0125\n"),
        "r.yaml:10:7: services[0].resources.cpus: 0.0125 is finer than a thousandth of a CPU "
        "(a number of CPUs such as 0.5 or 2, in steps of 0.001)",
    ),
    (
        "cpus quoted",
        one("    resources:\n      cpus: '1'\n"),
        "r.yaml:10:7: services[0].resources.cpus: expected a number of CPUs such as 0.5, got string "
        "(a number of CPUs such as 0.5 or 2, in steps of 0.001)",
    ),
    (
        "too few pids",
        one("    resources:\n      pids: 2\n"),
        "r.yaml:10:7: services[0].resources.pids: out of range (8 to 4194304) "
        "(the most processes and threads one instance may hold at once)",
    ),
    (
        "fractional pids",
        one("    resources:\n      pids: 1.5\n"),
        "r.yaml:10:7: services[0].resources.pids: expected an integer, got number",
    ),
    (
        "user namespace quoted",
        one("    user_namespace: 'true'\n"),
        "r.yaml:9:5: services[0].user_namespace: expected a boolean (true or false), got string",
    ),
    (
        "wrong kind",
        doc("  - {name: web, image: 'r/w@" + D1 + "'}\n", HEAD.replace("Release", "Image")),
        "r.yaml:2:1: kind: wrong kind 'Image' (expected 'Release')",
    ),
    (
        "bad channel",
        doc("  - {name: web, image: 'r/w@" + D1 + "'}\n", HEAD.replace("production", "Prod/1")),
        "r.yaml:3:1: channel: invalid channel 'Prod/1' "
        "(lowercase letters, digits, '.', '_' and '-', at most 64 characters)",
    ),
]


@pytest.mark.parametrize(("data", "message"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(data)
    assert str(info.value) == message


def test_every_problem_at_once_in_position_order() -> None:
    data = doc(
        f"  - name: web\n    image: a/b:1\n    listen: 127.0.0.1:80\n"
        f"  - name: web\n    image: a/c@{D2}\n    listen: 0.0.0.0:80\n    replicas: -1\n",
        HEAD.replace("production", "Prod"),
    )
    with pytest.raises(ManifestError) as info:
        parse(data)
    assert [(p.line, p.path) for p in info.value.problems] == [
        (3, "channel"),
        (8, "services[0].image"),
        (10, "services[1].name"),
        (12, "services[1].listen"),
        (13, "services[1].replicas"),
    ]
    assert "duplicate service name 'web' (first at services[0].name)" in str(info.value)


def test_listen_conflicts() -> None:
    data = doc(
        f"  - {{name: a, image: 'r/a@{D1}', listen: '127.0.0.1:80'}}\n"
        f"  - {{name: b, image: 'r/b@{D1}', listen: '127.0.0.2:80'}}\n"
        f"  - {{name: c, image: 'r/c@{D1}', listen: '0.0.0.0:80'}}\n"
    )
    with pytest.raises(ManifestError) as info:
        parse(data)
    assert str(info.value) == (
        "r.yaml:9:101: services[2].listen: address 0.0.0.0:80 is already used at services[0].listen "
        "(each service needs its own address)"
    )


def test_utc_time_parser() -> None:
    assert parse_utc_time("2026-02-29T00:00:00Z") is None  # not a leap year
    assert parse_utc_time("2026-12-31T00:00:00.5Z") is None
    assert parse_utc_time("2026-12-31t00:00:00z") is None
    assert parse_utc_time("2028-02-29T23:59:59Z") == datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)


# -- received payloads ---------------------------------------------------------------------------


def payload() -> bytes:
    return load_release(DATA / "production-42.yaml").to_bytes()


def mutate(fn: object) -> bytes:
    d = json.loads(payload())
    fn(d)  # type: ignore[operator]
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


PAYLOAD_REFUSALS = [
    ("not json", b"{", "parse", "release payload: not valid JSON"),
    ("a list", b"[]", "parse", "release payload: expected a JSON object"),
    (
        "unknown top key",
        mutate(lambda d: d.update(extra=1)),
        "parse",
        "release payload: extra: unknown key (expected one of: apiVersion, kind, channel, version, expires, "
        "services, rollout, chaos)",
    ),
    (
        "tag instead of digest",
        mutate(lambda d: d["services"][0].update(image="registry.example/team/hello-web:latest")),
        "digest",
        "release payload: services[0].image: pins a tag, not a digest "
        "('registry.example/team/hello-web:latest')",
    ),
    ("whitespace", payload().replace(b",", b", ", 1), "parse", "release payload is not in canonical form"),
    (
        "unsorted keys",
        json.dumps(dict(reversed(json.loads(payload()).items())), separators=(",", ":")).encode(),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "duration spelling",
        payload().replace(b'"max_lifetime":"86400s"', b'"max_lifetime":"24h"'),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "default strategy spelled canary",
        mutate(lambda d: d["services"][0].update(strategy="canary")),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "duplicate key",
        payload().replace(b'{"apiVersion"', b'{"version":41,"apiVersion"'),
        "parse",
        "release payload: duplicate key 'version'",
    ),
    (
        "user namespace spelled false",
        mutate(lambda d: d["services"][0].update(user_namespace=False)),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "memory not in its largest unit",
        mutate(lambda d: d["services"][0].update(resources={"memory": "1024Mi"})),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "whole cpus as a float",
        payload().replace(b'"replicas":2,', b'"replicas":2,"resources":{"cpus":2.0},'),
        "parse",
        "release payload is not in canonical form",
    ),
    (
        "unknown resource",
        mutate(lambda d: d["services"][0].update(resources={"swap": "1Gi"})),
        "parse",
        "release payload: services[0].resources.swap: unknown key",
    ),
    (
        "float version",
        payload().replace(b'"version":42', b'"version":42.0'),
        "parse",
        "release payload: version: expected an integer, got number",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason", "start"), [v[1:] for v in PAYLOAD_REFUSALS], ids=[v[0] for v in PAYLOAD_REFUSALS]
)
def test_payload_refusals(data: bytes, reason: str, start: str) -> None:
    with pytest.raises(VerificationError) as info:
        Release.from_payload(data)
    assert info.value.reason == reason
    assert info.value.message.startswith(start), info.value.message


def test_payload_size_cap_before_parsing() -> None:
    huge = b"{" + b" " * MAX_RELEASE_BYTES + b"}"
    with pytest.raises(VerificationError) as info:
        Release.from_payload(huge)
    assert (info.value.reason, info.value.message) == (
        "parse",
        f"release payload: {MAX_RELEASE_BYTES + 2} bytes exceeds the {MAX_RELEASE_BYTES}-byte cap",
    )
    with pytest.raises(VerificationError, match="exceeds the 100-byte cap"):
        Release.from_payload(payload(), limit=100)


def test_oversized_document_refused() -> None:
    data = one() + b"#" + b"x" * MAX_RELEASE_BYTES + b"\n"
    with pytest.raises(ManifestError, match=f"larger than {MAX_RELEASE_BYTES} bytes"):
        parse(data)


# -- properties ----------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
durations = st.integers(min_value=1, max_value=10**8).map(lambda ms: ms / 1000)


@st.composite
def releases(draw: st.DrawFn) -> Release:
    count = draw(st.integers(min_value=1, max_value=4))
    service_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    services = []
    for i, name in enumerate(service_names):
        replicas = draw(st.integers(min_value=1, max_value=8))
        kind = draw(st.sampled_from(list(StrategyKind)))
        steps = (CanaryStep(value=1), CanaryStep(value=100, percent=True)) if kind.has_steps else ()
        if kind.has_steps and replicas == 1:
            steps = (CanaryStep(value=100, percent=True),)
        health = draw(
            st.none()
            | st.builds(
                ServiceHealth,
                check=st.builds(TcpCheck, port=st.integers(1, 65535)),
                interval=durations,
                grace=durations,
                timeout=durations,
                retries=st.integers(1, 100),
            )
        )
        services.append(
            Service(
                name=name,
                image=ImagePin(
                    repository=f"registry.example/{name}",
                    digest=Digest(draw(hexes)),
                ),
                replicas=replicas,
                listen=draw(st.none() | st.just(ListenAddress(host="127.0.0.1", port=8000 + i))),
                strategy=Strategy(kind=kind, steps=steps),
                health=health,
                max_lifetime=draw(st.none() | durations),
                resources=draw(
                    st.none()
                    | st.builds(
                        Resources,
                        memory=st.none() | st.integers(6 << 20, 4 << 40),
                        cpu_millis=st.none() | st.integers(10, 1024 * 1000),
                        pids=st.none() | st.integers(8, 4194304),
                    ).filter(lambda r: r != Resources())
                ),
                user_namespace=draw(st.booleans()),
                env=tuple(
                    sorted(
                        draw(
                            st.dictionaries(
                                st.from_regex(r"[A-Z_]{1,8}", fullmatch=True),
                                st.text(max_size=8).filter(lambda s: "\x00" not in s),
                                max_size=3,
                            )
                        ).items()
                    )
                ),
            )
        )
    return Release(
        channel=draw(names),
        version=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        expires=datetime.fromtimestamp(draw(st.integers(0, 2**33)), tz=UTC),
        services=tuple(services),
    )


@settings(max_examples=150, deadline=None)
@given(releases())
def test_payload_round_trip(release: Release) -> None:
    data = release.to_bytes()
    again = Release.from_payload(data)
    assert again == release
    assert again.to_bytes() == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_payload_parser_never_crashes(data: bytes) -> None:
    reason = None
    try:
        Release.from_payload(data)
    except VerificationError as exc:
        reason = exc.reason
    assert reason in ("parse", "digest", None)
