from __future__ import annotations

from pathlib import Path

import pytest

from manifests.errors import DocumentError
from manifests.layout import OCILayout


@pytest.mark.parametrize("damage", [b'{"manif', b"[]", b'{"schemaVersion": 2, "manifests": {}}', b"\xff\xfe"])
def test_a_damaged_index_json_is_named_by_its_path(tmp_path: Path, damage: bytes) -> None:
    layout = OCILayout.create(tmp_path / "lay")
    (layout.root / "index.json").write_bytes(damage)
    with pytest.raises(DocumentError) as exc:
        layout.index()
    assert str(exc.value).startswith(f"{layout.root / 'index.json'}: ")
