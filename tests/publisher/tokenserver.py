"""A test token server for the registry's Bearer flow: ES256 JWTs from a throwaway key and cert.

Distribution 2.8.2 trusts a token whose ``kid`` is the libtrust fingerprint of a key found in
its ``rootcertbundle``; this server makes the key, the self-signed certificate for that bundle, and
answers ``GET /token?service=...&scope=...`` with Basic auth for the one user it knows. It records
every request, so tests can check what was asked and how often.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["TokenServer", "TokenRequest"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@dataclass(frozen=True, slots=True)
class TokenRequest:
    user: str | None
    service: str
    scopes: tuple[str, ...]
    status: int


@dataclass(slots=True, kw_only=True)
class TokenServer:
    root: Path
    username: str = "kiln"
    password: str = "s3cret-token-pass"
    service: str = "kiln-test-registry"
    issuer: str = "kiln-test-issuer"
    expires_in: int = 300
    requests: list[TokenRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _key: ec.EllipticCurvePrivateKey | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cert_path(self) -> Path:
        return self.root / "token-root.pem"

    @property
    def realm(self) -> str:
        if self._server is None:
            raise RuntimeError("token server not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def _make_key(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key = key

    def make_token(self, user: str, access: list[dict[str, object]]) -> str:
        if self._key is None:
            raise RuntimeError("no key")
        header = {"typ": "JWT", "alg": "ES256", "kid": libtrust_kid(self._key.public_key())}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        parts = urlsplit(handler.path)
        if parts.path != "/token":
            return 404, b"{}"
        query = parse_qs(parts.query)
        service = query.get("service", [""])[0]
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        user: str | None = None
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            if (u, p) != (self.username, self.password):
                with self._lock:
                    self.requests.append(TokenRequest(u, service, scopes, 401))
                return 401, json.dumps(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad password"}]}
                ).encode()
            user = u
        access: list[dict[str, object]] = []
        if user is not None:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = self.make_token(user or "", access)
        with self._lock:
            self.requests.append(TokenRequest(user, service, scopes, 200))
        body = {"token": token, "access_token": token, "expires_in": self.expires_in}
        return 200, json.dumps(body).encode()

    def start(self) -> None:
        self._make_key()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = outer._handle(self)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def granted(self) -> list[TokenRequest]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]
