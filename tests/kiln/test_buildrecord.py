"""The warm-rebuild record (kiln.buildrecord): an unchanged rebuild is replayed, and every kind of
change to an input makes the next ``kiln build`` a real one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.buildrecord import InputRecorder, parse_request
from tests.builder.test_elf import HOST_LIBDIR, IS_X86_64_DEBIAN

REPO = Path(__file__).resolve().parents[2]
REPLAYED = "every input as recorded"

MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: rec
version: 1.0.0
contents:
  - tree: {src: rootfs, dst: /app}
  - files:
      - {src: extra.txt, dst: /etc/extra.txt}
entrypoint: [/app/a.txt]
layers: {strategy: single, max: 1}
compression: gzip
"""


def _settle() -> None:
    """Let the inputs' ctimes age past the racy window (a record is not written for a file that
    changed in the same clock tick as it was looked at)."""
    time.sleep(0.06)


class Project:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.manifest = root / "image.yaml"
        self.out = root / "out"
        self.cache = root / "cache"
        self.extra: list[str] = []

    def build(self, *extra: str) -> tuple[dict[str, object], bool]:
        """Build; the JSON result and whether the record was replayed."""
        argv = ["build", str(self.manifest), "-o", str(self.out), "--force", "--cache-dir", str(self.cache)]
        proc = kiln_process([*argv, *self.extra, *extra, "--json"])
        return json.loads(proc.stdout), REPLAYED in proc.stderr


