"""Image reference parsing: the distribution grammar, Docker Hub defaults, repository name rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.digest import Digest
from publisher.errors import InvalidReference
from publisher.reference import Reference, validate_repository

HEX = "a" * 64
D = Digest(HEX)


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("127.0.0.1:5000/kiln/app:v1", "127.0.0.1:5000", "kiln/app", "v1", None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/a/b/c@sha256:" + HEX, "localhost:5000", "a/b/c", None, D),
        ("reg.example/app:1.0@sha256:" + HEX, "reg.example", "app", "1.0", D),
        ("[::1]:5000/app:latest", "[::1]:5000", "app", "latest", None),
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("kiln/app", "docker.io", "kiln/app", None, None),
        ("docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("index.docker.io/kiln/app", "docker.io", "kiln/app", None, None),
        ("Registry/app", "Registry", "app", None, None),
        ("reg.example/a__b/c-d/e.f_g:T_1.x-y", "reg.example", "a__b/c-d/e.f_g", "T_1.x-y", None),
        ("reg.example/a---b", "reg.example", "a---b", None, None),
    ],
)
def test_valid(text: str, registry: str, repository: str, tag: str | None, digest: Digest | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid image reference ''"),
        (" app", "invalid image reference ' app'"),
        ("reg.example/App", "invalid repository name 'App'"),
        ("reg.example/a//b", "invalid repository name 'a//b'"),
        ("reg.example/-a", "invalid repository name '-a'"),
        ("reg.example/a_", "invalid repository name 'a_'"),
        ("reg.example/a___b", "invalid repository name 'a___b'"),
        ("reg.example/a..b", "invalid repository name 'a..b'"),
        ("reg.example/", "repository name is empty"),
        ("reg.example/app:", "invalid tag ''"),
        ("reg.example/app:.x", "invalid tag '.x'"),
        ("reg.example/app:" + "t" * 129, "invalid tag '" + "t" * 129 + "'"),
        ("reg.example/app@sha256:abc", "invalid digest in image reference"),
        ("reg.example/app@sha512:" + "a" * 128, "invalid digest in image reference"),
        ("reg-.example/app", "invalid registry host 'reg-.example'"),
        ("reg.example:99999/app", "invalid registry port in 'reg.example:99999'"),
        ("reg.example/" + "a" * 250, "is too long"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as err:
        Reference.parse(text)
    assert message in err.value.message


def test_ref_and_api_host() -> None:
    assert Reference.parse("busybox").ref == "latest"
    assert Reference.parse("busybox").api_host == "registry-1.docker.io"
    assert Reference.parse("r.example/a:t@sha256:" + HEX).ref == str(D)
    assert Reference.parse("r.example/a:t").ref == "t"
    assert Reference.parse("127.0.0.1:5000/a").api_host == "127.0.0.1:5000"


def test_validate_repository_length() -> None:
    assert validate_repository("a/" * 127 + "b") == "a/" * 127 + "b"
    with pytest.raises(InvalidReference, match="256 characters long"):
        validate_repository("a/" * 128)


_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,5}){0,2}", fullmatch=True)
_repo = st.lists(_component, min_size=1, max_size=4).map("/".join)
_host = st.sampled_from(["127.0.0.1:5000", "localhost", "reg.example", "reg.example:443", "[::1]:5000"])
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.binary(min_size=1, max_size=8).map(Digest.of)


@settings(max_examples=150)
@given(_host, _repo, st.none() | _tag, st.none() | _digest)
def test_round_trip(host: str, repo: str, tag: str | None, digest: Digest | None) -> None:
    ref = Reference(registry=host, repository=repo, tag=tag, digest=digest)
    assert Reference.parse(str(ref)) == ref


@settings(max_examples=200)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_is_refused_cleanly(text: str) -> None:
    problem = ""
    try:
        ref: Reference | None = Reference.parse(text)
    except InvalidReference as exc:
        ref, problem = None, exc.message
    if ref is None:
        assert problem
    else:
        assert Reference.parse(str(ref)) == ref
