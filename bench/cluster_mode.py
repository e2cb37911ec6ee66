"""``python bench/run.py --cluster``: the product as one daphne, then as two behind nginx.

Both deployments run the product on the same PostgreSQL database (``bench_cluster`` on
127.0.0.1:5432, created when missing, migrated) and the same Redis database
(``redis://127.0.0.1:6379/6``), with the provider set-up of the normal product phase
(``AI_PROVIDER=openai`` against ``bench/upstream.py``, the bench user, token, context and
quota, ``CHAT_MAX_CONCURRENT_STREAMS`` large, ``LOG_LEVEL=WARNING``, ``DJANGO_DEBUG``
off):

- ``1 daphne``: one ``daphne chatproject.asgi:application`` process, loaded directly;
- ``2 daphne + nginx``: scripts/cluster.py's :class:`Cluster` (two daphne processes with
  the same command line, behind a private nginx running deploy/chat/'s production locations,
  one nginx worker per core like production's ``worker_processes auto``), loaded
  through nginx.

Both are up for the whole run and loaded in turn, concurrency by concurrency (the idle one
costs nothing), so each pair of rows is measured under the same conditions.

A phase is open-ended: C workers run T=200-token turns back to back. Their first starts
are spread over one expected turn length (T x C / min(ideal, the deployment's saturated
throughput measured at the previous concurrency), at least 2 s), so that turns end and
restart evenly instead of in waves even when the server is saturated and turns last
10-20 s. ``SETTLE_S`` later comes the steady window: ``WINDOW_S`` s or one expected turn,
the longer (then each worker ends about one turn in it, whatever the phase of its turns).
At its end no turn starts any more and the turns in flight finish (cut after at most
``DRAIN_MAX_S`` s). Throughput, CPU and latencies come from that window: tokens received
by the clients per second, turns completed per second, time to first chunk and
inter-chunk gaps of the turns started in the window, and CPU (user + system) of the
daphne processes (summed), of nginx (master and workers), of the upstream and load
generator, and of PostgreSQL and Redis, in cores (CPU s per s). Before the next phase
the runner waits until the upstream has no stream open.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    LONG,
    PACE_MS,
    RESULTS,
    ROOT,
    SHORT,
    STREAM_PATH,
    Server,
    clean_env,
    configure_upstream,
    cpu_seconds,
    error_text,
    flush_redis,
    fmt,
    free_port,
    machine,
    now_iso,
    product_env,
    setup_product,
    start_upstream,
    upstream_base_url,
)
from bench.load import StreamResult, Target, percentile, run_load
from scripts.cluster import Cluster, daphne_command, ensure_postgres_database

DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_cluster"
REDIS_URL = "redis://127.0.0.1:6379/6"
CONCURRENCIES = (50, 200, 400)
WINDOW_S = 10.0  # the steady-state measurement window: this or one turn, the longer
SETTLE_S = 1.0  # between the end of the ramp and the window
DRAIN_MAX_S = 30.0  # turns still running this long after the window are cut
BUDGET_S = 285.0  # a phase that could end after this is skipped (whole run < 5 min)
ONE, TWO = "1 daphne", "2 daphne + nginx"


@dataclass
class Deployment:
    """What the load generator hits, and the processes whose CPU is measured."""

    name: str
    base_url: str
    daphnes: list[psutil.Process]
    nginx: list[psutil.Process] = field(default_factory=list)


def service_cpu() -> dict[tuple[int, float], float]:
    """CPU seconds of each PostgreSQL and Redis server process, by (pid, create time).

    These serve anything else on the machine too (tests), and PostgreSQL starts and ends
    backends as connections come and go: see :func:`service_delta`.
    """
    found = {}
    for process in psutil.process_iter(["name", "create_time", "cpu_times"]):
        name = process.info["name"] or ""
        times = process.info["cpu_times"]
        if name.startswith(("postgres", "redis-server")) and times is not None:
            found[(process.pid, process.info["create_time"])] = times.user + times.system
    return found


def service_delta(before: dict[tuple[int, float], float], after: dict[Any, float]) -> float:
    """CPU used between two :func:`service_cpu` snapshots: processes alive at both, plus
    those started in between (all their CPU); a backend that ended in between is lost."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


# --- one phase ----------------------------------------------------------------------------


