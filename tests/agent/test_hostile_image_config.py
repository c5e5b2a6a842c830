"""An image config of any shape: the bundle's readers answer or refuse with a KilnError.

Attack: ``config.User: "1:<5,000 digits>"`` raised ``ValueError`` (int() refuses 4,300+ digits)
out of :meth:`ImagePolicy.from_config`, an "internal" refusal instead of a refused image. A fuzz
test puts any JSON value (and a few hostile strings) at every field the bundle reads.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bundle import ImagePolicy, image_args, image_env
from manifests.errors import DocumentError, KilnError


@pytest.mark.parametrize("user", ["1:" + "9" * 5000, "9" * 5000, "9" * 11 + ":1", "1:" + "٣"])
def test_huge_or_odd_numeric_user_is_refused(user: str) -> None:
    with pytest.raises(DocumentError, match=r"config\.User"):
        ImagePolicy.from_config({"config": {"User": user}})


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = [
    ("config",),
    ("config", "User"),
    ("config", "Env"),
    ("config", "Entrypoint"),
    ("config", "Cmd"),
    ("config", "WorkingDir"),
    ("config", "Labels"),
    ("config", "Labels", "dev.kiln.writable"),
    ("config", "Labels", "dev.kiln.read-only"),
    ("config", "Labels", "dev.kiln.volumes"),
    ("config", "Labels", "dev.kiln.user"),
]
_STRINGS = st.sampled_from(
    ["0:0", "a:b", "1:" + "9" * 5000, "/a/../..", "x=y", "=", "", "\x00", "-1:-1", "true"]
)


@settings(max_examples=500, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_json | _STRINGS)
def test_fuzz_image_config_fields(field: tuple[str, ...], value: object) -> None:
    cfg: dict[str, Any] = {
        "config": {
            "User": "1000:1000",
            "Env": ["A=1"],
            "Entrypoint": ["/bin/x"],
            "Cmd": ["a"],
            "WorkingDir": "/",
            "Labels": {"dev.kiln.writable": "/tmp"},
        }
    }
    node: Any = cfg
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = value
    for read in (ImagePolicy.from_config, lambda c: image_env(c, {"B": "2"}), image_args):
        with contextlib.suppress(KilnError):
            read(cfg)
