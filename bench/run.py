"""The streaming benchmark: the full product against the empty reference relays, in one run.

    python bench/run.py [--quick] [--postgres] [--redis] [--cluster | --memory]

Starts, each as its own process on 127.0.0.1: the fake OpenAI upstream
(``bench/upstream.py``), the two references (``bench/references.py``: bare Starlette under
uvicorn, empty Django view under daphne), and the product twice (``daphne
chatproject.asgi:application`` with ``AI_PROVIDER=openai`` pointed at the upstream): once
as shipped (flow extraction on) and once with ``FLOWS_EXTRACTION_ENABLED=false``. The
product gets a fresh SQLite file (or ``--postgres``: database ``bench`` on
127.0.0.1:5432, recreated), migrated, with a bench user, token and context.

Then, phase by phase (T tokens at ``pace`` ms, C concurrent turns), every target is
loaded in turn by ``bench/load.py``'s generator, and its server process is measured with
psutil: CPU seconds (user + system, all threads) and peak resident memory against its
memory just before the phase. The short-reply phases (T=5) with the T=200 ones give, per
target and concurrency, a two-point fit ``CPU per turn = fixed + marginal * T``.

Writes the table to stdout, ``bench/results/latest.md`` and ``latest.json``, and a chart
to ``docs/bench.png``. The whole run is bounded (about 4 minutes, under 5).

``--cluster`` runs the cluster mode instead (``bench/cluster_mode.py``): the product as one
daphne process and as two behind nginx (scripts/cluster.py), on PostgreSQL and Redis, at
C=50, 200 and 400; writes ``bench/results/cluster.md`` (under 5 minutes). ``--memory``
runs the memory mode (``bench/memory_mode.py``): memory per open stream with C streams
held open. The targets' report adds the last result of each mode (``cluster.json``,
``memory.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

from bench.cluster_mode import run_cluster, two_process_line  # noqa: E402
from bench.common import (  # noqa: E402
    LONG,
    PACE_MS,
    PY,
    RESULTS,
    SHORT,
    STREAM_PATH,
    Server,
    clean_env,
    configure_upstream,
    daphne_cmd,
    error_text,
    fmt,
    free_port,
    machine,
    now_iso,
    pin_cores,
    product_env,
    recreate_postgres_database,
    setup_product,
    sqlite_url,
    start_upstream,
    stop_all,
    upstream_base_url,
)
from bench.load import Target, run_load, summarize  # noqa: E402
from bench.memory_mode import memory_line, run_memory  # noqa: E402

#: The reference relays: server stack x HTTP client to the upstream (bench/references.py).
REFERENCES = ("starlette", "django", "starlette-aiohttp", "django-aiohttp")
#: What the targets are read against: the empty Django view on aiohttp, the client the
#: product's SDKs use by default.
REFERENCE = "django-aiohttp"
ORDER = {
    name: i for i, name in enumerate(["upstream", *REFERENCES, "product", "product-noextract"])
}

CHART = ROOT / "docs" / "bench.png"
CHART_PINNED = ROOT / "docs" / "bench-pinned.png"  # --pin
RUN_BUDGET_S = 285.0  # phases that would start after this are skipped
IDLE_S = 3.0
REDIS_URL = "redis://127.0.0.1:6379/1"  # --redis


@dataclass
class Phase:
    tokens: int
    concurrency: int
    turns: int  # per worker
    targets: list[str]
    ramp: float = 0.0
    label: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


# --- measurement --------------------------------------------------------------------------


async def _sample_rss(server: Server, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], server.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def measure(
    phase: Phase,
    target: Target,
    server: Server,
    upstream: Server,
    me: psutil.Process,
    client: str,
) -> dict[str, Any]:
    """Load one target for one phase; the summary plus server CPU and memory."""
    await asyncio.sleep(0.3)  # let the previous phase's stragglers settle
    rss_before = server.rss()
    cpu0, up0 = server.cpu(), upstream.cpu()
    split0 = server.cpu_split()
    me0 = sum(me.cpu_times()[:2])
    host0 = psutil.cpu_times()
    peak = [rss_before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(server, stop, peak))
    ideal = phase.tokens * PACE_MS / 1000
    # A saturated server (C=500 on one process: 100k tokens at ~4-5k tokens/s) needs
    # 20-30 s for the phase; a turn not done by then counts as an error ("timeout").
    timeout = max(45.0, phase.ramp + phase.turns * ideal * 6 + 10)
    results, wall = await run_load(
        target,
        concurrency=phase.concurrency,
        turns=phase.turns,
        expected_tokens=phase.tokens,
        ramp=phase.ramp,
        timeout=timeout,
        client=client,
    )
    stop.set()
    await sampler
    cpu = server.cpu() - cpu0
    split1 = server.cpu_split()
    host1 = psutil.cpu_times()
    host_total = sum(host1) - sum(host0)
    host_busy_cpu = host_total - (host1.idle - host0.idle)  # CPU seconds, all cores
    busy = host_busy_cpu / max(1e-9, host_total)
    bench_cpu = cpu + (upstream.cpu() - up0 if server is not upstream else 0)
    bench_cpu += sum(me.cpu_times()[:2]) - me0
    row = summarize(results, tokens=phase.tokens, pace_ms=PACE_MS)
    tokens = row["tokens"]
    row.update(
        target=target.name,
        T=phase.tokens,
        C=phase.concurrency,
        wall_s=round(wall, 2),
        cpu_s=round(cpu, 4),
        cpu_user_s=round(split1[0] - split0[0], 3),
        cpu_sys_s=round(split1[1] - split0[1], 3),
        cpu_per_1k_tokens=round(cpu / tokens * 1000, 5) if tokens else None,
        cpu_per_turn_ms=round(cpu / max(1, row["ok"]) * 1000, 3),
        upstream_cpu_s=round(upstream.cpu() - up0, 3) if server is not upstream else None,
        loadgen_cpu_s=round(sum(me.cpu_times()[:2]) - me0, 3),
        host_busy=round(busy, 3),
        other_cpu_s=round(max(0.0, host_busy_cpu - bench_cpu), 2),
        rss_before_mb=round(rss_before / 2**20, 1),
        rss_peak_mb=round(peak[0] / 2**20, 1),
        rss_per_stream_kb=round((peak[0] - rss_before) / 1024 / phase.concurrency, 1),
    )
    return row


# --- derived figures ----------------------------------------------------------------------


def derive(rows: list[dict[str, Any]]) -> None:
    """Ratios to the references, TTFC overhead, and the fixed + marginal CPU fit."""
    by = {(r["target"], r["T"], r["C"]): r for r in rows}
    for r in rows:
        for ref in REFERENCES:
            other = by.get((ref, r["T"], r["C"]))
            mine = r.get("cpu_per_1k_tokens")
            theirs = other and other.get("cpu_per_1k_tokens")
            r[f"ratio_{ref}"] = round(mine / theirs, 2) if mine and theirs else None
        up = by.get(("upstream", r["T"], r["C"]))
        r["ttfc_overhead_p50"] = (
            round(r["ttfc_p50"] - up["ttfc_p50"], 2)
            if up and r.get("ttfc_p50") is not None and up.get("ttfc_p50") is not None
            else None
        )
        short = by.get((r["target"], SHORT, r["C"]))
        r["fixed_cpu_ms"] = r["marginal_cpu_us"] = None
        if r["T"] == LONG and short and short["ok"] and r["ok"]:
            long_turn = r["cpu_s"] / r["ok"]
            short_turn = short["cpu_s"] / short["ok"]
            marginal = (long_turn - short_turn) / (LONG - SHORT)
            r["marginal_cpu_us"] = round(marginal * 1e6, 1)
            r["fixed_cpu_ms"] = round((short_turn - SHORT * marginal) * 1000, 2)
    for r in rows:
        for ref in REFERENCES:
            other = by.get((ref, r["T"], r["C"]))
            for key in ("fixed_cpu_ms", "marginal_cpu_us"):
                mine, theirs = r.get(key), other and other.get(key)
                r[f"{key}_ratio_{ref}"] = (
                    round(mine / theirs, 2) if mine is not None and theirs else None
                )


COLUMNS = (
    "| target | T | C | turns | TTFC p50 / p99 ms | TTFC overhead p50 ms | gap p50 / p99 ms "
    "| last chunk over ideal p50 / p99 ms | errors | CPU s / 1k tokens | x starlette "
    "| x django | x django-aiohttp | fixed CPU / turn ms | marginal CPU / token µs "
    "| RSS / open stream KB |"
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, "|" + "---|" * COLUMNS.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["target"],
                    str(r["T"]),
                    str(r["C"]),
                    str(r["turns"]),
                    f"{fmt(r['ttfc_p50'])} / {fmt(r['ttfc_p99'])}",
                    fmt(r["ttfc_overhead_p50"]),
                    f"{fmt(r['gap_p50'])} / {fmt(r['gap_p99'])}",
                    f"{fmt(r['over_ideal_p50'])} / {fmt(r['over_ideal_p99'])}",
                    error_text(r),
                    fmt(r["cpu_per_1k_tokens"], 3),
                    fmt(r["ratio_starlette"], 2),
                    fmt(r["ratio_django"], 2),
                    fmt(r[f"ratio_{REFERENCE}"], 2),
                    fmt(r["fixed_cpu_ms"], 1),
                    fmt(r["marginal_cpu_us"], 1),
                    fmt(r["rss_per_stream_kb"], 1) if r["C"] >= 50 else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def harness_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | T | C | wall s | server CPU s (user + sys) | CPU / turn ms | upstream CPU s "
        "| load generator CPU s | other processes CPU s | host busy | RSS before / peak MB "
        "| tail after last chunk p50 ms | refused 503 server_busy / failed after start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['T']} | {r['C']} | {r['wall_s']} | {r['cpu_s']:.2f} "
            f"({r['cpu_user_s']:.2f} + {r['cpu_sys_s']:.2f}) "
            f"| {fmt(r['cpu_per_turn_ms'], 2)} | {fmt(r['upstream_cpu_s'], 2)} "
            f"| {fmt(r['loadgen_cpu_s'], 2)} | {fmt(r['other_cpu_s'], 2)} "
            f"| {r['host_busy'] * 100:.0f}% "
            f"| {r['rss_before_mb']} / {r['rss_peak_mb']} | {fmt(r['tail_p50'])} "
            f"| {r.get('refused', 0)} / {r.get('failed_after_start', 0)} |"
        )
    return "\n".join(lines)


def rss_slopes(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Peak RSS against open streams (T=200 phases, C >= 50): KB per open stream."""
    slopes = {}
    for name in {r["target"] for r in rows}:
        points = [
            (r["C"], r["rss_peak_mb"] * 1024)
            for r in rows
            if r["target"] == name and r["T"] == LONG and r["C"] >= 50 and r["ok"]
        ]
        if len(points) >= 2:
            n = len(points)
            mx = sum(p[0] for p in points) / n
            my = sum(p[1] for p in points) / n
            den = sum((p[0] - mx) ** 2 for p in points)
            if den:
                slopes[name] = round(sum((p[0] - mx) * (p[1] - my) for p in points) / den, 1)
    return slopes


