"""A real daphne process on 127.0.0.1, started by the tests on the test database."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """The URL of the database pytest-django created, for a server process to share."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] or ""
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{auth}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


_LOGS: list[str] = []
_STARTED: list[DaphneServer] = []


@atexit.register
def _remove_logs() -> None:
    """The servers' logs live as long as the test run (failures print them), unless
    ``KEEP_DAPHNE_LOGS`` is set (to read them after the run, in /tmp/daphne-*.log)."""
    if os.environ.get("KEEP_DAPHNE_LOGS"):
        return
    for name in _LOGS:
        with contextlib.suppress(OSError):
            os.unlink(name)


class DaphneServer:
    """``daphne chatproject.asgi:application`` with the given environment."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the process)
            prefix="daphne-", suffix=".log", delete=False
        )
        _LOGS.append(self.log.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> DaphneServer:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": test_database_url(),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
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
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if self not in _STARTED:
            _STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daphne did not start:\n{self.output()}")

    @staticmethod
    def stop_every() -> None:
        """Stop every server any fixture or test started in this run (a fixture's own
        server starts again when asked for): for tests whose outcome any running process
        could change, such as webhook deliveries, which every daphne process sends."""
        for server in _STARTED:
            server.stop()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
