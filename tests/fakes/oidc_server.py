"""A fake OpenID provider for tests: a JWKS over real HTTP on 127.0.0.1, and a token signer.

with FakeOIDCProvider() as provider:
    token = provider.issue(sub="user-1")          # RS256, typ at+jwt, kid of the current key
    provider.rotate()                              # serve a new key set
    provider.fetch_count                           # JWKS requests served so far
    provider.available = False                     # answer 503 from now on
    provider.delay = 3.0                           # answer after 3 s (a slow provider)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.example.test/realms/chat"
AUDIENCE = "chat-api"
CLIENT_ID = "chat-web"


@dataclass
class SigningKey:
    """A private key with its ``kid`` and algorithm (RS256 or ES256)."""

    kid: str
    alg: str
    private_key: Any = field(repr=False)

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A fresh key pair."""
        if alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)
        return cls(kid=kid or uuid.uuid4().hex[:16], alg=alg, private_key=private)

    @property
    def public_pem(self) -> bytes:
        """The public key as PEM (what an HS256 key-confusion attack would use as secret)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK as a provider publishes it."""
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk


class FakeOIDCProvider:
    """Serves ``GET /jwks`` from a thread; signs access tokens with its current key."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.available = True
        #: Seconds the JWKS answer waits (a slow provider).
        self.delay = 0.0
        self.fetch_count = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- HTTP -------------------------------------------------------------------------------
    def start(self) -> FakeOIDCProvider:
        """Listen on a free port of 127.0.0.1."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/jwks":
                    self._send(404, {"error": "not_found"})
                    return
                with provider._lock:
                    provider.fetch_count += 1
                    available = provider.available
                    body = provider.jwks()
                    delay = provider.delay
                if delay:
                    time.sleep(delay)
                if available:
                    self._send(200, body)
                else:
                    self._send(503, {"error": "unavailable"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOIDCProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def jwks_url(self) -> str:
        """The URL of the JWKS."""
        assert self._server is not None, "start() the provider first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/jwks"

    # --- keys and tokens ----------------------------------------------------------------------
    @property
    def current_key(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        """The JWKS document currently served."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    def rotate(self, alg: str = "RS256", *, keep_old: bool = False) -> SigningKey:
        """Serve a new key (first); drop the old ones unless ``keep_old``."""
        new = SigningKey.generate(alg)
        with self._lock:
            self.keys = [new, *self.keys] if keep_old else [new]
        return new

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid access-token claims; ``None`` values remove a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "subject-1",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "scope": "openid chat",
            "client_id": CLIENT_ID,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def issue(
        self,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token (``typ: at+jwt``, ``kid`` of the key); claims override."""
        key = key or self.current_key
        header = {"typ": "at+jwt", "kid": key.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(self.claims(**claims), key.private_key, algorithm=key.alg, headers=header)
