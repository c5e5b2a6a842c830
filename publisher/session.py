"""One registry's HTTP session: base URL, authentication, bounded retries, capped reads.

Every request of :class:`~publisher.client.RegistryClient` goes through :meth:`Session.send`, which

- attaches credentials for the scopes the request needs (Basic, or a cached Bearer token, fetched
  ahead of time once the registry's realm is known, so a streamed upload is not answered 401);
- on a ``401`` parses ``WWW-Authenticate``, obtains a token (or Basic) and tries once more;
- retries network failures, ``408``, ``429`` and ``5xx`` with bounded, jittered exponential backoff,
  honouring ``Retry-After`` (unless the caller does its own recovery, as resumable uploads do);
- translates httpx's exceptions into :class:`RegistryUnavailable` at this boundary;
- bounds every request twice: ``read`` is the longest stall between two bytes, and ``total`` is
  an overall deadline for the request (connect, headers and body together), so a registry that
  trickles one byte every few seconds is cut off instead of holding the request forever. The
  deadline clamps every socket operation's timeout to the time left (a network backend wrapper
  below httpx) and is checked between body chunks.

Responses come back streamed; callers read them with :func:`read_capped` or iterate them, and
hand a response whose body they do not need to :func:`release`, which reads the few bytes left so
the connection goes back to the pool (httpcore drops a connection closed mid-response; reopening
one per request cost a connect and a new server goroutine each time).

A registry that speaks plain http is named at the first refused handshake (no retries): the fix is
``--insecure``, allowed for any registry (skopeo, crane and docker allow it for a LAN registry) and
announced loudly every time. Extra CA certificates and client certificates for one registry come
from its ``certs.d`` directory, as docker and podman read them: ``/etc/containers/certs.d/HOST:PORT``
and ``/etc/docker/certs.d/HOST:PORT`` (``*.crt`` are CAs, ``*.cert`` + ``*.key`` a client
certificate); ``$KILN_CERTS_D`` replaces those two roots (tests, or a user's own directory).

The session's own ``httpx.Client`` builds its verifying TLS context on the first ``https`` request:
loading the CA bundle took 45-80 ms here, most of what a no-change republish spends outside the
interpreter's start, and a session that only speaks plain http to a loopback registry never needs it.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from manifests.limits import AgentLimits
from publisher.auth import (
    MAX_TOKEN_RESPONSE,
    Challenge,
    Credentials,
    TokenCache,
    parse_challenges,
    parse_token_response,
)
from publisher.errors import (
    MAX_ERROR_BODY,
    AuthError,
    PlainHttpRegistry,
    PublishError,
    RegistryError,
    RegistryUnavailable,
    TokenAnswerError,
    registry_error,
)
from publisher.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after

__all__ = [
    "Session",
    "Timeouts",
    "Body",
    "read_capped",
    "release",
    "join_url",
    "header_int",
    "is_loopback_host",
    "certs_dirs",
    "TransientFailure",
]

log = logging.getLogger("kiln.publisher")

Body = bytes | Callable[[], Iterator[bytes]] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds. ``read`` bounds a stall: no byte from the registry for that long fails the attempt.
    ``total`` bounds one request (connect, headers and body together); ``None``: no deadline."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 60.0
    total: float | None = 600.0

    @classmethod
    def from_limits(cls, limits: AgentLimits) -> Timeouts:
        """The agent's network limits (:class:`~manifests.limits.AgentLimits`) as timeouts."""
        return cls(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.read_timeout,
            pool=limits.read_timeout,
            total=limits.request_deadline,
        )

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


class TransientFailure(RegistryUnavailable):
    """One attempt failed in a way worth retrying; raised only when the caller retries itself."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, hint="the registry or the network failed; try again")
        self.retry_after = retry_after
        self.status = status


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (with or without a port, IPv6 in brackets)."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def header_int(response: httpx.Response, name: str) -> int | None:
    """A non-negative integer header (``Content-Length``), or ``None`` when absent or not one.

    Only ASCII digits, at most 19 of them (an int64): ``str.isdigit`` also accepts ``'²'``, which
    ``int`` refuses, and 5,000 digits exceed what ``int`` converts."""
    value = response.headers.get(name)
    if value is None or not (0 < len(value) <= 19) or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def read_capped(response: httpx.Response, cap: int, *, what: str) -> bytes:
    """Read a streamed response body, refusing more than ``cap`` bytes. Closes the response."""
    try:
        declared = header_int(response, "content-length")
        if declared is not None and declared > cap:
            raise PublishError(
                f"{what}: the registry announces {declared} bytes, more than the {cap}-byte cap"
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > cap:
                raise PublishError(f"{what}: the registry sent more than the {cap}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise TransientFailure(f"{what}: reading the response failed: {_describe(exc)}") from exc
    finally:
        response.close()


def _clip(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def join_url(base: httpx.URL, ref: str, *, what: str) -> httpx.URL:
    """``ref`` (a ``Location``, a ``Link`` target: bytes a registry chose) resolved against
    ``base``; a URL httpx cannot parse is the registry's error, not an exception of httpx."""
    try:
        return base.join(ref)
    except httpx.InvalidURL:
        raise RegistryError(f"{what}: the registry sent an invalid URL {_clip(ref)}") from None


