"""The republish record (kiln.publishrecord): a no-change publish to a loopback registry is answered
by one HEAD per tag, prints exactly what the real no-change publish prints, and anything changed,
locally or at the registry, makes the next publish a real one."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.publishrecord import parse_publish
from manifests.layout import OCILayout
from manifests.mediatypes import MediaType
from manifests.oci import Descriptor, OCIManifest
from tests.publisher.conftest import Target, _registry
from tests.publisher.test_publish_kit import make_image

_ACCESS = re.compile(r'"((?:HEAD|GET|PUT|POST|PATCH|DELETE) /v2/[^"]*)"')
REPLAYED = "names what this layout holds: nothing to send"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _registry(tmp_path_factory.mktemp("rec-reg"), "plain")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))


def _publish(
    capsys: pytest.CaptureFixture[str], *argv: str, replay: bool = True
) -> tuple[dict[str, object], str]:
    assert main([*argv, "--json"], replay_first=replay) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _requests(target: Target, since: int) -> list[str]:
    lines = target.registry.log_path.read_text().splitlines()[since:]
    return [m.group(1) for line in lines if (m := _ACCESS.search(line))]


def _log_length(target: Target) -> int:
    return len(target.registry.log_path.read_text().splitlines())


def _settle() -> None:
    time.sleep(0.06)  # past the racy window: the layout was just written


def test_no_change_republish_is_one_head_per_tag(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "src", version="1.2.0", attest=True)
    _settle()
    argv = ("publish", f"oci:{tmp_path / 'src'}", f"{registry.registry.host}/rec/one", "--insecure")
    first, err = _publish(capsys, *argv, "--channel", "stable")
    assert first["changed"] is True
    real, err = _publish(capsys, *argv, "--channel", "stable", replay=False)
    assert real["changed"] is False
    before = _log_length(registry)
    replayed, err = _publish(capsys, *argv, "--channel", "stable")
    assert REPLAYED in err
    assert "--insecure" in err, "the escape hatch warns every time"
    assert replayed == real
    asked = _requests(registry, before)
    assert asked, "the registry was asked"
    assert all(r.startswith("HEAD ") and "/manifests/" in r for r in asked), asked
    # The version tag, the channel, .sig and .att: one HEAD each.
    assert len(asked) == 4


def test_a_cold_publish_records_the_tags_it_wrote_without_asking_again(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The referrers index and signature tags the push itself wrote go into the record as written:
    no HEAD after the push; the replay still checks each one at the registry."""
    make_image(tmp_path / "src", version="1.3.0", attest=True)
    _settle()
    argv = ("publish", f"oci:{tmp_path / 'src'}", f"{registry.registry.host}/rec/cold", "--insecure")
    before = _log_length(registry)
    first, _ = _publish(capsys, *argv)
    assert first["changed"] is True
    asked = _requests(registry, before)
    last_put = max(i for i, r in enumerate(asked) if r.startswith("PUT ") and "/manifests/" in r)
    assert not any(r.startswith("HEAD ") for r in asked[last_put + 1 :]), asked
    before = _log_length(registry)
    replayed, err = _publish(capsys, *argv)
    assert REPLAYED in err
    assert replayed["changed"] is False
    heads = _requests(registry, before)
    assert any("/manifests/sha256-" in r for r in heads), heads  # the referrers tag is checked


def test_a_channel_moved_elsewhere_makes_a_real_publish(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_image(tmp_path / "a", version="1.0.0", layer=b"a")
    make_image(tmp_path / "b", version="2.0.0", layer=b"b")
    _settle()
    dest = f"{registry.registry.host}/rec/chan"
    argv_a = ("publish", f"oci:{tmp_path / 'a'}", dest, "--insecure", "--channel", "stable")
    _publish(capsys, *argv_a)
    _publish(capsys, "publish", f"oci:{tmp_path / 'b'}", dest, "--insecure", "--channel", "stable")
    again, err = _publish(capsys, *argv_a)
    assert REPLAYED not in err
    changes = {c["tag"]: c["action"] for c in again["tag_changes"]}  # type: ignore[attr-defined]
    assert changes == {"1.0.0": "unchanged", "stable": "moved"}
    assert again["digest"] == str(a.digest)


def test_a_referrer_added_locally_makes_a_real_publish(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = make_image(tmp_path / "src", version="1.0.0")
    _settle()
    argv = ("publish", f"oci:{tmp_path / 'src'}", f"{registry.registry.host}/rec/ref", "--insecure")
    _publish(capsys, *argv)
    layout = OCILayout.open(tmp_path / "src")
    empty = layout.write_blob(b"{}")
    sbom = layout.write_blob(b'{"spdxVersion": "SPDX-2.3"}')
    raw = OCIManifest(
        config=Descriptor(media_type=MediaType.OCI_EMPTY, digest=empty, size=2),
        layers=(Descriptor(media_type=MediaType.SPDX_JSON, digest=sbom, size=27),),
        subject=Descriptor(media_type=MediaType.OCI_MANIFEST, digest=desc.digest, size=desc.size),
        artifact_type=MediaType.SPDX_JSON,
    ).to_bytes()
    layout.add(
        Descriptor(
            media_type=MediaType.OCI_MANIFEST,
            digest=layout.write_blob(raw),
            size=len(raw),
            artifact_type=MediaType.SPDX_JSON,
        )
    )
    _settle()
    again, err = _publish(capsys, *argv)
    assert REPLAYED not in err
    assert again["changed"] is True
    # Recorded in turn, with the referrers' tag among the ones asked about.
    before = _log_length(registry)
    _, err = _publish(capsys, *argv)
    assert REPLAYED in err
    assert any(f"sha256-{desc.digest.hex}" in r for r in _requests(registry, before))


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "oci:src", "127.0.0.1:5000/app"],  # https: httpx's trust settings, the real path
        ["publish", "oci:src", "127.0.0.1:5000/app", "--insecure", "--jobz", "2"],
        ["publish", "oci:src", "--insecure"],
        ["copy", "oci:src", "127.0.0.1:5000/app", "--insecure"],
    ],
)
def test_command_lines_outside_the_fast_path(argv: list[str]) -> None:
    assert parse_publish(argv) is None


