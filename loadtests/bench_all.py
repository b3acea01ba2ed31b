"""``make bench``: the whole benchmark suite in one go, then ``docs/BENCHMARKS.md`` with plots.

Steps, in order (each a child process; a failing step is reported and the others still run):

1. ``store``: ``python -m loadtests.bench_store`` (store vs Redis, large table);
2. ``api``: ``python -m loadtests.bench_api`` (GET /users/{id} vs a minimal FastAPI app);
3. ``durability``: ``python -m loadtests.bench_durability`` (fsync policies vs Redis AOF,
   1M-record snapshot and restarts);
4. ``data``: ``python -m loadtests.bench_data`` when that module exists (query, aggregate, CSV);
   then ``join``: ``python -m loadtests.bench_join`` (join on an indexed generic field vs table
   and result size, index build stall); then ``jobs``: ``python -m loadtests.bench_jobs``
   (500k-row import jobs while single-record requests are probed);
5. ``scaling`` (here): authenticated ``GET /users/{id}`` with wrk through 1, 2 and 4 gunicorn
   workers (throughput, p50/p99, CPU per request of the workers and the store); then the store
   alone driven by 2..256 client connections (``loadtests.store_driver``), not pipelined and 16
   in flight, to show where the single store process saturates (its CPU reaching one core);
6. ``memory`` (here): order records loaded into a store through ``batch``; RSS per record at
   10k .. 1M records;
7. ``load``: ``python -m loadtests.load --prefix bench_load`` (the locust scenarios, 100 users,
   60 s: latency percentiles per route);
8. ``soak`` with ``--soak``: ``python -m loadtests.soak`` (6 minutes, RSS sampled).

Every step writes its JSON under ``loadtests/results/``; the page is rendered from those files,
so ``--render`` alone regenerates it from the last results, and ``--only a,b`` / ``--skip a,b``
choose steps (their last results stay in the page). ``--quick`` shortens the long steps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from storeserver.client import StoreClient

from . import bench_api, plots
from .bench_durability import load_large
from .bench_store import PIPELINE, Drivers, create_tables, store_run
from .report import Row, machine_info, render_markdown
from .servers import (
    ROOT,
    Processes,
    ensure_apt,
    machine_busy_fraction,
    rss_bytes,
    run_collecting,
    start_store,
)
from .store_driver import GET_IDS

RESULTS = ROOT / "loadtests" / "results"
PAGE = ROOT / "docs" / "BENCHMARKS.md"
STEPS = ("store", "api", "durability", "data", "join", "jobs", "scaling", "memory", "load", "soak")
SCALING_WORKERS = (1, 2, 4)
SCALING_RUN_S = 8.0
SATURATION_CLIENTS = (2, 8, 32, 128, 256)
MEMORY_POINTS = (10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_json(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


# -- 5. scaling --------------------------------------------------------------------------------


def workers_case(procs: Processes, tmp: Path, sock: Path, workers: int, pid: int) -> dict[str, Any]:
    server = bench_api.start_gunicorn(procs, tmp, f"w{workers}", sock, workers=workers)
    try:
        bench_api.wait_ready(server, "/api/v1/ready", workers, tmp)
        user_id, email = bench_api.register(server.base)
        import httpx

        with httpx.Client(base_url=server.base) as client:
            headers = [f"Authorization: Bearer {bench_api.login(client, email)}"]
        url = f"{server.base}/api/v1/users/{user_id}"
        script = tmp / "report.lua"
        bench_api.wrk(script, url, 2.0, headers)  # warm-up
        result = bench_api.measure(f"w{workers}", server, script, url, headers, pid, SCALING_RUN_S)
    finally:
        procs.stop(server.proc)
    result["workers"] = workers
    log(
        f"{workers} worker(s): {result['req_per_s']:,.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, store {result['store_cpu_us']:.0f} µs/req, workers "
        f"{result['worker_cpu_us']:.0f} µs/req, others {result['others_busy']:.0%}"
    )
    return result


def saturation(procs: Processes, sock: Path, pid: int) -> list[dict[str, Any]]:
    points = []
    loaded = False
    for clients in SATURATION_CLIENTS:
        drivers = Drivers(procs, sock, connections=clients)
        try:
            if not loaded:
                counts = [len(range(k, GET_IDS, 2)) for k in range(2)]
                if sum(r["errors"] for r in drivers.run("preload", PIPELINE, counts)):
                    raise RuntimeError("preloading bench_get failed")
                loaded = True
            for depth in (1, PIPELINE):
                store_run(drivers, pid, "get", depth, 20_000)  # warm-up
                r = store_run(drivers, pid, "get", depth, 60_000 if depth == 1 else 150_000)
                r["clients"], r["store_cores"] = clients, r["ops_per_s"] * r["server_cpu_us"] / 1e6
                points.append(r)
                log(
                    f"store direct, {clients} clients, depth {depth}: {r['ops_per_s']:,.0f} "
                    f"ops/s, {r['server_cpu_us']:.1f} µs CPU/op, store busy "
                    f"{r['store_cores']:.0%} of a core"
                )
        finally:
            drivers.close()
    return points


def run_scaling(procs: Processes, tmp: Path, out: dict[str, Any]) -> None:
    ensure_apt("wrk", "wrk")
    (tmp / "report.lua").write_text(bench_api.WRK_REPORT)
    out["background_busy"] = machine_busy_fraction(1.0)
    store, sock = start_store(procs, tmp)
    out["workers"] = [workers_case(procs, tmp, sock, w, store.pid) for w in SCALING_WORKERS]
    asyncio.run(create_tables(f"unix:{sock}"))
    out["saturation"] = saturation(procs, sock, store.pid)


# -- 6. memory ---------------------------------------------------------------------------------


async def create_orders_table(address: str) -> None:
    client = StoreClient(address)
    try:
        await client.call(
            "create_table", {"table": "mem_orders", "indexes": [{"field": "user_id"}]}
        )
    finally:
        await client.close()


def run_memory(procs: Processes, tmp: Path, out: dict[str, Any], largest: int) -> None:
    store, sock = start_store(procs, tmp)
    asyncio.run(create_orders_table(f"unix:{sock}"))
    base = rss_bytes(store.pid)
    points: list[dict[str, Any]] = [{"records": 0, "rss_bytes": base, "bytes_per_record": None}]
    loaded = 0
    for target in [n for n in MEMORY_POINTS if n <= largest]:
        load_large(sock, "mem_orders", target - loaded)
        loaded = target
        time.sleep(0.5)
        rss = rss_bytes(store.pid)
        point = {"records": loaded, "rss_bytes": rss, "bytes_per_record": (rss - base) / loaded}
        points.append(point)
        per = point["bytes_per_record"]
        log(f"{loaded:,} records: RSS {rss / 2**20:.0f} MiB, {per:.0f} B/record")
    out["points"] = points


# -- steps -------------------------------------------------------------------------------------


def run_module(module: str, args: list[str]) -> tuple[int, float]:
    started = time.monotonic()
    log(f"python -m {module} {' '.join(args)}")
    code = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT).returncode
    return code, time.monotonic() - started


def run_in_process(name: str, collect: Any) -> tuple[int, float]:
    started = time.monotonic()
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    ok = run_collecting(f"bench-{name}-", lambda procs, tmp: collect(procs, tmp, out), log)
    out["runtime_s"] = time.monotonic() - started
    if ok:
        write_json(f"bench_{name}", out)
    return (0 if ok else 130), out["runtime_s"]


def run_steps(steps: list[str], quick: bool) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    for step in steps:
        log(f"== step {step}")
        try:
            if step == "store":
                code, secs = run_module("loadtests.bench_store", ["--skip-large"] if quick else [])
            elif step == "api":
                args = ["--rounds", "1", "--duration", "5"] if quick else []
                code, secs = run_module("loadtests.bench_api", args)
            elif step == "durability":
                args = ["--large", "200000"] if quick else []
                code, secs = run_module("loadtests.bench_durability", args)
            elif step == "data":
                if not (ROOT / "loadtests" / "bench_data.py").exists():
                    log("loadtests/bench_data.py does not exist: skipped")
                    continue
                code, secs = run_module("loadtests.bench_data", [])
            elif step == "join":
                args = ["--sizes", "10000,100000,250000"] if quick else []
                code, secs = run_module("loadtests.bench_join", args)
            elif step == "jobs":  # exit 1: the p95 goal missed (a result, on the page)
                args = ["--rows", "200000", "--no-orders"] if quick else []
                code, secs = run_module("loadtests.bench_jobs", args)
            elif step == "scaling":
                code, secs = run_in_process("scaling", run_scaling)
            elif step == "memory":
                largest = 250_000 if quick else MEMORY_POINTS[-1]
                code, secs = run_in_process(
                    "memory",
                    lambda procs, tmp, out, n=largest: run_memory(procs, tmp, out, n),
                )
            elif step == "load":
                args = ["--prefix", "bench_load"] + (["--run-time", "30s"] if quick else [])
                code, secs = run_module("loadtests.load", args)
            elif step == "soak":
                code, secs = run_module("loadtests.soak", ["--minutes", "5"] if quick else [])
            else:
                raise ValueError(step)
        except Exception as exc:  # one broken step must not lose the others
            log(f"step {step} raised {type(exc).__name__}: {exc}")
            code, secs = -1, 0.0
        done[step] = {"exit_code": code, "seconds": secs}
        log(f"== step {step}: exit {code} in {secs:.0f} s")
    return done


# -- the page ----------------------------------------------------------------------------------


def versions() -> str:
    names = ["fastapi", "starlette", "pydantic", "uvicorn", "gunicorn", "uvloop", "msgpack"]
    names += ["orjson", "locust", "matplotlib"]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{name} {metadata.version(name)}")
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        parts.append("redis-server " + redis.stdout.split("v=")[1].split()[0])
    except (OSError, IndexError):
        pass
    return ", ".join(parts)


def memory_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return f"{kb / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "RAM unknown"


def section_rows(name: str) -> list[Row]:
    data = read_json(name)
    rows = []
    for r in data.get("rows", []):
        fields = {k: r.get(k) for k in Row.__dataclass_fields__}
        rows.append(Row(**fields))
    return rows


def data_rows(data: dict[str, Any]) -> list[Row]:
    """Figures of ``bench_data.json`` (it writes its own page, not report rows); tolerant of
    missing parts."""
    rows: list[Row] = []
    with contextlib.suppress(KeyError, TypeError):
        agg = data["aggregate"]
        n = data.get("orders", 0)
        rows.append(
            Row(f"aggregate per user over {n:,} orders, store command", agg["store_s"] * 1000, "ms")
        )
        if agg.get("http_s"):
            rows.append(Row("same through POST /data/orders/aggregate", agg["http_s"] * 1000, "ms"))
    with contextlib.suppress(KeyError, TypeError):
        exp = data["export"]
        pg = data.get("postgres") or {}
        pg_rate = exp["rows"] / pg["copy_s"] if pg.get("copy_s") else None
        rows.append(
            Row(
                f"CSV export of {exp['rows']:,} orders",
                exp["rows_per_s"],
                "rows/s",
                pg_rate,
                "PostgreSQL COPY" if pg_rate else "",
            )
        )
        ping = exp["store_ping_during_export"]
        rows.append(
            Row(
                "longest store ping during the export",
                ping["max_ms"],
                "ms",
                target=50.0,
                target_op="<",
            )
        )
        rows.append(Row("peak store RSS during the export", exp["rss_peak_mib"]["store"], "MiB"))
        rows.append(Row("peak worker RSS during the export", exp["rss_peak_mib"]["worker"], "MiB"))
    for kind in ("orders", "generic"):
        with contextlib.suppress(KeyError, TypeError):
            result = data["import"][kind]
            rows.append(
                Row(f"CSV import, {result['rows']:,} {kind} rows", result["rows_per_s"], "rows/s")
            )
    return rows


def scaling_rows(scaling: dict[str, Any]) -> list[Row]:
    rows = []
    cases = scaling.get("workers", [])
    one = cases[0] if cases else None
    for c in cases:
        anchor = one["req_per_s"] if one and c is not one else None
        rows.append(
            Row(
                f"GET /users/{{id}} throughput, {c['workers']} worker(s)",
                c["req_per_s"],
                "req/s",
                anchor,
                "1 worker" if anchor else "",
            )
        )
        rows.append(
            Row(
                f"GET /users/{{id}} p99, {c['workers']} worker(s)",
                c["p99_ms"],
                "ms",
                one["p99_ms"] if one and anchor else None,
                "1 worker" if anchor else "",
            )
        )
        rows.append(
            Row(f"store CPU per API request, {c['workers']} worker(s)", c["store_cpu_us"], "µs")
        )
    sat = scaling.get("saturation", [])
    if sat:
        best = max(sat, key=lambda p: p["ops_per_s"])
        rows.append(
            Row(
                f"store alone, peak get throughput ({best['clients']} clients, depth "
                f"{best['depth']})",
                best["ops_per_s"],
                "ops/s",
            )
        )
        rows.append(Row("store alone, CPU per get at that peak", best["server_cpu_us"], "µs"))
        rows.append(
            Row("store alone, share of one core used at that peak", best["store_cores"] * 100, "%")
        )
    return rows


def memory_rows(memory: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"store RSS per order record at {p['records']:,} records",
            p["bytes_per_record"],
            "B",
            target=400,
        )
        for p in memory.get("points", [])
        if p["records"]
    ]


def load_rows(load: dict[str, Any]) -> list[Row]:
    verdict = load.get("verdict") or {}
    if not verdict:
        return []
    th = verdict["thresholds"]
    rows = [
        Row(
            "locust failure ratio",
            verdict["fail_ratio"] * 100,
            "%",
            target=th["max_fail_ratio"] * 100,
        )
    ]
    for name, r in sorted(verdict["routes"].items()):
        target = {"single": th["single_p95_ms"], "join": th["join_p95_ms"]}.get(r["kind"])
        if r.get("p95_ms") is not None:
            rows.append(
                Row(
                    f"locust p95 {name}",
                    r["p95_ms"],
                    "ms",
                    target=target,
                    target_op="<=" if target else "",
                )
            )
    total = verdict.get("total") or {}
    if total:
        rows.append(Row("locust throughput, all routes", total["rps"], "req/s", target_op=""))
    return rows


def soak_rows(soak: dict[str, Any]) -> list[Row]:
    s = soak.get("soak") or {}
    return [
        Row(f"soak RSS change after warm-up, {name}", r["change_mb"], "MB", target=10.0)
        for name, r in s.get("processes", {}).items()
    ]


def scaling_text(scaling: dict[str, Any], api: dict[str, Any]) -> list[str]:
    cases = {c["workers"]: c for c in scaling.get("workers", [])}
    sat = scaling.get("saturation", [])
    if not cases:
        return ["No scaling run yet (`python -m loadtests.bench_all --only scaling`)."]
    two = cases.get(2) or next(iter(cases.values()))
    store_us, worker_us = two["store_cpu_us"], two["worker_cpu_us"]
    ceiling = 1e6 / store_us if store_us else 0
    cores = ceiling * worker_us / 1e6
    lines = [
        "Throughput and p99 as workers go 1 → 2 → 4 on this 2-core machine: "
        + "; ".join(
            f"{w} worker(s) {c['req_per_s']:,.0f} req/s, p99 {c['p99_ms']:.1f} ms, workers using "
            f"{c['worker_cores']:.2f} cores"
            for w, c in sorted(cases.items())
        )
        + ". Past 2 workers there are no idle cores left: the workers, the store and wrk share two "
        "cores, so 4 workers add context switches, not capacity.",
        "",
        f"Each authenticated request costs the store {store_us:.0f} µs of CPU (its get, the "
        f"rate-limit hit and the revocation check) and the workers {worker_us:.0f} µs. One store "
        f"process on one core therefore tops out near **{ceiling:,.0f} API requests/s**, which "
        f"would take about **{cores:.0f} worker cores** to generate: the API tier saturates first "
        "on any machine with fewer cores than that; beyond it, adding workers or API hosts no "
        "longer adds throughput, because every request funnels through the one store thread.",
    ]
    if sat:
        best = max(sat, key=lambda p: p["ops_per_s"])
        one = [p for p in sat if p["depth"] == 1]
        lines += [
            "",
            "Driving the store alone (get by id, no HTTP) with more and more connections: "
            + "; ".join(
                f"{p['clients']} clients {p['ops_per_s']:,.0f} ops/s ({p['store_cores']:.0%} of "
                "a core)"
                for p in one
            )
            + f". With 16 requests in flight per connection it peaks at {best['ops_per_s']:,.0f} "
            f"ops/s at {best['server_cpu_us']:.1f} µs of CPU per op, using "
            f"{best['store_cores']:.0%} of one core. "
            + (
                "That is saturation: the one store thread has a whole core and more clients "
                "cannot get more out of it. "
                if best["store_cores"] >= 0.95
                else "On this machine the store did not get a whole core (the driver processes "
                "took the rest), so the saturation point is read from "
                "the CPU per op rather than reached. "
            )
            + f"One core spent at {one[-1]['server_cpu_us']:.1f} µs per unpipelined get is about "
            f"{1e6 / one[-1]['server_cpu_us']:,.0f} gets/s, at {best['server_cpu_us']:.1f} µs "
            f"(pipelined) about {1e6 / best['server_cpu_us']:,.0f}. Past that, more clients only "
            "queue: latency grows, throughput does not.",
        ]
    return lines


FIGURES = "## Every figure next to its baseline"


def page_sections(text: str) -> dict[str, list[str]]:
    """The body of each ``##`` and ``###`` section of the page as last written, by heading
    (a ``###`` under its ``##``: "## Plots / ### Soak: RSS over time"), without edge blanks."""
    sections: dict[str, list[str]] = {}
    body: list[str] = []
    parent = ""
    for line in text.splitlines():
        if line.startswith(("## ", "### ")):
            parent = line if line.startswith("## ") else parent
            key = line if line.startswith("## ") else f"{parent} / {line}"
            body = sections.setdefault(key, [])
        else:
            body.append(line)
    for lines in sections.values():
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
    return sections


def kept_or(
    previous: dict[str, list[str]], heading: str, fresh: list[str], measured: bool
) -> list[str]:
    """``fresh`` when its results are here, else the section as the page last had it."""
    if measured or heading not in previous:
        return fresh
    return [heading, "", *previous[heading], ""]


def render_page(steps: dict[str, dict[str, Any]], command: str, started: str, wall: float) -> None:
    store, api, durability = (
        read_json("bench_store"),
        read_json("bench_api"),
        read_json("bench_durability"),
    )
    data, scaling, memory = (
        read_json("bench_data"),
        read_json("bench_scaling"),
        read_json("bench_memory"),
    )
    load, soak = read_json("bench_load"), read_json("soak")
    join = read_json("bench_join")
    join_plot = ROOT / "docs" / "img" / "join_scaling.png"
    images = {
        "workers": plots.workers_scaling(scaling.get("workers", [])),
        "saturation": plots.store_saturation(scaling.get("saturation", [])),
        "routes": plots.route_latency(
            (load.get("verdict") or {}).get("routes", {}),
            (load.get("verdict") or {}).get("thresholds", {}).get("single_p95_ms", 100),
            (load.get("verdict") or {}).get("thresholds", {}).get("join_p95_ms", 500),
        ),
        "redis": plots.store_vs_redis(store),
        "memory": plots.memory_per_record(memory.get("points", [])),
        "fsync": plots.fsync_policies(durability),
        "soak": plots.soak_rss(
            soak.get("samples", []), (soak.get("soak") or {}).get("warmup_s", 90)
        ),
        "join": join_plot if join and join_plot.exists() else None,  # drawn by bench_join
    }
    # A section whose results are not here (a fresh clone: loadtests/results/ is not committed;
    # a run of some steps only) keeps its text from the page as last written.
    previous = page_sections(PAGE.read_text()) if PAGE.exists() else {}
    m = machine_info()
    busy = scaling.get("background_busy")
    md = [
        "# Benchmarks (`make bench`)",
        "",
        f"Generated by `{command}`, started {started}, {wall / 60:.1f} min in all. Do not edit "
        "by hand: rerun `make bench` (or `python -m loadtests.bench_all --render` to rebuild "
        "this page from the last results in `loadtests/results/`).",
        "",
        f"**Machine**: {m['cpu_model']}, {m['cores']} cores, {memory_total()}, kernel "
        f"{m['kernel']}; git {m['git_commit']}. **Versions**: {versions()}.",
        "",
        "**Read these figures as upper bounds on cost.** The machine has 2 cores"
        + (
            f" and was shared: other processes kept it {busy:.0%} busy just before the scaling step"
            if busy is not None and busy > 0.10
            else (
                f" and was otherwise idle ({busy:.0%} busy just before the scaling step; each "
                "page records the load during its own runs)"
                if busy is not None
                else ""
            )
        )
        + ". Every load generator (wrk, redis-benchmark, the store drivers, locust) runs on the "
        "same 2 cores as the server it measures. CPU per operation (from /proc) is less affected "
        "by the noise than throughput and latency.",
        "",
        "## Steps of this run",
        "",
        "| step | exit code | duration |",
        "| --- | --- | --- |",
        *[f"| {name} | {s['exit_code']} | {s['seconds']:.0f} s |" for name, s in steps.items()],
        "",
        "Steps not in this table kept their previous results (see each section's date; they "
        "may come from another machine or commit).",
        "",
        "## Every figure next to its baseline",
        "",
        "`anchor` is a baseline measured in the same run on this machine (Redis, redis-py, a "
        "minimal FastAPI app, 1 worker); `target` is the goal from the issues and the PRD.",
        "",
    ]
    sections = [
        (
            "Store vs Redis (`make bench-store`)",
            store,
            section_rows("bench_store"),
            "docs/bench-store.md",
        ),
        (
            "API vs a minimal FastAPI app (`make bench-api`)",
            api,
            section_rows("bench_api"),
            "docs/bench-api.md",
        ),
        (
            "Durability vs Redis AOF (`make bench-durability`)",
            durability,
            section_rows("bench_durability"),
            "docs/bench-durability.md",
        ),
        (
            "Data features (`loadtests/bench_data.py`)",
            data,
            section_rows("bench_data") or data_rows(data),
            "docs/bench-data.md",
        ),
        (
            "Join on an indexed generic field (`make bench-join`)",
            join,
            section_rows("bench_join"),
            "docs/bench-join.md",
        ),
        (
            "Import jobs under a single-record probe (`make bench-jobs`)",
            read_json("bench_jobs"),
            section_rows("bench_jobs"),
            "docs/bench-jobs.md",
        ),
        ("Scaling: workers and the single store", scaling, scaling_rows(scaling), ""),
        ("Memory per record vs table size", memory, memory_rows(memory), ""),
        ("Locust load run (`make load` scenarios, 100 users)", load, load_rows(load), ""),
        ("Soak (`make soak`)", soak, soak_rows(soak), ""),
    ]
    for title, raw, rows, details in sections:
        md += [f"### {title}", ""]
        if not rows:
            kept = previous.get(f"{FIGURES} / ### {title}") or ["Not measured in any run yet."]
            md += [*kept, ""]
            continue
        when = raw.get("date") or raw.get("when") or "?"
        extra = f"; details in [{details}]({Path(details).name})" if details else ""
        md += [f"Measured {when}{extra}.", "", render_markdown(rows), ""]
    md += ["## Plots", ""]
    captions = {
        "workers": "Throughput and latency vs gunicorn workers",
        "saturation": "The store driven directly by many clients",
        "routes": "Latency percentiles per route (locust, 100 users)",
        "redis": "Store CPU per operation vs Redis",
        "memory": "Memory per record vs table size",
        "fsync": "fsync policy comparison",
        "soak": "Soak: RSS over time",
        "join": "Join time vs table size and result size (indexed vs not)",
    }
    for key, caption in captions.items():
        path = images.get(key)
        body = (
            [f"![{caption}](img/{path.name})"]
            if path
            else previous.get(f"## Plots / ### {caption}")
        )
        if body:
            md += [f"### {caption}", "", *body, ""]
    scaling_title = "## Scaling: where one store stops"
    md += kept_or(
        previous,
        scaling_title,
        [scaling_title, "", *scaling_text(scaling, api), ""],
        bool(scaling.get("workers")),
    )
    md += kept_or(previous, "## Load run (locust)", load_section(load), bool(load.get("verdict")))
    md += kept_or(previous, "## Soak", soak_section(soak), bool(soak.get("soak")))
    PAGE.write_text("\n".join(md))
    log(f"wrote {PAGE.relative_to(ROOT)} and {len([p for p in images.values() if p])} plots")


def load_target(run: dict[str, Any]) -> str:
    """What a ``loadtests.load`` run (its saved JSON) ran against."""
    target = run.get("target", {})
    if not target.get("local"):
        return f"{target.get('host')} (its own settings and rate limits)"
    return (
        f"a local stack started by the run ({target.get('workers')} gunicorn workers, store with "
        f"STORE_FSYNC={target.get('store_fsync')}, BCRYPT_ROUNDS={target.get('bcrypt_rounds')}, "
        f"LOG_LEVEL={target.get('log_level')}, RATE_LIMIT = AUTH_RATE_LIMIT = "
        f"{run.get('rate_limit')})"
    )


def load_section(load: dict[str, Any]) -> list[str]:
    verdict = load.get("verdict") or {}
    if not verdict:
        return []
    state = "met" if verdict["passed"] else "BROKEN: " + "; ".join(verdict["problems"])
    standalone = read_json("load")
    extra = []
    if standalone.get("verdict"):
        v = standalone["verdict"]
        worst = max(
            (r["p95_ms"] for r in v["routes"].values() if r["kind"] == "single" and r["p95_ms"]),
            default=0,
        )
        extra = [
            f"The last `make load` on its own, {standalone.get('date')}: "
            f"{standalone.get('users')} users, spawn rate {standalone.get('spawn_rate')}/s, "
            f"{standalone.get('run_time')}, against {load_target(standalone)}; "
            f"{v['requests']:,} requests, {v['failures']} failed, worst single-record p95 "
            f"{worst:.0f} ms, thresholds "
            f"{'met' if v['passed'] else 'BROKEN: ' + '; '.join(v['problems'])}; machine load "
            f"average at its start {standalone.get('loadavg_start', [0])[0]:.1f}.",
            "",
        ]
    why_limits = (
        " The defaults would answer 429 to most of the run: every login counts against "
        "`AUTH_RATE_LIMIT` (10/minute per client IP; failed ones also 50/minute per username) "
        "and all simulated users come from 127.0.0.1; `RATE_LIMIT` (100/minute) counts per "
        "user for a request with a token, but per IP for those without one (registrations, "
        "logins, refreshes), and all the reporting admins share one admin token, so one "
        "budget."
        if load.get("target", {}).get("local")
        else ""
    )
    unmeasured = verdict.get("unmeasured_routes") or []
    return [
        "## Load run (locust)",
        "",
        f"`{load.get('command')}` on {load.get('date')}: {load.get('users')} users (shoppers, "
        f"token refreshers and reporting admins, weights 10:2:1), spawn rate "
        f"{load.get('spawn_rate')}/s, {load.get('run_time')}, against {load_target(load)}."
        f"{why_limits} `X-Rate-Limit-Limit` seen: "
        f"{', '.join(verdict.get('rate_limit_observed', [])) or 'none'}; 429 answers: "
        f"{verdict.get('status_429')}. Aggregate route present: "
        f"{verdict.get('features', {}).get('aggregate')}.",
        "",
        "Why BCRYPT_ROUNDS=4 on the local stack: every simulated user registers and logs in "
        "once, 100 of them within the first 5 s. At the production cost of 12 a hash is ~0.3 s "
        "of CPU, so those 200 hashes hold both cores for 30 s and more; a run so configured on "
        "this machine (`make load LOAD_BCRYPT_ROUNDS=12`, 2026-11-22) measured bcrypt, not the "
        "service: registrations at p50 63 s, a third of them timed out. The login cost at 12 "
        "is in the API section above.",
        "",
        f"{verdict['requests']:,} requests, {verdict['failures']} failed "
        f"({verdict['fail_ratio']:.2%}). Thresholds (failure ratio ≤ 1 %, p95 ≤ 100 ms on "
        f"single-record routes, ≤ 500 ms on joins): **{state}**."
        + (f" Gated routes without a request: {', '.join(unmeasured)}." if unmeasured else "")
        + " Raw: locust's HTML report and CSV files in `loadtests/results/` (not committed).",
        "",
        *extra,
    ]


def soak_section(soak: dict[str, Any]) -> list[str]:
    s = soak.get("soak") or {}
    if not s:
        return ["## Soak", "", "No soak run yet: `make soak` (about 7 minutes).", ""]
    lines = [
        "## Soak",
        "",
        f"`make soak` on {soak.get('date')}: {soak.get('users')} users for {soak.get('run_time')}"
        f", each keeping at most {s.get('max_records_per_user')} orders/purchases (so the data "
        f"set stops growing), RSS sampled every few seconds; warm-up {s['warmup_s']:.0f} s. "
        f"Verdict: **{'flat after warm-up' if s['flat'] else 'NOT flat after warm-up'}**.",
        "",
        "| process | RSS after warm-up | RSS at the end | change | slope |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in s.get("processes", {}).items():
        lines.append(
            f"| {name} | {r['rss_after_warmup_mb']:.1f} MB | {r['rss_end_mb']:.1f} MB | "
            f"{r['change_mb']:+.1f} MB | {r['slope_mb_per_min']:+.2f} MB/min |"
        )
    routes = (soak.get("verdict") or {}).get("routes", {})
    writes = sum(
        r["requests"] for r in routes.values() if r["method"] in ("POST", "PATCH", "PUT", "DELETE")
    )
    store = s.get("processes", {}).get("store")
    if store and writes and s.get("duration_s"):
        share = max(0.0, 1 - s["warmup_s"] / s["duration_s"])
        per_write = store["change_mb"] * 2**20 / max(1, writes * share)
        lines += [
            "",
            f"The store's data set is bounded in this run, but some of its state grows with every "
            f"write by design, bounded elsewhere: the audit log (one entry per mutation, capped "
            f"by `STORE_AUDIT_MAX_ENTRIES`) and spent refresh-token markers (kept until "
            f"`REFRESH_TOKEN_TTL`). About {writes * share:,.0f} writes and refreshes came after "
            f"the warm-up, so the store's change is about {per_write:.0f} bytes per write, "
            "consistent with that bounded growth rather than a leak (not proven here: a soak "
            "past the audit cap would show the plateau). The workers hold no state and stay "
            "flat.",
        ]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_all")
    p.add_argument("--only", default="", help="comma-separated steps: " + ",".join(STEPS))
    p.add_argument("--skip", default="")
    p.add_argument("--soak", action="store_true", help="include the 6-minute soak run")
    p.add_argument("--quick", action="store_true", help="shorter runs of the long steps")
    p.add_argument("--render", action="store_true", help="only rebuild the page")
    args = p.parse_args(argv)
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic()
    steps: list[str] = []
    if not args.render:
        steps = args.only.split(",") if args.only else [s for s in STEPS if s != "soak"]
        if args.soak and "soak" not in steps:
            steps.append("soak")
        steps = [s for s in steps if s and s not in args.skip.split(",")]
    done = run_steps(steps, args.quick)
    previous = read_json("bench_all")
    command = "make bench" + (f" BENCH_FLAGS='{' '.join(argv)}'" if argv else "")
    if args.render and previous:
        done, started, wall = previous["steps"], previous["started"], previous["seconds"]
        command = previous.get("command", command)
    else:
        wall = time.monotonic() - t0
        record = {"steps": done, "started": started, "seconds": wall, "command": command}
        write_json("bench_all", record)
    render_page(done, command, started, wall)
    # load and soak exit 1 when a threshold is broken: that is a result (on the page), not a
    # crash of the suite.
    failed = [
        name
        for name, s in done.items()
        if s["exit_code"] != 0 and not (name in ("load", "soak", "jobs") and s["exit_code"] == 1)
    ]
    if failed:
        log(f"steps that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
