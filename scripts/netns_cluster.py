"""``make cluster HOSTS=N``: the service across hosts, each host a Linux network namespace.

Over 350 lines on purpose: a standalone script (network set-up, process supervision and
clean-up of one command), imported by nothing but its test (tests/e2e/test_netns_cluster.py).

Needs root (``ip netns``), ``ip`` (iproute2), PostgreSQL's server binaries
(/usr/lib/postgresql/*/bin), ``redis-server``, ``runuser`` and nginx
(``bash scripts/ensure_nginx.sh``). The hosts, on one Linux bridge in a namespace of its
own, addresses from 10.200.0.0/24 inside the namespaces only (the root namespace's
interfaces and routes are not touched):

| host | namespace | address | runs |
| --- | --- | --- | --- |
| proxy | ``<tag>-proxy`` | 10.200.0.2 | nginx (deploy/nginx.cluster.conf.template, port 80) |
| data | ``<tag>-data`` | 10.200.0.10 | its own PostgreSQL on 5432, redis-server on 6379 |
| app1..N | ``<tag>-app1``... | 10.200.0.11... | one daphne each on 8000 |
| (switch) | ``<tag>-sw`` | none | the bridge ``br0``; one veth per host (``v-<host>``) |

The data host's PostgreSQL is initdb'd into the run's temporary folder and runs as the
``postgres`` OS user (``runuser``: postgres refuses root).

``<tag>`` is ``chatns<pid>``, so that two runs on one machine never meet; a run finds and
removes what an earlier, killed run left (namespaces whose pid is gone). Every host's
link is the veth pair ``eth0`` (in the host) / ``v-<host>`` (in the switch):
:meth:`NetnsCluster.cut` sets the switch's end down, as a cable pulled out.

    python scripts/netns_cluster.py [N] [--port 8080]

starts N app hosts (default 2), migrates, runs ``demo_setup``, and forwards
127.0.0.1:8080 in the root namespace to the proxy (a small TCP forwarder in this script,
written here: a socket's namespace is the one its thread was in when it was made, see
:func:`in_netns`). Ctrl-C stops everything and removes the namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.cluster import (  # noqa: E402
    ClusterError,
    find_nginx,
    mime_types_path,
    render_nginx_config,
)

SUBNET = "10.200.0"
PROXY_ADDRESS = f"{SUBNET}.2"
DATA_ADDRESS = f"{SUBNET}.10"
APP_PORT = 8000
PROXY_PORT = 80
NAME_PREFIX = "chatns"
CLONE_NEWNET = 0x40000000
DATABASE = "chat"


class NetnsUnavailable(ClusterError):
    """Network namespaces cannot be made here (not root, no ``ip netns``, ...)."""


def app_address(index: int) -> str:
    """The address of app host ``index`` (1-based)."""
    return f"{SUBNET}.{10 + index}"


def run(command: Sequence[str], *, check: bool = True, **kwargs: object) -> str:
    """Run a command; its stdout (a :class:`ClusterError` with its stderr if it fails)."""
    result = subprocess.run(  # noqa: S603 (fixed commands)
        list(command), capture_output=True, text=True, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here, or None when they can (a probe)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (this runs as uid {os.geteuid()})"
    if not shutil.which("ip"):
        return "`ip` (iproute2) is not installed"
    probe = f"{NAME_PREFIX}{os.getpid()}-probe"
    try:
        run(["ip", "netns", "add", probe])
    except ClusterError as exc:
        return str(exc)
    run(["ip", "netns", "del", probe], check=False)
    return None


def postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with ``initdb`` and ``postgres``."""
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise ClusterError("PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin)")
    return found[-1]