#: CPU per relayed token: the product against :data:`REFERENCE`, at most this ratio at C.
CPU_RATIO_TARGETS = {1: 1.0, 50: 1.0, 200: 1.3, 500: 1.3}
#: `done` after the last chunk (tail) p50 below this many ms at C, unless refused early.
TAIL_TARGETS_MS = {200: 200.0, 500: 1000.0}
SHORT_TURN_CPU_RATIO = 2.0  # T=5 at C=50: CPU per turn
RSS_SLOPE_KB = 100.0


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def targets_verdict(
    rows: list[dict[str, Any]], slopes: dict[str, float], cluster: dict[str, Any] | None = None
) -> list[str]:
    """One line per target of the load issue: met / not met / n/a, with the numbers.
    Read against :data:`REFERENCE`; ``cluster`` is the last ``--cluster`` run's target."""
    by = {(r["target"], r["T"], r["C"]): r for r in rows}
    ref = REFERENCE
    out = []
    for c, bound in CPU_RATIO_TARGETS.items():
        p, d = by.get(("product", LONG, c)), by.get((ref, LONG, c))
        ok, text = None, "phase not run"
        if p and d and p.get("cpu_per_1k_tokens") and d.get("cpu_per_1k_tokens"):
            ratio = p["cpu_per_1k_tokens"] / d["cpu_per_1k_tokens"]
            ok = ratio <= bound
            text = (
                f"product {p['cpu_per_1k_tokens']:.3f} s vs {ref} {d['cpu_per_1k_tokens']:.3f} s "
                f"per 1k tokens: x{ratio:.2f}"
            )
            httpx_ref = by.get(("django", LONG, c))
            if httpx_ref and httpx_ref.get("cpu_per_1k_tokens"):
                text += (
                    f"; x{fmt(p.get('ratio_django'), 2)} the httpx django relay "
                    f"({httpx_ref['cpu_per_1k_tokens']:.3f} s)"
                )
        out.append(f"- CPU per token ≤ {bound}x {ref} at C={c}: {_verdict(ok)} ({text})")
    for c, bound in TAIL_TARGETS_MS.items():
        p = by.get(("product", LONG, c))
        ok, text = None, "phase not run"
        if p:
            tail = p.get("tail_p50")
            failed = p.get("failed_after_start", 0)
            ok = failed == 0 and tail is not None and tail < bound
            text = (
                f"tail p50 {fmt(tail)} ms over {p['ok']} completed turns; "
                f"{p.get('refused', 0)} refused early with 503 server_busy; "
                f"{failed} failed after they started; errors {error_text(p)}"
            )
        out.append(
            f"- `done` after the last chunk p50 < {bound:g} ms at C={c} (excess turns may be "
            f"refused early with 503 server_busy, none may fail after it started): "
            f"{_verdict(ok)} ({text})"
        )
    p, d = by.get(("product", SHORT, 50)), by.get((ref, SHORT, 50))
    ok, text = None, "phase not run"
    if p and d and p.get("ok") and d.get("ok") and d.get("cpu_per_turn_ms"):
        ratio = p["cpu_per_turn_ms"] / d["cpu_per_turn_ms"]
        ok = ratio <= SHORT_TURN_CPU_RATIO
        text = (
            f"product {p['cpu_per_turn_ms']:.2f} ms vs {ref} {d['cpu_per_turn_ms']:.2f} ms "
            f"per turn: x{ratio:.2f}"
        )
    out.append(
        f"- T={SHORT} at C=50: CPU per turn ≤ {SHORT_TURN_CPU_RATIO:g}x {ref}: "
        f"{_verdict(ok)} ({text})"
    )
    slope = slopes.get("product")
    points = sorted(
        r["C"] for r in rows if r["target"] == "product" and r["T"] == LONG and r["C"] >= 50
    )
    out.append(
        f"- memory per open stream < {RSS_SLOPE_KB:g} KB (slope of peak RSS over C): "
        f"{_verdict(None if slope is None else slope < RSS_SLOPE_KB)} "
        f"({fmt(slope)} KB per stream over C = {', '.join(map(str, points))}; "
        f"{ref}: {fmt(slopes.get(ref))} KB)"
    )
    memory = last_result("memory.json")
    if memory:
        out.append(memory_line(memory, f"; from `--memory` of {memory['date']}"))
    if cluster:
        out.append(two_process_line(cluster["target"], f"; from `--cluster` of {cluster['date']}"))
    else:
        out.append(
            "- two processes behind nginx: throughput at C=200 >= 1.5x one process: n/a "
            "(measured by `make bench BENCH_ARGS=--cluster`; no bench/results/cluster.json)"
        )
    # Earlier targets, kept: fixed CPU per turn, C=200 gaps, TTFC overhead.
    for c in (1, 50):
        p = by.get(("product-noextract", LONG, c))
        full = by.get(("product", LONG, c))
        fixed = p and p.get("fixed_cpu_ms")
        ok = None if fixed is None else fixed < 20
        extra = f"; with extraction {fmt(full and full.get('fixed_cpu_ms'))} ms" if full else ""
        out.append(
            f"- fixed CPU per turn (extraction off) < 20 ms at C={c}: {_verdict(ok)} "
            f"({fmt(fixed)} ms{extra})"
        )
    p, d = by.get(("product", LONG, 200)), by.get((ref, LONG, 200))
    if p and d:
        failed = p["errors"] - p.get("refused", 0)  # an early 503 server_busy is no error
        ok = failed == 0 and (
            p["gap_p99"] is not None
            and d["gap_p99"] is not None
            and p["gap_p99"] <= 2 * d["gap_p99"]
        )
        out.append(
            f"- C=200 on one process: no error (refusals aside) and gap p99 ≤ 2x {ref}'s: "
            f"{_verdict(ok)} (errors {failed}, refused {p.get('refused', 0)}, gap p99 "
            f"{fmt(p['gap_p99'])} ms vs {fmt(d['gap_p99'])} ms)"
        )
    p = by.get(("product", LONG, 1))
    ov = p and p.get("ttfc_overhead_p50")
    out.append(
        f"- TTFC overhead p50 < 15 ms at C=1: {_verdict(None if ov is None else ov < 15)} "
        f"({fmt(ov)} ms over the upstream's own "
        f"{fmt(by.get(('upstream', LONG, 1), {}).get('ttfc_p50'))} ms)"
    )
    return out


