"""The streaming benchmark: the full product against two empty relays, in the same run.

    python bench/run.py [--quick] [--postgres] [--redis] [--cluster]

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
C=50, 200 and 400; writes ``bench/results/cluster.md`` (under 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import Target, run_load, summarize  # noqa: E402

PY = sys.executable
RESULTS = ROOT / "bench" / "results"
CHART = ROOT / "docs" / "bench.png"
CHART_PINNED = ROOT / "docs" / "bench-pinned.png"  # --pin
RUN_BUDGET_S = 285.0  # phases that would start after this are skipped
PACE_MS = 10.0
LONG, SHORT = 200, 5
IDLE_S = 3.0
CLIENT = {"kind": "raw"}  # the load generator's HTTP client: "raw" or "httpx"
IDLE: dict[str, float] = {}  # CPU ms per second of each server when idle
#: ``--pin``: the cores of the servers measured, and of the rest (load generator, upstream).
PIN: dict[str, set[int] | None] = {"servers": None, "harness": None}


def pin_cores() -> tuple[set[int], set[int]]:
    """``--pin``: the measured servers share the last core; the load generator and the
    upstream get the others. A Python server is one GIL; on one core its event loop and
    its database thread stop handing the GIL (and their caches) across cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin needs at least two cores")
    return {cores[-1]}, set(cores[:-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One server process, started and measured."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    health: str = "/healthz"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ps: psutil.Process | None = None

    def start(self, logdir: Path, timeout: float = 40.0) -> Server:
        self.log_path = logdir / f"{self.name}.log"
        log = self.log_path.open("wb")
        cores = PIN["harness"] if self.name == "upstream" else PIN["servers"]
        self.process = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Before exec, so that every thread the server starts inherits it.
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        self.ps = psutil.Process(self.process.pid)
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

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def cpu_split(self) -> tuple[float, float]:
        times = self.ps.cpu_times()
        return times.user, times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Phase:
    tokens: int
    concurrency: int
    turns: int  # per worker
    targets: list[str]
    ramp: float = 0.0
    label: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


# --- product setup ------------------------------------------------------------------------

SETUP = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from conversations.models import Context
from ai.quota import quota_get_or_create
user, _ = get_user_model().objects.get_or_create(username="bench")
token, _ = Token.objects.get_or_create(user=user)
context, _ = Context.objects.get_or_create(user=user, name="bench")
quota = quota_get_or_create(user=user)
quota.requests_limit = 1_000_000_000
quota.tokens_limit = 10**15
quota.save()
print("BENCH", token.key, context.id)
"""


#: The product's DJANGO_SECRET_KEY for a benchmark run (no sessions outlive it).
BENCH_SECRET_KEY = secrets.token_urlsafe(50)


def product_env(base: dict[str, str], upstream_url: str, database_url: str, redis: bool) -> dict:
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
        "DJANGO_SECRET_KEY": BENCH_SECRET_KEY,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    if redis:
        env["REDIS_URL"] = "redis://127.0.0.1:6379/1"
    return env


def prepare_database(tmp: Path, postgres: bool) -> str:
    if not postgres:
        return f"sqlite:///{tmp / 'bench.sqlite3'}"
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench WITH (FORCE)")
        conn.execute("CREATE DATABASE bench")
    return "postgres://postgres@127.0.0.1:5432/bench"


def setup_product(env: dict[str, str]) -> tuple[str, str]:
    subprocess.run(
        [PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    # daphne refuses to start without the collected static files (DJANGO_DEBUG off).
    subprocess.run(
        [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    out = subprocess.run(
        [PY, "manage.py", "shell", "-c", SETUP],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    _, key, context_id = line.split()
    return key, context_id


def daphne_cmd(port: int, app: str) -> list[str]:
    return [PY, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]


# --- measurement --------------------------------------------------------------------------


async def _sample_rss(server: Server, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], server.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def measure(
    phase: Phase, target: Target, server: Server, upstream: Server, me: psutil.Process
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
        client=CLIENT["kind"],
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
        for ref in ("starlette", "django"):
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
        for ref in ("starlette", "django"):
            other = by.get((ref, r["T"], r["C"]))
            for key in ("fixed_cpu_ms", "marginal_cpu_us"):
                mine, theirs = r.get(key), other and other.get(key)
                r[f"{key}_ratio_{ref}"] = (
                    round(mine / theirs, 2) if mine is not None and theirs else None
                )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    "| target | T | C | turns | TTFC p50 / p99 ms | TTFC overhead p50 ms | gap p50 / p99 ms "
    "| last chunk over ideal p50 / p99 ms | errors | CPU s / 1k tokens | x starlette "
    "| x django | fixed CPU / turn ms | marginal CPU / token µs | RSS / open stream KB |"
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, "|" + "---|" * COLUMNS.count(" | ") + "---|"]
    for r in rows:
        errors = str(r["errors"])
        if r["error_kinds"]:
            errors += " (" + ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) + ")"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["target"],
                    str(r["T"]),
                    str(r["C"]),
                    str(r["turns"]),
                    f"{_fmt(r['ttfc_p50'])} / {_fmt(r['ttfc_p99'])}",
                    _fmt(r["ttfc_overhead_p50"]),
                    f"{_fmt(r['gap_p50'])} / {_fmt(r['gap_p99'])}",
                    f"{_fmt(r['over_ideal_p50'])} / {_fmt(r['over_ideal_p99'])}",
                    errors,
                    _fmt(r["cpu_per_1k_tokens"], 3),
                    _fmt(r["ratio_starlette"], 2),
                    _fmt(r["ratio_django"], 2),
                    _fmt(r["fixed_cpu_ms"], 1),
                    _fmt(r["marginal_cpu_us"], 1),
                    _fmt(r["rss_per_stream_kb"], 1) if r["C"] >= 50 else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def harness_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | T | C | wall s | server CPU s (user + sys) | CPU / turn ms | upstream CPU s "
        "| load generator CPU s | other processes CPU s | host busy | RSS before / peak MB "
        "| tail after last chunk p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['T']} | {r['C']} | {r['wall_s']} | {r['cpu_s']:.2f} "
            f"({r['cpu_user_s']:.2f} + {r['cpu_sys_s']:.2f}) "
            f"| {_fmt(r['cpu_per_turn_ms'], 2)} | {_fmt(r['upstream_cpu_s'], 2)} "
            f"| {_fmt(r['loadgen_cpu_s'], 2)} | {_fmt(r['other_cpu_s'], 2)} "
            f"| {r['host_busy'] * 100:.0f}% "
            f"| {r['rss_before_mb']} / {r['rss_peak_mb']} | {_fmt(r['tail_p50'])} |"
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


def targets_verdict(rows: list[dict[str, Any]], slopes: dict[str, float]) -> list[str]:
    by = {(r["target"], r["T"], r["C"]): r for r in rows}
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**met**" if ok else "**not met**")

    for c in (1, 50):
        p, d = by.get(("product", LONG, c)), by.get(("django", LONG, c))
        ok = None
        text = "missing"
        if p and d and p.get("cpu_per_1k_tokens") and d.get("cpu_per_1k_tokens"):
            ok = p["cpu_per_1k_tokens"] <= d["cpu_per_1k_tokens"]
            text = (
                f"product {p['cpu_per_1k_tokens']:.3f} s vs django {d['cpu_per_1k_tokens']:.3f}"
                f" s per 1k tokens (x{p['ratio_django']}); marginal per token "
                f"{_fmt(p.get('marginal_cpu_us'))} µs vs {_fmt(d.get('marginal_cpu_us'))} µs"
            )
        out.append(f"- CPU per relayed token ≤ empty Django relay at C={c}: {verdict(ok)} ({text})")
    for c in (1, 50):
        p = by.get(("product-noextract", LONG, c))
        full = by.get(("product", LONG, c))
        fixed = p and p.get("fixed_cpu_ms")
        ok = None if fixed is None else fixed < 20
        extra = f"; with extraction {_fmt(full and full.get('fixed_cpu_ms'))} ms" if full else ""
        out.append(
            f"- fixed CPU per turn (extraction off) < 20 ms at C={c}: {verdict(ok)} "
            f"({_fmt(fixed)} ms{extra})"
        )
    p, d = by.get(("product", LONG, 200)), by.get(("django", LONG, 200))
    if p and d:
        ok = p["errors"] == 0 and (
            p["gap_p99"] is not None
            and d["gap_p99"] is not None
            and p["gap_p99"] <= 2 * d["gap_p99"]
        )
        out.append(
            f"- C=200 on one process: no error and gap p99 ≤ 2x django's: {verdict(ok)} "
            f"(errors {p['errors']}, gap p99 {_fmt(p['gap_p99'])} ms vs django "
            f"{_fmt(d['gap_p99'])} ms)"
        )
    else:
        out.append("- C=200: n/a (phase not run)")
    p = by.get(("product", LONG, 1))
    ov = p and p.get("ttfc_overhead_p50")
    out.append(
        f"- TTFC overhead p50 < 15 ms at C=1: {verdict(None if ov is None else ov < 15)} "
        f"({_fmt(ov)} ms over the upstream's own "
        f"{_fmt(by.get(('upstream', LONG, 1), {}).get('ttfc_p50'))} ms)"
    )
    p = by.get(("product", LONG, 200)) or by.get(("product", LONG, 50))
    per = p and p.get("rss_per_stream_kb")
    slope = slopes.get("product")
    out.append(
        f"- memory per open stream < 100 KB: {verdict(None if per is None else per < 100)} "
        f"({_fmt(per)} KB at C={p['C'] if p else '-'}; slope of peak RSS over C: "
        f"{_fmt(slope)} KB)"
    )
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n
        for n in ("starlette", "django", "product", "product-noextract")
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
    pinned = ", servers pinned to one core (--pin)" if PIN["servers"] else ""
    fig.suptitle(
        f"Streaming relay cost, {LONG} tokens at {PACE_MS:g} ms, one process per server, "
        f"{psutil.cpu_count()} cores{pinned}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ------------------------------------------------------------------------------


def phases(quick: bool) -> list[Phase]:
    everyone = ["upstream", "starlette", "django", "product", "product-noextract"]
    heavy = ["upstream", "starlette", "django", "product"]
    if quick:
        return [
            Phase(LONG, 1, 3, everyone),
            Phase(SHORT, 1, 30, everyone),
            Phase(LONG, 50, 1, everyone, ramp=0.5),
            Phase(SHORT, 50, 2, everyone, ramp=0.2),
        ]
    return [
        Phase(LONG, 1, 5, everyone),
        Phase(SHORT, 1, 60, everyone),
        Phase(LONG, 50, 2, everyone, ramp=0.5),
        Phase(SHORT, 50, 4, everyone, ramp=0.2),
        Phase(LONG, 200, 1, heavy, ramp=0.5),
        Phase(LONG, 500, 1, heavy, ramp=1.0),
    ]


async def run_phases(
    plan: list[Phase], targets: dict[str, Target], servers: dict[str, Server], started: float
) -> list[dict[str, Any]]:
    upstream = servers["upstream"]
    me = psutil.Process()
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as client:
        # Warm-up: imports, connection pools, URL resolvers; not measured.
        await client.post(upstream.url("/_bench/config"), json={"tokens": SHORT, "pace_ms": 1})
        for name, target in targets.items():
            await run_load(
                target,
                concurrency=4,
                turns=2,
                expected_tokens=SHORT,
                timeout=30,
                client=CLIENT["kind"],
            )
            _ = name
        idle0 = {name: s.cpu() for name, s in servers.items()}
        await asyncio.sleep(IDLE_S)
        for name, s in servers.items():
            IDLE[name] = round((s.cpu() - idle0[name]) / IDLE_S * 1000, 2)
        print(f"idle CPU ms/s: {IDLE}", flush=True)
        for phase in plan:
            if time.monotonic() - started > RUN_BUDGET_S:
                print(f"skipped T={phase.tokens} C={phase.concurrency}: time budget", flush=True)
                continue
            await client.post(
                upstream.url("/_bench/config"), json={"tokens": phase.tokens, "pace_ms": PACE_MS}
            )
            for name in phase.targets:
                row = await measure(phase, targets[name], servers[name], upstream, me)
                rows.append(row)
                print(
                    f"[{time.monotonic() - started:5.1f}s] {name:18} T={phase.tokens:<3} "
                    f"C={phase.concurrency:<3} ok={row['ok']}/{row['turns']} "
                    f"cpu/1k={row['cpu_per_1k_tokens']} ttfc50={row['ttfc_p50']} "
                    f"gap99={row['gap_p99']} wall={row['wall_s']}s",
                    flush=True,
                )
    return rows


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
        "--cluster",
        action="store_true",
        help="one daphne vs two behind nginx, on PostgreSQL + Redis (bench/cluster_mode.py)",
    )
    args = parser.parse_args()
    if args.cluster:
        if args.quick or args.postgres or args.redis:
            parser.error("--cluster always uses PostgreSQL and Redis and has no --quick")
        from bench.cluster_mode import run_cluster

        run_cluster(client=args.client, keep=args.keep)
        return
    started = time.monotonic()
    CLIENT["kind"] = args.client
    if args.pin:
        PIN["servers"], PIN["harness"] = pin_cores()
        os.sched_setaffinity(0, PIN["harness"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    base_env.pop("DATABASE_URL", None)
    servers: dict[str, Server] = {}
    try:
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        servers["upstream"] = Server(
            "upstream",
            [PY, "bench/upstream.py", "--port", str(up_port), "--pace-ms", str(PACE_MS)],
            base_env,
            up_port,
        ).start(tmp)
        ref_env = {**base_env, "BENCH_UPSTREAM": upstream_url}
        for kind in ("starlette", "django"):
            port = free_port()
            servers[kind] = Server(
                kind,
                [PY, "bench/references.py", kind, "--port", str(port)],
                ref_env,
                port,
            ).start(tmp)
        database_url = prepare_database(tmp, args.postgres)
        env = product_env(base_env, upstream_url, database_url, args.redis)
        key, context_id = setup_product(env)
        for name, extraction in (("product", "true"), ("product-noextract", "false")):
            port = free_port()
            servers[name] = Server(
                name,
                daphne_cmd(port, "chatproject.asgi:application"),
                {**env, "FLOWS_EXTRACTION_ENABLED": extraction},
                port,
            ).start(tmp)
        print(
            f"[{time.monotonic() - started:5.1f}s] servers up: "
            + ", ".join(f"{n}=:{s.port} pid {s.process.pid}" for n, s in servers.items()),
            flush=True,
        )
        stream_path = "/api/v1/conversations/stream"
        targets = {
            "upstream": Target.upstream(
                "upstream", servers["upstream"].url("/v1/chat/completions")
            ),
            "starlette": Target.relay("starlette", servers["starlette"].url("/relay")),
            "django": Target.relay("django", servers["django"].url("/relay")),
            "product": Target.product(
                "product", servers["product"].url(stream_path), key, context_id
            ),
            "product-noextract": Target.product(
                "product-noextract", servers["product-noextract"].url(stream_path), key, context_id
            ),
        }
        rows = asyncio.run(run_phases(phases(args.quick), targets, servers, started))
        stats = httpx.get(servers["upstream"].url("/_bench/stats")).json()
    finally:
        for server in servers.values():
            server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    order = {"upstream": 0, "starlette": 1, "django": 2, "product": 3, "product-noextract": 4}
    rows.sort(key=lambda r: (r["T"] != LONG, r["C"], r["T"], order[r["target"]]))
    derive(rows)
    slopes = rss_slopes(rows)
    verdicts = targets_verdict(rows, slopes)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "database": "postgres" if args.postgres else "sqlite",
        "channel_layer": "redis" if args.redis else "in-memory",
        "quick": args.quick,
        "client": args.client,
        "pin": sorted(PIN["servers"]) if PIN["servers"] else None,
        "pace_ms": PACE_MS,
        "upstream_stats": stats,
        "elapsed_s": round(time.monotonic() - started, 1),
        "rss_slope_kb_per_stream": slopes,
        "idle_cpu_ms_per_s": IDLE,
    }
    md = "\n".join(
        [
            "# Streaming benchmark",
            "",
            f"{meta['date']}, {meta['machine']}; product DB {meta['database']}, channel layer "
            f"{meta['channel_layer']}; upstream pace {PACE_MS:g} ms per token, one token per "
            f"chunk; run took {meta['elapsed_s']} s (`python bench/run.py"
            f"{' --quick' if args.quick else ''}{' --pin' if args.pin else ''}`)"
            + (
                f"; servers pinned to core {sorted(PIN['servers'])}, load generator and "
                f"upstream to {sorted(PIN['harness'])}."
                if args.pin
                else "."
            ),
            "",
            "CPU is the server process's user + system time over the phase, per 1,000 tokens "
            "received by the clients; x starlette / x django are ratios to the references at "
            "the same T and C. Fixed / marginal: two-point fit of CPU per turn at T=200 and "
            "T=5. TTFC overhead: over the upstream's own p50 at the same C. RSS per open "
            "stream: (peak - before) / C.",
            "",
            markdown_table(rows),
            "",
            "## Targets",
            "",
            *verdicts,
            "",
            "## Harness (is anything else the bottleneck?)",
            "",
            harness_table(rows),
            "",
            f"Idle CPU of each server (ms per s, not subtracted above): {IDLE}.",
            "",
            f"Peak RSS slope over C (KB per open stream): {slopes}. Upstream served: {stats}.",
            "",
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(md)
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    chart_path = CHART_PINNED if args.pin else CHART
    chart(rows, chart_path)
    print()
    print(md)
    print(f"Saved {RESULTS / 'latest.md'}, {RESULTS / 'latest.json'} and {chart_path}.")


if __name__ == "__main__":
    main()
