"""The results of ``bench_store``: the table's rows, the detail lines, and the two files.

``loadtests/results/bench_store.json`` holds everything measured; ``docs/bench-store.md`` the
table and the details, for the repository.
"""

from __future__ import annotations

import json
from typing import Any

from .report import Row, render_markdown
from .servers import ROOT

RESULTS_JSON = ROOT / "loadtests" / "results" / "bench_store.json"
RESULTS_MD = ROOT / "docs" / "bench-store.md"


def build_rows(data: dict[str, Any]) -> list[Row]:
    ours = {(c["command"], c["depth"]): c for c in data["store_cases"]}
    redis = {(c["command"], c["depth"]): c for c in data["redis_cases"]}
    floors = {c["depth"]: c for c in data.get("floor_cases", [])}
    connections, pipeline = data["load"]["connections"], data["load"]["pipeline"]
    rows: list[Row] = []
    for depth, target in ((1, 10.0), (pipeline, 3.0)):
        how = "not pipelined" if depth == 1 else f"{depth} in flight/conn"
        for kind, rcmd in (("get", "GET"), ("insert", "SET")):
            rows.append(
                Row(
                    f"store CPU per {kind}, {connections} conns, {how}",
                    ours[(kind, depth)]["server_cpu_us"],
                    "µs",
                    redis[(rcmd, depth)]["server_cpu_us"],
                    f"redis {rcmd}",
                    target,
                )
            )
        floor = floors.get(depth)
        if floor:
            # What a Python server on uvloop pays per request before doing any work: the
            # store's targets are to be read against it (the store's own work is above it).
            rows.append(
                Row(
                    f"floor: uvloop server, canned get reply, no work, {how}",
                    floor["server_cpu_us"],
                    "µs",
                    redis[("GET", depth)]["server_cpu_us"],
                    "redis GET",
                )
            )
            rows.append(
                Row(
                    f"store CPU per get above that floor, {how}",
                    ours[("get", depth)]["server_cpu_us"] - floor["server_cpu_us"],
                    "µs",
                    target_op="",
                )
            )
        fk = ours.get(("insert_fk", depth))
        if fk:
            rows.append(
                Row(
                    f"store CPU per insert w/ index+FK, {how}",
                    fk["server_cpu_us"],
                    "µs",
                    redis[("SET", depth)]["server_cpu_us"],
                    "redis SET",
                )
            )
    for depth in (1, pipeline):
        how = "not pipelined" if depth == 1 else f"{depth} in flight/conn"
        for kind, rcmd in (("get", "GET"), ("insert", "SET")):
            rows.append(
                Row(
                    f"throughput {kind}, {how}",
                    ours[(kind, depth)]["ops_per_s"],
                    "ops/s",
                    redis[(rcmd, depth)]["ops_per_s"],
                    f"redis {rcmd}",
                    target_op="",
                )
            )
    client = data.get("client_cpu") or {}
    for mode, label in (("sequential", "one in flight"), ("concurrent", "16 tasks")):
        store = client.get("store", {}).get(mode)
        anchor = client.get("redis", {}).get(mode)
        rows.append(
            Row(
                f"client CPU per round trip (get), {label}",
                store["cpu_us"] if store else None,
                "µs",
                anchor["cpu_us"] if anchor else None,
                "redis-py",
                30.0,
            )
        )
    echo = (client.get("echo") or {}).get("sequential")
    if echo:
        # Below this no asyncio client can go here: it is the loop, the socket and the kernel.
        rows.append(
            Row(
                "floor: bare uvloop echo round trip (60 B), one in flight",
                echo["cpu_us"],
                "µs",
                target_op="",
            )
        )
    big = data.get("large_table") or {}
    if big:
        n = big["orders_built"]
        scale = "1M" if n >= 1_000_000 else f"{n:,}"
        # Engine CPU time (thread_time), not wall time: on a shared machine a wall-clock p99
        # mostly measures preemption by other processes. Wall figures are in the details.
        for key, label in (
            ("by_user", f"one user's orders via index, CPU p99 ({scale} orders)"),
            ("page_asc", "first page (20) default sort asc, CPU p99"),
            ("page_desc", "first page (20) default sort desc, CPU p99"),
        ):
            rows.append(Row(label, big[key]["cpu"]["p99_us"], "µs", target=1000.0, target_op="<"))
        rows.append(Row("store RSS per order record", big["rss_per_order_bytes"], "B", target=400))
        total_mib = big["rss_total_bytes"] / 2**20
        rows.append(Row(f"total RSS, {scale} orders + 100k users", total_mib, "MiB", target=512))
    return rows


