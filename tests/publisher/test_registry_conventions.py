"""Registry conventions shared with docker, podman and skopeo.

- plain http without ``--insecure`` fails at the first refused handshake, naming ``--insecure``;
- ``--insecure`` works for any registry, with a warning every time;
- a registry's own CA comes from its ``certs.d`` directory (a real docker-registry serving a
  certificate signed by a test CA, on loopback);
- credentials come from podman/skopeo's auth file as well as docker's config.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln.cli import main
from publisher.auth import resolve_credentials
from publisher.client import RegistryClient
from publisher.errors import PlainHttpRegistry, RegistryUnavailable
from tests.publisher.conftest import BASIC_USER, Target
from tests.publisher.registry import RegistryProcess
from tests.publisher.test_publish_kit import make_image
from tests.support import require_tool

pytestmark = pytest.mark.integration


def test_plain_http_without_insecure_fails_at_once_naming_insecure(plain_registry: Target) -> None:
    slept: list[float] = []
    with (
        RegistryClient(plain_registry.registry.host, sleep=slept.append) as client,
        pytest.raises(PlainHttpRegistry) as err,
    ):
        client.ping()
    assert "--insecure" in (err.value.hint or "")
    assert "plain http" in err.value.message
    assert slept == []  # no retries, no backoff


def test_plain_http_cli_error_names_insecure(
    plain_registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["pull", f"{plain_registry.registry.host}/x/y:1", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "answered the TLS handshake in plain http" in err
    assert "kiln: hint: pass --insecure" in err
    assert "gave up after" not in err


def test_insecure_is_allowed_off_loopback_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(2):  # every time, not once per process
        with caplog.at_level("WARNING", logger="kiln.publisher"):
            RegistryClient("registry.lan.example:5000", insecure=True).close()
    warnings = [r.getMessage() for r in caplog.records if "registry.lan.example:5000" in r.getMessage()]
    assert len(warnings) == 2
    assert all("--insecure" in w and "in the clear" in w for w in warnings)


def test_insecure_warning_on_the_command_line(
    plain_registry: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "src", version="1.0.0")
    assert (
        main(["publish", str(tmp_path / "src"), f"{plain_registry.registry.host}/w/x", "--insecure", "-q"])
        == 0
    )
    err = capsys.readouterr().err
    host = plain_registry.registry.host
    assert f"kiln: warning: --insecure: talking plain http to the loopback registry {host}" in err


# -- TLS with a registry's own CA (certs.d) ------------------------------------------------------------


def _ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path, cert_path, key_path = tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class _TLSRegistry(RegistryProcess):
    cert: Path | None = None
    key: Path | None = None

    def _config(self) -> dict[str, object]:
        cfg = super()._config()
        http = dict(cfg["http"])  # type: ignore[call-overload]
        http["tls"] = {"certificate": str(self.cert), "key": str(self.key)}
        cfg["http"] = http
        return cfg

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yml").write_text(json.dumps(self._config()))
        import subprocess

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(self.root / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[_TLSRegistry, Path]]:
    require_tool("docker-registry", "docker-registry")
    ca, cert, key = _ca_and_server_cert(tmp_path)
    reg = _TLSRegistry(root=tmp_path / "tls-registry")
    reg.cert, reg.key = cert, key
    reg.start()
    try:
        yield reg, ca
    finally:
        reg.stop()


def test_tls_registry_trusted_through_certs_d(
    tls_registry: tuple[_TLSRegistry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg, ca = tls_registry
    certs_d = tmp_path / "certs.d"
    certs_d.mkdir()
    monkeypatch.setenv("KILN_CERTS_D", str(certs_d))
    make_image(tmp_path / "src", version="2.0.0")
    dest = f"{reg.host}/tls/app"

    # Not trusted yet: one clear error naming certs.d, no retries.
    slept: list[float] = []
    with RegistryClient(reg.host, sleep=slept.append) as client, pytest.raises(RegistryUnavailable) as err:
        client.ping()
    assert "not trusted" in err.value.message
    assert "certs.d" in (err.value.hint or "")
    assert slept == []

    # docker's layout: certs.d/HOST:PORT/ca.crt
    (certs_d / reg.host).mkdir()
    (certs_d / reg.host / "ca.crt").write_bytes(ca.read_bytes())
    assert main(["publish", str(tmp_path / "src"), dest, "-q", "--json"]) == 0
    published = json.loads(capsys.readouterr().out)
    assert main(["pull", f"{dest}:2.0.0", str(tmp_path / "pulled"), "-q"]) == 0
    assert (tmp_path / "pulled" / "index.json").is_file()
    assert published["digest"].startswith("sha256:")


# -- podman/skopeo's auth file -------------------------------------------------------------------------


def _auth_file(path: Path, host: str, user: str, password: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def test_auth_file_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    docker = _auth_file(home / ".docker" / "config.json", "reg.example", "docker-user", "d")
    assert docker.is_file()
    env = {"HOME": str(home)}
    assert resolve_credentials("reg.example", env=env).username == "docker-user"  # type: ignore[union-attr]
    _auth_file(home / ".config" / "containers" / "auth.json", "reg.example", "podman-user", "p")
    assert resolve_credentials("reg.example", env=env).username == "podman-user"  # type: ignore[union-attr]
    run = tmp_path / "run"
    _auth_file(run / "containers" / "auth.json", "reg.example", "xdg-user", "x")
    env["XDG_RUNTIME_DIR"] = str(run)
    assert resolve_credentials("reg.example", env=env).username == "xdg-user"  # type: ignore[union-attr]
    explicit = _auth_file(tmp_path / "mine.json", "reg.example", "explicit-user", "e")
    env["REGISTRY_AUTH_FILE"] = str(explicit)
    found = resolve_credentials("reg.example", env=env)
    assert found is not None
    assert (found.username, found.password) == ("explicit-user", "e")
    assert str(explicit) in found.source
    # A registry the podman file does not know still falls back to docker's config.
    _auth_file(home / ".docker" / "config.json", "other.example", "docker-other", "o")
    assert resolve_credentials("other.example", env=env).username == "docker-other"  # type: ignore[union-attr]


def test_publish_with_the_podman_auth_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("docker-registry", "docker-registry")
    reg = RegistryProcess(root=tmp_path / "registry", htpasswd=BASIC_USER)
    reg.start()
    try:
        make_image(tmp_path / "src", version="3.0.0")
        monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
        monkeypatch.delenv("DOCKER_CONFIG", raising=False)
        for var in ("KILN_REGISTRY_USERNAME", "KILN_REGISTRY_PASSWORD"):
            monkeypatch.delenv(var, raising=False)
        dest = f"{reg.host}/auth/app"
        assert main(["publish", str(tmp_path / "src"), dest, "--insecure", "-q"]) == 1  # no credentials
        err = capsys.readouterr().err
        assert "kiln: error:" in err
        auth = _auth_file(tmp_path / "run" / "containers" / "auth.json", reg.host, *BASIC_USER)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(auth.parent.parent))
        assert main(["publish", str(tmp_path / "src"), dest, "--insecure", "-q"]) == 0
    finally:
        reg.stop()