def last_result(name: str) -> dict[str, Any] | None:
    """A mode's last result in bench/results/ (``memory.json``), or None."""
    try:
        return json.loads((RESULTS / name).read_text())
    except (OSError, ValueError):
        return None


def last_cluster_target() -> dict[str, Any] | None:
    """The two-process target of the last ``--cluster`` run (bench/results/cluster.json)."""
    path = RESULTS / "cluster.json"
    try:
        data = json.loads(path.read_text())
        return {"date": data["date"], "target": data["target"]}
    except (OSError, ValueError, KeyError):
        return None


def chart(rows: list[dict[str, Any]], path: Path, pinned: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n
        for n in (*REFERENCES, "product", "product-noextract")
        if any(r["target"] == n for r in rows)
    ]
    concs = sorted({r["C"] for r in rows if r["T"] == LONG})
    by = {(r["target"], r["T"], r["C"]): r for r in rows}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    width = 0.8 / max(1, len(names))

    def bars(ax: Any, key: str, title: str, ylabel: str, scale: float = 1.0) -> None:
        for i, name in enumerate(names):
            values = [((by.get((name, LONG, c)) or {}).get(key) or 0) * scale for c in concs]
            ax.bar([x + i * width for x in range(len(concs))], values, width, label=name)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(concs))])
        ax.set_xticklabels([f"C={c}" for c in concs])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][0], "cpu_per_1k_tokens", f"Server CPU per 1,000 tokens (T={LONG})", "CPU ms", 1000)
    axes[0][0].legend(fontsize=8)
    bars(axes[0][1], "gap_p99", "Inter-chunk gap p99", "ms")
    bars(axes[1][0], "ttfc_p50", "Time to first chunk p50", "ms")
    ax = axes[1][1]
    fit_c = [c for c in (1, 50) if any(by.get((n, LONG, c), {}).get("fixed_cpu_ms") for n in names)]
    for j, c in enumerate(fit_c):
        fixed = [(by.get((n, LONG, c)) or {}).get("fixed_cpu_ms") or 0 for n in names]
        marg = [
            ((by.get((n, LONG, c)) or {}).get("marginal_cpu_us") or 0) * LONG / 1000 for n in names
        ]
        xs = [i + j * 0.4 for i in range(len(names))]
        ax.bar(xs, fixed, 0.38, label=f"fixed per turn, C={c}", alpha=0.9)
        ax.bar(xs, marg, 0.38, bottom=fixed, label=f"{LONG} tokens x marginal, C={c}", alpha=0.5)
    ax.set_xticks([i + 0.2 for i in range(len(names))])
    ax.set_xticklabels(names, fontsize=8)
    ax.set_title(f"CPU per turn = fixed + {LONG} x marginal (two-point fit)")
    ax.set_ylabel("CPU ms")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Streaming relay cost, {LONG} tokens at {PACE_MS:g} ms, one process per server, "
        f"{psutil.cpu_count()} cores" + (", servers pinned to one core (--pin)" if pinned else "")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ------------------------------------------------------------------------------