def kiln_process(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``kiln ARGV`` in a process of its own, as users run it: a record holds the files of the
    modules the process loaded, and the test process has loaded (and its tests deleted) many."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Project:
    (tmp_path / "rootfs/sub").mkdir(parents=True)
    (tmp_path / "rootfs/a.txt").write_text("a\n")
    (tmp_path / "rootfs/sub/b.txt").write_text("b\n")
    (tmp_path / "extra.txt").write_text("extra\n")
    (tmp_path / "image.yaml").write_text(MANIFEST)
    _settle()
    return Project(tmp_path, capsys)


def _warm(project: Project) -> dict[str, object]:
    first, replayed = project.build()
    assert not replayed
    _settle()
    second, replayed = project.build()
    assert replayed, "an unchanged rebuild is replayed from the record"
    assert second == first
    return first


def test_unchanged_rebuild_is_replayed_with_the_same_result(project: Project) -> None:
    first = _warm(project)
    index = json.loads((project.out / "index.json").read_text())
    assert first["digest"] in json.dumps(index)
    assert list((project.cache / "fast").iterdir())


def _edit_tree_file(p: Project) -> None:
    (p.root / "rootfs/sub/b.txt").write_text("B\n")


def _add_tree_file(p: Project) -> None:
    (p.root / "rootfs/sub/new.txt").write_text("new\n")


def _remove_tree_file(p: Project) -> None:
    (p.root / "rootfs/a.txt").unlink()


def _edit_files_source(p: Project) -> None:
    (p.root / "extra.txt").write_text("other\n")


def _replace_files_source_same_content(p: Project) -> None:
    # Same bytes, new inode: the identity changes, so the build runs (and gives the same digest).
    (p.root / "extra.tmp").write_text("extra\n")
    os.replace(p.root / "extra.tmp", p.root / "extra.txt")


def _chmod_tree_file(p: Project) -> None:
    (p.root / "rootfs/a.txt").chmod(0o600)


def _edit_manifest(p: Project) -> None:
    p.manifest.write_text(MANIFEST.replace("version: 1.0.0", "version: 1.0.1"))


def _flag_epoch(p: Project) -> None:
    p.extra = ["--source-date-epoch", "1700000000"]


def _env_epoch(p: Project) -> None:
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"


def _flag_name(p: Project) -> None:
    p.extra = ["--name", "registry.example/rec:9"]


@pytest.mark.parametrize(
    ("change", "digest_changes"),
    [
        (_edit_tree_file, True),
        (_add_tree_file, True),
        (_remove_tree_file, True),
        (_edit_files_source, True),
        (_replace_files_source_same_content, False),
        (_chmod_tree_file, False),  # modes come from the manifest's rules; the file was looked at again
        (_edit_manifest, True),
        (_flag_epoch, True),
        (_env_epoch, True),
        (_flag_name, False),  # the name is in index.json, not in the image manifest
    ],
)
def test_any_change_to_an_input_makes_a_real_build(
    project: Project,
    change: Callable[[Project], None],
    digest_changes: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = _warm(project)
    change(project)
    _settle()
    after, replayed = project.build()
    assert not replayed
    assert (after["digest"] != first["digest"]) == digest_changes
    _settle()
    again, replayed = project.build()
    assert replayed, "the new build is recorded in turn"
    assert again == after


def test_a_changed_output_is_rebuilt(project: Project) -> None:
    first = _warm(project)
    blob = project.out / "blobs/sha256" / str(first["digest"]).removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes() + b" ")
    after, replayed = project.build()
    assert not replayed
    assert after == first
    assert (project.out / "blobs/sha256").is_dir()
    data = blob.read_bytes()
    assert data == data.rstrip(b" ") or not data.endswith(b"} ")  # the blob is whole again


def test_a_removed_output_is_rebuilt(project: Project) -> None:
    first = _warm(project)
    shutil.rmtree(project.out)
    after, replayed = project.build()
    assert not replayed
    assert after == first
    assert (project.out / "index.json").is_file()


def test_an_input_changed_within_the_racy_window_is_not_trusted(tmp_path: Path) -> None:
    # A window of an hour stands for "changed in the same clock tick", without timing the test.
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    with InputRecorder(skip=[], racy_ns=3600 * 10**9) as recorder, open(src, "rb") as fh:
        fh.read()
    assert recorder.refused is not None
    assert str(src) in recorder.refused
    with InputRecorder(skip=[], racy_ns=0) as recorder, open(src, "rb") as fh:
        fh.read()
    assert recorder.refused is None
    assert recorder.inputs[(str(src), True)] is not None


def test_a_program_run_during_the_build_refuses_a_record(tmp_path: Path) -> None:
    import subprocess

    with InputRecorder(skip=[]) as recorder:
        subprocess.run(["true"], check=True)
    assert recorder.refused is not None


def test_writes_and_skipped_directories_are_not_inputs(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/entry").write_text("c")
    with InputRecorder(skip=[str(tmp_path / "cache")], racy_ns=0) as recorder:
        (tmp_path / "written").write_text("w")
        (tmp_path / "cache/entry").read_text()
        os.listdir(tmp_path / "cache")
    assert recorder.inputs == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "m.yaml", "-o", "o"],  # no --force: the real path reports an existing output
        ["build", "m.yaml", "--force"],  # no --output: the default depends on the manifest's name
        ["build", "m.yaml", "-o", "o", "--force", "--no-cache"],
        ["build", "m.yaml", "-o", "o", "--force", "--offline"],
        ["build", "m.yaml", "-oo", "--force"],
        ["build", "m.yaml", "-o", "o", "--forc"],  # an abbreviation: argparse's to interpret
        ["build", "m.yaml", "-o", "o", "--force", "--format", "vm"],
        ["build", "m.yaml", "-o", "o", "-o", "p", "--force"],
        ["validate", "m.yaml", "-o", "o", "--force"],
        ["build", "m.yaml", "-o", "o", "--force", "--", "x"],
    ],
)
def test_command_lines_outside_the_fast_path(argv: list[str]) -> None:
    assert parse_request(argv) is None


def test_equivalent_spellings_share_a_record() -> None:
    a = parse_request(["-q", "build", "m.yaml", "--output=o", "--force", "--format", "oci"])
    b = parse_request(["build", "--format=oci", "-o", "o", "m.yaml", "--force", "--json"])
    assert a is not None
    assert b is not None
    assert a.record_path() == b.record_path()


# -- ELF closures ---------------------------------------------------------------------------------

