"""The image config and its dev.kiln.* label schema: one writer, one reader of untrusted JSON."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.canonical import canonical_json
from manifests.digest import Digest
from manifests.errors import DocumentError
from manifests.image import ExecCheck, HealthCheck, HttpCheck, TcpCheck
from manifests.imageconfig import (
    HEALTH_LABEL_MAX,
    History,
    ImageConfig,
    KilnLabel,
    RunConfig,
    RunPolicy,
    read_health_label,
)

BUILT = ImageConfig(
    created="1970-01-01T00:00:00Z",
    architecture="amd64",
    os="linux",
    config=RunConfig(
        user="1000:1000",
        env=(("PATH", "/usr/bin:/bin"), ("GREETING", "a=b")),
        entrypoint=("/app/server",),
        cmd=("--port", "8080"),
        working_dir="/app",
        exposed_ports=("8080/tcp",),
        volumes=("/var/lib/app",),
        labels=(("org.example.team", "web"),),
        policy=RunPolicy(
            user=(1000, 1000),
            writable=("/tmp",),
            volumes=("/var/lib/app",),
            ports=("8080/tcp",),
            health=HealthCheck(check=HttpCheck(port=8080, path="/healthz"), interval=1.5),
        ),
    ),
    diff_ids=(Digest.of(b"layer"),),
    history=(History(created="1970-01-01T00:00:00Z", created_by="kiln: app layer", comment="built by kiln"),),
)


def test_the_writer_spells_labels_as_the_agent_has_always_read_them() -> None:
    cfg = json.loads(BUILT.to_bytes())["config"]
    assert cfg["Labels"] == {
        "org.example.team": "web",
        "dev.kiln.read-only": "true",
        "dev.kiln.user": "1000:1000",
        "dev.kiln.writable": '["/tmp"]',
        "dev.kiln.volumes": '["/var/lib/app"]',
        "dev.kiln.ports": '["8080/tcp"]',
        "dev.kiln.health": (
            '{"interval":1.5,"path":"/healthz","port":8080,"retries":3,"timeout":1.0,"type":"http"}'
        ),
    }
    assert cfg["Env"] == ["PATH=/usr/bin:/bin", "GREETING=a=b"]
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert "dev.kiln.allow-setuid" not in cfg["Labels"]


def test_round_trip_is_exact() -> None:
    data = BUILT.to_bytes()
    again = ImageConfig.from_bytes(data)
    assert again == BUILT
    assert again.to_bytes() == data


def test_a_foreign_config_gets_the_defaults() -> None:
    image = ImageConfig.from_dict({"config": {"Cmd": ["/bin/sh"]}})
    assert image.policy == RunPolicy()
    assert image.config.ids() == (0, 0)
    assert image.config.args() == ("/bin/sh",)
    assert image.policy.port() is None


def test_unknown_labels_and_fields_are_ignored() -> None:
    image = ImageConfig.from_dict(
        {"config": {"Labels": {"dev.kiln.future": "x", "a": "b"}, "StopSignal": "SIGTERM"}, "extra": 1}
    )
    assert image.config.labels == (("dev.kiln.future", "x"), ("a", "b"))
    assert image.policy == RunPolicy()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"config": []}, "image config: 'config' must be an object"),
        ({"config": {"Labels": {"a": 1}}}, "image config: config.Labels must map strings to strings"),
        ({"config": {"Env": ["NOEQUALS"]}}, "image config: config.Env must be a list of NAME=value strings"),
        ({"config": {"Cmd": "sh"}}, "image config: config.Cmd must be a list of strings"),
        ({"config": {"WorkingDir": "app"}}, "image config: config.WorkingDir must be an absolute path"),
        ({"config": {"User": 7}}, "image config: config.User must be a string"),
        ({"config": {"ExposedPorts": ["80"]}}, "image config: config.ExposedPorts must be an object"),
        ({"rootfs": {"diff_ids": ["md5:00"]}}, "image config: rootfs.diff_ids: invalid digest 'md5:00'"),
        ({"rootfs": {"diff_ids": "x"}}, "image config: rootfs.diff_ids must be a list of digests"),
        (
            {"history": [{"comment": 1}]},
            "image config: history: created, created_by and comment must be strings",
        ),
        ({"architecture": 1}, "image config: 'architecture' must be a string"),
    ],
)
def test_bad_fields_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(DocumentError) as info:
        ImageConfig.from_dict(doc)
    assert info.value.message == message


def _labels(**labels: str) -> dict[str, Any]:
    return {"config": {"Labels": {f"dev.kiln.{k.replace('_', '-')}": v for k, v in labels.items()}}}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"ports": "[8080]"}, "image config: label dev.kiln.ports: expected a JSON list of strings"),
        (
            {"ports": '["http"]'},
            "image config: label dev.kiln.ports: 'http' is not PORT or PORT/PROTO (tcp, udp, sctp)",
        ),
        (
            {"ports": '["70000/tcp"]'},
            "image config: label dev.kiln.ports: '70000/tcp' is not PORT or PORT/PROTO (tcp, udp, sctp)",
        ),
        ({"ports": json.dumps(["1"] * 65)}, "image config: label dev.kiln.ports: more than 64 ports"),
        (
            {"writable": json.dumps([f"/w{i}" for i in range(65)])},
            "image config: label dev.kiln.writable: more than 64 paths",
        ),
        ({"writable": "[" * 10 + "]" * 10}, "image config: label dev.kiln.writable: not valid JSON"),
        (
            {"volumes": '["/dev/shm"]'},
            "image config: label dev.kiln.volumes: '/dev/shm' is inside a system mount",
        ),
        (
            {"read_only": "True"},
            "image config: label dev.kiln.read-only: expected 'true' or 'false', got 'True'",
        ),
        ({"user": "1:" + "9" * 5000}, None),
        (
            {"health": '{"type":"tcp"}'},
            "image config: label dev.kiln.health: port: must be an integer, not null",
        ),
        (
            {"health": '{"type":"tcp","port":1,"pad":"' + "a" * HEALTH_LABEL_MAX + '"}'},
            f"image config: label dev.kiln.health: is {HEALTH_LABEL_MAX + 32} bytes, "
            f"more than {HEALTH_LABEL_MAX}",
        ),
    ],
)
def test_bad_labels_are_refused_naming_the_label(labels: dict[str, str], message: str | None) -> None:
    with pytest.raises(DocumentError) as info:
        ImageConfig.from_dict(_labels(**labels))
    if message is None:
        assert "label dev.kiln.user" in info.value.message
    else:
        assert info.value.message == message


def test_health_label_defaults_and_kinds() -> None:
    assert read_health_label('{"type":"tcp","port":9}') == HealthCheck(check=TcpCheck(port=9))
    assert read_health_label('{"type":"exec","command":["/bin/true"],"retries":5}') == HealthCheck(
        check=ExecCheck(command=("/bin/true",)), retries=5
    )


def test_label_names_are_one_vocabulary() -> None:
    assert {str(label) for label in KilnLabel} == set(
        RunPolicy(user=(1, 1), allow_setuid=True, health=HealthCheck(check=TcpCheck(port=1))).to_labels()
    )


_paths = st.lists(st.text("abc", min_size=1, max_size=3).map(lambda s: "/" + s), max_size=4, unique=True)
_health = st.none() | st.builds(
    HealthCheck,
    check=st.one_of(
        st.builds(HttpCheck, port=st.integers(1, 65535), path=st.sampled_from(["/", "/healthz"])),
        st.builds(TcpCheck, port=st.integers(1, 65535)),
        st.builds(ExecCheck, command=st.lists(st.text(max_size=5), min_size=1, max_size=3).map(tuple)),
    ),
    interval=st.floats(0.5, 3600),
    timeout=st.floats(0.5, 600),
    retries=st.integers(1, 100),
)


@settings(max_examples=100, deadline=None)
@given(
    writable=_paths,
    volumes=_paths,
    ports=st.lists(st.integers(1, 65535).map(lambda p: f"{p}/tcp"), max_size=3),
    health=_health,
    user=st.none() | st.tuples(st.integers(0, 2**31), st.integers(0, 2**31)),
    allow_setuid=st.booleans(),
    read_only=st.booleans(),
)
def test_policy_round_trips(  # noqa: PLR0917 - one argument per hypothesis strategy
    writable: list[str],
    volumes: list[str],
    ports: list[str],
    health: HealthCheck | None,
    user: tuple[int, int] | None,
    allow_setuid: bool,
    read_only: bool,
) -> None:
    volumes = [v + "v" for v in volumes if v + "v" not in writable]
    policy = RunPolicy(
        read_only=read_only,
        user=user,
        writable=tuple(writable),
        volumes=tuple(volumes),
        ports=tuple(ports),
        health=health,
        allow_setuid=allow_setuid,
    )
    image = ImageConfig(config=RunConfig(policy=policy))
    data = image.to_bytes()
    assert ImageConfig.from_bytes(data) == image
    assert canonical_json(json.loads(data)) == data


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([str(k) for k in KilnLabel] + ["x"]), st.text(max_size=12), max_size=4)
)
def test_any_label_text_is_a_value_or_a_document_error(labels: dict[str, str]) -> None:
    with contextlib.suppress(DocumentError):
        ImageConfig.from_dict({"config": {"Labels": labels}})
