"""An ``oci:DIR`` whose files are not files: every reader refuses cleanly, none hangs or follows.

Attack: whoever can write into a layout directory (a shared publish target, the agent's ``oci:``
source) replaces ``index.json``, ``oci-layout`` or a blob with a FIFO (an open for reading waits
forever for a writer: ``kiln copy``, ``pull``, ``publish`` and the agent's pull hung), a directory,
a link to ``/dev/zero`` (a read that never ends) or a link to a file outside the layout. Each is
refused with one clear error naming the path, by the CLI (exit 1, no traceback) and by the agent's
content store (a ``KilnError``, which the reconcile loop turns into a refusal).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from agent.store import ContentStore, LayoutSource
from kiln.cli import main
from manifests.errors import DocumentError
from manifests.files import open_regular, read_regular
from tests.agent.imagekit import BuiltImage, M, tar_bytes, write_image

_DEADLINE = 120.0  # generous: only a hang exceeds it


def _image(root: Path) -> BuiltImage:
    return write_image(root, [tar_bytes([M("etc/hello", data=b"hi\n")])])


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _link_to_host_file(path: Path) -> None:
    outside = path.parent.parent.parent.parent / "outside-the-layout"
    outside.write_bytes(b"a file outside the layout\n")
    path.symlink_to(outside)


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "link-to-dev-zero": (_link_to_dev_zero, "is a symbolic link, not a regular file"),
    "link-outside-the-layout": (_link_to_host_file, "is a symbolic link, not a regular file"),
}


def _target(img: BuiltImage, role: str) -> Path:
    root = img.layout.root
    if role in ("index.json", "oci-layout"):
        return root / role
    from manifests.oci import OCIManifest

    man = OCIManifest.from_bytes(img.manifest)
    digest = {"manifest": img.digest, "config": man.config.digest, "layer": man.layers[0].digest}[role]
    return img.layout.blob_path(digest)


def _hostile(tmp_path: Path, role: str, kind: str) -> tuple[BuiltImage, Path]:
    img = _image(tmp_path / "box" / "src")
    target = _target(img, role)
    target.unlink()
    KINDS[kind][0](target)
    return img, target


def _run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in a thread, so that a hang fails the test instead of blocking the run."""
    result: list[int] = []
    err = io.StringIO()

    def target() -> None:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            result.append(main(argv))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(_DEADLINE)
    assert not t.is_alive(), f"kiln {' '.join(argv)} hung"
    return result[0], err.getvalue()


ROLES_CLI = ["index.json", "oci-layout", "manifest", "config", "layer"]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("role", ROLES_CLI)
@pytest.mark.parametrize("verb", ["copy", "pull", "publish"])
def test_hostile_layout_file_is_refused_by_the_cli(tmp_path: Path, verb: str, role: str, kind: str) -> None:
    img, target = _hostile(tmp_path, role, kind)
    src = f"oci:{img.layout.root}"
    out = tmp_path / "out"
    argv = {
        "copy": ["copy", src, f"oci:{out}"],
        "pull": ["pull", src, str(out)],
        "publish": ["publish", str(img.layout.root), f"oci:{out}"],
    }[verb]
    code, err = _run(argv)
    assert code == 1, err
    assert "internal error" not in err
    assert "Traceback" not in err
    assert str(target) in err, err
    assert KINDS[kind][1] in err, err


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("role", ["manifest", "config", "layer"])
def test_hostile_layout_file_is_refused_by_the_agent_store(tmp_path: Path, role: str, kind: str) -> None:
    img, target = _hostile(tmp_path, role, kind)
    store = ContentStore(tmp_path / "state")
    result: list[BaseException | None] = []

    def pull() -> None:
        try:
            store.pull_image(LayoutSource(img.layout), img.digest)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=pull, daemon=True)
    t.start()
    t.join(_DEADLINE)
    assert not t.is_alive(), "the agent's pull hung"
    assert isinstance(result[0], DocumentError), repr(result[0])
    assert str(target) in str(result[0])
    assert KINDS[kind][1] in str(result[0])
    assert not any(p.name.startswith(".ingest-") for p in store.blob_dir.iterdir())


def test_a_damaged_store_blob_is_a_clean_error(tmp_path: Path) -> None:
    img = _image(tmp_path / "src")
    store = ContentStore(tmp_path / "state")
    store.pull_image(LayoutSource(img.layout), img.digest)
    blob = store.path(img.digest)
    os.chmod(blob.parent, 0o700)
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(DocumentError, match="is a FIFO"):
        store.read(img.digest)


def test_open_regular_follows_a_link_only_when_asked(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with open_regular(link, follow=True) as fh:
        assert fh.read() == b"x"
    with pytest.raises(DocumentError, match="symbolic link"):
        open_regular(link)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
    with pytest.raises(DocumentError, match="larger than the 0-byte cap"):
        read_regular(real, 0)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DocumentError, match="is a FIFO"):
        open_regular(fifo, follow=True)