@dataclass
class Plan:
    concurrency: int
    turn_s: float  # expected length of one turn
    ramp: float
    window: tuple[float, float]
    timeout: float

    @classmethod
    def make(cls, concurrency: int, capacity: float | None) -> Plan:
        """The phase's timing, from the deployment's saturated throughput (if known)."""
        ideal = concurrency * 1000 / PACE_MS
        rate = min(ideal, capacity) if capacity else ideal
        turn = LONG * concurrency / rate
        ramp = max(2.0, turn)
        # At least one turn long: then every worker ends about one turn in the window,
        # whatever the phase of its turns, and completed turns / s does not depend on it.
        window = (ramp + SETTLE_S, ramp + SETTLE_S + max(WINDOW_S, turn))
        return cls(concurrency, turn, ramp, window, window[1] + min(DRAIN_MAX_S, 1.5 * turn + 4))


async def settle(client: httpx.AsyncClient, upstream: Server, limit: float = 20.0) -> None:
    """Wait (at most ``limit`` s) until the upstream has no stream open."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        stats = (await client.get(upstream.url("/_bench/stats"))).json()
        if stats["streams"] <= stats["streams_done"] + stats["streams_cut"]:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)


async def measure(
    deployment: Deployment,
    target: Target,
    plan: Plan,
    upstream: Server,
    me: psutil.Process,
    client: str,
) -> dict[str, Any]:
    """Load one deployment at one concurrency; steady-window throughput, latency, CPU."""
    snaps: dict[str, dict[str, Any]] = {}

    def on_mark(label: str) -> None:
        snaps[label] = {
            "daphnes": [cpu_seconds(p) for p in deployment.daphnes],
            "nginx": sum(cpu_seconds(p) for p in deployment.nginx),
            "upstream": upstream.cpu(),
            "loadgen": cpu_seconds(me),
            "services": service_cpu(),
            "host": psutil.cpu_times(),
        }

    marks: dict[str, float] = {}
    results, wall = await run_load(
        target,
        concurrency=plan.concurrency,
        turns=1_000_000,
        expected_tokens=LONG,
        ramp=plan.ramp,
        timeout=plan.timeout,
        client=client,
        duration=plan.window[1],
        window=plan.window,
        marks=marks,
        on_mark=on_mark,
    )
    row = summarize_phase(deployment, plan.concurrency, results, wall, marks, snaps)
    row.update(ramp_s=round(plan.ramp, 1), expected_turn_s=round(plan.turn_s, 1))
    return row


def summarize_phase(
    deployment: Deployment,
    concurrency: int,
    results: list[StreamResult],
    wall: float,
    marks: dict[str, float],
    snaps: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    cut = [r for r in results if r.error == "timeout"]
    failed = [r for r in results if not r.ok and r.error != "timeout"]
    kinds: dict[str, int] = {}
    for r in failed:
        kinds[r.error] = kinds.get(r.error, 0) + 1
    row: dict[str, Any] = {
        "setup": deployment.name,
        "C": concurrency,
        "turns": len(results),
        "ok": sum(r.ok for r in results),
        "errors": len(failed),
        "error_kinds": kinds,
        "cut": len(cut),
        "wall_s": round(wall, 2),
    }
    if "t1" not in marks or "end" not in snaps:
        row["incomplete"] = True
        return row
    t0, t1 = marks["t0"], marks["t1"]
    span = t1 - t0
    # Turns started in the window, finished or cut at the end of the phase (what they got).
    steady = [
        r
        for r in results
        if (r.ok or r.error == "timeout") and r.started is not None and t0 <= r.started <= t1
    ]
    ttfc = [r.ttfc for r in steady if r.ttfc is not None]
    gaps = [g for r in steady for g in r.gaps]
    finished = sum(1 for r in results if r.ok and r.finished is not None and t0 <= r.finished <= t1)
    tokens = marks["tokens1"] - marks["tokens0"]
    a, b = snaps["start"], snaps["end"]
    daphne_cpu = [y - x for x, y in zip(a["daphnes"], b["daphnes"], strict=True)]
    host_total = sum(b["host"]) - sum(a["host"])
    host_busy = host_total - (b["host"].idle - a["host"].idle)
    services = service_delta(a["services"], b["services"])
    measured = sum(daphne_cpu) + services
    measured += sum(b[key] - a[key] for key in ("nginx", "upstream", "loadgen"))

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    row.update(
        window_s=round(span, 2),
        tokens_per_s=round(tokens / span),
        ideal_tokens_per_s=round(concurrency * 1000 / PACE_MS),
        chunks_per_s=round((marks["chunks1"] - marks["chunks0"]) / span),
        turns_per_s=round(finished / span, 1),
        steady_turns=len(steady),
        ttfc_p50=ms(percentile(ttfc, 50)),
        ttfc_p99=ms(percentile(ttfc, 99)),
        gap_p50=ms(percentile(gaps, 50)),
        gap_p99=ms(percentile(gaps, 99)),
        daphne_cores=round(sum(daphne_cpu) / span, 2),
        daphne_cores_each=[round(c / span, 2) for c in daphne_cpu],
        daphne_ms_per_1k_tokens=round(sum(daphne_cpu) / tokens * 1e6, 1) if tokens else None,
        nginx_cores=round((b["nginx"] - a["nginx"]) / span, 2) if deployment.nginx else None,
        upstream_cores=round((b["upstream"] - a["upstream"]) / span, 2),
        loadgen_cores=round((b["loadgen"] - a["loadgen"]) / span, 2),
        services_cores=round(services / span, 2),
        other_cores=round(max(0.0, host_busy - measured) / span, 2),
        host_busy=round(host_busy / max(1e-9, host_total), 3),
    )
    return row


# --- report -------------------------------------------------------------------------------


def _errors(r: dict[str, Any]) -> str:
    text = error_text(r)
    if r["cut"]:
        text += f" + {r['cut']} cut"
    return text


def main_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setup | C | tokens / s (of ideal) | turns / s | TTFC p50 / p99 ms | gap p99 ms "
        "| errors | daphne CPU, cores | daphne CPU ms / 1k tokens | nginx CPU, cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("incomplete"):
            lines.append(f"| {r['setup']} | {r['C']} | - | - | - | - | {_errors(r)} | - | - | - |")
            continue
        share = r["tokens_per_s"] / r["ideal_tokens_per_s"] * 100
        lines.append(
            f"| {r['setup']} | {r['C']} | {r['tokens_per_s']:,} ({share:.0f}%) "
            f"| {fmt(r['turns_per_s'])} | {fmt(r['ttfc_p50'])} / {fmt(r['ttfc_p99'])} "
            f"| {fmt(r['gap_p99'])} | {_errors(r)} | {r['daphne_cores']:.2f} "
            f"| {fmt(r['daphne_ms_per_1k_tokens'])} | {fmt(r['nginx_cores'], 2)} |"
        )
    return "\n".join(lines)


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["setup"], r["C"]): r for r in rows if not r.get("incomplete")}
    out = []
    for c in CONCURRENCIES:
        one, two = by.get((ONE, c)), by.get((TWO, c))
        if not one or not two:
            out.append(f"- C={c}: not measured on both")
            continue

        def x(key: str, one: dict = one, two: dict = two) -> str:
            return f"x{two[key] / one[key]:.2f}" if one.get(key) and two.get(key) else "-"

        out.append(
            f"- C={c}: tokens / s {one['tokens_per_s']:,} -> {two['tokens_per_s']:,} "
            f"({x('tokens_per_s')}), turns / s {x('turns_per_s')}, TTFC p50 "
            f"{fmt(one['ttfc_p50'])} -> {fmt(two['ttfc_p50'])} ms, gap p99 "
            f"{fmt(one['gap_p99'])} -> {fmt(two['gap_p99'])} ms; CPU: daphne "
            f"{one['daphne_cores']:.2f} -> {two['daphne_cores']:.2f} cores, + nginx "
            f"{fmt(two['nginx_cores'], 2)}"
        )
    return out


#: The issue's target for the second process: throughput at C=200 at least 1.5x one's.
TWO_PROCESS_C = 200
TWO_PROCESS_GAIN = 1.5


def two_process_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two-process target's verdict: ``met`` (True / False / None when not measured),
    the gain and the text of its line."""
    by = {(r["setup"], r["C"]): r for r in rows if not r.get("incomplete")}
    one, two = by.get((ONE, TWO_PROCESS_C)), by.get((TWO, TWO_PROCESS_C))
    if not one or not two or not one.get("tokens_per_s"):
        return {"met": None, "gain": None, "text": f"C={TWO_PROCESS_C} not measured on both"}
    gain = round(two["tokens_per_s"] / one["tokens_per_s"], 2)
    return {
        "met": gain >= TWO_PROCESS_GAIN,
        "gain": gain,
        "text": (
            f"tokens / s {one['tokens_per_s']:,} -> {two['tokens_per_s']:,} (x{gain}); errors "
            f"{one['errors']} / {two['errors']}; host busy {two['host_busy'] * 100:.0f}%"
        ),
    }