CLOSURE_MANIFEST = """\
apiVersion: kiln.dev/v1
kind: Image
name: rec-closure
version: 1.0.0
contents:
  - closure: {{paths: [/usr/bin/true], sysroot: {sysroot}}}
entrypoint: [/usr/bin/true]
layers: {{strategy: single, max: 1}}
compression: gzip
"""


@pytest.fixture
def closure_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Project:
    if not IS_X86_64_DEBIAN:
        pytest.skip("needs an x86_64 Debian host C library")
    root = tmp_path / "sysroot"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copyfile(HOST_LIBDIR / name, lib / name)
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "usr/bin").mkdir()
    shutil.copy2("/usr/bin/true", root / "usr/bin/true")
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text("/opt/lib\n")  # searched before the default directories
    (root / "opt/lib").mkdir(parents=True)
    (tmp_path / "image.yaml").write_text(CLOSURE_MANIFEST.format(sysroot=root))
    _settle()
    return Project(tmp_path, capsys)


def test_a_changed_library_of_the_closure_makes_a_real_build(closure_project: Project) -> None:
    first = _warm(closure_project)
    libc = closure_project.root / "sysroot/usr/lib/x86_64-linux-gnu/libc.so.6"
    with open(libc, "ab") as fh:
        fh.write(b"\0" * 16)  # still a valid ELF file, other bytes
    after, replayed = closure_project.build()
    assert not replayed
    assert after["digest"] != first["digest"]


def test_a_library_installed_earlier_in_the_search_order_makes_a_real_build(closure_project: Project) -> None:
    first = _warm(closure_project)
    earlier = closure_project.root / "sysroot/opt/lib/libc.so.6"
    shutil.copyfile(HOST_LIBDIR / "libc.so.6", earlier)
    with open(earlier, "ab") as fh:
        fh.write(b"\0" * 16)
    after, replayed = closure_project.build()
    assert not replayed, "the closure would now take /opt/lib/libc.so.6"
    assert after["digest"] != first["digest"]


def test_a_record_holds_no_secret_and_only_its_owner_reads_it(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_PASSWORD", "s3cret")
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", "hunter2")
    _warm(project)
    records = list((project.cache / "fast").glob("*.json"))
    assert len(records) == 1
    data = records[0].read_bytes()
    assert b"s3cret" not in data
    assert b"hunter2" not in data
    assert records[0].stat().st_mode & 0o777 == 0o600
    assert (project.cache / "fast").stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("KILN_PASSWORD", "other")
    _, replayed = project.build()
    assert not replayed, "the environment is still part of the key, as a digest"


def test_a_directory_that_already_existed_is_not_made_by_the_command(tmp_path: Path) -> None:
    # builder/build.py does output.parent.mkdir(parents=True, exist_ok=True): with -o $PWD/out
    # the existing $PWD (a checkout, with kiln's own modules) must not become "made by this run".
    (tmp_path / "src.txt").write_text("x\n")
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src.txt").read_text()
    assert recorder.refused is None, recorder.refused
    assert recorder.inputs.get((str(tmp_path / "src.txt"), True)) is not None


def test_module_files_are_inputs_even_inside_a_directory_the_command_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import sys

    from kiln import buildrecord
    from kiln.buildrecord import stable_inputs

    made = tmp_path / "made"
    module = made / "rec_made_module.py"
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        made.mkdir()
        module.write_text("VALUE = 1\n")
        monkeypatch.syspath_prepend(str(made))
        importlib.invalidate_caches()
        importlib.import_module("rec_made_module")
    # Only this module's file: the test process has loaded (and other tests deleted) many others,
    # and one of them gone would rightly refuse the record; a kiln process loads only its own.
    loaded = sys.modules["rec_made_module"].__file__
    monkeypatch.setattr(buildrecord, "module_files", lambda: [loaded])
    try:
        inputs = stable_inputs(recorder)
    finally:
        del sys.modules["rec_made_module"]
    assert recorder.refused is None, recorder.refused
    assert inputs is not None
    assert [str(module), True] in [entry[:2] for entry in inputs]


def test_a_timestamp_in_whole_seconds_widens_the_racy_window_to_a_second(tmp_path: Path) -> None:
    # A file system with seconds resolution: the clock tick is a second, not the kernel's.
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    whole = time.time_ns() // 10**9 * 10**9  # within the last second, as such a file system stores it
    os.utime(src, ns=(whole, whole))
    with InputRecorder(skip=[], racy_ns=0) as recorder, open(src, "rb") as fh:
        fh.read()
    assert recorder.refused is not None
    assert str(src) in recorder.refused
    os.utime(src, ns=(whole - 5 * 10**9, whole - 5 * 10**9))
    with InputRecorder(skip=[], racy_ns=0) as recorder, open(src, "rb") as fh:
        fh.read()
    assert recorder.refused is None


def test_two_installs_of_kiln_do_not_share_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kiln

    request = parse_request(["build", "m.yaml", "-o", "o", "--force"])
    assert request is not None
    here = request.record_path()
    monkeypatch.setattr(kiln, "__file__", str(tmp_path / "other-checkout/kiln/__init__.py"))
    assert request.record_path() != here
    assert request.key()["code"] == str(tmp_path / "other-checkout/kiln")


def test_a_working_directory_gone_falls_back_to_the_real_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.buildrecord import replay

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert replay(["build", "m.yaml", "-o", "o", "--force"]) is None


@pytest.mark.parametrize(
    "damage", [{"json": [1]}, {"human": 5}, {"output": [5]}, {"output": {"a": 1}}, {"manifest": 3}]
)
def test_a_damaged_record_falls_back_to_the_real_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: dict[str, object]
) -> None:
    from kiln.buildrecord import replay, write_record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text("m\n")
    argv = ["build", "m.yaml", "-o", "o", "--force", "--cache-dir", str(tmp_path / "c"), "--json"]
    request = parse_request(argv)
    assert request is not None
    record = {"key": request.key(), "inputs": [], "manifest": "m\n", "output": [], "human": "h"}
    record |= {"json": {"digest": "d"}}
    write_record(request.record_path(), record)
    assert replay(argv) == 0, "the undamaged record is replayed"
    write_record(request.record_path(), record | damage)
    assert replay(argv) is None


