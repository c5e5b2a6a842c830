"""Registry credentials and the Bearer token flow.

Credentials come, in this order, from ``KILN_REGISTRY_USERNAME``/``KILN_REGISTRY_PASSWORD``, then
from the auth file podman, skopeo and buildah write (``$REGISTRY_AUTH_FILE``, else
``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``), then from the
Docker client's ``config.json`` (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``). Both
files have the same format: a ``credHelpers`` entry for the registry, the ``credsStore`` helper,
then ``auths``. Helpers are the ``docker-credential-<name>`` programs (``get``, the registry on
stdin, JSON on stdout).

Tokens: a ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` sends the client
to the realm for a token, with the registry credentials as Basic auth when it has some (or an
OAuth2 refresh-token POST for an ``identitytoken``). Tokens are cached per set of scopes until they
expire; the clock is passed in.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.bounded import JsonCaps, read_json
from manifests.errors import DocumentError, ParseError
from manifests.files import open_regular
from publisher.errors import AuthError, TokenAnswerError

__all__ = [
    "Credentials",
    "Challenge",
    "Token",
    "TokenCache",
    "parse_challenges",
    "repository_scope",
    "credentials_from_env",
    "credentials_from_docker_config",
    "credentials_from_containers_auth",
    "resolve_credentials",
    "parse_token_response",
    "MAX_TOKEN_RESPONSE",
]

MAX_TOKEN_RESPONSE = 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_HELPER_OUTPUT = 1024 * 1024
DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_LIFETIME = 24 * 3600.0  # a longer expires_in is clamped: a token is re-fetched at least daily
MAX_TOKEN_CHARS = 64 * 1024  # it is sent back in a header on every request
_TOKEN_CAPS = JsonCaps(max_bytes=MAX_TOKEN_RESPONSE, max_depth=8)
TOKEN_EXPIRY_MARGIN = 5.0
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A username and password, or an identity (refresh) token for the token endpoint."""

    username: str
    password: str = ""
    identity_token: str | None = None
    source: str = "explicit"

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r}, source={self.source!r})"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme and its parameters (names lower-cased)."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope")
        return tuple(scope.split(" ")) if scope else ()


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] not in ' \t,="':
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1  # opening quote
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """Parse a ``WWW-Authenticate`` value (RFC 9110 §11.6.1) into its challenges.

    Quoted values may contain commas (``scope="repository:a:pull,push"``). A malformed header gives
    the challenges parsed before the damage, never an exception.
    """
    challenges: list[Challenge] = []
    text = header[:8192]
    i = 0
    scheme: str | None = None
    params: dict[str, str] = {}
    try:
        while i < len(text):
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i += 1
                continue
            word, j = _read_token(text, i)
            if not word:
                break
            k = _skip_ws(text, j)
            if k < len(text) and text[k] == "=" and scheme is not None:
                k = _skip_ws(text, k + 1)
                if k < len(text) and text[k] == '"':
                    value, i = _read_quoted(text, k)
                else:
                    value, i = _read_token(text, k)
                params[word.lower()] = value
                continue
            if scheme is not None:
                challenges.append(Challenge(scheme=scheme, params=dict(params)))
            scheme, params, i = word, {}, j
    except ValueError:
        pass
    if scheme is not None:
        challenges.append(Challenge(scheme=scheme, params=dict(params)))
    return tuple(challenges)


def repository_scope(repository: str, actions: Iterable[str]) -> str:
    """``repository:<name>:<actions>`` with the actions in a stable order."""
    order = {"pull": 0, "push": 1, "delete": 2, "*": 3}
    acts = sorted(set(actions), key=lambda a: (order.get(a, 9), a))
    return f"repository:{repository}:{','.join(acts)}"


# ---------------------------------------------------------------------------------------- credentials


def credentials_from_env(env: Mapping[str, str]) -> Credentials | None:
    user = env.get("KILN_REGISTRY_USERNAME")
    password = env.get("KILN_REGISTRY_PASSWORD")
    if user is None and password is None:
        return None
    if not user or password is None:
        raise AuthError(
            "KILN_REGISTRY_USERNAME and KILN_REGISTRY_PASSWORD must be set together",
            hint="set both, or neither to use ~/.docker/config.json",
        )
    return Credentials(username=user, password=password, source="environment")


