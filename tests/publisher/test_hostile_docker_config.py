"""A hostile or damaged Docker client configuration: one AuthError, never a hang or a traceback.

Attacks: ``config.json`` replaced by a FIFO (reading it blocked ``kiln publish``/``pull`` and the
agent's registry source forever); a ``credHelpers`` name holding ``/`` (``shutil.which`` resolves
it relative to the working directory, so ``../../tmp/x`` named a program outside ``PATH``); and
every JSON shape at every field (hypothesis): the result is credentials, ``None`` or ``AuthError``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from publisher.auth import Credentials, credentials_from_docker_config
from publisher.errors import AuthError

REGISTRY = "registry.example:5000"


def _env(tmp_path: Path) -> dict[str, str]:
    return {"DOCKER_CONFIG": str(tmp_path), "PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}


def test_config_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "config.json")
    result: list[object] = []

    def read() -> None:
        try:
            result.append(credentials_from_docker_config(REGISTRY, env=_env(tmp_path)))
        except AuthError as exc:
            result.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading the Docker config hung"
    assert isinstance(result[0], AuthError)
    assert "is a FIFO" in str(result[0])


def test_config_that_is_a_link_to_a_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles-config.json"
    real.write_text(json.dumps({"auths": {REGISTRY: {"username": "u", "password": "p"}}}))
    (tmp_path / "config.json").symlink_to(real)
    creds = credentials_from_docker_config(REGISTRY, env=_env(tmp_path))
    assert creds is not None
    assert (creds.username, creds.password) == ("u", "p")


@pytest.mark.parametrize("helper", ["../../tmp/evil", "/bin/sh", "a/b"])
def test_credential_helper_name_with_a_slash_is_refused(tmp_path: Path, helper: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {REGISTRY: helper}}))
    with pytest.raises(AuthError, match="is not a plain name"):
        credentials_from_docker_config(REGISTRY, env=_env(tmp_path))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


_FIELDS: list[tuple[str, ...]] = [
    (),
    ("auths",),
    ("auths", REGISTRY),
    ("auths", REGISTRY, "auth"),
    ("auths", REGISTRY, "username"),
    ("auths", REGISTRY, "identitytoken"),
    ("credHelpers",),
    ("credsStore",),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_json)
def test_fuzz_docker_config_fields(tmp_path: Path, field: tuple[str, ...], value: Any) -> None:
    doc: Any = {"auths": {REGISTRY: {"auth": "dTpw"}}}
    if not field:
        doc = value
    else:
        node = doc
        for part in field[:-1]:
            node = node[part]
        node[field[-1]] = value
    (tmp_path / "config.json").write_text(json.dumps(doc))
    try:
        out = credentials_from_docker_config(REGISTRY, env=_env(tmp_path))
    except AuthError:
        return
    assert out is None or isinstance(out, Credentials)