@contextlib.contextmanager
def in_netns(namespace: str) -> Iterator[None]:
    """Run the block with this thread in ``namespace``'s network (``setns(2)``).

    A socket belongs to the namespace it was made in, for its whole life: connections
    opened in the block (httpx, psycopg) keep talking to the hosts after it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(own)


def _dead_run(name: str) -> bool:
    """Whether ``name`` (``chatns<pid>-...``) belongs to a run whose process is gone."""
    pid = name[len(NAME_PREFIX) :].split("-")[0]
    return name.startswith(NAME_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists()


def remove_leftovers() -> list[str]:
    """Delete the namespaces (and their processes) and the temporary folders of earlier
    runs whose pid is gone (a run killed before it could clean up)."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if _dead_run(name):
            delete_namespace(name)
            removed.append(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{NAME_PREFIX}*-*"):
        if folder.is_dir() and _dead_run(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def delete_namespace(name: str) -> None:
    """SIGKILL what still runs in ``name``, then delete it."""
    for pid in run(["ip", "netns", "pids", name], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run(["ip", "netns", "del", name], check=False)


@dataclass
class Host:
    """One host: its namespace, address and its end of the switch (``v-<name>``)."""

    name: str
    namespace: str
    address: str | None

    @property
    def veth(self) -> str:
        return f"v-{self.name}"


@dataclass
class Proc:
    """A process started in a host's namespace (its own process group)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class NetnsCluster:
    """The hosts above; ``start()``, ``stop()`` (always, even after a failed start), or ``with``.

    ``env`` goes to the daphne processes and ``manage.py`` (``DATABASE_URL`` and
    ``REDIS_URL`` point at the data host). ``static_root`` is what nginx serves at /static/.
    """

    app_hosts: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    static_root: Path = ROOT / "staticfiles"
    keep: bool = False
    tag: str = field(default_factory=lambda: f"{NAME_PREFIX}{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict, init=False)
    procs: dict[str, Proc] = field(default_factory=dict, init=False)
    folder: Path | None = field(default=None, init=False)
    namespaces: list[str] = field(default_factory=list, init=False)

    # --- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """nginx, as the proxy host and the others see it."""
        return f"http://{PROXY_ADDRESS}:{PROXY_PORT}"

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{DATA_ADDRESS}:5432/{DATABASE}"

    @property
    def redis_url(self) -> str:
        return f"redis://{DATA_ADDRESS}:6379/0"

    @property
    def apps(self) -> list[Host]:
        return [self.hosts[f"app{i}"] for i in range(1, self.app_hosts + 1)]

    def app_url(self, index: int) -> str:
        return f"http://{app_address(index)}:{APP_PORT}"

    def daphne(self, index: int) -> Proc:
        return self.procs[f"app{index}"]

    def client(self) -> contextlib.AbstractContextManager[None]:
        """A block whose connections come from the proxy host (:func:`in_netns`)."""
        return in_netns(self.hosts["proxy"].namespace)

    # --- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> NetnsCluster:
        problem = netns_problem()
        if problem:
            raise NetnsUnavailable(problem)
        nginx = find_nginx()
        pg_bin = postgres_bin()
        remove_leftovers()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.folder.chmod(0o755)  # the postgres user and nginx's workers read below it
        try:
            self._network()
            self._start_data_host(pg_bin, timeout)
            # The daphnes start (imports, checks) while the schema is made; their first
            # request, which starts their background work, comes after it.
            for index, host in enumerate(self.apps, start=1):
                self._start(
                    host,
                    f"app{index}",
                    [sys.executable, "-m", "daphne", "-b", host.address or "", "-p",
                     str(APP_PORT), "--proxy-headers", "chatproject.asgi:application"],
                    env=self._env(),
                )  # fmt: skip
            self.manage("migrate", "--noinput", "-v", "0")
            for index in range(1, self.app_hosts + 1):
                self._wait_http(f"{self.app_url(index)}/healthz", f"app{index}", timeout)
            self._start_nginx(nginx)
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # The hosts' own names (direct requests) beside what nginx passes on.
            "DJANGO_ALLOWED_HOSTS": ",".join(
                [
                    "127.0.0.1",
                    "localhost",
                    PROXY_ADDRESS,
                    *map(app_address, range(1, self.app_hosts + 1)),
                ]
            ),
            **self.env,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
        }

    def _network(self) -> None:
        switch = f"{self.tag}-sw"
        self._namespace(switch)
        run(["ip", "-n", switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", switch, "link", "set", "dev", "br0", "up"])
        names = ["proxy", "data", *(f"app{i}" for i in range(1, self.app_hosts + 1))]
        addresses = [PROXY_ADDRESS, DATA_ADDRESS, *map(app_address, range(1, self.app_hosts + 1))]
        for name, address in zip(names, addresses, strict=True):
            host = Host(name, f"{self.tag}-{name}", address)
            self.hosts[name] = host
            self._namespace(host.namespace)
            run(["ip", "link", "add", "eth0", "netns", host.namespace, "type", "veth",
                 "peer", "name", host.veth, "netns", switch])  # fmt: skip
            run(["ip", "-n", switch, "link", "set", "dev", host.veth, "master", "br0"])
            run(["ip", "-n", switch, "link", "set", "dev", host.veth, "up"])
            run(["ip", "-n", host.namespace, "addr", "add", f"{address}/24", "dev", "eth0"])
            run(["ip", "-n", host.namespace, "link", "set", "dev", "eth0", "up"])
            run(["ip", "-n", host.namespace, "link", "set", "dev", "lo", "up"])

    def _namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)

    def _start(
        self,
        host: Host,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Proc:
        assert self.folder is not None
        log_path = self.folder / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 (fixed commands)
                ["ip", "netns", "exec", host.namespace, *command],  # noqa: S607
                cwd=ROOT,
                env=dict(env) if env is not None else None,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, process, log_path, stop_signal)
        self.procs[name] = proc
        return proc

    def _start_data_host(self, pg_bin: Path, timeout: float) -> None:
        assert self.folder is not None
        data = self.hosts["data"]
        pgdata = self.folder / "pgdata"
        pgdata.mkdir()
        shutil.chown(pgdata, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        run([*as_postgres, str(pg_bin / "initdb"), "-D", str(pgdata), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"], cwd="/")  # fmt: skip
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        # idle_in_transaction_session_timeout: a host cut off mid-transaction loses its
        # row locks after 5 s instead of when TCP gives up (minutes), so the survivors'
        # sweeper can take its replies.
        self._start(
            data,
            "postgres",
            [*as_postgres, str(pg_bin / "postgres"), "-D", str(pgdata),
             "-c", f"listen_addresses={DATA_ADDRESS}", "-c", f"unix_socket_directories={pgdata}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "idle_in_transaction_session_timeout=5s", "-c", "max_connections=200"],
            stop_signal=signal.SIGINT,  # fast shutdown: ends the sessions of cut hosts too
        )  # fmt: skip
        self._start(
            data,
            "redis",
            ["redis-server", "--bind", DATA_ADDRESS, "--port", "6379", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.folder)],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with (
                    self.client(),
                    psycopg.connect(
                        f"postgres://postgres@{DATA_ADDRESS}:5432/postgres",
                        autocommit=True,
                        connect_timeout=3,
                    ) as conn,
                ):
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
                break
            except psycopg.OperationalError as exc:
                if not self.procs["postgres"].alive() or time.monotonic() > deadline:
                    raise ClusterError(
                        f"PostgreSQL did not start: {exc}\n{self.procs['postgres'].output()}"
                    ) from exc
                time.sleep(0.2)

    def _wait_http(self, url: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[name]
            if not proc.alive():
                raise ClusterError(f"{name} exited:\n{proc.output()[-4000:]}")
            try:
                with self.client():
                    if httpx.get(url, timeout=3).status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"{url} did not answer 200:\n{proc.output()[-4000:]}")
            time.sleep(0.2)

    def _start_nginx(self, nginx: str) -> None:
        assert self.folder is not None
        prefix = self.folder / "nginx"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / name).mkdir(parents=True)
        prefix.chmod(0o755)
        config = prefix / "nginx.conf"
        config.write_text(
            render_nginx_config(
                prefix=prefix,
                listen=f"{PROXY_ADDRESS}:{PROXY_PORT}",
                upstreams=[f"{h.address}:{APP_PORT}" for h in self.apps],
                static_root=Path(self.static_root).resolve(),
                mime_types=mime_types_path(nginx),
            )
        )
        base = [nginx, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
        run(["ip", "netns", "exec", self.hosts["proxy"].namespace, *base, "-t"])
        self._start(self.hosts["proxy"], "nginx", base, stop_signal=signal.SIGQUIT)
        self._wait_http(f"{self.url}/healthz", "nginx", 15)

    def stop(self) -> None:
        """Stop every process (app hosts first), delete the namespaces and the folder."""
        order = sorted(self.procs.values(), key=lambda p: p.name in ("postgres", "redis"))
        for group in (
            [p for p in order if p.name not in ("postgres", "redis")],
            [p for p in order if p.name in ("postgres", "redis")],
        ):
            for proc in group:
                if proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, proc.stop_signal)
            for proc in group:
                try:
                    proc.process.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.process.wait(5)
        for name in reversed(self.namespaces):
            delete_namespace(name)
        self.namespaces.clear()
        if self.folder is not None and not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> NetnsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the tests do -----------------------------------------------------------------
    def manage(self, *args: str, host: str = "app1") -> str:
        """``manage.py`` on an app host (its stdout)."""
        return run(
            ["ip", "netns", "exec", self.hosts[host].namespace, sys.executable,
             str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=self._env(),
        )  # fmt: skip

    def cut(self, host: str) -> None:
        """Pull a host's cable: its end of the switch goes down (``ip link set ... down``)."""
        run(["ip", "-n", f"{self.tag}-sw", "link", "set", "dev", self.hosts[host].veth, "down"])

    def reconnect(self, host: str) -> None:
        run(["ip", "-n", f"{self.tag}-sw", "link", "set", "dev", self.hosts[host].veth, "up"])

    def connections(self, host: str, peer: str, port: int) -> int:
        """Established TCP connections from ``host`` to ``peer:port``."""
        out = run(["ip", "netns", "exec", self.hosts[host].namespace, "ss", "-Htn", "state",
                   "established", "dst", f"{peer}:{port}"], check=False)  # fmt: skip
        return len([line for line in out.splitlines() if line.strip()])

    def access_log(self) -> list[dict[str, Any]]:
        """nginx's access log (deploy/chat/http.conf's JSON lines; written when a request ends)."""
        assert self.folder is not None
        path = self.folder / "nginx" / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def reload_nginx(self) -> None:
        """SIGHUP: new nginx workers; the old ones close their idle upstream connections."""
        os.kill(self.procs["nginx"].pid, signal.SIGHUP)


# --- make cluster HOSTS=N ------------------------------------------------------------------
def forward(listen_port: int, namespace: str, address: str, port: int) -> socket.socket:
    """Forward 127.0.0.1:``listen_port`` (this namespace) to ``address:port`` in
    ``namespace``: one thread per direction and connection (written here; a by-hand tool)."""
    server = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                with in_netns(namespace):
                    upstream = socket.create_connection((address, port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hosts", nargs="?", type=int, default=2, help="app hosts (default 2)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT") or 8080))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 200:
        parser.error("1 to 200 app hosts")
    env = {
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    }
    cluster = NetnsCluster(
        app_hosts=args.hosts,
        env=env,
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
        run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT,
            env={**os.environ, **env})  # fmt: skip
        cluster.start()
        local = f"http://127.0.0.1:{args.port}"
        server = forward(args.port, cluster.hosts["proxy"].namespace, PROXY_ADDRESS, PROXY_PORT)
        print(cluster.manage("demo_setup", "--url", f"{local}/"))
        print(f"  proxy:  nginx at {cluster.url}/ in {cluster.hosts['proxy'].namespace}; "
              f"forwarded from {local}/")  # fmt: skip
        print(f"  data:   PostgreSQL {cluster.database_url}, Redis {cluster.redis_url}")
        for index, host in enumerate(cluster.apps, start=1):
            print(f"  app{index}:   daphne {cluster.app_url(index)} (pid "
                  f"{cluster.daphne(index).pid}) in {host.namespace}")  # fmt: skip
        print(f"  Cut a host: ip -n {cluster.tag}-sw link set dev v-app1 down (up to reconnect)")
        print(f"  Files and logs: {cluster.folder}. Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in cluster.procs.items():
                if proc.process.returncode is None and not proc.alive():
                    print(f"{name} (pid {proc.pid}) exited", file=sys.stderr)
            time.sleep(0.5)
        server.close()
        print("stopping ...")
        return 0
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
