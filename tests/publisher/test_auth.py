"""Credentials (environment, Docker config, credential helpers), challenges, tokens."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.auth import (
    Challenge,
    Credentials,
    TokenCache,
    parse_challenges,
    parse_token_response,
    repository_scope,
    resolve_credentials,
)
from publisher.errors import AuthError


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"',
            [
                (
                    "Bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "reg",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="kiln test"', [("Basic", {"realm": "kiln test"})]),
        ("Basic realm=simple, charset=UTF-8", [("Basic", {"realm": "simple", "charset": "UTF-8"})]),
        (
            'Basic realm="a", Bearer realm="https://t", scope="x y"',
            [("Basic", {"realm": "a"}), ("Bearer", {"realm": "https://t", "scope": "x y"})],
        ),
        ('Bearer realm="esc\\"aped"', [("Bearer", {"realm": 'esc"aped'})]),
        ('Bearer REALM="r" , Service = "s"', [("Bearer", {"realm": "r", "service": "s"})]),
        ("Negotiate", [("Negotiate", {})]),
        ("", []),
        ('Bearer realm="unterminated', [("Bearer", {})]),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = parse_challenges(header)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_challenge_scopes() -> None:
    c = Challenge(scheme="Bearer", params={"scope": "repository:a:pull repository:b:pull"})
    assert c.scopes == ("repository:a:pull", "repository:b:pull")
    assert Challenge(scheme="Bearer", params={}).scopes == ()


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_parse_challenges_never_raises(header: str) -> None:
    for c in parse_challenges(header):
        assert c.scheme


def test_repository_scope_orders_actions() -> None:
    assert repository_scope("a/b", ["push", "pull", "push"]) == "repository:a/b:pull,push"
    assert repository_scope("a", ["delete"]) == "repository:a:delete"


def test_credentials_never_print_secrets() -> None:
    c = Credentials(username="u", password="hunter2", identity_token="tok")
    assert "hunter2" not in repr(c)
    assert "tok" not in repr(c)
    assert c.basic_header() == "Basic " + base64.b64encode(b"u:hunter2").decode()


# ------------------------------------------------------------------------------------------ config


def _config(tmp_path: Path, doc: object) -> dict[str, str]:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return {"DOCKER_CONFIG": str(tmp_path), "PATH": str(tmp_path / "bin")}


def _helper(tmp_path: Path, name: str, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_environment_wins(tmp_path: Path) -> None:
    env = _config(tmp_path, {"auths": {"r.example": {"auth": base64.b64encode(b"cfg:pw").decode()}}})
    env |= {"KILN_REGISTRY_USERNAME": "envuser", "KILN_REGISTRY_PASSWORD": "envpw"}
    creds = resolve_credentials("r.example", env=env)
    assert creds is not None
    assert (creds.username, creds.password, creds.source) == ("envuser", "envpw", "environment")


def test_environment_half_set_is_an_error() -> None:
    with pytest.raises(AuthError, match="must be set together"):
        resolve_credentials("r.example", env={"KILN_REGISTRY_USERNAME": "u"})


@pytest.mark.parametrize(
    ("key", "entry", "expected"),
    [
        (
            "r.example:5000",
            {"auth": base64.b64encode(b"u:p:with:colons").decode()},
            ("u", "p:with:colons", None),
        ),
        ("https://r.example:5000", {"username": "u2", "password": "p2"}, ("u2", "p2", None)),
        ("http://r.example:5000/v1/", {"identitytoken": "refresh"}, ("", "", "refresh")),
    ],
)
def test_auths(
    tmp_path: Path, key: str, entry: dict[str, str], expected: tuple[str, str, str | None]
) -> None:
    env = _config(tmp_path, {"auths": {"other.example": {"auth": "eDp5"}, key: entry}})
    creds = resolve_credentials("r.example:5000", env=env)
    assert creds is not None
    assert (creds.username, creds.password, creds.identity_token) == expected


def test_docker_hub_key(tmp_path: Path) -> None:
    env = _config(
        tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"h:p").decode()}}}
    )
    creds = resolve_credentials("docker.io", env=env)
    assert creds is not None
    assert creds.username == "h"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"auths": {"r.example": {"auth": "!!!"}}}, "'auth' is not base64 of user:password"),
        ({"auths": {"r.example": {"auth": base64.b64encode(b"nocolon").decode()}}}, "'auth' is not base64"),
        ([], "expected a JSON object"),
        (
            {"credHelpers": {"r.example": "missing"}},
            "credential helper docker-credential-missing is not installed",
        ),
    ],
)
def test_bad_config(tmp_path: Path, doc: object, message: str) -> None:
    env = _config(tmp_path, doc)
    with pytest.raises(AuthError) as err:
        resolve_credentials("r.example", env=env)
    assert message in err.value.message


def test_not_json_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(AuthError, match="not valid JSON"):
        resolve_credentials("r.example", env={"DOCKER_CONFIG": str(tmp_path)})


def test_no_config_no_credentials(tmp_path: Path) -> None:
    assert resolve_credentials("r.example", env={"DOCKER_CONFIG": str(tmp_path)}) is None
    env = _config(tmp_path, {"auths": {"other.example": {"auth": base64.b64encode(b"u:p").decode()}}})
    assert resolve_credentials("r.example", env=env) is None


def test_cred_helper_for_the_registry(tmp_path: Path) -> None:
    _helper(
        tmp_path,
        "kilntest",
        'read reg; [ "$1" = get ] || exit 3\n'
        'printf \'{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}\' "$reg"\n',
    )
    env = _config(
        tmp_path, {"credHelpers": {"r.example": "kilntest"}, "auths": {"r.example": {"auth": "eDp5"}}}
    )
    creds = resolve_credentials("r.example", env=env)
    assert creds is not None
    assert (creds.username, creds.password, creds.source) == (
        "helper-user",
        "helper-secret",
        "docker-credential-kilntest",
    )


def test_creds_store_identity_token_and_not_found(tmp_path: Path) -> None:
    _helper(
        tmp_path,
        "store",
        'read reg\nif [ "$reg" = known.example ]; then\n'
        '  echo \'{"Username":"<token>","Secret":"refresh-tok"}\'\nelse\n'
        "  echo 'credentials not found in native keychain'; exit 1\nfi\n",
    )
    env = _config(tmp_path, {"credsStore": "store"})
    creds = resolve_credentials("known.example", env=env)
    assert creds is not None
    assert creds.identity_token == "refresh-tok"
    assert resolve_credentials("unknown.example", env=env) is None


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("echo 'the keychain is locked' >&2; exit 1\n", "failed: the keychain is locked"),
        ("echo not json\n", "printed something that is not JSON"),
        ("echo '{\"Username\": 1}'\n", "answered without Username and Secret"),
    ],
)
def test_helper_failures(tmp_path: Path, script: str, message: str) -> None:
    _helper(tmp_path, "bad", script)
    env = _config(tmp_path, {"credHelpers": {"r.example": "bad"}})
    with pytest.raises(AuthError) as err:
        resolve_credentials("r.example", env=env)
    assert message in err.value.message


# ------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("body", "value", "expires_at"),
    [
        (b'{"token":"tok-secret","expires_in":300}', "tok-secret", 1300.0),
        (b'{"access_token":"access-secret"}', "access-secret", 1060.0),
        (b'{"token":"tok-secret","expires_in":-5}', "tok-secret", 1060.0),
        (b'{"token":"tok-secret","expires_in":true}', "tok-secret", 1060.0),
    ],
)
def test_token_response(body: bytes, value: str, expires_at: float) -> None:
    tok = parse_token_response(body, now=1000.0)
    assert (tok.value, tok.expires_at) == (value, expires_at)
    assert value not in repr(tok)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"token":""}', "without a token"),
        (b'{"token":' + b'"' + b"x" * (1024 * 1024) + b'"}', "larger than"),
    ],
)
def test_bad_token_response(body: bytes, message: str) -> None:
    with pytest.raises(AuthError) as err:
        parse_token_response(body, now=0)
    assert message in err.value.message


def test_token_cache_expires_with_margin() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("r", "s", ["b", "a", "a"], parse_token_response(b'{"token":"t","expires_in":60}', now=0))
    assert cache.get("r", "s", ["a", "b"]) is not None
    assert cache.get("r", "s", ["a"]) is None
    now[0] = 54.9
    assert cache.get("r", "s", ["b", "a"]) is not None
    now[0] = 55.0
    assert cache.get("r", "s", ["a", "b"]) is None
    assert len(cache) == 0