def phases(quick: bool) -> list[Phase]:
    everyone = ["upstream", *REFERENCES, "product", "product-noextract"]
    # C=200 and 500 (saturated, the longest phases): the reference (and its httpx twin at
    # C=200), to keep the whole run under five minutes.
    heavy = ["upstream", "django", REFERENCE, "product"]
    heaviest = ["upstream", REFERENCE, "product"]
    if quick:
        return [
            Phase(LONG, 1, 3, everyone),
            Phase(SHORT, 1, 30, everyone),
            Phase(LONG, 50, 1, everyone, ramp=0.5),
            Phase(SHORT, 50, 2, everyone, ramp=0.2),
        ]
    return [
        Phase(LONG, 1, 3, everyone),
        Phase(SHORT, 1, 30, everyone),
        Phase(LONG, 50, 2, everyone, ramp=0.5),
        Phase(SHORT, 50, 4, everyone, ramp=0.2),
        Phase(LONG, 200, 1, heavy, ramp=0.5),
        Phase(LONG, 500, 1, heaviest, ramp=1.0),
    ]


async def run_phases(
    plan: list[Phase],
    targets: dict[str, Target],
    servers: dict[str, Server],
    started: float,
    client: str,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every phase of ``plan`` on its targets: the rows, and each server's idle CPU (ms/s)."""
    upstream = servers["upstream"]
    me = psutil.Process()
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as http:
        # Warm-up: imports, connection pools, URL resolvers; not measured.
        await configure_upstream(http, upstream, tokens=SHORT, pace_ms=1)
        for target in targets.values():
            await run_load(
                target, concurrency=4, turns=2, expected_tokens=SHORT, timeout=30, client=client
            )
        idle0 = {name: s.cpu() for name, s in servers.items()}
        await asyncio.sleep(IDLE_S)
        idle = {n: round((s.cpu() - idle0[n]) / IDLE_S * 1000, 2) for n, s in servers.items()}
        print(f"idle CPU ms/s: {idle}", flush=True)
        for phase in plan:
            if time.monotonic() - started > RUN_BUDGET_S:
                print(f"skipped T={phase.tokens} C={phase.concurrency}: time budget", flush=True)
                continue
            await configure_upstream(http, upstream, tokens=phase.tokens)
            for name in phase.targets:
                row = await measure(phase, targets[name], servers[name], upstream, me, client)
                rows.append(row)
                print(
                    f"[{time.monotonic() - started:5.1f}s] {name:18} T={phase.tokens:<3} "
                    f"C={phase.concurrency:<3} ok={row['ok']}/{row['turns']} "
                    f"cpu/1k={row['cpu_per_1k_tokens']} ttfc50={row['ttfc_p50']} "
                    f"gap99={row['gap_p99']} wall={row['wall_s']}s",
                    flush=True,
                )
    return rows, idle


def start_servers(
    tmp: Path, args: argparse.Namespace, pin: tuple[set[int], set[int]] | None
) -> tuple[dict[str, Server], dict[str, Target]]:
    """The upstream, the two references and the product twice (extraction on and off),
    started (each is added to the returned dict as it starts, for the caller to stop); the
    load generator's targets."""
    measured, harness = pin or (None, None)
    servers: dict[str, Server] = {}
    base_env = clean_env()
    servers["upstream"] = start_upstream(tmp, base_env, cores=harness)
    upstream_url = upstream_base_url(servers["upstream"])
    ref_env = {**base_env, "BENCH_UPSTREAM": upstream_url}
    try:
        # The references start while the product is set up (migrate, ...), side by side.
        for name in REFERENCES:
            kind, _, client = name.partition("-")
            port = free_port()
            cmd = [PY, "bench/references.py", kind, "--port", str(port)]
            cmd += ["--client", client or "httpx"]
            servers[name] = Server(name, cmd, ref_env, port, cores=measured).launch(tmp)
        database_url = recreate_postgres_database("bench") if args.postgres else sqlite_url(tmp)
        env = product_env(base_env, upstream_url, database_url, REDIS_URL if args.redis else None)
        key, context_id = setup_product(env)
        for name, extraction in (("product", True), ("product-noextract", False)):
            port = free_port()
            extra = {"FLOWS_EXTRACTION_ENABLED": "true" if extraction else "false"}
            server = Server(name, daphne_cmd(port), {**env, **extra}, port, cores=measured)
            servers[name] = server.launch(tmp)
        for server in servers.values():
            server.wait_ready(timeout=120)
    except BaseException:
        stop_all(list(servers.values()))
        raise
    targets = {
        "upstream": Target.upstream("upstream", servers["upstream"].url("/v1/chat/completions")),
        **{name: Target.relay(name, servers[name].url("/relay")) for name in REFERENCES},
        **{
            name: Target.product(name, servers[name].url(STREAM_PATH), key, context_id)
            for name in ("product", "product-noextract")
        },
    }
    return servers, targets


def report(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    args: argparse.Namespace,
    pin: tuple[set[int], set[int]] | None,
) -> str:
    """The Markdown report: the table, the targets' verdicts, the harness."""
    command = f"python bench/run.py{' --quick' if args.quick else ''}{' --pin' if pin else ''}"
    return "\n".join(
        [
            "# Streaming benchmark",
            "",
            f"{meta['date']}, {meta['machine']}; product DB {meta['database']}, channel layer "
            f"{meta['channel_layer']}; upstream pace {PACE_MS:g} ms per token, one token per "
            f"chunk; run took {meta['elapsed_s']} s (`{command}`)"
            + (
                f"; servers pinned to core {sorted(pin[0])}, load generator and upstream to "
                f"{sorted(pin[1])}."
                if pin
                else "."
            ),
            "",
            "CPU is the server process's user + system time over the phase, per 1,000 tokens "
            "received by the clients; x starlette / x django / x django-aiohttp are ratios to "
            "the references at the same T and C (the targets are read against django-aiohttp, "
            "the empty Django relay on aiohttp, the product's default client). Fixed / "
            "marginal: two-point fit of CPU per turn at T=200 and T=5. TTFC overhead: over "
            "the upstream's own p50 at the same C. RSS per open "
            "stream: (peak - before) / C.",
            "",
            markdown_table(rows),
            "",
            "## Targets",
            "",
            *targets_verdict(rows, meta["rss_slope_kb_per_stream"], last_cluster_target()),
            "",
            "## Harness (is anything else the bottleneck?)",
            "",
            harness_table(rows),
            "",
            f"Idle CPU of each server (ms per s, not subtracted above): "
            f"{meta['idle_cpu_ms_per_s']}.",
            "",
            f"Peak RSS slope over C (KB per open stream): {meta['rss_slope_kb_per_stream']}. "
            f"Upstream served: {meta['upstream_stats']}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="C=1 and C=50 only (~1.5 min)")
    parser.add_argument("--postgres", action="store_true", help="product on PostgreSQL")
    parser.add_argument("--redis", action="store_true", help="product with the Redis layer")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator client (httpx costs more CPU per chunk than the servers)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DB)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="every measured server on the last core, load generator and upstream on the others",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="memory per open stream, streams held open (bench/memory_mode.py, 1-2 min)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="one daphne vs two behind nginx, on PostgreSQL + Redis (bench/cluster_mode.py)",
    )
    args = parser.parse_args()
    if args.memory:
        run_memory(keep=args.keep)
        return
    if args.cluster:
        if args.quick or args.postgres or args.redis:
            parser.error("--cluster always uses PostgreSQL and Redis and has no --quick")
        run_cluster(client=args.client, keep=args.keep)
        return
    started = time.monotonic()
    pin = pin_cores() if args.pin else None
    if pin:
        os.sched_setaffinity(0, pin[1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    servers: dict[str, Server] = {}
    try:
        servers, targets = start_servers(tmp, args, pin)
        print(
            f"[{time.monotonic() - started:5.1f}s] servers up: "
            + ", ".join(f"{n}=:{s.port} pid {s.process.pid}" for n, s in servers.items()),
            flush=True,
        )
        rows, idle = asyncio.run(
            run_phases(phases(args.quick), targets, servers, started, args.client)
        )
        stats = httpx.get(servers["upstream"].url("/_bench/stats")).json()
    finally:
        stop_all(list(servers.values()))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rows.sort(key=lambda r: (r["T"] != LONG, r["C"], r["T"], ORDER[r["target"]]))
    derive(rows)
    meta = {
        "date": now_iso(),
        "machine": machine(),
        "database": "postgres" if args.postgres else "sqlite",
        "channel_layer": "redis" if args.redis else "in-memory",
        "quick": args.quick,
        "client": args.client,
        "pin": sorted(pin[0]) if pin else None,
        "pace_ms": PACE_MS,
        "upstream_stats": stats,
        "elapsed_s": round(time.monotonic() - started, 1),
        "rss_slope_kb_per_stream": rss_slopes(rows),
        "idle_cpu_ms_per_s": idle,
    }
    md = report(rows, meta, args, pin)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print()
    print(md, flush=True)
    chart_path = CHART_PINNED if pin else CHART
    chart(rows, chart_path, pinned=bool(pin))
    print(f"Saved {RESULTS / 'latest.md'}, {RESULTS / 'latest.json'} and {chart_path}.")


if __name__ == "__main__":
    main()
