"""What the benchmark scripts share: server processes, ports, the product's set-up, report
formatting. A library, never run itself; it imports nothing from Django (the product runs
as a subprocess), so any script can import it before it sets Django up.

- :class:`Server`: one server process on 127.0.0.1, started until ``/healthz`` answers,
  measured with psutil (CPU, memory), optionally pinned to some cores;
- :func:`start_upstream`, :func:`product_env`, :func:`setup_product`,
  :func:`start_product`: the fake OpenAI upstream and the product on it, set up with
  ``manage.py migrate``, ``collectstatic`` and ``demo_setup`` as an operator would;
- databases: :func:`recreate_postgres_database`, :func:`drop_postgres_database`,
  :func:`flush_redis`;
- formatting: :func:`fmt`, :func:`error_text`, :func:`machine`, :func:`now_iso`.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis
from psycopg import sql

from bench.load import Target, run_load

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STREAM_PATH = "/api/v1/conversations/stream"

#: The upstream's pace (ms between tokens) and the two reply lengths of the phases.
PACE_MS = 10.0
LONG, SHORT = 200, 5

#: The product's DJANGO_SECRET_KEY for this run (no session outlives it).
SECRET_KEY = secrets.token_urlsafe(50)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_cores() -> tuple[set[int], set[int]]:
    """``--pin``: the measured servers share the last core; the load generator and the
    upstream get the others. A Python server is one GIL; on one core its event loop and
    its database thread stop handing the GIL (and their caches) across cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    return {cores[-1]}, set(cores[:-1])


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of a process (all its threads); 0 once it is gone."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


@dataclass
class Server:
    """One server process on 127.0.0.1, started and measured.

    ``cores``: the CPU cores it (and every thread it starts) may run on; None, any.
    """

    name: str
    cmd: list[str]
    env: Mapping[str, str]
    port: int
    health: str = "/healthz"
    cores: set[int] | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ps: psutil.Process | None = None

    def start(self, logdir: Path, timeout: float = 40.0) -> Server:
        """Start it, its output in ``logdir/<name>.log``; return once ``health`` is 200."""
        return self.launch(logdir).wait_ready(timeout)

    def launch(self, logdir: Path) -> Server:
        """Start the process and return at once (several start side by side; then
        :meth:`wait_ready` each)."""
        self.log_path = logdir / f"{self.name}.log"
        cores = self.cores
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                # Before exec, so that every thread the server starts inherits it.
                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
            )
        self.ps = psutil.Process(self.process.pid)
        return self

    def wait_ready(self, timeout: float = 40.0) -> Server:
        """Return once ``health`` answers 200 (stopped and an error after ``timeout``)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            try:
                if httpx.get(self.url(self.health), timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.output()}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def output(self) -> str:
        """The end of its log."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def cpu(self) -> float:
        return cpu_seconds(self.ps)

    def cpu_split(self) -> tuple[float, float]:
        times = self.ps.cpu_times()
        return times.user, times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        """TERM, then KILL after 10 s."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def stop_all(servers: list[Server]) -> None:
    """Stop servers, the last started first."""
    for server in reversed(servers):
        server.stop()


def clean_env() -> dict[str, str]:
    """This process's environment without the shell's Django settings and database."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("DJANGO_") and k != "DATABASE_URL"
    }


def daphne_cmd(port: int, app: str = "chatproject.asgi:application") -> list[str]:
    """daphne on 127.0.0.1:``port`` without access log."""
    return [PY, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]


def start_upstream(
    logdir: Path, env: Mapping[str, str], *, cores: set[int] | None = None
) -> Server:
    """bench/upstream.py (the fake OpenAI upstream) at :data:`PACE_MS`, started."""
    port = free_port()
    cmd = [PY, "bench/upstream.py", "--port", str(port), "--pace-ms", str(PACE_MS)]
    return Server("upstream", cmd, env, port, cores=cores).start(logdir)


def upstream_base_url(upstream: Server) -> str:
    """What the product and the references take as the OpenAI base URL."""
    return upstream.url("/v1")


async def configure_upstream(
    client: httpx.AsyncClient, upstream: Server, *, tokens: int, pace_ms: float = PACE_MS
) -> None:
    """The reply length and pace the upstream serves from now on."""
    response = await client.post(
        upstream.url("/_bench/config"), json={"tokens": tokens, "pace_ms": pace_ms}
    )
    response.raise_for_status()


# --- the product --------------------------------------------------------------------------


