"""Image manifests: valid documents (YAML and TOML alike) and every invalid one with its exact message."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.errors import ManifestError
from manifests.image import (
    Accounts,
    ClosureSource,
    DirSource,
    ExecCheck,
    FileSpec,
    FilesSource,
    HttpCheck,
    ImageManifest,
    LayerPolicy,
    LayerStrategy,
    Port,
    SymlinkSource,
    TcpCheck,
    TreeSource,
)
from manifests.image import (
    HealthCheck as Health,
)
from manifests.image_parse import load_image_manifest, parse_image_manifest, parse_mode
from manifests.mediatypes import Compression
from manifests.oci import Platform

DATA = Path(__file__).resolve().parent.parent / "data" / "manifests"

HEAD = "apiVersion: kiln.dev/v1\nkind: Image\nname: hello\nversion: 1.0.0\n"  # lines 1-4
RUN = "contents:\n  - closure: {paths: [/bin/x]}\nentrypoint: [/bin/x]\n"  # lines 5-7
TOML_HEAD = 'apiVersion = "kiln.dev/v1"\nkind = "Image"\nname = "hello"\nversion = "1.0.0"\n'


def _parse(text: str, fmt: str = "yaml", source: str | None = None) -> ImageManifest:
    return parse_image_manifest(text.encode(), source=source or f"m.{fmt}", base_dir=Path("/base"), fmt=fmt)


def _problems(text: str, fmt: str = "yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        _parse(text, fmt)
    return str(info.value).splitlines()


def _same(a: ImageManifest, b: ImageManifest) -> bool:
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


# --------------------------------------------------------------------------------------------
# Valid documents


HELLO_WEB = ImageManifest(
    name="hello-web",
    version="1.2.0",
    platform=Platform(os="linux", architecture="amd64"),
    contents=(
        FilesSource(
            files=(
                FileSpec(src="app/", dst="/app/", mode=0o644, dirmode=0o755, uid=0, gid=0),
                FileSpec(src="bin/start.sh", dst="/usr/local/bin/start", mode=0o755),
            )
        ),
        ClosureSource(paths=("/usr/bin/python3.11",), sysroot="/"),
        TreeSource(
            src="/usr/lib/python3.11",
            dst="/usr/lib/python3.11",
            include=("**/*.py",),
            exclude=("**/test/**", "**/__pycache__/**"),
        ),
        SymlinkSource(path="/usr/bin/python3", target="python3.11"),
        DirSource(path="/data", mode=0o700, uid=65532, gid=65532),
    ),
    accounts=Accounts(user="app", uid=65532, gid=65532, group="app", home="/nonexistent"),
    entrypoint=("/usr/bin/python3", "/app/server.py"),
    cmd=(),
    env=(("LANG", "C.UTF-8"), ("PYTHONDONTWRITEBYTECODE", "1")),
    workdir="/app",
    ports=(Port(number=8080, protocol="tcp"), Port(number=9090, protocol="tcp")),
    writable=("/tmp",),
    volumes=("/data",),
    health=Health(check=HttpCheck(port=8080, path="/healthz"), interval=2.0, timeout=1.0, retries=3),
    labels=(("org.opencontainers.image.source", "https://example.invalid/hello"),),
    layers=LayerPolicy(strategy=LayerStrategy.AUTO, max=8),
    compression=Compression.ZSTD,
    compression_level=9,
)


def test_golden_yaml_and_toml_load_to_the_same_manifest() -> None:
    from_yaml = load_image_manifest(DATA / "hello-web.yaml")
    from_toml = load_image_manifest(DATA / "hello-web.toml")
    expected = dataclasses.replace(HELLO_WEB, base_dir=DATA)
    assert from_yaml == dataclasses.replace(expected, source=str(DATA / "hello-web.yaml"))
    assert from_toml == dataclasses.replace(expected, source=str(DATA / "hello-web.toml"))


def test_golden_minimal() -> None:
    m = load_image_manifest(DATA / "minimal.yaml")
    assert m == ImageManifest(
        name="tools/hello",
        version="0.1.0-rc.1+build.7",
        platform=Platform(),
        contents=(ClosureSource(paths=("/usr/bin/hello",)),),
        entrypoint=("/usr/bin/hello",),
        source=str(DATA / "minimal.yaml"),
        base_dir=DATA,
    )
    assert m.accounts is None
    assert m.compression is Compression.GZIP
    assert m.compression_level is None
    assert m.layers == LayerPolicy()


VALID = [
    (
        "defaults",
        HEAD + RUN,
        TOML_HEAD + 'entrypoint = ["/bin/x"]\n[[contents]]\nclosure = {paths = ["/bin/x"]}\n',
        ImageManifest(
            name="hello",
            version="1.0.0",
            platform=Platform(),
            contents=(ClosureSource(paths=("/bin/x",)),),
            entrypoint=("/bin/x",),
        ),
    ),
    (
        "paths are normalized",
        HEAD
        + "contents:\n"
        + "  - files: [{src: ./app//, dst: //srv/./app/}, {src: ../shared/x.conf, dst: /etc//x.conf}]\n"
        + "  - tree: {src: vendor/./lib/, dst: /opt/lib/, exclude: ['*.pyc']}\n"
        + "  - symlink: {path: /usr//bin/py, target: ../lib/py}\n"
        + "  - dir: {path: /var/./lib/app/}\n"
        + "cmd: [serve]\nworkdir: /srv//app/\nwritable: [/tmp/, /var/tmp/.]\nvolumes: [/var/lib//app]\n",
        TOML_HEAD
        + 'cmd = ["serve"]\nworkdir = "/srv//app/"\nwritable = ["/tmp/", "/var/tmp/."]\n'
        + 'volumes = ["/var/lib//app"]\n'
        + "[[contents]]\n"
        + 'files = [{src = "./app//", dst = "//srv/./app/"}, {src = "../shared/x.conf", dst = '
        + '"/etc//x.conf"}]\n'
        + "[[contents]]\n"
        + "tree = {src = 'vendor/./lib/', dst = '/opt/lib/', exclude = ['*.pyc']}\n"
        + "[[contents]]\nsymlink.path = '/usr//bin/py'\nsymlink.target = '../lib/py'\n"
        + "[[contents]]\n[contents.dir]\npath = '/var/./lib/app/'\n",
        ImageManifest(
            name="hello",
            version="1.0.0",
            platform=Platform(),
            contents=(
                FilesSource(
                    files=(
                        FileSpec(src="app/", dst="/srv/app/"),
                        FileSpec(src="../shared/x.conf", dst="/etc/x.conf"),
                    )
                ),
                TreeSource(src="vendor/lib", dst="/opt/lib", exclude=("*.pyc",)),
                SymlinkSource(path="/usr/bin/py", target="../lib/py"),
                DirSource(path="/var/lib/app"),
            ),
            cmd=("serve",),
            workdir="/srv/app",
            writable=("/tmp", "/var/tmp"),
            volumes=("/var/lib/app",),
        ),
    ),
    (
        "checks, ports, compression and layers",
        HEAD
        + RUN
        + "platform: linux/arm64/v8\n"
        + "accounts: {user: svc, uid: 1000, gid: 0}\n"
        + "ports: [53/udp, 53/tcp, 443]\n"
        + "health: {exec: {command: [/bin/check, --quick]}, interval: 1m30s, timeout: 1.5s, retries: 10}\n"
        + "layers: {strategy: per-source, max: 127}\n"
        + "compression: none\n"
        + "env: {B: b, A: a}\n"
        + "labels: {z: '1', a: ''}\n",
        TOML_HEAD
        + 'entrypoint = ["/bin/x"]\nplatform = "linux/arm64/v8"\nports = ["53/udp", "53/tcp", 443]\n'
        + 'compression = "none"\n'
        + "[[contents]]\nclosure.paths = ['/bin/x']\n"
        + "[accounts]\nuser = 'svc'\nuid = 1000\ngid = 0\n"
        + "[health]\nexec = {command = ['/bin/check', '--quick']}\ninterval = '1m30s'\ntimeout = '1.5s'\n"
        + "retries = 10\n"
        + "[layers]\nstrategy = 'per-source'\nmax = 127\n"
        + "[env]\nB = 'b'\nA = 'a'\n"
        + "[labels]\nz = '1'\na = ''\n",
        ImageManifest(
            name="hello",
            version="1.0.0",
            platform=Platform(os="linux", architecture="arm64", variant="v8"),
            contents=(ClosureSource(paths=("/bin/x",)),),
            accounts=Accounts(user="svc", uid=1000, gid=0),
            entrypoint=("/bin/x",),
            ports=(Port(number=53, protocol="udp"), Port(number=53), Port(number=443)),
            health=Health(
                check=ExecCheck(command=("/bin/check", "--quick")), interval=90.0, timeout=1.5, retries=10
            ),
            layers=LayerPolicy(strategy=LayerStrategy.PER_SOURCE, max=127),
            compression=Compression.NONE,
            env=(("A", "a"), ("B", "b")),
            labels=(("a", ""), ("z", "1")),
        ),
    ),
    (
        "tcp check, gzip level, identical dirs, overlapping trees",
        HEAD
        + "contents:\n"
        + "  - dir: {path: /srv, mode: '0750', uid: 10}\n"
        + "  - tree: {src: /usr/share/zoneinfo, dst: /srv}\n"
        + "  - dir: {path: /srv, mode: '0750', uid: 10}\n"
        + "  - files: [{src: site/, dst: /srv/, dirmode: '2775'}]\n"
        + "  - closure: {paths: [/usr/bin/env]}\n"
        + "  - closure: {paths: [/usr/bin/env, '/usr/lib/*/libc.so.6'], sysroot: /opt/root/}\n"
        + "entrypoint: [/usr/bin/env]\n"
        + "health: {tcp: {port: 5432}}\n"
        + "compression: {type: gzip, level: 0}\n",
        TOML_HEAD
        + 'entrypoint = ["/usr/bin/env"]\n'
        + "[[contents]]\ndir = {path = '/srv', mode = '0750', uid = 10}\n"
        + "[[contents]]\ntree = {src = '/usr/share/zoneinfo', dst = '/srv'}\n"
        + "[[contents]]\ndir = {path = '/srv', mode = '0750', uid = 10}\n"
        + "[[contents]]\n[[contents.files]]\nsrc = 'site/'\ndst = '/srv/'\ndirmode = '2775'\n"
        + "[[contents]]\nclosure = {paths = ['/usr/bin/env']}\n"
        + "[[contents]]\nclosure = {paths = ['/usr/bin/env', '/usr/lib/*/libc.so.6'], sysroot = "
        + "'/opt/root/'}\n"
        + "[health.tcp]\nport = 5432\n"
        + "[compression]\ntype = 'gzip'\nlevel = 0\n",
        ImageManifest(
            name="hello",
            version="1.0.0",
            platform=Platform(),
            contents=(
                DirSource(path="/srv", mode=0o750, uid=10),
                TreeSource(src="/usr/share/zoneinfo", dst="/srv"),
                DirSource(path="/srv", mode=0o750, uid=10),
                FilesSource(files=(FileSpec(src="site/", dst="/srv/", dirmode=0o2775),)),
                ClosureSource(paths=("/usr/bin/env",)),
                ClosureSource(paths=("/usr/bin/env", "/usr/lib/*/libc.so.6"), sysroot="/opt/root"),
            ),
            entrypoint=("/usr/bin/env",),
            health=Health(check=TcpCheck(port=5432)),
            compression=Compression.GZIP,
            compression_level=0,
        ),
    ),
]


@pytest.mark.parametrize(
    ("yaml_text", "toml_text", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID]
)
def test_valid_documents_in_yaml_and_toml(yaml_text: str, toml_text: str, expected: ImageManifest) -> None:
    from_yaml = _parse(yaml_text, "yaml", source="same")
    from_toml = _parse(toml_text, "toml", source="same")
    expected = dataclasses.replace(expected, source="same", base_dir=Path("/base"))
    assert from_yaml == expected
    assert from_toml == expected


def test_load_image_manifest_sets_source_and_base_dir(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "hello.yml"
    path.parent.mkdir()
    path.write_text(HEAD + RUN)
    m = load_image_manifest(path)
    assert m.source == str(path)
    assert m.base_dir == path.parent


@pytest.mark.parametrize(
    ("text", "mode"),
    [("644", 0o644), ("0644", 0o644), ("0755", 0o755), ("04755", 0o4755), ("7777", 0o7777), ("00644", 0o644)],
)
def test_parse_mode(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "64", "0o644", "0999", "17777", "000644", "rwxr-xr-x", " 644", "+644"])
def test_parse_mode_refuses(text: str) -> None:
    assert parse_mode(text) is None


# --------------------------------------------------------------------------------------------
# Invalid documents, each with its exact full text


INVALID = [
    (
        "identity",
        "apiVersion: kiln.dev/v2\nkind: Release\nname: Hello\nversion: '1.2'\n" + RUN,
        [
            "m.yaml:1:1: apiVersion: unsupported apiVersion 'kiln.dev/v2' (expected 'kiln.dev/v1')",
            "m.yaml:2:1: kind: wrong kind 'Release' (expected 'Image')",
            "m.yaml:3:1: name: invalid image name 'Hello' (names are lowercase: did you mean 'hello'?)",
            "m.yaml:4:1: version: invalid version '1.2' (use semantic versioning, e.g. 1.2.0 or 1.2.0-rc.1)",
        ],
    ),
    (
        "unquoted version number",
        "apiVersion: kiln.dev/v1\nkind: Image\nname: a/b\nversion: 1.2\n" + RUN,
        ['m.yaml:4:1: version: expected a string, got number (quote it: version: "1.2")'],
    ),
    (
        "bad name shapes",
        "apiVersion: kiln.dev/v1\nkind: Image\nname: -a//b_\nversion: v1.0.0\n" + RUN,
        [
            "m.yaml:3:1: name: invalid image name '-a//b_' "
            "(lowercase letters and digits, separated by '.', '_' or '-'; '/' between components)",
            "m.yaml:4:1: version: invalid version 'v1.0.0' (use semantic versioning, e.g. 1.2.0 or "
            "1.2.0-rc.1)",
        ],
    ),
    (
        "too long",
        f"apiVersion: kiln.dev/v1\nkind: Image\nname: {'a' * 256}\nversion: 1.0.0-{'x' * 123}\n" + RUN,
        [
            "m.yaml:3:1: name: longer than 255 characters (image names are at most 255 characters)",
            "m.yaml:4:1: version: longer than 128 characters (the version becomes an OCI tag)",
        ],
    ),
    (
        "missing everything",
        "platform: linux/amd64\n",
        [
            "m.yaml:1:1: apiVersion: missing required key",
            "m.yaml:1:1: kind: missing required key",
            "m.yaml:1:1: name: missing required key",
            "m.yaml:1:1: version: missing required key",
            "m.yaml:1:1: contents: missing required key",
            "m.yaml:1:1: entrypoint: nothing to run: entrypoint and cmd are both empty "
            "(set entrypoint to the program the image starts)",
        ],
    ),
    (
        "unknown top-level keys",
        HEAD + RUN + "extra: 1\nversoin: 2\n",
        [
            "m.yaml:8:1: extra: unknown key (expected one of: apiVersion, kind, name, version, contents, "
            "platform, platforms, accounts, entrypoint, cmd, env, workdir, ports, writable, volumes, health, "
            "labels, layers, compression, vm, python)",
            "m.yaml:9:1: versoin: unknown key (did you mean 'version'?)",
        ],
    ),
    (
        "architecture alias",
        HEAD + "platform: linux/x86_64\n" + RUN,
        ["m.yaml:5:1: platform: unknown architecture 'x86_64' (did you mean 'amd64'?)"],
    ),
    (
        "operating system and variant",
        HEAD + "platform: windows/amd64/x\n" + RUN,
        [
            "m.yaml:5:1: platform: unsupported operating system 'windows' (kiln builds linux images)",
            "m.yaml:5:1: platform: invalid variant 'x' (variants look like v7 or v8)",
        ],
    ),
    (
        "platform shape",
        HEAD + "platform: linux\n" + RUN,
        [
            "m.yaml:5:1: platform: invalid platform 'linux' (write os/architecture[/variant], e.g. "
            "linux/amd64)"
        ],
    ),
    (
        "empty contents",
        HEAD + "contents: []\nentrypoint: [/bin/x]\n",
        [
            "m.yaml:5:1: contents: must not be empty "
            "(list what goes into the image: files, closure, tree, symlink, dir, debian)"
        ],
    ),
    (
        "contents is a mapping",
        HEAD + "contents: {files: []}\nentrypoint: [/bin/x]\n",
        ["m.yaml:5:1: contents: expected a list, got mapping"],
    ),
    (
        "files entries",
        HEAD
        + "contents:\n"
        + "  - files:\n"
        + "      - {src: app/, dst: /app, mode: 0644}\n"
        + "      - {src: a.txt, dst: /etc/, dirmode: '0755'}\n"
        + "      - {src: /abs, dst: rel/x}\n"
        + "      - {src: b, dst: /x/../y, mode: '0999', uid: -1, gid: '0'}\n"
        + "      - {srcc: c, dst: /c}\n"
        + "      - just-a-string\n"
        + "  - files: {src: a, dst: /a}\n"
        + "  - files: []\n"
        + "entrypoint: [/bin/x]\n",
        [
            "m.yaml:7:21: contents[0].files[0].dst: must end in '/' when src is a directory (ends in '/') "
            "(write '/app/')",
            'm.yaml:7:32: contents[0].files[0].mode: ambiguous unquoted mode (quote it: mode: "0644")',
            "m.yaml:8:22: contents[0].files[1].dst: ends in '/' but src is a file "
            "(write the full path: '/etc/a.txt')",
            "m.yaml:8:34: contents[0].files[1].dirmode: applies only to directory copies "
            "(end src in '/' to copy a directory, or remove dirmode)",
            "m.yaml:9:10: contents[0].files[2].src: must be relative to the manifest's directory "
            "(use a tree item to copy from an absolute host path)",
            "m.yaml:9:21: contents[0].files[2].dst: must be an absolute path (write '/rel/x')",
            "m.yaml:10:18: contents[0].files[3].dst: must not contain '..' (write the path it leads to)",
            "m.yaml:10:32: contents[0].files[3].mode: invalid mode '0999' "
            '(write an octal string such as "0644" or "0755")',
            "m.yaml:10:46: contents[0].files[3].uid: out of range (0 to 4294967294)",
            "m.yaml:10:55: contents[0].files[3].gid: expected an integer, got string",
            "m.yaml:11:9: contents[0].files[4].src: missing required key",
            "m.yaml:11:10: contents[0].files[4].srcc: unknown key (did you mean 'src'?)",
            "m.yaml:12:9: contents[0].files[5]: expected a mapping, got string",
            "m.yaml:13:5: contents[1].files: expected a list of {src, dst} mappings, got mapping",
            "m.yaml:14:5: contents[2].files: must not be empty (list at least one {src, dst})",
        ],
    ),
    (
        "closure entries",
        HEAD
        + "contents:\n"
        + '  - closure: {paths: [/usr/bin/, "/bin/x ", /bin/x, /bin/x, bin/y, "", /a/../b], sysrot: /}\n'
        + "  - closure: {paths: [], sysroot: relative}\n"
        + "  - closure: {sysroot: /}\n"
        + "entrypoint: [/bin/x]\n",
        [
            "m.yaml:6:23: contents[0].closure.paths[0]: must name a file, not a directory "
            "(use a tree item for directories)",
            "m.yaml:6:34: contents[0].closure.paths[1]: path has leading or trailing whitespace (remove "
            "the spaces)",
            "m.yaml:6:53: contents[0].closure.paths[3]: listed twice (first at contents[0].closure.paths[2]) "
            "(remove one of them)",
            "m.yaml:6:61: contents[0].closure.paths[4]: must be an absolute path (write '/bin/y')",
            "m.yaml:6:68: contents[0].closure.paths[5]: empty path",
            "m.yaml:6:72: contents[0].closure.paths[6]: must not contain '..' (write the path it leads to)",
            "m.yaml:6:82: contents[0].closure.sysrot: unknown key (did you mean 'sysroot'?)",
            "m.yaml:7:15: contents[1].closure.paths: must not be empty "
            "(list the executables to copy with their libraries)",
            "m.yaml:7:26: contents[1].closure.sysroot: must be an absolute path (write '/relative')",
            "m.yaml:8:5: contents[2].closure.paths: missing required key",
        ],
    ),
    (
        "item kinds",
        HEAD
        + "contents:\n"
        + "  - {files: [], dir: {path: /d}}\n"
        + "  - {}\n"
        + "  - {fils: []}\n"
        + "  - tree: {src: /usr/lib, dst: /usr/lib, include: [''], exclude: 'x', mode: 755}\n"
        + "  - symlink: {path: /, target: ''}\n"
        + "  - dir: {path: relative}\n"
        + '  - symlink: {path: /a, target: "b\\0", extra: 1}\n'
        + "  - tree: {src: '', dst: /t}\n"
        + "  - 7\n"
        + "entrypoint: []\n",
        [
            "m.yaml:6:5: contents[0]: has both 'files' and 'dir' (split it into one contents item per kind)",
            "m.yaml:7:5: contents[1]: expected exactly one of: files, closure, tree, symlink, dir, debian",
            "m.yaml:8:6: contents[2].fils: unknown key (did you mean 'files'?)",
            "m.yaml:9:52: contents[3].tree.include[0]: empty pattern",
            "m.yaml:9:57: contents[3].tree.exclude: expected a list of strings, got string",
            'm.yaml:9:71: contents[3].tree.mode: ambiguous unquoted mode (quote it: mode: "755")',
            "m.yaml:10:15: contents[4].symlink.path: must not be the root directory",
            "m.yaml:10:24: contents[4].symlink.target: empty target (name the file the link points to)",
            "m.yaml:11:11: contents[5].dir.path: must be an absolute path (write '/relative')",
            "m.yaml:12:25: contents[6].symlink.target: contains a control character",
            "m.yaml:12:40: contents[6].symlink.extra: unknown key (expected one of: path, target)",
            "m.yaml:13:12: contents[7].tree.src: empty path",
            "m.yaml:14:5: contents[8]: expected a mapping, got integer",
            "m.yaml:15:1: entrypoint: nothing to run: entrypoint and cmd are both empty "
            "(set entrypoint to the program the image starts)",
        ],
    ),
    (
        "destinations",
        HEAD
        + "contents:\n"
        + "  - dir: {path: /data}\n"
        + "  - symlink: {path: /data, target: /x}\n"
        + "  - files:\n"
        + "      - {src: a, dst: /etc/conf}\n"
        + "      - {src: b, dst: /etc//conf}\n"
        + "  - dir: {path: /data, mode: '0700'}\n"
        + "  - symlink: {path: /bin, target: usr/bin}\n"
        + "  - closure: {paths: [/bin/sh, '/bin/*/x', /etc/conf]}\n"
        + "  - files: [{src: c, dst: /etc/conf/sub}]\n"
        + "  - symlink: {path: /bin, target: usr/bin}\n"
        + "entrypoint: [/bin/sh]\n"
        + "writable: [/etc/conf, /tmp, /tmp/, /]\n"
        + "volumes: [/tmp, /bin/data, /var/lib/x, /]\n"
        + "workdir: /etc/conf\n",
        [
            "m.yaml:7:15: contents[1].symlink.path: conflicting entries: a symlink here, "
            "a directory at contents[0].dir.path (a path is either a file, a directory or a symlink)",
            "m.yaml:10:18: contents[2].files[1].dst: duplicate destination "
            "(first declared at contents[2].files[0].dst) (each path may be declared once)",
            "m.yaml:11:11: contents[3].dir.path: directory declared again with another mode or owner "
            "(first at contents[0].dir.path) (declare each directory once)",
            "m.yaml:13:23: contents[5].closure.paths[0]: parent /bin is declared as a symlink at "
            "contents[4].symlink.path (put it under the symlink's target instead)",
            "m.yaml:13:32: contents[5].closure.paths[1]: parent /bin is declared as a symlink at "
            "contents[4].symlink.path (put it under the symlink's target instead)",
            "m.yaml:13:44: contents[5].closure.paths[2]: duplicate destination "
            "(first declared at contents[2].files[0].dst) (each path may be declared once)",
            "m.yaml:14:22: contents[6].files[0].dst: parent /etc/conf is declared as a file at "
            "contents[2].files[0].dst (a file cannot contain other entries)",
            "m.yaml:15:15: contents[7].symlink.path: duplicate destination "
            "(first declared at contents[4].symlink.path) (each path may be declared once)",
            "m.yaml:17:12: writable[0]: declared as a file at contents[2].files[0].dst "
            "(writable paths must be directories)",
            "m.yaml:17:29: writable[2]: listed twice (first at writable[1]) (remove one of them)",
            "m.yaml:17:36: writable[3]: the root directory cannot be writable (tmpfs) "
            "(the root is read-only by design; list the directories that need writes)",
            "m.yaml:18:11: volumes[0]: also listed in writable[1] "
            "(a path is either writable (tmpfs) or a volume (persistent), not both)",
            "m.yaml:18:17: volumes[1]: parent /bin is declared as a symlink at contents[4].symlink.path "
            "(put it under the symlink's target instead)",
            "m.yaml:18:40: volumes[3]: the root directory cannot be a volume "
            "(the root is read-only by design; list the directories that need writes)",
            "m.yaml:19:1: workdir: declared as a file at contents[2].files[0].dst "
            "(the working directory must be a directory)",
        ],
    ),
    (
        "volume and writable declared as non-directories",
        HEAD
        + "contents:\n  - closure: {paths: [/bin/x]}\n  - symlink: {path: /state, target: /var/state}\n"
        + "entrypoint: [/bin/x]\nvolumes: [/state/]\nwritable: [/bin/x]\n",
        [
            "m.yaml:9:11: volumes[0]: declared as a symlink at contents[1].symlink.path (volumes must be "
            "directories)",
            "m.yaml:10:12: writable[0]: declared as a file at contents[0].closure.paths[0] "
            "(writable paths must be directories)",
        ],
    ),
    (
        "root user",
        HEAD + RUN + "accounts: {user: root, uid: 0, gid: 0}\n",
        [
            "m.yaml:8:12: accounts.user: the image must not run as root "
            "(use an unprivileged user, e.g. user: app, uid: 65532)",
            "m.yaml:8:24: accounts.uid: the image must not run as root "
            "(use an unprivileged user, e.g. user: app, uid: 65532)",
        ],
    ),
    (
        "root uid under another name",
        HEAD + RUN + "accounts: {user: app, uid: 0, gid: 0}\n",
        [
            "m.yaml:8:23: accounts.uid: the image must not run as root "
            "(use an unprivileged user, e.g. user: app, uid: 65532)",
        ],
    ),
    (
        "account fields",
        HEAD + RUN + "accounts: {user: App, uid: true, gid: 4294967295, home: home, group: '1x!'}\n",
        [
            "m.yaml:8:12: accounts.user: invalid user name 'App' "
            "(lowercase letters, digits, '_' and '-', starting with a letter or '_', at most 32)",
            "m.yaml:8:23: accounts.uid: expected an integer, got boolean",
            "m.yaml:8:34: accounts.gid: out of range (0 to 4294967294)",
            "m.yaml:8:51: accounts.home: must be an absolute path (write '/home')",
            "m.yaml:8:63: accounts.group: invalid group name '1x!' "
            "(lowercase letters, digits, '_' and '-', starting with a letter or '_', at most 32)",
        ],
    ),
    (
        "account keys",
        HEAD + RUN + "accounts: {usr: app}\n",
        [
            "m.yaml:8:1: accounts.user: missing required key",
            "m.yaml:8:1: accounts.uid: missing required key",
            "m.yaml:8:1: accounts.gid: missing required key",
            "m.yaml:8:12: accounts.usr: unknown key (did you mean 'user'?)",
        ],
    ),
    (
        "entrypoint as a string",
        HEAD + "contents:\n  - closure: {paths: [/bin/x]}\nentrypoint: /bin/x --flag 'a b'\ncmd: [1, '']\n",
        [
            "m.yaml:7:1: entrypoint: expected a list of strings, got string "
            '(write it as a list: entrypoint: ["/bin/x", "--flag", "a b"])',
            'm.yaml:8:7: cmd[0]: expected a string, got integer (quote it: "1")',
            "m.yaml:8:10: cmd[1]: empty string",
        ],
    ),
    (
        "env and labels",
        HEAD + RUN + "env: {LANG: 8, 'A=B': x, '': y, OK: ok}\nlabels: {a: 1.5, '': x}\n",
        [
            'm.yaml:8:7: env.LANG: expected a string, got integer (quote it: LANG: "8")',
            "m.yaml:8:16: env[\"A=B\"]: invalid environment variable name (no '=', spaces or control "
            "characters)",
            "m.yaml:8:26: env[\"\"]: invalid environment variable name (no '=', spaces or control "
            "characters)",
            'm.yaml:9:10: labels.a: expected a string, got number (quote it: a: "1.5")',
            'm.yaml:9:18: labels[""]: invalid label key (use reverse-DNS keys such as '
            "org.opencontainers.image.source)",
        ],
    ),
    (
        "entrypoint with only bad items is not also 'nothing to run'",
        HEAD + "contents:\n  - closure: {paths: [/bin/x]}\nentrypoint: [7]\n",
        ['m.yaml:7:14: entrypoint[0]: expected a string, got integer (quote it: "7")'],
    ),
    (
        "env is a list",
        HEAD + RUN + "env: [A=b]\n",
        ["m.yaml:8:1: env: expected a mapping, got list"],
    ),
    (
        "ports",
        HEAD + RUN + "ports: [8080, 8080/tcp, 8080/udp, 0, 70000, '80:80', 53/sctp, true, x, 1.5]\n",
        [
            "m.yaml:8:15: ports[1]: duplicate port 8080/tcp (first at ports[0]) (remove one of them)",
            "m.yaml:8:35: ports[3]: port 0 is out of range (1 to 65535)",
            "m.yaml:8:38: ports[4]: port 70000 is out of range (1 to 65535)",
            'm.yaml:8:45: ports[5]: invalid port \'80:80\' (write N, "N/tcp" or "N/udp")',
            "m.yaml:8:54: ports[6]: unsupported protocol 'sctp' (use tcp or udp)",
            'm.yaml:8:63: ports[7]: expected a port number or "N/tcp", got boolean',
            'm.yaml:8:69: ports[8]: invalid port \'x\' (write N, "N/tcp" or "N/udp")',
            'm.yaml:8:72: ports[9]: expected a port number or "N/tcp", got number',
        ],
    ),
    (
        "health: two checks and bad values",
        HEAD
        + RUN
        + "health: {http: {port: 0, path: healthz}, tcp: {port: 1}, interval: 2, timeout: 0s, retries: 0}\n",
        [
            "m.yaml:8:1: health: has both 'http' and 'tcp' (keep one check)",
            "m.yaml:8:17: health.http.port: port 0 is out of range (1 to 65535)",
            "m.yaml:8:26: health.http.path: must start with '/' and contain no spaces (write '/healthz')",
            "m.yaml:8:58: health.interval: expected a duration such as 2s, got integer "
            '(add a unit and quote it: interval: "2s")',
            "m.yaml:8:71: health.timeout: must be greater than 0",
            "m.yaml:8:84: health.retries: must be at least 1",
        ],
    ),
    (
        "health: exec as a list, bad duration",
        HEAD + RUN + "health: {exec: [/bin/check], timeout: '2 s'}\n",
        [
            "m.yaml:8:10: health.exec: expected a mapping, got list (write exec: {command: [...]})",
            "m.yaml:8:30: health.timeout: invalid duration '2 s' "
            "(use NUMBER UNIT pairs such as 500ms, 2s, 1m30s or 1h)",
        ],
    ),
    (
        "health: no check",
        HEAD + RUN + "health: {interval: 1m30s, intervl: 1s}\n",
        [
            "m.yaml:8:1: health: expected exactly one of: http, tcp, exec (say how to probe the service)",
            "m.yaml:8:27: health.intervl: unknown key (did you mean 'interval'?)",
        ],
    ),
    (
        "health: empty exec, http without port",
        HEAD + RUN + "health: {exec: {command: []}}\n",
        ["m.yaml:8:17: health.exec.command: must not be empty (name the program that checks the service)"],
    ),
    (
        "health: http without port",
        HEAD + RUN + "health: {http: {path: /}}\n",
        ["m.yaml:8:10: health.http.port: missing required key"],
    ),
    (
        "layers and gzip level",
        HEAD + RUN + "layers: {strategy: per_source, max: 128}\ncompression: {type: gzip, level: 9}\n",
        [
            "m.yaml:8:10: layers.strategy: unknown value 'per_source' (did you mean 'per-source'?)",
            "m.yaml:8:32: layers.max: out of range (1 to 127)",
            "m.yaml:9:27: compression.level: out of range for gzip (0 to 3)",
        ],
    ),
    (
        "compression name",
        HEAD + RUN + "compression: zst\n",
        ["m.yaml:8:1: compression: unknown value 'zst' (did you mean 'zstd'?)"],
    ),
    (
        "compression none with a level",
        HEAD + RUN + "compression: {type: none, level: 1}\n",
        ["m.yaml:8:27: compression.level: compression none has no level (remove level)"],
    ),
    (
        "compression zstd level and keys",
        HEAD + RUN + "compression: {type: zstd, level: 20, lvl: 1}\n",
        [
            "m.yaml:8:27: compression.level: out of range for zstd (1 to 19)",
            "m.yaml:8:38: compression.lvl: unknown key (did you mean 'level'?)",
        ],
    ),
    (
        "compression type",
        HEAD + RUN + "compression: 5\n",
        ["m.yaml:8:1: compression: expected a string (gzip, zstd, none) or {type, level}, got integer"],
    ),
    (
        "duplicate key",
        HEAD + RUN + "entrypoint: [/bin/x]\n",
        ["m.yaml:8:1: entrypoint: duplicate key (first at line 7) (remove one of them)"],
    ),
    (
        "workdir relative",
        HEAD + RUN + "workdir: app\n",
        ["m.yaml:8:1: workdir: must be an absolute path (write '/app')"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_documents(text: str, expected: list[str]) -> None:
    assert _problems(text) == expected


TOML_INVALID = [
    (
        "toml positions and hints",
        TOML_HEAD
        + 'entrypoint = "/bin/x"\n'
        + 'writable = ["/etc/x"]\n'
        + "\n"
        + "[[contents]]\n"
        + 'files = [{ src = "a", dst = "/etc/x", mode = 644 }, {src = "b", dst = "/b", mode = 0o644}]\n'
        + "\n"
        + "[[contents]]\n"
        + "[contents.closure]\n"
        + 'paths = ["bin/x"]\n'
        + 'sysroot = "r"\n'
        + "\n"
        + "[[contents]]\n"
        + "[contents.dir]\n"
        + 'path = "/d"\n'
        + 'mode = "0700"\n'
        + 'uid = "0"\n'
        + "\n"
        + "[health.http]\n"
        + "port = 8080\n"
        + "[health]\n"
        + 'intervl = "2s"\n'
        + "timeout = 3\n"
        + "\n"
        + "[env]\n"
        + "LANG = 1\n"
        + '"A B" = "x"\n'
        + "\n"
        + "[labels]\n"
        + '"org.x" = true\n',
        [
            "m.toml:5:1: entrypoint: expected a list of strings, got string (write it as a list: "
            'entrypoint = ["/bin/x"])',
            "m.toml:6:13: writable[0]: declared as a file at contents[0].files[0].dst "
            "(writable paths must be directories)",
            'm.toml:9:39: contents[0].files[0].mode: ambiguous unquoted mode (quote it: mode = "644")',
            'm.toml:9:77: contents[0].files[1].mode: ambiguous unquoted mode (quote it: mode = "0644")',
            "m.toml:13:10: contents[1].closure.paths[0]: must be an absolute path (write '/bin/x')",
            "m.toml:14:1: contents[1].closure.sysroot: must be an absolute path (write '/r')",
            "m.toml:20:1: contents[2].dir.uid: expected an integer, got string",
            "m.toml:25:1: health.intervl: unknown key (did you mean 'interval'?)",
            "m.toml:26:1: health.timeout: expected a duration such as 2s, got integer "
            '(add a unit and quote it: timeout = "3s")',
            'm.toml:29:1: env.LANG: expected a string, got integer (quote it: LANG = "1")',
            "m.toml:30:1: env[\"A B\"]: invalid environment variable name (no '=', spaces or control "
            "characters)",
            'm.toml:33:1: labels["org.x"]: expected a string, got boolean (quote it: "org.x" = "true")',
        ],
    ),
    (
        "toml wrong apiVersion and missing contents",
        'apiVersion = "kiln.dev/v1beta1"\nkind = "Image"\nname = "x"\nversion = "1.0.0"\ncmd = ["x"]\n',
        [
            "m.toml:1:1: contents: missing required key",
            "m.toml:1:1: apiVersion: unsupported apiVersion 'kiln.dev/v1beta1' (expected 'kiln.dev/v1')",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in TOML_INVALID], ids=[c[0] for c in TOML_INVALID]
)
def test_invalid_toml_documents(text: str, expected: list[str]) -> None:
    assert _problems(text, "toml") == expected


def test_many_problems_are_reported_at_once_in_position_order() -> None:
    # Written out of order on purpose: the checker visits keys in schema order, the report is by position.
    text = (
        "compression: brotli\n"  # 1
        "apiVersion: kiln.dev/v1\n"  # 2
        "kind: Image\n"  # 3
        "version: 1.0\n"  # 4
        "name: UPPER\n"  # 5
        "ports: [99999]\n"  # 6
        "contents:\n"  # 7
        "  - dir: {path: data}\n"  # 8
        "entrypoint: [/bin/x]\n"  # 9
        "accounts: {user: root, uid: 1, gid: 1}\n"  # 10
    )
    with pytest.raises(ManifestError) as info:
        _parse(text, source="hello.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "hello.yaml:1:1: compression: unknown value 'brotli' (expected one of: gzip, zstd, none)",
        'hello.yaml:4:1: version: expected a string, got number (quote it: version: "1.0")',
        "hello.yaml:5:1: name: invalid image name 'UPPER' (names are lowercase: did you mean 'upper'?)",
        "hello.yaml:6:9: ports[0]: port 99999 is out of range (1 to 65535)",
        "hello.yaml:8:11: contents[0].dir.path: must be an absolute path (write '/data')",
        "hello.yaml:10:12: accounts.user: the image must not run as root "
        "(use an unprivileged user, e.g. user: app, uid: 65532)",
    ]
    problems = info.value.problems
    assert [(p.line, p.col) for p in problems] == sorted((p.line or 0, p.col or 0) for p in problems)
    assert {p.file for p in problems} == {"hello.yaml"}


def test_loader_errors_come_through_the_image_entry_points(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"- not\n- a mapping\n")
    with pytest.raises(ManifestError) as info:
        load_image_manifest(path)
    assert str(info.value) == (
        f"{path}:1:1: expected a mapping at the top level, got list "
        "(write key: value pairs, starting with apiVersion and kind)"
    )
    with pytest.raises(ManifestError) as info:
        load_image_manifest(tmp_path / "m.json")
    assert (
        str(info.value) == f"{tmp_path / 'm.json'}: unsupported file type ('.json') "
        "(name the file *.yaml, *.yml or *.toml)"
    )


# --------------------------------------------------------------------------------------------
# Properties: whatever the input, a manifest or a ManifestError, never anything else


_BASE: dict[str, Any] = yaml.safe_load((DATA / "hello-web.yaml").read_text())

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["/", "/a/../b", "app/", "0644", "8080/tcp", "2s", "zstd", "root", "//x//", "", " "]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _all_paths(value: Any, base: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [base]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _all_paths(v, (*base, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _all_paths(v, (*base, i))
    return out


def _check(doc: dict[str, Any], fmt: str = "yaml") -> None:
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        m = parse_image_manifest(text.encode(), source="p.yaml", base_dir=Path(), fmt=fmt)
    except ManifestError as exc:
        problems = exc.problems
    else:
        assert isinstance(m, ImageManifest)
        return
    assert problems
    assert all(p.file == "p.yaml" for p in problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_give_a_manifest_or_a_manifest_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(_BASE)
    paths = _all_paths(doc)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(paths[1:]))
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = data.draw(_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this path's ancestor
    _check(doc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(st.sampled_from([*_BASE, "x"]), _values, max_size=8))
def test_random_top_level_documents_give_a_manifest_or_a_manifest_error(doc: dict[str, Any]) -> None:
    if doc:
        _check(doc)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), fmt=st.sampled_from(["yaml", "toml"]))
def test_random_bytes_give_a_manifest_error(data: bytes, fmt: str) -> None:
    with pytest.raises(ManifestError):
        parse_image_manifest(data, source="r", base_dir=Path(), fmt=fmt)
