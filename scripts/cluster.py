"""``make cluster``: N daphne processes on PostgreSQL and Redis behind a private nginx.

Over 350 lines on purpose: a standalone script (process supervision, config rendering and
the database set-up of one command), imported by nothing but its test.

The scale-out set-up of docs/operations.md on one machine, to try it: daphne processes on
127.0.0.1 (ports from ``--daphne-port``, default 8001, 8002, ...), one nginx run with its
own prefix and generated config in a temporary folder (``nginx -p <tmp> -c
<tmp>/nginx.conf``, ``daemon off``, pid and logs in the folder, never the system service),
listening on 127.0.0.1:8080. The nginx config is deploy/nginx.cluster.conf.template with
its upstream servers, listen address and folders filled in; like deploy/nginx.conf, it
includes the service's settings and locations from deploy/chat/. Ctrl-C (SIGINT) or
SIGTERM stops nginx and the daphnes and removes the folder.

    python scripts/cluster.py [N] [--port 8080] [--daphne-port 8001] [--keep]

Environment: ``DATABASE_URL`` (default postgres://postgres@127.0.0.1:5432/chat_cluster,
created when missing), ``REDIS_URL`` (default redis://127.0.0.1:6379/3), ``CLUSTER_SIZE``,
``CLUSTER_PORT``; everything else (``AI_PROVIDER``, ``MOCK_TOKEN_DELAY_MS``, ...) reaches
the daphne processes unchanged.

:class:`Cluster` is what tests/e2e/test_nginx_cluster.py starts, with its own ports,
environment and database URL. This module imports nothing from Django (it runs
``manage.py`` and daphne as subprocesses), so it can be imported before Django is set up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PRODUCTION_CONFIG = DEPLOY / "nginx.conf"
#: The files both configs include: http.conf (in ``http {}``), server.conf (in ``server {}``).
CHAT_CONF_DIR = DEPLOY / "chat"
CLUSTER_TEMPLATE = DEPLOY / "nginx.cluster.conf.template"
NGINX = "/usr/sbin/nginx"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/chat_cluster"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/3"


def daphne_command(port: int, access_log: Path, python: str = sys.executable) -> list[str]:
    """The command line of one daphne process behind the proxy (docs/operations.md)."""
    return [
        python,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--proxy-headers",
        "--access-log",
        str(access_log),
        "chatproject.asgi:application",
    ]


class ClusterError(RuntimeError):
    """The cluster cannot start; the message says what to do."""


def find_nginx() -> str:
    """The nginx binary, or a :class:`ClusterError` that says how to install it."""
    for candidate in (NGINX, shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError(
        f"nginx is not installed ({NGINX} is missing): run `bash scripts/ensure_nginx.sh` "
        "(installs Debian's nginx with apt-get) or install nginx by hand."
    )


def mime_types_path(nginx: str) -> str:
    """The mime.types that ships with this nginx (beside its default nginx.conf)."""
    output = subprocess.run(  # noqa: S603 (our own binary path)
        [nginx, "-V"], capture_output=True, text=True, check=False
    ).stderr
    for part in output.split():
        if part.startswith("--conf-path="):
            candidate = Path(part.split("=", 1)[1]).parent / "mime.types"
            if candidate.exists():
                return str(candidate)
    for candidate in (Path("/etc/nginx/mime.types"), Path("/usr/local/nginx/conf/mime.types")):
        if candidate.exists():
            return str(candidate)
    raise ClusterError(f"cannot find the mime.types of {nginx}")


def render_nginx_config(
    *,
    prefix: Path,
    listen: str,
    upstreams: Sequence[str],
    static_root: Path,
    mime_types: str,
    worker_processes: int = 1,
) -> str:
    """The cluster's nginx.conf: the template with its placeholders filled in. It includes
    deploy/chat/'s files where they are (absolute paths), as deploy/nginx.conf does."""
    servers = "\n".join(
        f"        server {address} max_fails=1 fail_timeout=10s;" for address in upstreams
    )
    values = {
        "@@PREFIX@@": str(prefix),
        "@@WORKER_PROCESSES@@": str(worker_processes),
        "@@MIME_TYPES@@": mime_types,
        "@@CHAT_CONF@@": str(CHAT_CONF_DIR),
        "@@UPSTREAM_SERVERS@@": servers,
        "@@LISTEN@@": listen,
        "@@STATIC_ROOT@@": str(static_root),
    }
    text = CLUSTER_TEMPLATE.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    if re.search(r"@@[A-Z_]+@@", text):
        raise ClusterError(f"{CLUSTER_TEMPLATE}: a placeholder was left unfilled")
    return text


