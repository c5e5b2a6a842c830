"""Parse and validate image manifests (YAML or TOML, one schema) into :class:`ImageManifest`.

Entry points: :func:`load_image_manifest` (a file; format from its suffix) and
:func:`parse_image_manifest` (bytes). Every problem in a document is collected and raised at once
as one :class:`~manifests.errors.ManifestError`, each line ``FILE:LINE:COL: dotted.path: message (hint)``,
in position order. ``docs/manifest.md`` describes the keys; the exact wording of every message is
frozen in ``tests/manifests/test_image_parse.py``.

Normalization (so equal manifests compare equal): image paths lose ``//`` and ``/./`` (a files
directory copy keeps its trailing ``/`` on ``dst``), modes become ints, durations become seconds,
``env`` and ``labels`` are sorted by key, ``ports`` keep their order.

The schema is built in three layers, each a :class:`~manifests.source.Checker`:
:mod:`manifests.image_paths` (path rules, modes and owners, and the clashes between what contents
items declare), :mod:`manifests.image_contents` (the ``contents`` items) and this module (the
document as a whole: identity, platform, account, command, run-time policy, layers, compression).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from manifests.image import (
    Accounts,
    ExecCheck,
    HealthCheck,
    HttpCheck,
    ImageManifest,
    LayerPolicy,
    LayerStrategy,
    Port,
    PythonPolicy,
    TcpCheck,
)
from manifests.image_contents import ImageContentsChecker
from manifests.image_paths import CONTROL_CHARS, MAX_ID, parse_mode
from manifests.mediatypes import Compression
from manifests.oci import Platform
from manifests.source import (
    SourceDocument,
    did_you_mean,
    join_index,
    join_key,
    load_document,
    parse_document,
)
from manifests.vmspec import DEFAULT_MEMORY_MIB, DiskLayout, VMProfile, VMSpec

# Labels under this prefix record the run-time policy the agent enforces; the builder writes them.
RESERVED_LABEL_PREFIX = "dev.kiln."

__all__ = [
    "RESERVED_LABEL_PREFIX",
    "KIND",
    "MAX_ID",
    "COMPRESSION_LEVELS",
    "load_image_manifest",
    "parse_image_manifest",
    "image_manifest_from_document",
    "parse_mode",
]

KIND = "Image"
COMPRESSION_LEVELS: Mapping[Compression, tuple[int, int]] = {
    Compression.GZIP: (0, 3),  # ISA-L levels
    Compression.ZSTD: (1, 19),
}

_TOP_REQUIRED = ("apiVersion", "kind", "name", "version", "contents")
_TOP_OPTIONAL = (
    "platform",
    "platforms",
    "accounts",
    "entrypoint",
    "cmd",
    "env",
    "workdir",
    "ports",
    "writable",
    "volumes",
    "health",
    "labels",
    "layers",
    "compression",
    "vm",
    "python",
)

# OCI distribution spec: path components of a repository name.
_NAME_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_MAX_NAME = 255
# semver.org 2.0.0, the suggested regular expression.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z"
)
_MAX_TAG = 128
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
_PORT = re.compile(r"(\d{1,5})(?:/([a-z]+))?\Z")
_ARCHITECTURES = ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64")
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}
_VARIANT = re.compile(r"v[0-9]+\Z")


def load_image_manifest(path: Path) -> ImageManifest:
    """Read, parse and validate the image manifest at ``path`` (``.yaml``, ``.yml`` or ``.toml``)."""
    doc = load_document(path)
    return image_manifest_from_document(doc, base_dir=path.parent)


def parse_image_manifest(data: bytes, *, source: str, base_dir: Path, fmt: str) -> ImageManifest:
    """Parse and validate an image manifest from ``data`` (``fmt``: ``yaml`` or ``toml``).

    ``source`` names the document in messages; ``base_dir`` is where relative ``src`` paths start.
    """
    doc = parse_document(data, source=source, fmt=fmt)
    return image_manifest_from_document(doc, base_dir=base_dir)


def image_manifest_from_document(doc: SourceDocument, *, base_dir: Path) -> ImageManifest:
    """Validate an already loaded document as an image manifest."""
    return _ImageSchema(doc).manifest(base_dir)


class _ImageSchema(ImageContentsChecker):
    """The image manifest schema: one instance walks one document."""

    # -- the whole document

    def manifest(self, base_dir: Path) -> ImageManifest:
        d = self.doc.data
        self.keys(d, "", required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
        self.header(d, KIND)
        name = self._name(d)
        version = self._version(d)
        platform = self._platform(d)
        platforms = self._platforms(d)
        if platforms:
            platform = platforms[0]
        contents = self.contents(d)
        accounts = self._accounts(d)
        entrypoint = self._command(d, "entrypoint")
        cmd = self._command(d, "cmd")
        if not entrypoint and not cmd and not self._reported("entrypoint", "cmd"):
            self.report(
                "entrypoint",
                "nothing to run: entrypoint and cmd are both empty",
                "set entrypoint to the program the image starts",
            )
        env = self._string_map(d, "env", key_check=self.env_key)
        workdir = None
        if "workdir" in d:
            workdir = self.image_path(d["workdir"], "workdir", allow_root=True)
        ports = self._ports(d)
        writable = self._dirs(d, "writable", "writable (tmpfs)")
        volumes = self._dirs(d, "volumes", "a volume")
        health = self._health(d)
        labels = self._string_map(d, "labels", key_check=self._label_key)
        layers = self._layers(d)
        compression, level = self._compression(d)
        vm = self._vm(d)
        python = self._python(d)
        self.check_declarations(workdir, writable, volumes)
        self.finish()
        return ImageManifest(
            name=name,
            version=version,
            platform=platform,
            platforms=platforms,
            contents=contents,
            accounts=accounts,
            entrypoint=entrypoint,
            cmd=cmd,
            env=env,
            workdir=workdir,
            ports=ports,
            writable=writable,
            volumes=volumes,
            health=health,
            labels=labels,
            layers=layers,
            compression=compression,
            compression_level=level,
            vm=vm,
            python=python,
            source=self.doc.source,
            base_dir=base_dir,
            positions=self.doc.positions,
        )

    @property
    def _bad(self) -> set[str]:
        return {p.path for p in self._problems}

    def _reported(self, *keys: str) -> bool:
        """Whether a problem was already reported at one of these top-level keys or inside them."""
        return any(p.path == k or p.path.startswith((f"{k}[", f"{k}.")) for p in self._problems for k in keys)

    # -- identity

    def _name(self, d: Mapping[str, Any]) -> str:
        if "name" not in d:
            return ""
        name = self.string(d["name"], "name")
        if name is None:
            return ""
        if len(name) > _MAX_NAME:
            self.report(
                "name", f"longer than {_MAX_NAME} characters", "image names are at most 255 characters"
            )
        elif not _valid_name(name):
            lower = name.lower()
            if lower != name and _valid_name(lower):
                hint = f"names are lowercase: did you mean '{lower}'?"
            else:
                hint = "lowercase letters and digits, separated by '.', '_' or '-'; '/' between components"
            self.invalid("name", "image name", name, hint)
        return name

    def _version(self, d: Mapping[str, Any]) -> str:
        if "version" not in d:
            return ""
        version = self.string(d["version"], "version")
        if version is None:
            return ""
        if len(version) > _MAX_TAG:
            self.report("version", f"longer than {_MAX_TAG} characters", "the version becomes an OCI tag")
        elif not _SEMVER.match(version):
            self.invalid("version", "version", version, "use semantic versioning, e.g. 1.2.0 or 1.2.0-rc.1")
        return version

    def _platform(self, d: Mapping[str, Any]) -> Platform:
        default = Platform()
        if "platform" not in d:
            return default
        return self._one_platform(d["platform"], "platform") or default

    def _platforms(self, d: Mapping[str, Any]) -> tuple[Platform, ...]:
        if "platforms" not in d:
            return ()
        if "platform" in d:
            self.report("platforms", "both platform and platforms are set", "keep one of them")
            return ()
        items = self.sequence(d["platforms"], "platforms", of=' of platforms ("linux/amd64")')
        if items is None:
            return ()
        if not items:
            self.report("platforms", "must not be empty", "e.g. [linux/amd64, linux/arm64]")
            return ()
        found = self.distinct(items, "platforms", self._one_platform)
        return tuple(found) if len(found) == len(items) else ()

    def _one_platform(self, value: object, where: str) -> Platform | None:
        text = self.string(value, where)
        if text is None:
            return None
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            self.invalid(where, "platform", text, "write os/architecture[/variant], e.g. linux/amd64")
            return None
        os_name, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        if os_name != "linux":
            self.report(where, f"unsupported operating system '{os_name}'", "kiln builds linux images")
        if arch not in _ARCHITECTURES:
            suggestion = _ARCH_ALIASES.get(arch) or did_you_mean(arch, _ARCHITECTURES)
            hint = (
                f"did you mean '{suggestion}'?"
                if suggestion
                else "expected one of: " + ", ".join(_ARCHITECTURES)
            )
            self.report(where, f"unknown architecture '{arch}'", hint)
        if variant is not None and not _VARIANT.match(variant):
            self.report(where, f"invalid variant '{variant}'", "variants look like v7 or v8")
        return Platform(os=os_name, architecture=arch, variant=variant)

    # -- accounts and running

    def _accounts(self, d: Mapping[str, Any]) -> Accounts | None:
        if "accounts" not in d:
            return None
        m = self.mapping(d["accounts"], "accounts")
        if m is None:
            return None
        complete = self.keys(m, "accounts", required=("user", "uid", "gid"), optional=("group", "home"))
        root_hint = "use an unprivileged user, e.g. user: app, uid: 65532"
        user = self._account_name(m, "user")
        if user == "root":
            self.report("accounts.user", "the image must not run as root", root_hint)
        uid = self.owner_id(m, "accounts", "uid")
        if uid == 0 and "uid" in m and "accounts.uid" not in self._bad:
            self.report("accounts.uid", "the image must not run as root", root_hint)
        gid = self.owner_id(m, "accounts", "gid")
        group = self._account_name(m, "group") if "group" in m else None
        home = "/nonexistent"
        if "home" in m:
            home = self.image_path(m["home"], "accounts.home", allow_root=True) or home
        if not complete or user is None:
            return None
        return Accounts(user=user, uid=uid, gid=gid, group=group, home=home)

    def _account_name(self, m: Mapping[str, Any], key: str) -> str | None:
        if key not in m:
            return None
        hint = "lowercase letters, digits, '_' and '-', starting with a letter or '_', at most 32"
        return self.matching(m[key], join_key("accounts", key), _USER, f"{key} name", hint)

    def _command(self, d: Mapping[str, Any], key: str) -> tuple[str, ...]:
        if key not in d:
            return ()
        value = d[key]
        if isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            example = json.dumps(words or [value], ensure_ascii=False)
            hint = f"write it as a list: {self.assignment(key)} {example}"
            self.wrong_type(key, value, "a list of strings", hint)
            return ()
        items = self.sequence(value, key, of=" of strings")
        if items is None:
            return ()
        words_t: list[str] = []
        for i, raw in enumerate(items):
            where = join_index(key, i)
            word = self.string(raw, where)
            if word is None:
                continue
            if not word:
                self.report(where, "empty string")
            elif "\x00" in word:
                self.report(where, "contains a NUL character")
            words_t.append(word)
        return tuple(words_t)

    def _string_map(
        self, d: Mapping[str, Any], key: str, *, key_check: Callable[[str, str], bool]
    ) -> tuple[tuple[str, str], ...]:
        if key not in d:
            return ()
        return self.string_map(d[key], key, key_check=key_check)

    def _label_key(self, k: str, where: str) -> bool:
        if not k or CONTROL_CHARS.search(k):
            self.report(
                where, "invalid label key", "use reverse-DNS keys such as org.opencontainers.image.source"
            )
            return False
        if k.startswith(RESERVED_LABEL_PREFIX):
            self.report(
                where,
                "the dev.kiln. prefix is reserved for the run-time policy kiln records",
                "set writable, volumes, health, ports or accounts instead, or choose another label name",
            )
            return False
        return True

    def _ports(self, d: Mapping[str, Any]) -> tuple[Port, ...]:
        if "ports" not in d:
            return ()
        items = self.sequence(d["ports"], "ports", of=' of ports ("8080/tcp")')
        if items is None:
            return ()
        return tuple(
            self.distinct(items, "ports", self._port, duplicate=lambda port: f"duplicate port {port}")
        )

    def _port(self, raw: object, where: str) -> Port | None:
        protocol = "tcp"
        if isinstance(raw, int) and not isinstance(raw, bool):
            number = raw
        elif isinstance(raw, str):
            m = _PORT.match(raw)
            if m is None:
                self.invalid(where, "port", raw, 'write N, "N/tcp" or "N/udp"')
                return None
            number = int(m.group(1))
            if m.group(2) is not None:
                protocol = m.group(2)
                if protocol not in ("tcp", "udp"):
                    self.report(where, f"unsupported protocol '{protocol}'", "use tcp or udp")
                    return None
        else:
            self.wrong_type(where, raw, 'a port number or "N/tcp"')
            return None
        if not 1 <= number <= 65535:
            self.report(where, f"port {number} is out of range (1 to 65535)")
            return None
        return Port(number=number, protocol=protocol)

    def _dirs(self, d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
        if key not in d:
            return ()
        items = self.sequence(d[key], key, of=" of absolute paths")
        if items is None:
            return ()

        def directory(raw: object, where: str) -> str | None:
            p = self.image_path(raw, where, allow_root=True)
            if p == "/":
                self.report(
                    where,
                    f"the root directory cannot be {what}",
                    "the root is read-only by design; list the directories that need writes",
                )
                return None
            return p

        return tuple(self.distinct(items, key, directory))

    # -- health, layers, compression

    def _health(self, d: Mapping[str, Any]) -> HealthCheck | None:
        if "health" not in d:
            return None
        m = self.mapping(d["health"], "health")
        if m is None:
            return None
        checks = ("http", "tcp", "exec")
        self.keys(m, "health", optional=(*checks, "interval", "timeout", "retries"))
        check = self.one_probe(m, "health", checks, self._check, probe_all=True)
        interval = self._duration(m, "interval", 2.0)
        timeout = self._duration(m, "timeout", 1.0)
        retries = 3
        if "retries" in m:
            value = self.integer(m["retries"], "health.retries")
            if value is not None and value < 1:
                self.report("health.retries", "must be at least 1")
            elif value is not None:
                retries = value
        if check is None:
            return None
        return HealthCheck(check=check, interval=interval, timeout=timeout, retries=retries)

    def _check(self, kind: str, value: object, path: str) -> HttpCheck | TcpCheck | ExecCheck | None:
        if kind != "exec":
            return self.probe(kind, value, path)
        if isinstance(value, list):
            self.wrong_type(path, value, "a mapping", "write exec: {command: [...]}")
            return None
        m = self.mapping(value, path)
        if m is None:
            return None
        self.keys(m, path, required=("command",))
        if "command" not in m:
            return None
        where = join_key(path, "command")
        command = self.strings(m["command"], where)
        if command is None:
            return None
        if not command:
            self.report(where, "must not be empty", "name the program that checks the service")
            return None
        return ExecCheck(command=command)

    def _duration(self, m: Mapping[str, Any], key: str, default: float) -> float:
        if key not in m:
            return default
        seconds = self.duration(m[key], join_key("health", key))
        return default if seconds is None else seconds

    def _layers(self, d: Mapping[str, Any]) -> LayerPolicy:
        default = LayerPolicy()
        if "layers" not in d:
            return default
        m = self.mapping(d["layers"], "layers")
        if m is None:
            return default
        self.keys(m, "layers", optional=("strategy", "max"))
        strategy = default.strategy
        if "strategy" in m:
            chosen = self.choice(m["strategy"], "layers.strategy", [s.value for s in LayerStrategy])
            if chosen is not None:
                strategy = LayerStrategy(chosen)
        most = default.max
        if "max" in m:
            most = self.bounded(m["max"], "layers.max", 1, 127) or most
        return LayerPolicy(strategy=strategy, max=most)

    def _compression(self, d: Mapping[str, Any]) -> tuple[Compression, int | None]:
        default = (Compression.GZIP, None)
        if "compression" not in d:
            return default
        value = d["compression"]
        names = [c.value for c in Compression]
        if isinstance(value, str):
            chosen = self.choice(value, "compression", names)
            return (Compression(chosen), None) if chosen is not None else default
        if not isinstance(value, dict):
            self.wrong_type("compression", value, "a string (gzip, zstd, none) or {type, level}")
            return default
        complete = self.keys(value, "compression", required=("type",), optional=("level",))
        if not complete:
            return default
        chosen = self.choice(value["type"], "compression.type", names)
        if chosen is None:
            return default
        kind = Compression(chosen)
        if "level" not in value:
            return kind, None
        level = self.integer(value["level"], "compression.level")
        if level is None:
            return default
        bounds = COMPRESSION_LEVELS.get(kind)
        if bounds is None:
            self.report("compression.level", f"compression {kind} has no level", "remove level")
            return default
        lo, hi = bounds
        if not lo <= level <= hi:
            self.report("compression.level", f"out of range for {kind} ({lo} to {hi})")
            return default
        return kind, level

    # -- python

    def _python(self, d: Mapping[str, Any]) -> PythonPolicy:
        if "python" not in d:
            return PythonPolicy()
        m = self.mapping(d["python"], "python")
        if m is None:
            return PythonPolicy()
        self.keys(m, "python", required=(), optional=("bytecode", "optimize"))
        bytecode = False
        if "bytecode" in m:
            bytecode = bool(self.boolean(m["bytecode"], "python.bytecode"))
        optimize = 0
        if "optimize" in m:
            optimize = self.bounded(m["optimize"], "python.optimize", 0, 2) or 0
        return PythonPolicy(bytecode=bytecode, optimize=optimize)

    # -- the vm section

    def _vm(self, d: Mapping[str, Any]) -> VMSpec | None:
        if "vm" not in d:
            return None
        m = self.mapping(d["vm"], "vm")
        if m is None:
            return None
        complete = self.keys(
            m,
            "vm",
            required=("kernel",),
            optional=("modules", "profile", "disk", "memory", "cpus", "cmdline"),
        )
        kernel = self._host_path(m, "kernel", "/boot/vmlinuz-6.1.0-28-cloud-amd64")
        modules = self._host_path(m, "modules", "/lib/modules/6.1.0-28-cloud-amd64")
        profile = VMProfile.VERITY
        if "profile" in m:
            chosen = self.choice(m["profile"], "vm.profile", [p.value for p in VMProfile])
            profile = VMProfile(chosen) if chosen is not None else profile
        disk = DiskLayout.GPT
        if "disk" in m:
            chosen = self.choice(m["disk"], "vm.disk", [x.value for x in DiskLayout])
            disk = DiskLayout(chosen) if chosen is not None else disk
            if profile is VMProfile.INITRAMFS and chosen is not None:
                self.report(
                    "vm.disk", "the initramfs profile has no disk", "remove disk, or use profile: verity"
                )
        memory = self._memory(m)
        cpus = 1
        if "cpus" in m:
            cpus = self.bounded(m["cpus"], "vm.cpus", 1, 64) or cpus
        cmdline: tuple[str, ...] = ()
        if "cmdline" in m:
            cmdline = self._kernel_args(m["cmdline"])
        if not complete or kernel is None or ("modules" in m and modules is None):
            return None
        return VMSpec(
            kernel=kernel,
            modules=modules,
            profile=profile,
            disk=disk,
            memory_mib=memory,
            cpus=cpus,
            cmdline=cmdline,
        )

    def _host_path(self, m: Mapping[str, Any], key: str, example: str) -> str | None:
        if key not in m:
            return None
        where = join_key("vm", key)
        text = self.string(m[key], where)
        if text is None:
            return None
        if not text or "\x00" in text or CONTROL_CHARS.search(text):
            self.report(where, "invalid host path", f"write a path such as {example}")
            return None
        return text

    def _memory(self, m: Mapping[str, Any]) -> int:
        if "memory" not in m:
            return DEFAULT_MEMORY_MIB
        value = m["memory"]
        hint = "write mebibytes with a unit: 256M or 1G"
        if isinstance(value, int) and not isinstance(value, bool):
            self.wrong_type("vm.memory", value, "a size such as 256M", hint)
            return DEFAULT_MEMORY_MIB
        text = self.string(value, "vm.memory")
        if text is None:
            return DEFAULT_MEMORY_MIB
        match = _MEMORY.match(text)
        if match is None:
            self.invalid("vm.memory", "memory size", text, hint)
            return DEFAULT_MEMORY_MIB
        mib = int(match.group(1)) * (1024 if match.group(2) in ("G", "Gi") else 1)
        if not 64 <= mib <= 65536:
            self.report("vm.memory", f"{mib} MiB is out of range (64M to 64G)")
            return DEFAULT_MEMORY_MIB
        return mib

    def _kernel_args(self, value: object) -> tuple[str, ...]:
        items = self.sequence(value, "vm.cmdline", of=" of kernel arguments")
        if items is None:
            return ()
        out: list[str] = []
        for i, raw in enumerate(items):
            where = join_index("vm.cmdline", i)
            arg = self.string(raw, where)
            if arg is None:
                continue
            if not _KERNEL_ARG.match(arg):
                self.invalid(
                    where, "kernel argument", arg, "one argument per item: printable ASCII, no spaces"
                )
            elif arg.startswith(("kiln.", "init=", "rdinit=", "root=")):
                name = arg.split("=", 1)[0]
                self.report(where, f"'{name}' is set by kiln", "remove it; kiln decides how the guest boots")
            else:
                out.append(arg)
        return tuple(out)


_MEMORY = re.compile(r"([1-9][0-9]{0,5})(M|Mi|G|Gi)\Z")
_KERNEL_ARG = re.compile(r"[\x21\x23-\x7e]+\Z")  # no spaces, no quotes (the kernel's own quoting)


def _valid_name(name: str) -> bool:
    return all(_NAME_COMPONENT.match(part) for part in name.split("/"))