def two_process_line(target: dict[str, Any], when: str = "") -> str:
    met = target["met"]
    verdict = "n/a" if met is None else ("**met**" if met else "**not met**")
    return (
        f"- two processes behind nginx (PostgreSQL + Redis): throughput at C={TWO_PROCESS_C} "
        f">= {TWO_PROCESS_GAIN}x one process: {verdict} ({target['text']}{when})"
    )


def harness_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setup | C | turns (ok / errors / cut) | window s | daphne cores, each "
        "| upstream cores | load generator cores | PostgreSQL + Redis cores | other cores "
        "| host busy | ramp s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("incomplete"):
            continue
        each = " + ".join(f"{c:.2f}" for c in r["daphne_cores_each"])
        lines.append(
            f"| {r['setup']} | {r['C']} | {r['turns']} ({r['ok']} / {r['errors']} / {r['cut']}) "
            f"| {r['window_s']} | {each} | {r['upstream_cores']:.2f} | {r['loadgen_cores']:.2f} "
            f"| {r['services_cores']:.2f} | {r['other_cores']:.2f} "
            f"| {r['host_busy'] * 100:.0f}% | {r['ramp_s']} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], elapsed: float, nginx_workers: int) -> str:
    return "\n".join(
        [
            "# Cluster benchmark: one daphne process vs two behind nginx",
            "",
            f"{now_iso()}, {machine()}; PostgreSQL `bench_cluster`, Redis db 6 (both "
            f"deployments); nginx with {nginx_workers} worker(s); upstream T={LONG} tokens "
            f"at {PACE_MS:g} ms, one token per chunk (ideal: {1000 / PACE_MS:g} tokens / s "
            "per open stream). Each phase: C workers run turns back to back, first starts "
            "spread over one expected turn length (ramp); figures over the steady window "
            f"after it ({WINDOW_S:g} s or one expected turn, the longer). Run took "
            f"{elapsed:.0f} s "
            "(`make bench BENCH_ARGS=--cluster`).",
            "",
            "Tokens / s: received by the clients in the window (of ideal: against C x "
            f"{1000 / PACE_MS:g}). Turns / s: turns completed in the window. TTFC and gap: "
            "turns started in the window. Errors: failed turns (+ turns cut when the phase "
            "ended, not errors). CPU in cores = CPU seconds (user + system) per second of "
            "the window; daphne is the sum over its processes.",
            "",
            main_table(rows),
            "",
            "## Two processes against one",
            "",
            *ratio_lines(rows),
            "",
            "## Target",
            "",
            two_process_line(two_process_target(rows)),
            "",
            "## Harness (who else used the two cores)",
            "",
            harness_table(rows),
            "",
        ]
    )


# --- the run ------------------------------------------------------------------------------


async def run_phases(
    deployments: list[Deployment],
    targets: dict[str, Target],
    upstream: Server,
    started: float,
    client: str,
) -> list[dict[str, Any]]:
    me = psutil.Process()
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as http:
        # Warm-up (not measured): imports, URL resolvers, database and Redis connections of
        # every daphne process (nginx spreads the warm-up turns round-robin).
        await configure_upstream(http, upstream, tokens=SHORT, pace_ms=1)
        for deployment in deployments:
            await run_load(
                targets[deployment.name],
                concurrency=8,
                turns=3,
                expected_tokens=SHORT,
                timeout=30,
                client=client,
            )
        await configure_upstream(http, upstream, tokens=LONG)
        capacity: dict[str, float] = {}
        for concurrency in CONCURRENCIES:
            for deployment in deployments:
                plan = Plan.make(concurrency, capacity.get(deployment.name))
                if time.monotonic() - started + plan.timeout + 25 > BUDGET_S:
                    print(f"skipped {deployment.name} C={concurrency}: time budget", flush=True)
                    continue
                await settle(http, upstream)
                row = await measure(
                    deployment, targets[deployment.name], plan, upstream, me, client
                )
                rows.append(row)
                # A phase below 90% of ideal was saturated: its throughput is a capacity.
                if (
                    row.get("tokens_per_s")
                    and row["tokens_per_s"] < 0.9 * row["ideal_tokens_per_s"]
                ):
                    best = max(capacity.get(deployment.name, 0.0), row["tokens_per_s"])
                    capacity[deployment.name] = best
                print(
                    f"[{time.monotonic() - started:5.1f}s] {deployment.name:17} "
                    f"C={concurrency:<3} ok={row['ok']}/{row['turns']} cut={row['cut']} "
                    f"tokens/s={row.get('tokens_per_s')} turns/s={row.get('turns_per_s')} "
                    f"ttfc50={row.get('ttfc_p50')} gap99={row.get('gap_p99')} "
                    f"daphne={row.get('daphne_cores')} nginx={row.get('nginx_cores')} "
                    f"other={row.get('other_cores')}",
                    flush=True,
                )
    return rows


def run_cluster(*, client: str = "raw", keep: bool = False) -> None:
    """The cluster benchmark (``python bench/run.py --cluster``): writes the report."""
    started = time.monotonic()
    # The cluster's daphnes inherit this process's environment: no DJANGO_* from the shell.
    base_env = clean_env()
    os.environ.clear()
    os.environ.update(base_env)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    nginx_workers = psutil.cpu_count() or 1
    upstream: Server | None = None
    single: Server | None = None
    cluster: Cluster | None = None
    try:
        upstream = start_upstream(tmp, base_env)
        if ensure_postgres_database(DATABASE_URL):
            print("created database bench_cluster", flush=True)
        env = product_env(base_env, upstream_base_url(upstream), DATABASE_URL, REDIS_URL)
        key, context_id = setup_product(env)
        flush_redis(REDIS_URL)
        port = free_port()
        single = Server("daphne-1", daphne_command(port, tmp / "daphne-1.access.log"), env, port)
        single.start(tmp)
        cluster = Cluster(
            database_url=DATABASE_URL,
            redis_url=REDIS_URL,
            size=2,
            port=free_port(),
            daphne_ports=[free_port(), free_port()],
            env=env,
            worker_processes=nginx_workers,
            keep=keep,
        ).start()
        assert cluster.nginx_process is not None
        master = psutil.Process(cluster.nginx_process.pid)
        deployments = [
            Deployment(ONE, single.base_url, [single.ps]),
            Deployment(
                TWO,
                cluster.url,
                [psutil.Process(d.pid) for d in cluster.daphnes],
                [master, *master.children(recursive=True)],
            ),
        ]
        print(
            f"[{time.monotonic() - started:5.1f}s] up: upstream :{upstream.port}; {ONE} :{port} "
            f"pid {single.process.pid}; {TWO} {cluster.url} daphne pids "
            f"{[d.pid for d in cluster.daphnes]}, nginx pids "
            f"{[p.pid for p in deployments[1].nginx]}",
            flush=True,
        )
        targets = {
            d.name: Target.product(d.name, d.base_url + STREAM_PATH, key, context_id)
            for d in deployments
        }
        rows = asyncio.run(run_phases(deployments, targets, upstream, started, client))
    finally:
        if cluster is not None:
            cluster.stop()
        for server in (single, upstream):
            if server is not None:
                server.stop()
        if keep:
            print(f"logs kept in {tmp} and {cluster.prefix if cluster else '-'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    order = {ONE: 0, TWO: 1}
    rows.sort(key=lambda r: (r["C"], order[r["setup"]]))
    md = report(rows, time.monotonic() - started, nginx_workers)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster.md").write_text(md)
    # For bench/run.py's target lines (the two-process figure comes from this mode).
    (RESULTS / "cluster.json").write_text(
        json.dumps({"date": now_iso(), "target": two_process_target(rows), "rows": rows}, indent=1)
    )
    print()
    print(md)
    print(f"Saved {(RESULTS / 'cluster.md').relative_to(ROOT)}.")
