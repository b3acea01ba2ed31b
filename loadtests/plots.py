"""matplotlib PNGs for ``docs/BENCHMARKS.md`` (written by ``loadtests.bench_all``).

Each function takes the figures already measured (the JSON results) and writes one PNG; it
returns the path, or None when the figures it needs are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .servers import ROOT

IMG = ROOT / "docs" / "img"
OURS, ANCHOR, THIRD = "#1f77b4", "#d62728", "#2ca02c"


def _save(fig: Any, name: str) -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def workers_scaling(cases: list[dict[str, Any]]) -> Path | None:
    """Throughput (bars) and p50/p99 (lines) of GET /users/{id} per number of workers."""
    if not cases:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [str(c["workers"]) for c in cases]
    ax.bar(labels, [c["req_per_s"] for c in cases], color=OURS, alpha=0.8, label="req/s")
    ax.set_xlabel("gunicorn workers (2-core machine)")
    ax.set_ylabel("requests per second")
    twin = ax.twinx()
    twin.plot(labels, [c["p99_ms"] for c in cases], "o-", color=ANCHOR, label="p99")
    twin.plot(labels, [c["p50_ms"] for c in cases], "s--", color=THIRD, label="p50")
    twin.set_ylabel("latency (ms)")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left")
    ax.set_title("Authenticated GET /users/{id}, wrk 50 connections")
    return _save(fig, "workers_throughput.png")


def route_latency(
    routes: dict[str, dict[str, Any]], single_ms: float, join_ms: float
) -> Path | None:
    """p50/p95/p99 per locust route group, thresholds marked."""
    rows = sorted(
        ((name, r) for name, r in routes.items() if r.get("requests") and r.get("p50_ms")),
        key=lambda item: item[1]["p95_ms"],
    )
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    names = [name for name, _ in rows]
    y = range(len(rows))
    for offset, key, color in (
        (-0.25, "p50_ms", THIRD),
        (0, "p95_ms", OURS),
        (0.25, "p99_ms", ANCHOR),
    ):
        ax.barh(
            [i + offset for i in y],
            [r[key] for _, r in rows],
            height=0.25,
            color=color,
            label=key.split("_")[0],
        )
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(single_ms, color="grey", linestyle="--", linewidth=1)
    ax.axvline(join_ms, color="black", linestyle=":", linewidth=1)
    ax.text(single_ms, len(rows) - 0.4, f" {single_ms:g} ms (single)", fontsize=7)
    ax.text(join_ms, len(rows) - 0.4, f" {join_ms:g} ms (join)", fontsize=7)
    ax.set_xlabel("response time (ms, log scale)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("make load: latency percentiles per route")
    return _save(fig, "route_latency.png")


def store_vs_redis(store: dict[str, Any]) -> Path | None:
    """Server CPU per op, ours vs redis, per command and pipelining depth."""
    ours = {(c["command"], c["depth"]): c for c in store.get("store_cases", [])}
    redis = {(c["command"], c["depth"]): c for c in store.get("redis_cases", [])}
    pairs = []
    for (command, depth), case in sorted(ours.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        anchor = redis.get(("GET" if command == "get" else "SET", depth))
        if anchor:
            pairs.append((f"{command}\ndepth {depth}", case, anchor))
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(pairs))
    ax.bar(
        [i - 0.2 for i in x],
        [p[1]["server_cpu_us"] for p in pairs],
        0.4,
        color=OURS,
        label="our store",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [p[2]["server_cpu_us"] for p in pairs],
        0.4,
        color=ANCHOR,
        label="redis-server (GET / SET)",
    )
    ax.set_xticks(list(x), [p[0] for p in pairs])
    ax.set_ylabel("server CPU per op (µs)")
    ax.set_title("Store CPU per operation vs Redis (50 connections)")
    ax.legend()
    return _save(fig, "store_cpu_vs_redis.png")


def memory_per_record(points: list[dict[str, Any]]) -> Path | None:
    """Bytes of store RSS per order record, and total RSS, as the table grows."""
    points = [p for p in points if p["records"] > 0]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    n = [p["records"] for p in points]
    ax.plot(n, [p["bytes_per_record"] for p in points], "o-", color=OURS, label="bytes/record")
    ax.axhline(400, color="grey", linestyle="--", linewidth=1, label="goal 400 B")
    ax.set_xscale("log")
    ax.set_xlabel("order records in the table (with a user_id index)")
    ax.set_ylabel("RSS growth per record (bytes)")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(n, [p["rss_bytes"] / 2**20 for p in points], "s--", color=ANCHOR, label="RSS (MB)")
    twin.set_ylabel("store RSS (MB)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center")
    ax.set_title("Store memory per record vs table size")
    return _save(fig, "memory_per_record.png")


def fsync_policies(durability: dict[str, Any]) -> Path | None:
    """Insert CPU per op and throughput per STORE_FSYNC policy, ours vs redis AOF."""
    cases = durability.get("policies") or []
    if not cases:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    x = range(len(cases))
    names = [c["policy"] for c in cases]
    for ax, key, label in (
        (left, "server_cpu_us", "server CPU per insert (µs)"),
        (right, "ops_per_s", "inserts per second"),
    ):
        ax.bar(
            [i - 0.2 for i in x],
            [c["store"][key] for c in cases],
            0.4,
            color=OURS,
            label="our store",
        )
        ax.bar(
            [i + 0.2 for i in x],
            [c["redis"][key] for c in cases],
            0.4,
            color=ANCHOR,
            label="redis AOF",
        )
        ax.set_xticks(list(x), names)
        ax.set_xlabel("fsync policy")
        ax.set_ylabel(label)
    left.legend()
    fig.suptitle("Persistence cost per fsync policy (50 connections, not pipelined)")
    return _save(fig, "fsync_policies.png")


def store_saturation(points: list[dict[str, Any]]) -> Path | None:
    """Driving the store directly: throughput and the store's CPU use vs clients."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for depth, style in ((1, "o-"), (16, "s--")):
        pts = [p for p in points if p["depth"] == depth]
        if pts:
            ax.plot(
                [p["clients"] for p in pts],
                [p["ops_per_s"] for p in pts],
                style,
                color=OURS,
                label=f"ops/s, {depth} in flight/conn",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("client connections (get)")
    ax.set_ylabel("ops per second")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    for depth, style in ((1, "o:"), (16, "s:")):
        pts = [p for p in points if p["depth"] == depth]
        if pts:
            twin.plot(
                [p["clients"] for p in pts],
                [p["store_cores"] for p in pts],
                style,
                color=ANCHOR,
                label=f"store CPU (cores), depth {depth}",
            )
    twin.set_ylim(0, 1.1)
    twin.set_ylabel("store CPU used (cores; 1 = saturated)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("Single store process under many clients")
    return _save(fig, "store_saturation.png")


def soak_rss(samples: list[dict[str, Any]], warmup_s: float) -> Path | None:
    """RSS of the store and of each worker over the soak run."""
    if not samples:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    t = [s["t"] / 60 for s in samples]
    ax.plot(t, [s["store_rss"] / 2**20 for s in samples], color=ANCHOR, label="store")
    pids = sorted({pid for s in samples for pid in s["workers"]})
    for k, pid in enumerate(pids):
        pts = [
            (s["t"] / 60, s["workers"][pid]["rss"] / 2**20) for s in samples if pid in s["workers"]
        ]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=OURS,
            alpha=0.6 + 0.4 * (k == 0),
            label="workers" if k == 0 else None,
        )
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=1, label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Soak: RSS of the store and each gunicorn worker")
    return _save(fig, "soak_rss.png")
