"""``make bench-join``: a join on an indexed generic field is served by the index (issue 9).

On a private store (``python -m storeserver``, no persistence, as the other benchmarks), through
``storeserver.client`` directly:

- a generic left table of ``LEFT_ROWS`` rows, each with a ``key`` (``k0`` .. ``k99``);
- right tables of 10k, 100k and 1M rows. ``PER_KEY`` rows per left key (spread evenly through
  the table) have ``ref`` equal to that key; every other row has its own ``ref`` that matches
  nothing. So a join selecting the same left keys finds the same pairs whatever the table size.

For each right table, in order:

1. without an index on ``ref``: ``join`` (left ``where key in [FIXED_KEYS keys]``,
   ``right_field=ref``), which makes the store build a temporary hash of the whole right table
   for the call; a probe process pings the store every 2 ms meanwhile (that build is one stall);
2. ``create_index ref`` (hash), timed, with the probe running: the build is chunked, so the
   longest ping should stay near one chunk's time;
3. the same join again, now probing the index; its answer must equal step 1's.

Then, on the smallest and the largest table (indexed), joins selecting 1, 10 and 100 keys (10,
100 and 1000 pairs): the time follows the result, not the table.

Per case: the median wall time of one ``join`` call as the client sees it, the store's mean
time per join from its own ``stats`` (``commands.join.seconds`` delta / count delta, no round
trip) and the store's CPU per call (utime + stime from /proc, over all the case's calls).

Results: ``loadtests/results/bench_join.json`` (with ``rows`` for ``bench_all``),
``docs/bench-join.md`` and ``docs/img/join_scaling.png``. ``--sizes`` shrinks the run;
``--render`` rebuilds the page and plot from the JSON; the store probe is loadtests/store_probe.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.store_probe import PROBE_INTERVAL, STALL_GOAL_MS, Probe
from storeserver.client import StoreClient

from .report import Row, machine_info, render_markdown
from .servers import (
    ROOT,
    Processes,
    cpu_seconds,
    machine_busy_fraction,
    run_collecting,
    start_store,
)

SIZES = (10_000, 100_000, 1_000_000)
LEFT_ROWS = 100
PER_KEY = 10  # right rows whose ref names one given left key
FIXED_KEYS = 10  # left keys selected in the fixed-result cases: 100 pairs
GROWING_KEYS = (1, 10, 100)  # on the largest table: 10, 100, 1000 pairs
INDEXED_RUNS = 200
SCALING_GOAL = 2.0  # indexed join on the largest table vs the smallest, same result: at most 2x
RESULTS_JSON = ROOT / "loadtests" / "results" / "bench_join.json"
RESULTS_MD = ROOT / "docs" / "bench-join.md"
PLOT = ROOT / "docs" / "img" / "join_scaling.png"


def log(message: str) -> None:
    print(f"[bench-join {time.strftime('%H:%M:%S')}] {message}", flush=True)


def unindexed_runs(size: int) -> int:
    return 30 if size <= 10_000 else 10 if size <= 100_000 else 5


# -- the probe process ------------------------------------------------------------------------


# -- seeding ----------------------------------------------------------------------------------


def left_key(i: int) -> str:
    return f"k{i}"


def right_record(n: int, size: int) -> dict[str, Any]:
    step = size // (LEFT_ROWS * PER_KEY)
    ref = left_key((n // step) % LEFT_ROWS) if n % step == 0 else f"x{n}"
    return {"id": f"r{n:07d}", "ref": ref, "n": n, "amount": n % 1000, "note": f"row {n}"}


async def batches(store: StoreClient, table: str, records: Any, in_flight: int = 4) -> None:
    ops = [{"op": "insert", "table": table, "record": r} for r in records]
    chunks = [{"ops": ops[i : i + 1000]} for i in range(0, len(ops), 1000)]
    for i in range(0, len(chunks), in_flight):
        await asyncio.gather(*(store.call("batch", c) for c in chunks[i : i + in_flight]))


async def seed(store: StoreClient, sizes: tuple[int, ...]) -> dict[str, float]:
    await store.call("create_table", {"table": "join_left"})
    left = [{"id": f"l{i:03d}", "key": left_key(i), "name": f"left {i}"} for i in range(LEFT_ROWS)]
    await batches(store, "join_left", left)
    seconds = {}
    for size in sizes:
        table = f"join_right_{size}"
        await store.call("create_table", {"table": table})
        begin = time.perf_counter()
        for start in range(0, size, 100_000):
            chunk = range(start, min(start + 100_000, size))
            await batches(store, table, (right_record(n, size) for n in chunk))
        seconds[table] = time.perf_counter() - begin
        log(f"{table}: {size:,} rows loaded in {seconds[table]:.1f} s")
    return seconds


# -- the measurements -------------------------------------------------------------------------


def join_args(size: int, keys: int) -> dict[str, Any]:
    return {
        "left": "join_left",
        "right": f"join_right_{size}",
        "left_field": "key",
        "right_field": "ref",
        "where": [["key", "in", [left_key(i) for i in range(keys)]]],
        "limit": 1000,
    }


async def join_stats(store: StoreClient) -> tuple[int, float]:
    stats = await store.call("stats", {})
    entry = (stats.get("commands") or {}).get("join") or {}
    return int(entry.get("count", 0)), float(entry.get("seconds", 0.0))


async def time_join(
    store: StoreClient, pid: int, size: int, keys: int, runs: int
) -> tuple[dict[str, Any], Any]:
    args = join_args(size, keys)
    result = await store.call("join", args)  # warm-up, and the answer to compare
    count0, seconds0 = await join_stats(store)
    cpu0 = cpu_seconds(pid)
    walls = []
    for _ in range(runs):
        begin = time.perf_counter()
        await store.call("join", args)
        walls.append(time.perf_counter() - begin)
    cpu = cpu_seconds(pid) - cpu0
    count1, seconds1 = await join_stats(store)
    calls = count1 - count0
    walls.sort()
    case = {
        "right_rows": size,
        "keys": keys,
        "pairs": result["total"],
        "runs": runs,
        "wall_ms_median": statistics.median(walls) * 1000,
        "wall_ms_p90": walls[int(len(walls) * 0.9) - 1 if len(walls) >= 10 else -1] * 1000,
        "store_ms_mean": (seconds1 - seconds0) / calls * 1000 if calls else None,
        "store_cpu_ms": cpu / runs * 1000,
    }
    return case, result


def describe(case: dict[str, Any], label: str) -> str:
    store = case["store_ms_mean"]
    return (
        f"{label} join, {case['right_rows']:,} right rows, {case['pairs']} pairs: wall median "
        f"{case['wall_ms_median']:.2f} ms, store {store:.2f} ms/call, CPU "
        f"{case['store_cpu_ms']:.2f} ms/call ({case['runs']} runs)"
    )


async def measure(procs: Processes, sock: Path, pid: int, data: dict[str, Any]) -> None:
    store = StoreClient(f"unix:{sock}", timeout=120.0)
    await store.connect()
    try:
        data["load_seconds"] = await seed(store, data["sizes"])
        fixed: list[dict[str, Any]] = []
        for size in data["sizes"]:
            table = f"join_right_{size}"
            probe = Probe(procs, sock)
            plain, plain_answer = await time_join(
                store, pid, size, FIXED_KEYS, unindexed_runs(size)
            )
            plain["probe"] = probe.stop()
            log(describe(plain, "no index") + f"; longest ping {plain['probe']['max_ms']:.0f} ms")
            probe = Probe(procs, sock)
            cpu0, begin = cpu_seconds(pid), time.perf_counter()
            await store.call("create_index", {"table": table, "field": "ref"}, timeout=300.0)
            build: dict[str, Any] = {"seconds": time.perf_counter() - begin}
            build["cpu_s"] = cpu_seconds(pid) - cpu0
            build["probe"] = probe.stop()
            log(
                f"create_index {table}.ref: {build['seconds']:.2f} s, longest ping "
                f"{build['probe']['max_ms']:.1f} ms ({build['probe']['pings']} pings)"
            )
            indexed, indexed_answer = await time_join(store, pid, size, FIXED_KEYS, INDEXED_RUNS)
            log(describe(indexed, "indexed"))
            same = indexed_answer == plain_answer
            if not same:
                raise RuntimeError(f"{table}: the indexed join answered differently")
            fixed.append({"right_rows": size, "no_index": plain, "indexed": indexed})
            fixed[-1].update(build=build, same_answer=same)
        data["fixed_result"] = fixed
        growing = []
        for size in sorted({data["sizes"][0], data["sizes"][-1]}):
            for keys in GROWING_KEYS:
                case, _ = await time_join(store, pid, size, keys, INDEXED_RUNS)
                log(describe(case, "indexed"))
                growing.append(case)
        data["growing_result"] = growing
    finally:
        await store.close()


def collect(procs: Processes, tmp: Path, data: dict[str, Any]) -> None:
    data["loadavg_start"] = list(os.getloadavg())
    data["busy_before"] = machine_busy_fraction(1.0)
    store, sock = start_store(procs, tmp)
    began = time.perf_counter()
    asyncio.run(measure(procs, sock, store.pid, data))
    data["seconds"] = time.perf_counter() - began
    data["loadavg_end"] = list(os.getloadavg())


# -- results ----------------------------------------------------------------------------------


def summary_rows(data: dict[str, Any]) -> list[Row]:
    """The figures for ``docs/BENCHMARKS.md`` (``bench_all`` reads them from the JSON)."""
    rows: list[Row] = []
    fixed = data.get("fixed_result", [])
    for f in fixed:
        rows.append(
            Row(
                f"join, {f['indexed']['pairs']} pairs, indexed ref, {f['right_rows']:,}-row "
                "right table (wall, median)",
                f["indexed"]["wall_ms_median"],
                "ms",
                f["no_index"]["wall_ms_median"],
                "no index",
            )
        )
    if len(fixed) >= 2:
        small, big = fixed[0]["indexed"], fixed[-1]["indexed"]
        rows.append(
            Row(
                f"indexed join store time, {fixed[-1]['right_rows']:,} vs "
                f"{fixed[0]['right_rows']:,} rows, same result",
                big["store_ms_mean"] / small["store_ms_mean"],
                "x",
                target=SCALING_GOAL,
            )
        )
    growing = data.get("growing_result", [])
    smallest = min((c["right_rows"] for c in growing), default=0)
    for case in growing:
        if case["right_rows"] == smallest and len({c["right_rows"] for c in growing}) > 1:
            continue
        anchor = next(
            (c for c in growing if c["right_rows"] == smallest and c["keys"] == case["keys"]),
            None,
        )
        rows.append(
            Row(
                f"indexed join on {case['right_rows']:,} rows, {case['pairs']} pairs (store time)",
                case["store_ms_mean"],
                "ms",
                anchor["store_ms_mean"] if anchor and anchor is not case else None,
                f"{smallest:,} rows" if anchor and anchor is not case else "",
            )
        )
    if fixed:
        build = fixed[-1]["build"]
        rows.append(
            Row(f"create_index over {fixed[-1]['right_rows']:,} rows", build["seconds"], "s")
        )
        rows.append(
            Row(
                "longest store ping during that index build",
                build["probe"]["max_ms"],
                "ms",
                target=STALL_GOAL_MS,
                target_op="<",
            )
        )
        rows.append(
            Row(
                f"longest store ping during unindexed joins on {fixed[-1]['right_rows']:,} rows",
                fixed[-1]["no_index"]["probe"]["max_ms"],
                "ms",
            )
        )
    return rows


def plot(data: dict[str, Any]) -> Path | None:
    fixed, growing = data.get("fixed_result", []), data.get("growing_result", [])
    if not fixed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [f["right_rows"] for f in fixed]
    styles = (("indexed", "indexed ref", "#1f77b4"), ("no_index", "no index", "#d62728"))
    for key, label, color in styles:
        left.plot(sizes, [f[key]["store_ms_mean"] for f in fixed], "o-", color=color, label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("right table rows")
    left.set_ylabel("store time per join (ms, log)")
    left.set_title(f"Same result ({fixed[0]['indexed']['pairs']} pairs), growing table")
    left.legend()
    if growing:
        for size, style in zip(
            sorted({c["right_rows"] for c in growing}), ("s--", "o-"), strict=False
        ):
            cases = [c for c in growing if c["right_rows"] == size]
            right.plot(
                [c["pairs"] for c in cases],
                [c["store_ms_mean"] for c in cases],
                style,
                label=f"{size:,} rows",
            )
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("pairs in the result")
        right.set_ylabel("store time per join (ms, log)")
        right.set_title("Indexed ref, growing result")
        right.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return PLOT


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    start, end = data["loadavg_start"], data["loadavg_end"]
    fixed, growing = data["fixed_result"], data["growing_result"]
    lines = [
        "# Join on an indexed generic field (`make bench-join`)",
        "",
        f"Measured {data['when']} by `python -m loadtests.bench_join` in {data['seconds']:.0f} s "
        f"on {m['cpu_model']}, {m['cores']} cores (git {m['git_commit']}). The machine was "
        f"shared: load average {start[0]:.2f} / {start[1]:.2f} / {start[2]:.2f} at the start, "
        f"{end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} at the end, {data['busy_before']:.0%} of "
        "both cores busy just before; wall times include that noise, the store's own time "
        "per command (from its `stats`) much less.",
        "",
        f"Setup: one store process without persistence; a generic left table of {LEFT_ROWS} rows "
        f"(`key` = `k0` .. `k{LEFT_ROWS - 1}`); right tables whose `ref` equals a left key on "
        f"{PER_KEY} rows per key (spread through the table) and is unique and unmatched on every "
        f"other row. Each join is `join left=join_left right=join_right_N left_field=key "
        f"right_field=ref where=[[key, in, [...]]] limit=1000` through `storeserver.client`; "
        "`wall` is the median of the calls as the client sees them (round trip included), "
        "`store` the store's mean time per join from `stats` (delta of `commands.join.seconds` "
        "over the calls), `CPU` the store process's utime + stime per call from /proc (10 ms "
        "clock ticks: coarse for the fast cases). Without an index the store builds a temporary "
        "hash of the whole right table in every call (10,000 rows per loop turn on a table "
        "this big); with `create_index ref` it probes the index. Both answers were compared: "
        "identical on every table.",
        "",
        f"## Same result ({fixed[0]['indexed']['pairs']} pairs), growing right table",
        "",
        "| right rows | index | runs | wall median | wall p90 | store per join | store CPU per "
        "join | longest ping meanwhile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in fixed:
        for key in ("no_index", "indexed"):
            c = f[key]
            ping = f"{c['probe']['max_ms']:.0f} ms" if key == "no_index" else "—"
            lines.append(
                f"| {f['right_rows']:,} | {'yes' if key == 'indexed' else 'no'} | {c['runs']} | "
                f"{c['wall_ms_median']:.2f} ms | {c['wall_ms_p90']:.2f} ms | "
                f"{c['store_ms_mean']:.3f} ms | {c['store_cpu_ms']:.3f} ms | {ping} |"
            )
    small, big = fixed[0], fixed[-1]
    ratio_idx = big["indexed"]["store_ms_mean"] / small["indexed"]["store_ms_mean"]
    ratio_plain = big["no_index"]["store_ms_mean"] / small["no_index"]["store_ms_mean"]
    growth = big["right_rows"] / small["right_rows"]
    verdict = "met" if ratio_idx <= SCALING_GOAL else "missed"
    lines += [
        "",
        f"From {small['right_rows']:,} to {big['right_rows']:,} right rows ({growth:.0f}x), "
        f"the indexed join's store time changes {ratio_idx:.2f}x (goal ≤ {SCALING_GOAL:.0f}x: "
        f"**{verdict}**), the unindexed one {ratio_plain:.0f}x. On the largest table the index "
        f"makes the join {big['no_index']['store_ms_mean'] / big['indexed']['store_ms_mean']:,.0f}"
        "x cheaper in store time.",
        "",
        "## Growing result, indexed, smallest and largest right table",
        "",
        "| right rows | left keys selected | pairs | runs | wall median | wall p90 | store per "
        "join | store CPU per join |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in growing:
        lines.append(
            f"| {c['right_rows']:,} | {c['keys']} | {c['pairs']} | {c['runs']} | "
            f"{c['wall_ms_median']:.2f} ms | "
            f"{c['wall_ms_p90']:.2f} ms | {c['store_ms_mean']:.3f} ms | "
            f"{c['store_cpu_ms']:.3f} ms |"
        )
    lines += [
        "",
        "Every pair returned is two records copied into the answer and encoded, so the time "
        "follows the number of pairs (the client's decoding adds to the wall time). At the same "
        "result, the largest table may still cost somewhat more per pair: its matching records "
        "lie far apart in memory (cache misses), and the store's mean includes any garbage "
        "collector pass over the larger heap.",
        "",
        "## Building the index (`create_index ref`)",
        "",
        f"A probe process pinged the store every {PROBE_INTERVAL * 1000:.0f} ms during each "
        "build; the build runs in chunks of 10,000 rows, one per loop turn, so the longest ping "
        f"is about one chunk (goal < {STALL_GOAL_MS:.0f} ms, as for the CSV export), plus the "
        "time the store waits for a core on this shared machine.",
        "",
        "| right rows | build time | store CPU | pings | ping p50 | ping p99 | longest ping |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in fixed:
        b, p = f["build"], f["build"]["probe"]
        lines.append(
            f"| {f['right_rows']:,} | {b['seconds']:.2f} s | {b['cpu_s']:.2f} s | {p['pings']:,} "
            f"| {p['p50_ms']:.2f} ms | {p['p99_ms']:.1f} ms | {p['max_ms']:.1f} ms |"
        )
    worst = max(f["build"]["probe"]["max_ms"] for f in fixed)
    chunk_ms = max(0.01, big["build"]["cpu_s"] * 1000 / max(1, big["right_rows"] // 10_000))
    plain_ping = big["no_index"]["probe"]["max_ms"]
    lines += [
        "",
        f"Longest ping over all builds: {worst:.1f} ms "
        f"(**{'met' if worst < STALL_GOAL_MS else 'missed'}**). A chunk took "
        f"{chunk_ms:.0f} ms of store CPU on average over the largest build, so the longest "
        f"ping is about {worst / chunk_ms:.1f} average chunks. Why more than one: the store "
        "may wait for a "
        "core on this shared machine, and some chunks are slower: every `ref` here is distinct "
        "but the matching ones, so the index's dict of buckets grows to one entry per row and "
        "is resized (every entry copied, in one step) as it doubles, the last time near 700k "
        "entries (in-process, that step took several chunks' time). So the longest wait is "
        "one chunk plus, at worst, such a resize, which grows with the number of distinct "
        "values, not the whole build. For comparison, during the "
        f"unindexed joins on {big['right_rows']:,} rows the longest ping was {plain_ping:.0f} "
        "ms: each join builds its temporary hash 10,000 right rows per loop turn, so a ping "
        "waits for about one such step (it waited for the whole join, 1.3 s, when the hash "
        "was built in one step), plus the same dict resizes.",
        "",
    ]
    if PLOT.exists():
        lines += ["![join time vs table and result size](img/join_scaling.png)", ""]
    lines += [
        "Load times of the right tables (1000-insert `batch` commands, 4 in flight): "
        + ", ".join(f"{t} {s:.1f} s" for t, s in data["load_seconds"].items())
        + ".",
        "",
        "Raw figures: `loadtests/results/bench_join.json` (not committed).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default=",".join(str(s) for s in SIZES), help="right table sizes"
    )
    parser.add_argument("--render", action="store_true", help="only rebuild the page and plot")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(RESULTS_JSON.read_text())
        plot(saved)
        RESULTS_MD.write_text(render(saved))
        log(f"rebuilt {RESULTS_MD.relative_to(ROOT)} from {RESULTS_JSON.relative_to(ROOT)}")
        return 0
    sizes = tuple(sorted(int(s) for s in args.sizes.split(",")))
    if min(sizes) < LEFT_ROWS * PER_KEY:
        parser.error(f"sizes must be at least {LEFT_ROWS * PER_KEY}")
    data: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    data["date"] = data["when"]
    data["machine"] = machine_info()
    data["sizes"] = sizes
    if not run_collecting("bench-join-", lambda p, t: collect(p, t, data), log):
        return 130
    data["rows"] = [r.as_dict() for r in summary_rows(data)]
    plot(data)
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(data, indent=2, default=str) + "\n")
    RESULTS_MD.write_text(render(data))
    print(render_markdown(summary_rows(data)))
    log(f"wrote {RESULTS_JSON.relative_to(ROOT)}, {RESULTS_MD.relative_to(ROOT)}, {PLOT.name}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