RELEASE_LIMIT = 64 * 1024


def release(response: httpx.Response, *, limit: int = RELEASE_LIMIT) -> None:
    """Close a response whose body is not needed, first reading it when it is known to be short
    (a ``HEAD`` answer, or a ``Content-Length`` of at most ``limit``) so the connection is reused.
    Anything else, or a failure while reading, just closes it (the connection is then dropped)."""
    try:
        if not response.is_stream_consumed and not response.is_closed:
            length = header_int(response, "content-length")
            if response.request.method == "HEAD" or (length is not None and length <= limit):
                for _ in response.iter_raw():
                    pass
    except (httpx.HTTPError, httpx.StreamError):
        pass
    finally:
        response.close()


# The deadline of the request being sent or read on this thread (monotonic seconds).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "kiln_request_deadline", default=None
)


def _left(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` clamped to the current request's deadline; ``exc`` once it has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineNetworkStream:
    """An httpcore network stream whose reads and writes never wait past the request deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        data: bytes = self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        import httpcore

        return _DeadlineNetworkStream(
            self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """An httpcore network backend whose connections honour the request deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _DeadlineNetworkStream:
        import httpcore

        stream = self._inner.connect_tcp(
            host,
            port,
            timeout=_left(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineNetworkStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        import httpcore

        stream = self._inner.connect_unix_socket(
            path, timeout=_left(timeout, httpcore.ConnectTimeout), socket_options=socket_options
        )
        return _DeadlineNetworkStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _with_deadlines(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    """Install :class:`_DeadlineBackend` under an httpx transport's connection pool. httpx has no
    public hook for it; if its internals ever change, the deadline is still checked between body
    chunks and after the headers (:class:`_DeadlineTransport`), only less promptly."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None and not isinstance(backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


class _DeadlineStream(httpx.SyncByteStream):
    """A response body read under its request's deadline."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float, total: float) -> None:
        self._inner = inner
        self._deadline = deadline
        self._total = total

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            token = _DEADLINE.set(self._deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except httpx.TimeoutException as exc:
                raise _overdue(exc, self._deadline, self._total) from exc
            finally:
                _DEADLINE.reset(token)
            if time.monotonic() > self._deadline:
                raise _overdue(None, self._deadline, self._total)
            yield chunk

    def close(self) -> None:
        self._inner.close()


def _overdue(exc: httpx.TimeoutException | None, deadline: float, total: float) -> httpx.TimeoutException:
    if exc is not None and time.monotonic() < deadline:
        return exc  # an ordinary stall (the read timeout), not the deadline
    return httpx.ReadTimeout(f"no complete answer within the {total:g}s request deadline")


class _DeadlineTransport(httpx.BaseTransport):
    """Gives every request an overall deadline of ``total`` seconds: connect and headers run under
    it, and the response body is read under it (:class:`_DeadlineStream`)."""

    def __init__(self, inner: httpx.BaseTransport, total: float) -> None:
        self._inner = inner
        self._total = total

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self._total
        token = _DEADLINE.set(deadline)
        try:
            resp = self._inner.handle_request(request)
        except httpx.TimeoutException as exc:
            raise _overdue(exc, deadline, self._total) from exc
        finally:
            _DEADLINE.reset(token)
        if time.monotonic() > deadline:
            resp.close()
            raise _overdue(None, deadline, self._total)
        assert isinstance(resp.stream, httpx.SyncByteStream)  # noqa: S101 - a sync transport's body
        return httpx.Response(
            status_code=resp.status_code,
            headers=resp.headers,
            stream=_DeadlineStream(resp.stream, deadline, self._total),
            extensions=resp.extensions,
            request=request,
        )

    def close(self) -> None:
        self._inner.close()


def certs_dirs(registry: str, env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The ``certs.d`` directories that hold extra trust for ``registry`` (``HOST[:PORT]``)."""
    environ = os.environ if env is None else env
    override = environ.get("KILN_CERTS_D")
    roots = [Path(override)] if override else [Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")]
    return tuple(root / registry for root in roots if (root / registry).is_dir())


def _tls_verify(registry: str) -> ssl.SSLContext | bool:
    """``True`` (httpx's default CAs), or a context that also trusts the registry's certs.d."""
    dirs = certs_dirs(registry)
    if not dirs:
        return True
    ctx = httpx.create_ssl_context()
    for directory in dirs:
        for path in sorted(directory.iterdir()):
            if path.suffix == ".crt":
                ctx.load_verify_locations(cafile=str(path))
            elif path.suffix == ".cert":
                key = path.with_suffix(".key")
                if not key.is_file():
                    raise PublishError(
                        f"{path}: client certificate without its key {key.name}",
                        hint="docker's certs.d layout: NAME.cert beside NAME.key",
                    )
                ctx.load_cert_chain(str(path), str(key))
    return ctx


class _LazyTLSTransport(httpx.BaseTransport):
    """Plain ``http`` requests go to a transport that is never asked for TLS; ``https`` requests to
    a verifying one (``verify=True``, honouring ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx does,
    plus the registry's ``certs.d``), built on first use."""

    def __init__(self, *, limits: httpx.Limits, registry: str = "") -> None:
        self._registry = registry
        self._limits = limits
        # verify=False only spares building a CA store: TLS is never spoken through this one.
        self._plain = _with_deadlines(httpx.HTTPTransport(verify=False, limits=limits))
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def _tls_transport(self) -> httpx.HTTPTransport:
        with self._lock:
            if self._tls is None:
                try:
                    verify = _tls_verify(self._registry)
                    self._tls = _with_deadlines(httpx.HTTPTransport(verify=verify, limits=self._limits))
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    raise PublishError(
                        f"cannot load the CA certificates for TLS: {exc}",
                        hint="check SSL_CERT_FILE and SSL_CERT_DIR, or install ca-certificates",
                    ) from exc
            return self._tls

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return self._plain.handle_request(request)
        return self._tls_transport().handle_request(request)

    def close(self) -> None:
        self._plain.close()
        with self._lock:
            if self._tls is not None:
                self._tls.close()


def _query(params: Mapping[str, str] | list[tuple[str, str]] | None) -> httpx.QueryParams | None:
    if not params:
        return None
    return httpx.QueryParams(tuple(params) if isinstance(params, list) else params)


# What OpenSSL says when the server's first bytes are not a TLS record (an http server's answer):
# "wrong version number" (OpenSSL 1.1 and 3.0), "record layer failure"/"packet length too long"
# (3.2 and later), "http request" (a server that recognised our ClientHello as http).
_PLAIN_HTTP_SIGNS = ("wrong version number", "record layer failure", "packet length too long", "http request")


def _speaks_plain_http(exc: httpx.ConnectError) -> bool:
    text = str(exc).lower()
    return any(sign in text for sign in _PLAIN_HTTP_SIGNS)


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


@dataclass(slots=True)
class _AuthState:
    basic: bool = False
    bearer: tuple[str, str] | None = None  # (realm, service) once a Bearer challenge was seen
    lock: threading.Lock = field(default_factory=threading.Lock)


class Session:
    """HTTP to one registry. Thread-safe as far as httpx.Client is; the auth state has a lock."""

    def __init__(
        self,
        registry: str,
        *,
        client: httpx.Client | None = None,
        insecure: bool = False,
        credentials: Credentials | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if insecure:
            where = "the loopback registry" if is_loopback_host(registry) else "the registry"
            log.warning(
                "--insecure: talking plain http to %s %s: no TLS, so layers and credentials travel "
                "in the clear and anyone on the path can change them (only digests still protect you)",
                where,
                registry,
            )
        self.registry = registry
        self.insecure = insecure
        self.base_url = f"{'http' if insecure else 'https'}://{registry}"
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=self.timeouts.to_httpx(), transport=self._transport(), follow_redirects=False
        )
        self.tokens = TokenCache(clock=clock)
        self._auth = _AuthState()
        self._base = httpx.URL(self.base_url)  # parsed once: httpx's URL parsing is not free
        self._host = self._base.netloc

    def _transport(self) -> httpx.BaseTransport:
        transport: httpx.BaseTransport = _LazyTLSTransport(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20), registry=self.registry
        )
        if self.timeouts.total is not None:
            transport = _DeadlineTransport(transport, self.timeouts.total)
        return transport

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    # ----------------------------------------------------------------------------------------- URLs

    def url(self, path_or_url: str) -> httpx.URL:
        """Resolve a path or a registry-supplied ``Location`` against the base URL."""
        return join_url(self._base, path_or_url, what=self.registry)

    # ------------------------------------------------------------------------------------------ auth

    def _same_origin(self, url: httpx.URL) -> bool:
        return url.netloc == self._host and url.scheme == self._base.scheme

    def _auth_header(self, scopes: tuple[str, ...]) -> str | None:
        with self._auth.lock:
            basic, bearer = self._auth.basic, self._auth.bearer
        if basic and self.credentials is not None:
            return self.credentials.basic_header()
        if bearer is not None:
            realm, service = bearer
            tok = self.tokens.get(realm, service, scopes)
            tok_value = self._fetch_token(realm, service, scopes, ()) if tok is None else tok.value
            return f"Bearer {tok_value}"
        return None

    def _on_unauthorized(
        self, challenges: tuple[Challenge, ...], scopes: tuple[str, ...], body: bytes, *, sent_basic: bool
    ) -> None:
        """React to a 401: remember the scheme and obtain what it asks for, or raise AuthError."""
        by_scheme = {c.scheme.lower(): c for c in challenges}
        bearer = by_scheme.get("bearer")
        if bearer is not None and bearer.realm:
            service = bearer.service or ""
            with self._auth.lock:
                self._auth.bearer = (bearer.realm, service)
            self._fetch_token(bearer.realm, service, scopes, bearer.scopes)
            return
        if "basic" in by_scheme:
            if self.credentials is None or self.credentials.identity_token:
                raise registry_error(401, body, what=f"{self.registry}: no credentials for Basic auth")
            if sent_basic:
                raise registry_error(401, body, what=f"{self.registry}: credentials refused")
            with self._auth.lock:
                self._auth.basic = True
            return
        raise registry_error(401, body, what=f"{self.registry}: unsupported authentication challenge")

    def _fetch_token(
        self, realm: str, service: str, scopes: tuple[str, ...], challenge_scopes: tuple[str, ...]
    ) -> str:
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise AuthError(f"token realm {_clip(realm)} is not a valid URL") from None
        if realm_url.scheme not in ("https", "http"):
            raise AuthError(f"token realm {realm!r} is not an http(s) URL")
        plain_ok = realm_url.scheme == "https" or is_loopback_host(realm_url.netloc.decode("ascii"))
        wanted = tuple(sorted(set(scopes) | set(challenge_scopes)))
        creds = self.credentials
        headers: dict[str, str] = {}
        if creds is not None and not plain_ok:
            raise AuthError(
                f"refusing to send credentials to the plain-http token realm {realm}",
                hint="the token service must use https unless it is on loopback",
            )

        def attempt() -> httpx.Request:
            if creds is not None and creds.identity_token:
                form: dict[str, str] = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "client_id": "kiln",
                }
                if wanted:
                    form["scope"] = " ".join(wanted)
                return self.client.build_request("POST", realm_url, data=form)
            pairs: list[tuple[str, str]] = [("service", service)] if service else []
            pairs += [("scope", s) for s in wanted]
            params = httpx.QueryParams(tuple(pairs))
            if creds is not None:
                headers["Authorization"] = creds.basic_header()
            return self.client.build_request("GET", realm_url, params=params, headers=headers)

        resp = self._send_with_retries(attempt, what=f"token from {realm_url.host}", retry_transient=True)
        try:
            body = read_capped(resp, MAX_TOKEN_RESPONSE, what="token response")
        except TransientFailure:
            raise
        except PublishError as exc:  # larger than the cap: a hostile answer, not a network failure
            raise TokenAnswerError(exc.message) from None
        if resp.status_code != 200:
            err = registry_error(resp.status_code, body, what=f"token endpoint {realm_url.host}")
            raise AuthError(err.message, code=err.code, status=resp.status_code, hint=err.hint)
        token = parse_token_response(body, now=self.tokens.now())
        self.tokens.put(realm, service, scopes, token)
        return token.value

    # ------------------------------------------------------------------------------------- sending

    def backoff(self, retry: int, retry_after: float | None) -> None:
        self._sleep(self.retry.delay(retry, retry_after=retry_after, rng=self._rng))

    def _send_with_retries(
        self, build: Callable[[], httpx.Request], *, what: str, retry_transient: bool
    ) -> httpx.Response:
        """Send, retrying transient failures; returns the first non-retryable response, streamed."""
        attempts = self.retry.attempts if retry_transient else 1
        last: TransientFailure | None = None
        for n in range(attempts):
            if n:
                self.backoff(n - 1, last.retry_after if last else None)
            try:
                resp = self.client.send(build(), stream=True)
            except httpx.ConnectError as exc:
                if "certificate verify failed" in str(exc).lower():
                    # Retrying cannot make a certificate trusted: say where trust comes from.
                    raise RegistryUnavailable(
                        f"{what}: {self.registry}'s TLS certificate is not trusted: {_describe(exc)}",
                        hint=f"put its CA certificate in /etc/docker/certs.d/{self.registry}/ca.crt "
                        f"(or /etc/containers/certs.d/{self.registry}/, or $KILN_CERTS_D/{self.registry}/)",
                    ) from exc
                if _speaks_plain_http(exc) and not self.insecure:
                    raise PlainHttpRegistry(
                        f"{what}: {self.registry} answered the TLS handshake in plain http",
                        hint=f"pass --insecure to talk plain http to {self.registry} (no TLS: "
                        "only for a registry you trust on a network you trust)",
                    ) from exc
                last = TransientFailure(f"{what}: {_describe(exc)}")
                last.__cause__ = exc
                continue
            except httpx.HTTPError as exc:
                last = TransientFailure(f"{what}: {_describe(exc)}")
                last.__cause__ = exc
                continue
            except httpx.InvalidURL as exc:
                # httpx parses a redirect's Location (for ``next_request``) even when it does not
                # follow redirects: a Location it cannot parse is the registry's error.
                raise RegistryError(f"{what}: the registry answered with an invalid URL ({exc})") from None
            if resp.status_code in RETRYABLE_STATUS:
                body = read_capped(resp, MAX_ERROR_BODY, what=what)
                err = registry_error(resp.status_code, body, what=what)
                last = TransientFailure(
                    err.message,
                    retry_after=parse_retry_after(resp.headers.get("retry-after")),
                    status=resp.status_code,
                )
                continue
            return resp
        if last is None:  # pragma: no cover - the loop ran at least once
            raise AssertionError("no attempt was made")
        if retry_transient:
            raise RegistryUnavailable(
                f"{last.message} (gave up after {attempts} attempts)",
                hint="the registry or the network is failing; try again later",
            ) from last
        raise last

    def send(
        self,
        method: str,
        path_or_url: str | httpx.URL,
        *,
        scopes: Iterable[str] = (),
        what: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
        body: Body = None,
        retry_transient: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send one logical request; returns the streamed response whatever its status.

        ``body`` is bytes, or a factory returning a fresh iterator per attempt (set Content-Length
        in ``headers`` to avoid chunked transfer encoding). With ``retry_transient=False`` a
        transient failure raises :class:`TransientFailure` after one attempt.
        """
        url = path_or_url if isinstance(path_or_url, httpx.URL) else self.url(path_or_url)
        scope_t = tuple(sorted(set(scopes)))
        same_origin = self._same_origin(url)

        def build() -> httpx.Request:
            hdrs = dict(headers or {})
            if same_origin:
                auth = self._auth_header(scope_t)
                if auth is not None:
                    hdrs["Authorization"] = auth
            content: bytes | Iterator[bytes] | None = body() if callable(body) else body
            ext = {"timeout": timeout.as_dict()} if timeout is not None else None
            return self.client.build_request(
                method,
                url,
                headers=hdrs,
                params=_query(params),
                content=content,
                extensions=ext,
            )

        for auth_round in range(2):
            resp = self._send_with_retries(build, what=what, retry_transient=retry_transient)
            if resp.status_code != 401 or not same_origin:
                return resp
            body401 = read_capped(resp, MAX_ERROR_BODY, what=what)
            if auth_round == 1:
                why = "credentials refused" if self.credentials is not None else "no credentials configured"
                raise registry_error(401, body401, what=f"{what}: {why}")
            challenges = parse_challenges(resp.headers.get("www-authenticate", ""))
            sent = resp.request.headers.get("authorization", "")
            self._on_unauthorized(challenges, scope_t, body401, sent_basic=sent.startswith("Basic "))
        raise AssertionError("unreachable")  # pragma: no cover

    def expect(self, resp: httpx.Response, ok: Iterable[int], *, what: str) -> httpx.Response:
        """Return ``resp`` if its status is one of ``ok``; otherwise read its error and raise it."""
        if resp.status_code in set(ok):
            return resp
        body = read_capped(resp, MAX_ERROR_BODY, what=what)
        raise registry_error(resp.status_code, body, what=what)