def test_a_proxy_setting_leaves_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["publish", "oci:src", "127.0.0.1:5000/app", "--insecure", "--jobs=2", "--channel", "edge"]
    assert parse_publish(argv) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert parse_publish(argv) is None


def test_plain_http_to_another_host_is_not_recorded(
    registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.0.0.0 reaches this machine's listeners, but is not a loopback name: --insecure to a LAN
    # registry must not get a record (the fast path is for loopback registries only).
    port = registry.registry.host.rpartition(":")[2]
    make_image(tmp_path / "src", version="1.2.0")
    _settle()
    argv = ("publish", f"oci:{tmp_path / 'src'}", f"0.0.0.0:{port}/rec/lan", "--insecure")
    _publish(capsys, *argv)
    _publish(capsys, *argv)
    assert not list((tmp_path / "cache").glob("fast/publish-*.json"))


def test_a_record_naming_another_host_is_not_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln import publishrecord

    request = parse_publish(["publish", "oci:src", "192.0.2.7:5000/r", "--insecure"])
    assert request is not None
    record = {"key": request.key(), "inputs": [], "host": "192.0.2.7:5000", "repo": "r", "tags": [["1", "x"]]}
    record |= {"human": "h", "json": {}}
    publishrecord.write_record(request.record_path(), record)
    asked: list[str] = []
    monkeypatch.setattr(publishrecord, "_tags_hold", lambda host, *_: asked.append(host) or True)
    assert publishrecord.replay(["publish", "oci:src", "192.0.2.7:5000/r", "--insecure"]) is None
    assert asked == []
    assert publishrecord.loopback("127.0.0.1:5000")
    assert publishrecord.loopback("[::1]:5000")
    assert publishrecord.loopback("localhost")
    assert not publishrecord.loopback("0.0.0.0:5000")
    assert not publishrecord.loopback("127.example.com")


@pytest.mark.parametrize(
    "damage",
    [
        {"tags": [["only-a-tag"]]},
        {"tags": [5]},
        {"tags": "1.2.0"},
        {"json": [1]},
        {"host": 5},
    ],
)
def test_a_damaged_record_falls_back_to_the_real_publish(damage: dict[str, object]) -> None:
    from kiln import publishrecord

    argv = ["publish", "oci:src", "127.0.0.1:9/r", "--insecure", "--json"]
    request = parse_publish(argv)
    assert request is not None
    record = {"key": request.key(), "inputs": [], "host": "127.0.0.1:9", "repo": "r", "tags": [["1", "x"]]}
    record |= {"human": "h", "json": {}}
    publishrecord.write_record(request.record_path(), record | damage)
    assert publishrecord.replay(argv) is None


def test_a_working_directory_gone_falls_back_to_the_real_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln import publishrecord

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert publishrecord.replay(["publish", "oci:src", "127.0.0.1:9/r", "--insecure"]) is None


def test_a_registry_that_trickles_its_answer_meets_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # A byte every 10 ms never trips a per-read timeout; the whole exchange has one deadline.
    import socket
    import threading

    from kiln import publishrecord

    monkeypatch.setattr(publishrecord, "_TIMEOUT", 0.3)
    limit = 1000  # 10 s of trickling, far past the deadline
    sent = [0]
    server = socket.create_server(("127.0.0.1", 0))

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for _ in range(limit):
                try:
                    conn.sendall(b"X")
                except OSError:
                    return  # the client hung up
                sent[0] += 1
                time.sleep(0.01)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        assert publishrecord._head_answers(f"127.0.0.1:{port}", [b"HEAD / HTTP/1.1\r\n\r\n"]) is None
        thread.join(timeout=30)
    finally:
        server.close()
    assert sent[0] < limit, "the client gave up at its deadline, long before the server stopped"


def test_both_commands_share_one_key_and_one_command_line_reader() -> None:
    from kiln.buildrecord import base_key, parse_request

    publish = parse_publish(["-q", "publish", "oci:s", "127.0.0.1:5000/r", "--channel=a", "--jobs", "3",
                             "--insecure", "--channel", "b"])  # fmt: skip
    assert publish is not None
    assert publish.channels == ["a", "b"]
    assert publish.quiet
    build = parse_request(["build", "m.yaml", "-o", "o", "--force"])
    assert build is not None
    shared = base_key()
    assert publish.key().items() >= shared.items()
    assert build.key().items() >= shared.items()
    assert publish.record_path() != build.record_path()
