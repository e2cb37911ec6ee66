"""The production start sequence as subprocesses, for the deployment matrix.

A :class:`Deployment` boots the service the way ``docs/operations.md`` and the README tell
an operator to, from an environment built from scratch (``PATH`` and the settings the
configuration needs, nothing inherited from the test process)::

    python manage.py migrate --noinput
    python manage.py collectstatic --noinput
    python manage.py check --deploy
    daphne -b 127.0.0.1 -p <port> chatproject.asgi:application

with ``DJANGO_SETTINGS_MODULE=chatproject.settings`` (never ``tests.settings``) and
``DJANGO_DEBUG=false``. A step that fails raises :class:`StepFailed` carrying the step's
output, so a CI log shows why the configuration did not start.

Also here: a fresh PostgreSQL database per deployment (:func:`postgres_database`), an
OpenID provider's browser endpoints around the repository's fake JWKS provider
(:class:`FakeOIDCLogin`), and an SSE turn over a caller's ``httpx.Client``
(:func:`stream_turn`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
from httpx_sse import connect_sse
from psycopg import sql

from tests.e2e.server import free_port
from tests.fakes.oidc_server import CLIENT_ID, FakeOIDCProvider
from tests.sse_client import Event, StreamResult

ROOT = Path(__file__).resolve().parents[2]
#: The PostgreSQL server CI and the developer machine run (trust auth, user postgres).
POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
#: The Redis server CI runs; the matrix uses a database number no other test uses.
REDIS_URL = "redis://127.0.0.1:6379/8"


class StepFailed(AssertionError):
    """A step of the start sequence failed; the message holds its command and output."""


def production_environment(**settings: str) -> dict[str, str]:
    """A from-scratch environment for the production settings, plus ``settings``.

    Only ``PATH`` comes from the test process: no ``DJANGO_*``, ``AI_*`` or ``OIDC_*``
    variable of the test run can leak into the deployment under test.
    """
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        **settings,
    }


@dataclass
class Deployment:
    """One deployed server: the documented start sequence, then daphne on a free port."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: ``(command, seconds)`` of every step run, for the report of slow starts.
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The chat WebSocket's URL."""
        return f"ws://127.0.0.1:{self.port}/ws/v1/chat/"

    @property
    def log_path(self) -> Path:
        """Where daphne's output goes."""
        return self.workdir / "daphne.log"

    def manage(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``python manage.py <args>`` in the deployment's environment; its output.

        Raises :class:`StepFailed` (with the output) when the command exits non-zero.
        """
        command = [sys.executable, "manage.py", *args]
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode(errors="replace")
            raise StepFailed(f"`manage.py {' '.join(args)}` timed out:\n{output}") from None
        self.timings.append((f"manage.py {' '.join(args)}", time.monotonic() - started))
        output = completed.stdout.decode(errors="replace")
        if completed.returncode != 0:
            raise StepFailed(
                f"`manage.py {' '.join(args)}` exited {completed.returncode}:\n{output}"
            )
        return output

    def start(self, timeout: float = 30.0) -> Deployment:
        """migrate, collectstatic, check --deploy, then daphne until ``/readyz`` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        self.manage("check", "--deploy")
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "chatproject.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StepFailed(
                    f"daphne exited {self.process.returncode} at start:\n{self.output()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    self.timings.append(("daphne until /readyz", time.monotonic() - started))
                    return self
            time.sleep(0.05)
        self.stop()
        raise StepFailed(f"daphne was not ready within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        """What daphne printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Re-raise any failure inside as :class:`StepFailed` with daphne's output appended."""
        try:
            yield
        except Exception as exc:
            raise StepFailed(
                f"{type(exc).__name__}: {exc}\n--- daphne output ---\n{self.output()[-20000:]}"
            ) from exc

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database ``matrix_<hex>`` on the local PostgreSQL server (dropped after);
    yields its ``DATABASE_URL``. It is never the test run's own database."""
    name = f"matrix_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class FakeOIDCLogin:
    """The browser endpoints of an OpenID provider, signing with a :class:`FakeOIDCProvider`.

    - ``GET /authorize``: the user "logs in" at once; redirects to ``redirect_uri`` with a
      fresh ``code`` and the request's ``state`` (the ``nonce`` is kept for that code).
    - ``POST /token``: for a known code and the right client secret, an id token (``aud``
      the client id, the code's ``nonce``) and an access token (``aud`` the API).
    - ``GET /userinfo``: the subject's claims.

    ``token_requests`` records the form of every ``POST /token``.
    """

    def __init__(self, provider: FakeOIDCProvider, *, sub: str, client_secret: str) -> None:
        self.provider = provider
        self.sub = sub
        self.client_id = CLIENT_ID
        self.client_secret = client_secret
        self.token_requests: list[dict[str, str]] = []
        self._nonces: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def environment(self) -> dict[str, str]:
        """The ``OIDC_RP_*`` / ``OIDC_OP_*`` browser-login settings for this provider."""
        return {
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET": self.client_secret,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.url}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.url}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.url}/userinfo",
        }

    def start(self) -> FakeOIDCLogin:
        """Listen on a free port of 127.0.0.1, from a daemon thread."""
        login = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    login._nonces[code] = query.get("nonce", "")
                    target = f"{query['redirect_uri']}?" + urlencode(
                        {"code": code, "state": query.get("state", "")}
                    )
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parts.path == "/userinfo":
                    self._json(200, {"sub": login.sub, "email": f"{login.sub}@example.test"})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                login.token_requests.append(form)
                code = form.get("code", "")
                if (
                    urlsplit(self.path).path != "/token"
                    or form.get("client_secret") != login.client_secret
                    or code not in login._nonces
                ):
                    self._json(400, {"error": "invalid_grant"})
                    return
                nonce = login._nonces.pop(code)
                provider = login.provider
                self._json(
                    200,
                    {
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "access_token": provider.issue(sub=login.sub),
                        "id_token": provider.issue(
                            sub=login.sub, aud=login.client_id, nonce=nonce, headers={"typ": "JWT"}
                        ),
                    },
                )

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOIDCLogin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream_turn(
    client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> StreamResult:
    """One ``POST`` of a chat turn read as SSE through ``client`` (its cookies, its headers)."""
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    with connect_sse(client, "POST", url, json=body, headers=all_headers) as source:
        response = source.response
        result = StreamResult(response.status_code, response.headers)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            result.body = response.text
            return result
        for sse in source.iter_sse():
            if sse.data == "" and sse.event == "message":
                result.retry = sse.retry
                continue
            result.events.append(Event(sse.id, sse.event, json.loads(sse.data)))
    return result
