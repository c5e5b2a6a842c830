"""The etcd gateway client: a real etcd for the protocol, a mock transport for hostile answers."""

from __future__ import annotations

import httpx
import pytest

from fleet.errors import EtcdResponseError, EtcdUnavailable
from fleet.etcd import Compare, EtcdClient, Op, prefix_end
from tests.fleet.etcdkit import Etcd


@pytest.mark.integration
def test_put_get_range_txn_and_leases(etcd: Etcd) -> None:
    p = f"/{etcd.fleet_name()}/"
    with EtcdClient(etcd.url) as client:
        client.put(p + "a", b"1")
        client.put(p + "b", b"2")
        client.put(p.rstrip("/") + "0", b"outside")  # right after the prefix, bytewise
        got = client.get(p + "a")
        assert got is not None
        assert got.value == b"1"
        assert got.version == 1
        rev, kvs = client.range(p, prefix=True)
        assert [kv.key for kv in kvs] == [p + "a", p + "b"]
        first = kvs[0].mod_revision
        client.put(p + "a", b"3")
        assert client.range(p + "a", revision=first)[1][0].value == b"1", "reads at an older revision"
        lost = client.txn([Compare.unchanged(p + "a", first)], [Op.put(p + "a", b"x")])
        assert not lost.succeeded
        won = client.txn([Compare.absent(p + "c")], [Op.put(p + "c", b"y"), Op.get(p, prefix=True)])
        assert won.succeeded
        assert [kv.key for kv in won.ranges[0]] == [p + "a", p + "b", p + "c"]
        lease = client.grant(5)
        client.put(p + "leased", b"z", lease=lease)
        assert client.keepalive(lease)
        client.revoke(lease)
        assert client.get(p + "leased") is None
        assert client.delete(p, prefix=True) > rev


def test_prefix_end() -> None:
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end("a\x7f") == b"a\x80"


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (200, b"[1, 2]", EtcdResponseError, "expected a JSON object"),
        (200, b"{" * 100_000, EtcdResponseError, "etcd"),
        (
            200,
            b'{"header": {"revision": "1"}, "kvs": [{"key": "!!!", "value": ""}]}',
            EtcdResponseError,
            "base64",
        ),
        (200, b'{"header": {"revision": "99999999999999999999999"}}', EtcdResponseError, "integer"),
        (200, b'{"kvs": []}', EtcdResponseError, "header"),
        (500, b"<html>oops</html>", EtcdUnavailable, "HTTP 500"),
        (
            400,
            b'{"error": "etcdserver: requested lease not found", "code": 5}',
            EtcdUnavailable,
            "lease not found",
        ),
    ],
)
def test_hostile_or_broken_answers_are_typed_errors(
    status: int, body: bytes, error: type[Exception], text: str
) -> None:
    transport = httpx.MockTransport(lambda _req: httpx.Response(status, content=body))
    with (
        EtcdClient("http://etcd.invalid", client=httpx.Client(transport=transport)) as client,
        pytest.raises(error, match=text),
    ):
        client.range("/x", prefix=True)


def test_an_unreachable_etcd_is_unavailable_with_a_hint() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        EtcdClient(
            "http://127.0.0.1:9", client=httpx.Client(transport=httpx.MockTransport(refuse))
        ) as client,
        pytest.raises(EtcdUnavailable, match="is etcd running"),
    ):
        client.get("/x")
