from __future__ import annotations

import hashlib

import pytest

from manifests.digest import Digest
from manifests.errors import DocumentError


def test_a_trusted_digest_is_the_same_value_as_a_checked_one() -> None:
    hexdigest = hashlib.sha256(b"kiln").hexdigest()
    trusted, checked = Digest.trusted(hexdigest), Digest(hexdigest)
    assert trusted == checked
    assert hash(trusted) == hash(checked)
    assert str(trusted) == f"sha256:{hexdigest}"
    assert trusted.tag_form == f"sha256-{hexdigest}"
    assert {trusted: 1}[checked] == 1
    assert Digest.of(b"kiln") == checked
    with pytest.raises(AttributeError):
        trusted.hex = "0" * 64  # type: ignore[misc]  # frozen like any other


def test_an_untrusted_digest_is_still_checked() -> None:
    for bad in ("", "A" * 64, "0" * 63, "sha256:" + "0" * 64):
        with pytest.raises(DocumentError, match="not a sha256 hex digest"):
            Digest(bad)