def product_env(
    base: Mapping[str, str], upstream_url: str, database_url: str, redis_url: str | None = None
) -> dict[str, str]:
    """The product's environment: production settings (DEBUG off) with the OpenAI provider
    at ``upstream_url``, no quota or stream limit in the way, quiet logs."""
    env = {
        **base,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": database_url,
        "AI_PROVIDER": "openai",
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": "bench",
        "QUOTA_REQUESTS_LIMIT": "1000000000",
        "QUOTA_TOKENS_LIMIT": str(10**15),
        "CHAT_MAX_CONCURRENT_STREAMS": "100000",
        "DJANGO_DEBUG": "false",
        # A production start needs a real key (chatproject/settings.py); any will do here.
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def manage(env: Mapping[str, str], *args: str) -> str:
    """Run ``manage.py <args>`` in the product's environment; its standard output."""
    return subprocess.run(
        [PY, "manage.py", *args],
        cwd=ROOT,
        env=dict(env),
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def setup_product(env: Mapping[str, str], username: str = "bench") -> tuple[str, str]:
    """Migrate, collect the static files (daphne refuses to start without them, DEBUG off)
    and make the bench user (``demo_setup``): its token and the id of its context."""
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    made = json.loads(
        manage(
            env,
            "demo_setup",
            "--username",
            username,
            "--context",
            "bench",
            "--requests-limit",
            env["QUOTA_REQUESTS_LIMIT"],
            "--tokens-limit",
            env["QUOTA_TOKENS_LIMIT"],
            "--json",
        )
    )
    return made["token"], made["context_ids"][0]


def sqlite_url(tmp: Path) -> str:
    """A fresh SQLite database in ``tmp``."""
    return f"sqlite:///{tmp / 'bench.sqlite3'}"


def start_product(
    logdir: Path,
    env: Mapping[str, str],
    *,
    name: str = "product",
    extraction: bool = True,
    cores: set[int] | None = None,
) -> Server:
    """One product daphne with ``env`` (:func:`product_env`, already set up), started."""
    port = free_port()
    extra = {"FLOWS_EXTRACTION_ENABLED": "true" if extraction else "false"}
    server = Server(name, daphne_cmd(port), {**env, **extra}, port, cores=cores)
    return server.start(logdir)


def start_upstream_and_product(
    tmp: Path,
    servers: list[Server],
    *,
    extraction: bool,
    cores: tuple[set[int], set[int]] | None = None,
) -> tuple[Server, Server, Target]:
    """Start the fake upstream and the product on it (fresh SQLite, bench settings), as
    ``bench/run.py`` does (profile.py and thread_cpu.py use it); both are appended to
    ``servers``, for the caller to stop. ``cores``: (the product's, the upstream's), as
    from :func:`pin_cores`. Returns the upstream, the product and the load generator's
    target."""
    measured, harness = cores or (None, None)
    base_env = clean_env()
    upstream = start_upstream(tmp, base_env, cores=harness)
    servers.append(upstream)
    env = product_env(base_env, upstream_base_url(upstream), sqlite_url(tmp))
    key, context_id = setup_product(env)
    product = start_product(tmp, env, extraction=extraction, cores=measured)
    servers.append(product)
    target = Target.product("product", product.url(STREAM_PATH), key, context_id)
    return upstream, product, target


async def load_for(target: Target, seconds: float, concurrency: int, tokens: int) -> int:
    """Turns of ``tokens`` tokens, ``concurrency`` at a time, for ``seconds``; how many."""
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        results, _ = await run_load(
            target,
            concurrency=concurrency,
            turns=1,
            expected_tokens=tokens,
            ramp=0.2,
            timeout=30,
        )
        turns += len(results)
    return turns


# --- databases ----------------------------------------------------------------------------


def recreate_postgres_database(name: str) -> str:
    """Drop (connections and all) and create database ``name`` on 127.0.0.1:5432; its URL."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def drop_postgres_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def flush_redis(url: str) -> None:
    """Empty the Redis database of ``url``."""
    redis.Redis.from_url(url).flushdb()


# --- reports ------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` places."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def error_text(row: dict[str, Any]) -> str:
    """``errors`` with their kinds, e.g. ``3 (http_429: 2, timeout: 1)``."""
    text = str(row["errors"])
    if row["error_kinds"]:
        text += " (" + ", ".join(f"{k}: {v}" for k, v in row["error_kinds"].items()) + ")"
    return text


def machine() -> str:
    """This machine in one line: architecture, cores, memory, Python."""
    return (
        f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
