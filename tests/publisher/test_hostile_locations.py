"""``oci:`` locations with odd characters: parsed or refused as one InvalidReference, never later.

Attack: ``oci:DIR`` with a NUL byte in DIR (an agent config's ``source: "oci:/srv/a\\0b"``, or any
caller of ``main``) was accepted, and every file operation on it then raised ``ValueError:
embedded null byte``: ``kiln copy``/``pull`` answered "internal error".
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.cli import main
from manifests.errors import KilnError
from publisher.endpoint import LayoutLocation, parse_location
from publisher.errors import InvalidReference


@pytest.mark.parametrize(
    "text", ["oci:\x00", "oci:a\x00b", "oci:a\x00b:tag", "oci:a\x00b@sha256:" + "a" * 64]
)
def test_nul_in_a_layout_directory_is_an_invalid_reference(text: str) -> None:
    with pytest.raises(InvalidReference, match="NUL byte"):
        parse_location(text)


@pytest.mark.parametrize("verb", ["copy", "pull"])
def test_nul_in_a_layout_directory_is_a_clean_cli_error(tmp_path: Path, verb: str) -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(
            [verb, f"oci:{tmp_path}/a\x00b", f"oci:{tmp_path}/out" if verb == "copy" else str(tmp_path / "o")]
        )
    assert code != 0
    assert "internal error" not in err.getvalue()
    assert "NUL byte" in err.getvalue()


@settings(max_examples=300, deadline=None)
@given(body=st.text(max_size=40))
def test_fuzz_oci_locations(body: str) -> None:
    try:
        loc = parse_location("oci:" + body)
    except KilnError:
        return
    assert isinstance(loc, LayoutLocation)
    assert "\x00" not in str(loc.directory)
    assert str(loc.directory)