def notes(data: dict[str, Any]) -> list[str]:
    out = []
    for c in data["store_cases"] + data.get("floor_cases", []):
        out.append(
            f"{c['server']} {c['command']} depth {c['depth']}: {c['ops']:,} ops in "
            f"{c['wall_s']:.2f} s, "
            f"of its CPU/op {c['server_sys_us']:.2f} µs in the kernel (stime), "
            f"driver CPU {c['loadgen_cpu_us']:.2f} µs/op, RSS after "
            f"{c['rss_after_bytes'] / 2**20:.0f} MiB, other processes used "
            f"{c['others_busy']:.0%} of the machine"
        )
    for c in data["redis_cases"]:
        out.append(
            f"redis {c['command']} -P {c['depth']}: {c['ops']:,} ops in {c['wall_s']:.2f} s, "
            f"of its CPU/op {c['server_sys_us']:.2f} µs in the kernel (stime), "
            f"redis-benchmark CPU {c['loadgen_cpu_us']:.2f} µs/op, other processes used "
            f"{c['others_busy']:.0%} of the machine"
        )
    if "background_busy" in data:
        out.append(
            f"machine busy before the run (other processes, both cores): "
            f"{data['background_busy']:.0%}"
        )
    idle = data.get("idle_cpu_us_per_s", {})
    if idle:
        out.append(
            f"idle CPU over 1 s: store {idle['store']:.0f} µs/s, redis {idle['redis']:.0f} µs/s"
        )
    for side, modes in (data.get("client_cpu") or {}).items():
        for mode, m in modes.items():
            out.append(
                f"client {side} {mode}: {m['calls']:,} calls, {m['cpu_us']:.1f} µs CPU/call "
                f"(median of {', '.join(f'{x:.1f}' for x in m['all_cpu_us'])}; kernel "
                f"{m['sys_us']:.1f}), {m['calls_per_s']:,.0f} calls/s"
            )
    ours = {(c["command"], c["depth"]): c for c in data["store_cases"]}
    for kind, stages in (data.get("profile") or {}).items():
        out.append(
            f"where a {kind} goes (in-process, CPU µs/op): "
            + "; ".join(f"{name} {us:.2f}" for name, us in stages.items())
        )
        for depth, stage in (
            (1, "data_received, 1 frame per read"),
            (16, "data_received, 16 frames per read"),
        ):
            case = ours.get((kind, depth))
            if case and stage in stages:
                rest = case["server_cpu_us"] - stages[stage]
                out.append(
                    f"  {kind} depth {depth}: socket run {case['server_cpu_us']:.2f} µs/op - "
                    f"in-process {stages[stage]:.2f} = {rest:.2f} µs/op in the event loop, "
                    "transport and syscalls"
                )
    big = data.get("large_table") or {}
    if big:
        out.append(
            f"large table: {big['users_wanted']:,} users in {big['users_build_s']:.1f} s, "
            f"{big['orders_built']:,} orders in {big['orders_build_s']:.1f} s "
            f"({big['orders_build_cpu_s']:.1f} s CPU) "
            f"(engine insert {big['engine_insert_us']:.1f} µs/order)"
            + (" — CUT SHORT by the time budget" if big["build_cut_short"] else "")
        )
        for key in ("by_user", "page_asc", "page_desc"):
            q = big[key]
            out.append(
                f"{key}: engine wall median {q['median_us']:.1f} µs, p99 {q['p99_us']:.1f} µs, "
                f"max {q['max_us']:.1f} µs (engine CPU median {q['cpu']['median_us']:.1f}, p99 "
                f"{q['cpu']['p99_us']:.1f} µs); encoding the reply median "
                f"{q['encode']['median_us']:.1f} µs, p99 {q['encode']['p99_us']:.1f} µs"
                + (f"; {q['mean_hits']:.1f} orders per user" if "mean_hits" in q else "")
            )
        out.append(
            f"RSS: users {big['rss_users_bytes'] / 2**20:.0f} MiB, orders "
            f"{big['rss_orders_bytes'] / 2**20:.0f} MiB, process total "
            f"{big['rss_total_bytes'] / 2**20:.0f} MiB (includes the interpreter and the "
            "benchmark's list of 100k user ids)"
        )
        out.append(
            "one stored order, sys.getsizeof of the dict and its values: "
            + ", ".join(f"{k} {v}" for k, v in big["order_breakdown_bytes"].items())
            + "; the rest of the per-record bytes are the id → record map, the user_id index "
            "and allocator slack"
        )
    return out


def noise_line(data: dict[str, Any]) -> str:
    cases = data.get("store_cases", []) + data.get("redis_cases", [])
    shares = [c["others_busy"] for c in cases if "others_busy" in c]
    if not shares:
        return ""
    return (
        f"Noise: other processes on this machine used {min(shares):.0%}-{max(shares):.0%} of its "
        "CPU during the socket runs (the machine is shared); CPU per op is less affected than "
        "throughput, but compare runs with similar noise."
    )


def write_outputs(data: dict[str, Any], rows: list[Row]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    payload = {**data, "rows": [r.as_dict() for r in rows]}
    RESULTS_JSON.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    machine, load = data["machine"], data["load"]
    md = [
        "# Store benchmark (`make bench-store`)",
        "",
        f"Generated by `python -m loadtests.bench_store` on {data['date']} "
        f"in {data['runtime_s']:.0f} s. Do not edit by hand; rerun the target.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "Server CPU per op is utime + stime of the server process (/proc/<pid>/stat) over the "
        "run, divided by the operations; both servers run without persistence. Load: "
        f"{load['connections']} connections (ours: {load['drivers']} driver processes x "
        f"{load['connections'] // load['drivers']}, pre-encoded frames, replies counted by "
        "length prefix; "
        "Redis: redis-benchmark `-r 100000 -d <an order record's msgpack size>`; runs before "
        "2026-11-24 used its default 3-byte values). Client CPU is the client process's own "
        "getrusage per call. Large-table times are engine time only (`Engine.execute`).",
        "",
        noise_line(data),
        "",
        render_markdown(rows),
        "",
        "## Details",
        "",
        *[f"- {line}" for line in notes(data)],
        "",
    ]
    RESULTS_MD.write_text("\n".join(md))


# -- main -------------------------------------------------------------------------------------