def test_a_file_opened_relative_to_a_directory_fd_is_recorded_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.dpkg import DpkgIndex

    info = tmp_path / "sysroot/var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "pkg.list").write_text("/usr/bin/x\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        assert [p for p, _ in DpkgIndex(tmp_path / "sysroot")._lists()] == ["pkg"]
    paths = {path for path, _follow in recorder.inputs}
    assert str(info / "pkg.list") in paths
    assert str(elsewhere / "pkg.list") not in paths


def test_editing_kiln_in_a_checkout_that_builds_into_itself_makes_a_real_build(tmp_path: Path) -> None:
    # `python -m kiln build ex.yaml --force -o "$PWD/out"` from a checkout: the builder's
    # mkdir(parents=True, exist_ok=True) of $PWD must not hide kiln's own modules under $PWD.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "checkout"
    for package in ("kiln", "builder", "manifests", "publisher", "signing", "agent", "fleet"):
        shutil.copytree(repo / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "rootfs").mkdir()
    (checkout / "rootfs/a.txt").write_text("a\n")
    (checkout / "ex.yaml").write_text(
        MANIFEST.replace("  - files:\n      - {src: extra.txt, dst: /etc/extra.txt}\n", "")
    )
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(checkout)}

    def build() -> str:
        _settle()
        argv = [sys.executable, "-m", "kiln", "build", "ex.yaml", "--force", "-o", str(checkout / "out")]
        done = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, check=True)
        return done.stderr

    assert REPLAYED not in build()
    assert REPLAYED in build()
    with (checkout / "builder/build.py").open("a") as fh:
        fh.write("# edited\n")
    assert REPLAYED not in build(), "kiln's own code changed: the old result must not be replayed"


