"""``kiln boot``'s handling of the sealed part copies: whatever fails after they are opened (the
boot plan, the accelerator), every fd is closed again."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InstanceError
from agent.qemu import Accel
from agent.vmimage import VM_FILE
from kiln import cmd_boot
from kiln.cli import main
from manifests.vm import DiskLayout
from tests.agent.test_qemu import _verity_image
from tests.support import memfds


def test_sealed_fds_are_closed_when_the_accelerator_cannot_be_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _verity_image(tmp_path, layout=DiskLayout.PARTS)
    (tmp_path / VM_FILE).write_bytes(config.to_bytes())
    picked: list[str | None] = []

    def pick_accel(wanted: str | None = None) -> Accel:
        picked.append(wanted)
        raise InstanceError("no accelerator (test)")

    monkeypatch.setattr(cmd_boot, "pick_accel", pick_accel)
    before = memfds()
    assert main(["boot", str(tmp_path)]) == 1
    assert picked == [None]  # the parts were sealed and checked, then the accelerator failed
    assert "no accelerator (test)" in capsys.readouterr().err
    assert memfds() == before
