"""Two daphne processes behind a private nginx (scripts/cluster.py) on the test database."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from scripts.cluster import Cluster, ClusterError, DaphneProcess, find_nginx
from tests.e2e.server import ROOT, free_port, test_database_url

REDIS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/2"


def require_nginx() -> None:
    """Fail (never skip) when nginx is missing: CI installs it with scripts/ensure_nginx.sh."""
    try:
        find_nginx()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


def start_test_cluster(**env: str) -> Cluster:
    """nginx + two daphnes (tests.settings, the test database, Redis) on free ports."""
    require_nginx()
    cluster = Cluster(
        database_url=test_database_url(),
        redis_url=REDIS,
        size=2,
        port=free_port(),
        daphne_ports=[free_port(), free_port()],
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", **env},
        static_root=ROOT / "web" / "static",
    )
    try:
        return cluster.start()
    except ClusterError as exc:
        pytest.fail(f"the nginx cluster did not start: {exc}", pytrace=False)


def worker_pid(worker: str) -> int:
    """The pid in a ``Message.worker`` id (``<host>.<pid>.<random>``)."""
    return int(worker.split(".")[-2])


def upstream_ports(entry: dict[str, Any]) -> list[int]:
    """The daphne ports nginx tried for one request, in order ("a:1, b:2" on a retry)."""
    return [int(part.strip().rsplit(":", 1)[1]) for part in entry["upstream_addr"].split(",")]


def log_entry(
    cluster: Cluster, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The last nginx access-log entry matching ``predicate`` (written when a request ends)."""
    deadline = time.monotonic() + timeout
    while True:
        matches = [e for e in cluster.access_log() if predicate(e)]
        if matches:
            return matches[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching nginx access-log entry in {cluster.access_log()}")
        time.sleep(0.1)


def served_by(cluster: Cluster, entry: dict[str, Any]) -> DaphneProcess:
    """The daphne that finally answered the request of an access-log entry."""
    return cluster.daphne_by_port(upstream_ports(entry)[-1])


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """``{"id", "event", "data"}`` for each complete event of a raw SSE body."""
    events = []
    for block in body.decode(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(": ")
            if sep and name in ("id", "event", "data"):
                fields[name] = value
        if "event" in fields and "data" in fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