def ensure_postgres_database(database_url: str) -> bool:
    """Create the database of a ``postgres://`` URL when it is missing; True if created."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        return False
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(
        (parts.scheme.replace("pgsql", "postgres"), parts.netloc, "/postgres", parts.query, "")
    )
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except psycopg.Error as exc:
        raise ClusterError(
            f"cannot reach PostgreSQL at {parts.hostname}:{parts.port or 5432} to create "
            f"database {name!r}: {exc}".strip()
        ) from exc


def wait_http_ok(url: str, *, timeout: float, alive: Any = None) -> None:
    """Poll ``url`` until it answers 200; ``alive()`` returning False aborts early."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ClusterError(f"the process behind {url} exited")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our URL)
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise ClusterError(f"{url} did not answer 200 within {timeout:.0f} s ({last_error})")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class DaphneProcess:
    """One daphne of the cluster."""

    index: int
    port: int
    log_path: Path
    access_log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """N daphne processes behind a private nginx; ``start()``, ``stop()``, or ``with``.

    ``env`` is added to the daphne processes' environment (``DATABASE_URL`` and
    ``REDIS_URL`` come from ``database_url`` and ``redis_url``). ``static_root`` is what
    nginx serves at /static/ (STATIC_ROOT after collectstatic; the tests use web/static).
    """

    database_url: str
    redis_url: str
    size: int = 2
    host: str = "127.0.0.1"
    port: int = 8080
    daphne_ports: Sequence[int] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    static_root: Path = ROOT / "staticfiles"
    worker_processes: int = 1
    keep: bool = False
    daphnes: list[DaphneProcess] = field(default_factory=list, init=False)
    prefix: Path | None = field(default=None, init=False)
    nginx_process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    # --- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Cluster:
        nginx = find_nginx()
        ports = list(self.daphne_ports) or [8001 + i for i in range(self.size)]
        if len(ports) != self.size:
            raise ClusterError(f"{self.size} daphne processes need {self.size} ports: {ports}")
        busy = [p for p in [self.port, *ports] if not port_is_free(self.host, p)]
        if busy:
            raise ClusterError(f"ports already in use on {self.host}: {busy}")
        self.prefix = Path(tempfile.mkdtemp(prefix="chat-cluster-"))
        self.prefix.chmod(0o755)  # nginx workers run as an unprivileged user under root
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / name).mkdir(parents=True)
        try:
            for index, port in enumerate(ports):
                self.daphnes.append(self._start_daphne(index, port))
            for daphne in self.daphnes:
                try:
                    wait_http_ok(f"{daphne.url}/healthz", timeout=timeout, alive=daphne.alive)
                except ClusterError as exc:
                    raise ClusterError(
                        f"daphne {daphne.index} did not start: {exc}\n{daphne.output()[-4000:]}"
                    ) from exc
            self._start_nginx(nginx)
        except BaseException:
            self.stop()
            raise
        return self

    def _daphne_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }

    def _start_daphne(self, index: int, port: int) -> DaphneProcess:
        assert self.prefix is not None
        daphne = DaphneProcess(
            index=index,
            port=port,
            log_path=self.prefix / f"daphne-{index}.log",
            access_log_path=self.prefix / f"daphne-{index}.access.log",
        )
        command = daphne_command(port, daphne.access_log_path)
        with daphne.log_path.open("wb") as log:
            daphne.process = subprocess.Popen(  # noqa: S603 (fixed command)
                command,
                cwd=ROOT,
                env=self._daphne_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return daphne

    def _start_nginx(self, nginx: str) -> None:
        assert self.prefix is not None
        config = render_nginx_config(
            prefix=self.prefix,
            listen=f"{self.host}:{self.port}",
            upstreams=[f"127.0.0.1:{d.port}" for d in self.daphnes],
            static_root=Path(self.static_root).resolve(),
            mime_types=mime_types_path(nginx),
            worker_processes=self.worker_processes,
        )
        self.config_path.write_text(config)
        base = [
            nginx,
            "-p",
            str(self.prefix),
            "-c",
            str(self.config_path),
            "-e",
            str(self.error_log_path),
        ]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)  # noqa: S603
        if check.returncode != 0:
            raise ClusterError(f"nginx rejects the generated config:\n{check.stderr}")
        with (self.prefix / "nginx.out").open("wb") as out:
            self.nginx_process = subprocess.Popen(  # noqa: S603
                base, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_http_ok(f"{self.url}/healthz", timeout=15, alive=self.nginx_alive)
        except ClusterError as exc:
            raise ClusterError(f"nginx did not start: {exc}\n{self.nginx_errors()}") from exc

    def stop(self) -> None:
        """Stop nginx, then the daphnes (TERM, then KILL), and remove the folder."""
        processes = [self.nginx_process] + [d.process for d in self.daphnes]
        for process in processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.prefix is not None and not self.keep:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the tests look at ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        assert self.prefix is not None
        return self.prefix / "nginx.conf"

    @property
    def error_log_path(self) -> Path:
        assert self.prefix is not None
        return self.prefix / "error.log"

    @property
    def access_log_path(self) -> Path:
        assert self.prefix is not None
        return self.prefix / "access.log"

    def nginx_alive(self) -> bool:
        return self.nginx_process is not None and self.nginx_process.poll() is None

    def nginx_errors(self) -> str:
        parts = []
        for path in (self.error_log_path, self.config_path.with_name("nginx.out")):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def access_log(self) -> list[dict[str, Any]]:
        """nginx's access log (one JSON object a line; written when a request ends)."""
        if not self.access_log_path.exists():
            return []
        return [
            json.loads(line)
            for line in self.access_log_path.read_text().splitlines()
            if line.strip()
        ]

    def daphne_by_port(self, port: int) -> DaphneProcess:
        return next(d for d in self.daphnes if d.port == port)

    def daphne_by_pid(self, pid: int) -> DaphneProcess:
        return next(d for d in self.daphnes if d.pid == pid)

    def kill(self, daphne: DaphneProcess) -> None:
        """SIGKILL one daphne: it dies mid-work, as in a crash."""
        if daphne.alive():
            assert daphne.process is not None
            daphne.process.send_signal(signal.SIGKILL)
            daphne.process.wait(10)


# --- make cluster ------------------------------------------------------------------------------
def manage(*args: str, env: Mapping[str, str]) -> None:
    command = [sys.executable, str(ROOT / "manage.py"), *args]
    result = subprocess.run(command, cwd=ROOT, env=dict(env), check=False)  # noqa: S603
    if result.returncode != 0:
        raise ClusterError(f"`manage.py {' '.join(args)}` failed (exit {result.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "size",
        nargs="?",
        type=int,
        default=int(os.environ.get("CLUSTER_SIZE") or 2),
        help="daphne processes (default 2, or CLUSTER_SIZE)",
    )
    parser.add_argument("--host", default=os.environ.get("CLUSTER_HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT") or 8080))
    parser.add_argument(
        "--daphne-port",
        type=int,
        default=int(os.environ.get("CLUSTER_DAPHNE_PORT") or 8001),
        help="port of the first daphne; the others follow",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("at least one daphne process")

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    metrics_dir = Path(tempfile.mkdtemp(prefix="chat-cluster-metrics-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "chatproject.settings"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        # One empty directory per host, shared by its processes (docs/operations.md).
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    cluster = Cluster(
        database_url=database_url,
        redis_url=redis_url,
        size=args.size,
        host=args.host,
        port=args.port,
        daphne_ports=[args.daphne_port + i for i in range(args.size)],
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        # Where collectstatic (below) writes: the settings' STATIC_ROOT.
        static_root=Path(os.environ.get("DJANGO_STATIC_ROOT") or ROOT / "staticfiles"),
        keep=args.keep,
    )
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        find_nginx()
        if ensure_postgres_database(database_url):
            print(f"created database {urlsplit(database_url).path.lstrip('/')}")
        manage("migrate", "--noinput", env=env)
        manage("collectstatic", "--noinput", "-v", "0", env=env)
        cluster.start()
        manage("demo_setup", "--url", f"{cluster.url}/", env=env)
        print(f"  nginx:      {cluster.url}/  (config, pid and logs in {cluster.prefix})")
        for daphne in cluster.daphnes:
            print(f"  daphne {daphne.index}:   {daphne.url}  pid {daphne.pid}")
        db = urlsplit(database_url)
        print(f"  database:   {db.scheme}://{db.hostname or ''}:{db.port or ''}{db.path}")
        print(f"  redis:      {redis_url}")
        print("  Ctrl-C stops everything.", flush=True)
        while not stopping:
            if not cluster.nginx_alive():
                print("nginx exited:\n" + cluster.nginx_errors(), file=sys.stderr)
                return 1
            for daphne in cluster.daphnes:
                if (
                    daphne.process is not None
                    and daphne.process.returncode is None
                    and not daphne.alive()
                ):
                    print(
                        f"daphne {daphne.index} (pid {daphne.pid}) exited with "
                        f"{daphne.process.returncode}; nginx sends its requests to the others",
                        file=sys.stderr,
                    )
            time.sleep(0.5)
        print("stopping ...")
        return 0
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