def test_records_from_before_the_owner_only_directory_are_removed(project: Project) -> None:
    fast = project.cache / "fast"
    fast.mkdir(parents=True)
    fast.chmod(0o755)
    legacy = fast / "0123456789abcdef.json"
    legacy.write_text('{"key": {"env": {"KILN_PASSWORD": "s3cret"}}}')
    legacy.chmod(0o644)
    _warm(project)
    assert not legacy.exists()
    assert fast.stat().st_mode & 0o777 == 0o700
    assert len(list(fast.glob("*.json"))) == 1


def test_too_many_inputs_refuse_a_record_and_stop_the_listening(tmp_path: Path) -> None:
    # A 100,000-file tree would be remembered path by path (45 MB) for a record that costs a stat
    # per input to check: past the cap the recorder forgets what it saw and leaves the hook.
    for i in range(12):
        (tmp_path / f"f{i}").write_text(str(i))
    with InputRecorder(skip=[], racy_ns=0, max_inputs=5) as recorder:
        for i in range(3):
            (tmp_path / f"f{i}").read_text()
        assert recorder.refused is None
        assert recorder in InputRecorder._active
        os.listdir(tmp_path)  # 12 more names
        assert recorder.refused is not None
        assert "more than 5 inputs" in recorder.refused
        assert recorder not in InputRecorder._active
        (tmp_path / "f11").read_text()
    assert recorder.inputs == {}


def test_a_refused_record_stops_the_listening_too(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        subprocess.run(["true"], check=True)
        assert recorder not in InputRecorder._active
        src.read_text()
    assert recorder.refused is not None
    assert recorder.inputs == {}


def test_threads_running_before_the_command_are_not_its_inputs(tmp_path: Path) -> None:
    # A leftover thread of the host process (here: one started before the recorder) connecting
    # or reading files is not the command's doing; a thread the command starts is.
    import socket
    import threading

    src = tmp_path / "theirs.txt"
    src.write_text("t")
    go, done = threading.Event(), threading.Event()

    def theirs() -> None:
        go.wait(10)
        src.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 9), timeout=1):
            pass
        done.set()

    before = threading.Thread(target=theirs, daemon=True)
    before.start()
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        go.set()
        assert done.wait(10)
        assert recorder.refused is None
        assert (str(src), True) not in recorder.inputs
        mine = threading.Thread(target=lambda: subprocess.run(["true"], check=True))
        mine.start()
        mine.join()
    before.join(5)
    assert recorder.refused == "the build used subprocess.Popen"


def test_an_open_of_a_listed_file_adds_nothing_but_a_listed_symlink_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook answers "a regular file its directory's listing covered" before anything else; a
    # symlink listed there is not one, and opening it must still record its target.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "plain").write_bytes(b"p")
    target = tmp_path / "outside"
    target.write_bytes(b"t")
    (tree / "link").symlink_to(target)
    monkeypatch.chdir(tmp_path)
    with InputRecorder(skip=[], racy_ns=0) as recorder:
        os.listdir("tree")
        listed = dict(recorder.inputs)
        with open("tree/plain", "rb"), open(tree / "plain", "rb"):
            pass
        assert recorder.inputs == listed  # relative or absolute: already covered
        with open("tree/link", "rb"):
            pass
    followed = recorder.inputs[(str(tree / "link"), True)]
    assert followed is not None
    assert followed[0] & 0o170000 == 0o100000  # the target's identity: a regular file
    assert recorder.refused is None


def test_a_relative_open_under_a_directory_fd_is_not_mistaken_for_a_listed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "name" relative to a dir_fd is not $PWD/name, even when $PWD/name was listed.
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd/name").write_bytes(b"here")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/name").write_bytes(b"there")
    monkeypatch.chdir(tmp_path / "cwd")
    dfd = os.open(tmp_path / "other", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with InputRecorder(skip=[], racy_ns=0) as recorder:
            os.listdir(os.getcwd())  # "$PWD/name" is now a listed regular file
            sys.audit("kiln.dir_fd", str(tmp_path / "other"))
            os.close(os.open("name", os.O_RDONLY, dir_fd=dfd))
            sys.audit("kiln.dir_fd", None)
    finally:
        os.close(dfd)
    assert (str(tmp_path / "other/name"), True) in recorder.inputs
