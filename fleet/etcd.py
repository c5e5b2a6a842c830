"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), on httpx.

Only what fleets need: ranges (at a revision too), puts, deletes, transactions with compares, and
leases. Keys and values are bytes on the wire (base64 in the gateway's JSON); this client takes and
returns ``str`` keys and ``bytes`` values. Every answer is size-capped and parsed as untrusted JSON;
a network failure or an error status is :class:`~fleet.errors.EtcdUnavailable`.

Why not a library: the Python etcd clients on PyPI speak gRPC (``etcd3`` is unmaintained and pins
an old protobuf; ``etcd3gw`` pulls in oslo and futurist); the gateway is part of etcd itself, and
httpx is already kiln's HTTP client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from fleet.errors import EtcdResponseError, EtcdUnavailable
from manifests.errors import DocumentError
from manifests.oci import parse_json_object

__all__ = ["KeyValue", "Compare", "Op", "TxnResult", "EtcdClient", "prefix_end"]

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 5.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EtcdResponseError(f"etcd: {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise EtcdResponseError(f"etcd: {what} is not valid base64") from exc


def _int(value: object, what: str) -> int:
    # the gateway writes int64 fields as decimal strings, and omits zero values
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise EtcdResponseError(f"etcd: {what} is not an integer")


def prefix_end(prefix: str) -> bytes:
    """The smallest key above every key starting with ``prefix`` (etcd's ``range_end``)."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def json(self) -> Any:
        """The value as JSON (values kiln writes are canonical JSON objects)."""
        return parse_json_object(self.value, what=f"etcd key {self.key}", limit=MAX_RESPONSE_BYTES)

    @classmethod
    def from_gateway(cls, d: object) -> KeyValue:
        if not isinstance(d, dict):
            raise EtcdResponseError("etcd: a key-value is not an object")
        try:
            key = _unb64(d.get("key"), "a key").decode()
        except UnicodeDecodeError as exc:
            raise EtcdResponseError("etcd: a key is not UTF-8") from exc
        return cls(
            key=key,
            value=_unb64(d.get("value", ""), "a value"),
            create_revision=_int(d.get("create_revision"), "create_revision"),
            mod_revision=_int(d.get("mod_revision"), "mod_revision"),
            version=_int(d.get("version"), "version"),
            lease=_int(d.get("lease"), "lease"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """One transaction guard: ``target`` (VERSION, CREATE, MOD, VALUE) of ``key`` compared."""

    key: str
    target: str
    result: str = "EQUAL"
    value: int | bytes = 0

    def to_gateway(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": _b64(self.key.encode()), "target": self.target, "result": self.result}
        field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision"}.get(self.target)
        if field is not None:
            out[field] = str(self.value)
        else:
            raw = self.value if isinstance(self.value, bytes) else str(self.value).encode()
            out["value"] = _b64(raw)
        return out

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key=key, target="CREATE", value=0)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        return cls(key=key, target="MOD", value=mod_revision)


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One transaction operation: ``put``, ``delete`` or ``range`` (``prefix`` for a whole prefix)."""

    kind: str
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: str, value: bytes, *, lease: int = 0) -> Op:
        return cls(kind="put", key=key, value=value, lease=lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls(kind="delete", key=key)

    @classmethod
    def get(cls, key: str, *, prefix: bool = False) -> Op:
        return cls(kind="range", key=key, prefix=prefix)

    def to_gateway(self) -> dict[str, Any]:
        key = _b64(self.key.encode())
        if self.kind == "put":
            put: dict[str, Any] = {"key": key, "value": _b64(self.value)}
            if self.lease:
                put["lease"] = str(self.lease)
            return {"request_put": put}
        if self.kind == "delete":
            return {"request_delete_range": {"key": key}}
        rng: dict[str, Any] = {"key": key}
        if self.prefix:
            rng["range_end"] = _b64(prefix_end(self.key))
        return {"request_range": rng}


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]


class EtcdClient:
    """etcd's v3 JSON gateway at ``endpoint`` (``http://127.0.0.1:2379``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        client: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._own = client is None
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        if self._own:
            self._client.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        what = f"etcd {self.endpoint}{path}"
        try:
            with self._client.stream("POST", f"{self.endpoint}{path}", content=json.dumps(body)) as resp:
                chunks: list[bytes] = []
                total = 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > MAX_RESPONSE_BYTES:
                        raise EtcdResponseError(f"{what}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                    chunks.append(chunk)
                status = resp.status_code
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(
                f"{what}: {type(exc).__name__}: {exc}", hint="is etcd running at that address?"
            ) from exc
        data = b"".join(chunks)
        try:
            doc = parse_json_object(data, what=what, limit=MAX_RESPONSE_BYTES)
        except DocumentError as exc:
            if status != 200:
                raise EtcdUnavailable(f"{what}: HTTP {status}") from exc
            raise EtcdResponseError(exc.message) from exc
        if status != 200 or "error" in doc:
            message = doc.get("message") or doc.get("error") or f"HTTP {status}"
            raise EtcdUnavailable(f"{what}: {str(message)[:200]}")
        return doc

    @staticmethod
    def _revision(doc: dict[str, Any]) -> int:
        header = doc.get("header")
        if not isinstance(header, dict):
            raise EtcdResponseError("etcd: an answer without a header")
        return _int(header.get("revision"), "revision")

    @staticmethod
    def _kvs(doc: dict[str, Any]) -> tuple[KeyValue, ...]:
        kvs = doc.get("kvs", [])
        if not isinstance(kvs, list):
            raise EtcdResponseError("etcd: kvs is not a list")
        return tuple(KeyValue.from_gateway(kv) for kv in kvs)

    # -- key-value

    def get(self, key: str) -> KeyValue | None:
        kvs = self.range(key)[1]
        return kvs[0] if kvs else None

    def range(self, key: str, *, prefix: bool = False, revision: int = 0) -> tuple[int, tuple[KeyValue, ...]]:
        """``(revision, key-values)`` of ``key`` (or every key under it), now or at ``revision``."""
        body: dict[str, Any] = {"key": _b64(key.encode())}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if revision:
            body["revision"] = str(revision)
        doc = self._call("/v3/kv/range", body)
        return self._revision(doc), self._kvs(doc)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self._revision(self._call("/v3/kv/put", body))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": _b64(key.encode())}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return self._revision(self._call("/v3/kv/deleterange", body))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        doc = self._call(
            "/v3/kv/txn",
            {
                "compare": [c.to_gateway() for c in compare],
                "success": [o.to_gateway() for o in success],
                "failure": [o.to_gateway() for o in failure],
            },
        )
        succeeded = doc.get("succeeded", False)
        if not isinstance(succeeded, bool):
            raise EtcdResponseError("etcd: 'succeeded' is not a boolean")
        responses = doc.get("responses", [])
        if not isinstance(responses, list):
            raise EtcdResponseError("etcd: 'responses' is not a list")
        ranges: list[tuple[KeyValue, ...]] = []
        for r in responses:
            if isinstance(r, dict) and isinstance(r.get("response_range"), dict):
                ranges.append(self._kvs(r["response_range"]))
        return TxnResult(succeeded=succeeded, revision=self._revision(doc), ranges=tuple(ranges))

    # -- leases

    def grant(self, ttl: float) -> int:
        doc = self._call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        lease = _int(doc.get("ID"), "lease ID")
        if lease <= 0:
            raise EtcdResponseError("etcd: granted a lease without an ID")
        return lease

    def keepalive(self, lease: int) -> bool:
        """Refresh ``lease``; False when it has already expired."""
        doc = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = doc.get("result", doc)
        ttl = _int(result.get("TTL") if isinstance(result, dict) else None, "TTL")
        return ttl > 0

    def revoke(self, lease: int) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdUnavailable as exc:
            if "not found" not in str(exc):
                raise

    def status(self) -> dict[str, Any]:
        return self._call("/v3/maintenance/status", {})