def _normalize_host(key: str) -> str:
    host = key
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.split("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return host


def _docker_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".docker" / "config.json"


def _run_helper(helper: str, registry: str, env: Mapping[str, str]) -> Credentials | None:
    import subprocess  # only for a configured helper: not every publish pays for it

    program = f"docker-credential-{helper}"
    if "/" in helper or "\0" in helper:  # shutil.which would take it as a path from the cwd
        raise AuthError(
            f"credential helper name {helper[:64]!r} is not a plain name",
            hint="credHelpers/credsStore name a docker-credential-NAME program on PATH",
        )
    exe = shutil.which(program, path=env.get("PATH"))
    if exe is None:
        raise AuthError(
            f"credential helper {program} is not installed",
            hint=f"install it, or remove {helper!r} from credHelpers/credsStore in the Docker config",
        )
    try:
        proc = subprocess.run(
            [exe, "get"],
            input=registry.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
            env=dict(env),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"credential helper {program} failed: {exc}") from exc
    out = proc.stdout[:MAX_HELPER_OUTPUT]
    if proc.returncode != 0:
        text = (out or proc.stderr[:4096]).decode("utf-8", "replace").strip()
        if "credentials not found" in text.lower():
            return None
        raise AuthError(f"credential helper {program} failed: {text or f'exit {proc.returncode}'}")
    try:
        doc = read_json(out, what=f"credential helper {program}", caps=JsonCaps(max_bytes=MAX_HELPER_OUTPUT))
    except ParseError as exc:
        raise AuthError(
            f"credential helper {program} printed something that is not JSON: {exc.message}"
        ) from None
    user = doc.get("Username") if isinstance(doc, dict) else None
    secret = doc.get("Secret") if isinstance(doc, dict) else None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise AuthError(f"credential helper {program} answered without Username and Secret")
    if user == "<token>":
        return Credentials(username="", identity_token=secret, source=program)
    return Credentials(username=user, password=secret, source=program)


def _from_auths_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    ident = entry.get("identitytoken")
    user = entry.get("username")
    password = entry.get("password")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthError(f"{where}: 'auth' is not base64 of user:password") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(f"{where}: 'auth' is not base64 of user:password")
    if isinstance(ident, str) and ident:
        return Credentials(username=user if isinstance(user, str) else "", identity_token=ident, source=where)
    if isinstance(user, str) and user and isinstance(password, str):
        return Credentials(username=user, password=password, source=where)
    return None


def _containers_auth_path(env: Mapping[str, str]) -> Path | None:
    """The auth file of podman/skopeo/buildah (containers-auth.json(5)), ``None`` if there is none."""
    explicit = env.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    candidates = []
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(Path(runtime) / "containers" / "auth.json")
    home = env.get("HOME") or str(Path.home())
    candidates.append(Path(home) / ".config" / "containers" / "auth.json")
    return next((p for p in candidates if p.is_file()), None)


def credentials_from_containers_auth(registry: str, *, env: Mapping[str, str]) -> Credentials | None:
    """Credentials for ``registry`` from podman/skopeo's auth file, or ``None``."""
    path = _containers_auth_path(env)
    if path is None:
        return None
    return _credentials_from_config(path, registry, env)


def credentials_from_docker_config(registry: str, *, env: Mapping[str, str]) -> Credentials | None:
    """Credentials for ``registry`` from the Docker client's configuration, or ``None``."""
    return _credentials_from_config(_docker_config_path(env), registry, env)


def _credentials_from_config(path: Path, registry: str, env: Mapping[str, str]) -> Credentials | None:
    try:
        with open_regular(path, follow=True) as fh:  # a FIFO there would block the read forever
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except DocumentError as exc:
        raise AuthError(exc.message, hint=exc.hint) from None
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise AuthError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = read_json(data, what=str(path), caps=JsonCaps(max_bytes=MAX_CONFIG_BYTES))
    except ParseError as exc:
        raise AuthError(exc.message, hint=exc.hint) from None
    if not isinstance(doc, dict):
        raise AuthError(f"{path}: expected a JSON object")
    host = _normalize_host(registry)
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normalize_host(key) == host and isinstance(helper, str) and helper:
                return _run_helper(helper, key, env)
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        found = _run_helper(store, registry, env)
        if found is not None:
            return found
    auths = doc.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if _normalize_host(key) == host:
                return _from_auths_entry(entry, f"{path}: auths[{key!r}]")
    return None


def resolve_credentials(registry: str, *, env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials kiln uses for ``registry``: the environment first, then podman/skopeo's
    auth file, then the Docker config."""
    environ = os.environ if env is None else env
    return (
        credentials_from_env(environ)
        or credentials_from_containers_auth(registry, env=environ)
        or credentials_from_docker_config(registry, env=environ)
    )


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    value: str
    expires_at: float
    refresh_token: str | None = None

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at})"


def parse_token_response(body: bytes, *, now: float) -> Token:
    """The token endpoint's JSON (``token`` or ``access_token``, ``expires_in``), read by the
    bounded reader; anything else is a :class:`TokenAnswerError` (reason ``parse``)."""
    if len(body) > MAX_TOKEN_RESPONSE:
        raise TokenAnswerError(f"token response is larger than {MAX_TOKEN_RESPONSE} bytes")
    try:
        doc = read_json(body, what="token response", caps=_TOKEN_CAPS)
    except ParseError as exc:
        raise TokenAnswerError(f"token endpoint answered something that is not JSON: {exc.message}") from None
    if not isinstance(doc, dict):
        raise TokenAnswerError("token endpoint answered something that is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenAnswerError("token endpoint answered without a token")
    if len(value) > MAX_TOKEN_CHARS or not value.isprintable() or not value.isascii():
        raise TokenAnswerError(
            f"token endpoint answered a token that is not printable ASCII (at most {MAX_TOKEN_CHARS} chars)"
        )
    expires_in = doc.get("expires_in")
    lifetime = (
        min(float(expires_in), MAX_TOKEN_LIFETIME)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
        else DEFAULT_TOKEN_LIFETIME
    )
    refresh = doc.get("refresh_token")
    return Token(
        value=value,
        expires_at=now + lifetime,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


class TokenCache:
    """Bearer tokens keyed by (realm, service, scopes), dropped a little before they expire.

    Thread-safe: several uploads share one cache.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, tuple[str, ...]], Token] = {}

    @staticmethod
    def key(realm: str, service: str, scopes: Iterable[str]) -> tuple[str, str, tuple[str, ...]]:
        return (realm, service, tuple(sorted(set(scopes))))

    def get(self, realm: str, service: str, scopes: Iterable[str]) -> Token | None:
        k = self.key(realm, service, scopes)
        with self._lock:
            tok = self._tokens.get(k)
            if tok is None:
                return None
            if self._clock() >= tok.expires_at - TOKEN_EXPIRY_MARGIN:
                del self._tokens[k]
                return None
            return tok

    def put(self, realm: str, service: str, scopes: Iterable[str], token: Token) -> None:
        with self._lock:
            self._tokens[self.key(realm, service, scopes)] = token

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)
