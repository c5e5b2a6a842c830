"""A private ``docker-registry`` (Debian's distribution 2.8.2) on a loopback port, for tests.

Three flavours: no auth, htpasswd Basic auth, and Bearer tokens from a test token server. The
htpasswd bcrypt hash comes from the system's libcrypt (libxcrypt, always present on Debian), so no
``htpasswd`` binary or Python ``bcrypt`` package is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from manifests.digest import Digest
from tests.kit.services import free_port, wait_http

__all__ = ["RegistryProcess", "bcrypt_hash", "TokenAuthConfig"]


def bcrypt_hash(password: str, *, cost: int = 5) -> str:
    """A bcrypt (``$2y$``) hash of ``password`` from libcrypt's crypt_gensalt/crypt."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", cost, None, 0)
    if not salt:
        raise RuntimeError("libcrypt cannot make a bcrypt salt")
    hashed = lib.crypt(password.encode(), salt)
    if not hashed or not hashed.startswith(b"$2y$"):
        raise RuntimeError("libcrypt did not produce a bcrypt hash")
    return str(hashed.decode("ascii"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAuthConfig:
    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(slots=True, kw_only=True)
class RegistryProcess:
    """One registry: its state lives under ``root`` and survives :meth:`kill` + :meth:`start`."""

    root: Path
    port: int = field(default_factory=free_port)
    htpasswd: tuple[str, str] | None = None
    token: TokenAuthConfig | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def _config(self) -> dict[str, object]:
        cfg: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "kiln-test-secret"},
        }
        if self.htpasswd is not None:
            user, password = self.htpasswd
            path = self.root / "htpasswd"
            path.write_text(f"{user}:{bcrypt_hash(password)}\n")
            cfg["auth"] = {"htpasswd": {"realm": "kiln-test", "path": str(path)}}
        elif self.token is not None:
            cfg["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle),
                }
            }
        return cfg

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        # JSON is YAML: no need for a YAML writer here.
        config.write_text(json.dumps(self._config()))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                wait_http(f"http://{self.host}/v2/", attempts=1)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the registry dies mid-whatever, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def blob_digests(self) -> set[Digest]:
        """Every blob the storage holds, each re-hashed to check its content matches its name."""
        base = self.storage / "docker/registry/v2/blobs/sha256"
        found: set[Digest] = set()
        if not base.exists():
            return found
        for data in base.glob("*/*/data"):
            h = hashlib.sha256()
            with data.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            name = data.parent.name
            if h.hexdigest() != name:
                raise AssertionError(f"blob {name} in storage holds other content")
            found.add(Digest(name))
        return found

    def layer_links(self, repo: str) -> set[Digest]:
        base = self.storage / "docker/registry/v2/repositories" / repo / "_layers/sha256"
        if not base.exists():
            return set()
        return {Digest(p.name) for p in base.iterdir() if (p / "link").exists()}

    def upload_dirs(self, repo: str) -> list[Path]:
        base = self.storage / "docker/registry/v2/repositories" / repo / "_uploads"
        return sorted(base.iterdir()) if base.exists() else []

    def __enter__(self) -> RegistryProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
