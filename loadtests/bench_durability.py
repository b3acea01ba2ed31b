"""``make bench-durability``: what persistence costs the store, next to redis-server's AOF.

The "Benchmark" section of issue 5. One run does, in order:

1. For ``STORE_FSYNC`` = ``no``, ``everysec`` and ``always`` (each on a fresh temp data dir):
   a private redis-server with ``--appendonly yes --appendfsync <same> --save ''`` driven by
   ``redis-benchmark -t set -c 50`` (not pipelined), then our store driven by 50 connections
   (2 ``loadtests.store_driver`` processes) inserting an order-like record, not pipelined.
   Figures: each server's CPU per op (utime + stime of all its threads, from /proc) and
   throughput; ours/redis CPU per op per policy (target <= 2x) and ours ``always`` throughput
   as a share of ours ``no`` (target >= 20 %, thanks to group commit).
2. ``LARGE`` order-like records loaded into a store (``STORE_FSYNC=no``, automatic log rewrite
   off) through ``batch`` commands of 1000 inserts; SIGKILL; a new store on the same data dir
   replays the log: the time from its start until ``ping`` answers ready is the
   *replay restart*.
3. On that store, the ``snapshot`` command: its duration, the file's size, the store's RSS
   before/after, the forked child's peak RSS and private (copied-on-write) memory, sampled from
   /proc while it runs, and the event loop's stall: a probe sends ``ping`` every 1 ms and
   records each round trip.
4. SIGTERM (the store writes a final snapshot: *shutdown* time), then a new store on the same
   dir: the time until ready is the *snapshot restart*.

``--large N`` changes the record count of steps 2-4 (default 1,000,000; 0 skips them);
BENCH_POLICIES="no always" limits step 1 to some policies.

Results: a table on stdout, ``loadtests/results/bench_durability.json`` and
``docs/bench-durability.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from storeserver.client import StoreClient
from storeserver.probe import ping, wait_for_socket
from storeserver.protocol import PROTOCOL_VERSION, Hello, Request, encode

from .bench_store import CONNECTIONS, DRIVERS, Drivers, redis_benchmark
from .report import Row, machine_info, render_markdown, render_text
from .servers import (
    ROOT,
    Processes,
    child_pids,
    cpu_times,
    ensure_redis,
    machine_busy_fraction,
    machine_cpu_seconds,
    rss_bytes,
    run_collecting,
)
from .store_driver import order_record

POLICIES = tuple(os.environ.get("BENCH_POLICIES", "no everysec always").split())
RUN_S = 3.0
LARGE = 1_000_000
BATCH = 1000
BATCHES_IN_FLIGHT = 4
HUGE_REWRITE = 64 << 30  # the setting's maximum: no automatic snapshot during the large load
PROBE_INTERVAL_S = 0.001

RESULTS_JSON = ROOT / "loadtests" / "results" / "bench_durability.json"
RESULTS_MD = ROOT / "docs" / "bench-durability.md"
_LENGTH = struct.Struct(">I")
_ERROR_ARRAY = 0x95


def log(message: str) -> None:
    print(f"[bench-durability {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes --------------------------------------------------------------------------------


def start_redis_aof(procs: Processes, tmp: Path, policy: str) -> tuple[subprocess.Popen, Path]:
    sock = tmp / "redis.sock"
    args = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    args += ["--save", "", "--appendonly", "yes", "--appendfsync", policy]
    args += ["--dir", str(tmp), "--daemonize", "no"]
    out = open(tmp / "redis.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = procs.start(args, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    wait_for_socket(sock, proc=proc)
    return proc, sock


def spawn_store(
    procs: Processes, tmp: Path, data_dir: Path, policy: str, rewrite_bytes: int | None = None
) -> tuple[subprocess.Popen, Path]:
    """``python -m storeserver`` with persistence in ``data_dir``; returns before it is ready."""
    sock = tmp / "store.sock"
    env = {**os.environ, "STORE_LOG_LEVEL": "WARNING"}
    for key in ("STORE_MAX_MEMORY", "STORE_SECRET", "STORE_TCP", "STORE_LOG_REWRITE_BYTES"):
        env.pop(key, None)
    env["STORE_DATA_DIR"] = str(data_dir)
    env["STORE_FSYNC"] = policy
    if rewrite_bytes is not None:
        env["STORE_LOG_REWRITE_BYTES"] = str(rewrite_bytes)
    out = open(tmp / "store.log", "ab")  # noqa: SIM115
    args = [sys.executable, "-m", "storeserver", "--socket", str(sock)]
    proc = procs.start(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out.close()
    return proc, sock


def wait_ready(proc: subprocess.Popen, sock: Path, tmp: Path, timeout: float = 300.0) -> float:
    """Seconds from now until the store answers ``ping`` with ready (poll every 10 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            tail = (tmp / "store.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the store exited with {proc.returncode}; its log:\n{tail}")
        if sock.is_socket():
            result = ping(f"unix:{sock}", timeout=5.0)
            if result and result.get("ready"):
                return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError("the store did not become ready")


def start_store_ready(
    procs: Processes, tmp: Path, data_dir: Path, policy: str, rewrite_bytes: int | None = None
) -> tuple[subprocess.Popen, Path, float]:
    t0 = time.monotonic()
    proc, sock = spawn_store(procs, tmp, data_dir, policy, rewrite_bytes)
    wait_ready(proc, sock, tmp)
    return proc, sock, time.monotonic() - t0


def forget(procs: Processes, proc: subprocess.Popen) -> None:
    if proc in procs.procs:
        procs.procs.remove(proc)


# -- 1. insert throughput and CPU per op -------------------------------------------------------


def close_drivers(drivers: Drivers, procs: Processes) -> None:
    """Stop the drivers and drop them from ``procs`` (it outlives them: one run per policy)."""
    drivers.close()
    for proc in drivers.procs:
        procs.stop(proc)
        forget(procs, proc)


def store_insert(drivers: Drivers, pid: int, ops: int) -> dict[str, Any]:
    user0, sys0 = cpu_times(pid)
    busy0, total0 = machine_cpu_seconds()
    results = drivers.run("insert", 1, [ops // DRIVERS] * DRIVERS)
    user1, sys1 = cpu_times(pid)
    busy1, total1 = machine_cpu_seconds()
    server_cpu = user1 - user0 + sys1 - sys0
    loadgen_cpu = sum(r["cpu"] for r in results)
    others = (busy1 - busy0 - server_cpu - loadgen_cpu) / max(1e-9, total1 - total0)
    total = sum(r["ops"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    errors = sum(r["errors"] for r in results)
    if errors:
        raise RuntimeError(f"the store answered {errors} errors to inserts")
    return {
        "server": "store",
        "ops": total,
        "ops_per_s": total / wall,
        "server_cpu_us": server_cpu / total * 1e6,
        "server_sys_us": (sys1 - sys0) / total * 1e6,
        "loadgen_cpu_us": loadgen_cpu / total * 1e6,
        "wall_s": wall,
        "others_busy": max(0.0, others),
    }


async def create_table(address: str, table: str) -> None:
    client = StoreClient(address)
    try:
        await client.call("create_table", {"table": table})
    finally:
        await client.close()


def policy_case(procs: Processes, tmp: Path, policy: str) -> dict[str, Any]:
    case: dict[str, Any] = {"policy": policy}
    rdir = tmp / f"redis-{policy}"
    rdir.mkdir()
    redis_proc, redis_sock = start_redis_aof(procs, rdir, policy)
    try:
        warm = redis_benchmark(redis_sock, redis_proc.pid, "set", 20_000, 1)
        n = int(max(20_000, round(warm["ops_per_s"] * RUN_S, -4)))
        case["redis"] = redis = redis_benchmark(redis_sock, redis_proc.pid, "set", n, 1)
        aof = sum(p.stat().st_size for p in rdir.rglob("*.aof"))
        redis["aof_bytes"] = aof
    finally:
        procs.stop(redis_proc)
        forget(procs, redis_proc)
    log(
        f"redis SET appendfsync={policy}: {redis['server_cpu_us']:.2f} µs CPU/op "
        f"({redis['server_sys_us']:.2f} sys), {redis['ops_per_s']:,.0f} ops/s"
    )

    sdir = tmp / f"store-{policy}"
    data = sdir / "data"
    sdir.mkdir()
    store_proc, store_sock, start_s = start_store_ready(procs, sdir, data, policy)
    case["store_empty_start_s"] = start_s
    try:
        asyncio.run(create_table(f"unix:{store_sock}", "bench_insert"))
        drivers = Drivers(procs, store_sock, get_ids=0)
        try:
            warm = store_insert(drivers, store_proc.pid, 4_000 if policy == "always" else 10_000)
            n = int(max(4_000, round(warm["ops_per_s"] * RUN_S, -3)))
            case["store"] = store = store_insert(drivers, store_proc.pid, n)
        finally:
            close_drivers(drivers, procs)
        store["log_bytes"] = sum(p.stat().st_size for p in data.iterdir() if p.is_file())
        store["rss_bytes"] = rss_bytes(store_proc.pid)
    finally:
        procs.stop(store_proc)
        forget(procs, store_proc)
    log(
        f"store insert STORE_FSYNC={policy}: {store['server_cpu_us']:.2f} µs CPU/op "
        f"({store['server_sys_us']:.2f} sys), {store['ops_per_s']:,.0f} ops/s"
    )
    case["cpu_ratio"] = store["server_cpu_us"] / redis["server_cpu_us"]
    return case


# -- 2-4. large load, replay restart, snapshot, snapshot restart -------------------------------


class RawConnection:
    """A blocking socket speaking the store protocol with pre-encoded frames."""

    def __init__(self, sock_path: Path, timeout: float = 600.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(sock_path))
        self.buffer = b""
        self.sock.sendall(encode(Hello(PROTOCOL_VERSION, None)))
        if self.read_reply():
            raise RuntimeError("the store refused the handshake")

    def read_reply(self) -> bool:
        """Wait for one frame; True when it is an error."""
        while True:
            if len(self.buffer) >= 4:
                end = 4 + _LENGTH.unpack_from(self.buffer)[0]
                if len(self.buffer) >= end:
                    is_error = self.buffer[4] == _ERROR_ARRAY
                    self.buffer = self.buffer[end:]
                    return is_error
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the store closed the connection")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def load_large(sock: Path, table: str, count: int) -> float:
    """Insert ``count`` order-like records (ids generated by the store) with ``batch``."""
    rng = random.Random(7)
    frames = []
    for _ in range(8):
        ops = [
            {"op": "insert", "table": table, "record": order_record(rng, f"u{rng.randrange(1000)}")}
            for _ in range(BATCH)
        ]
        frames.append(encode(Request(1, "batch", {"ops": ops})))
    batches = -(-count // BATCH)
    conn = RawConnection(sock)
    # A reader thread takes the replies while this one sends: the store stops reading from a
    # client that does not read its replies (pause_writing -> pause_reading).
    window = threading.Semaphore(BATCHES_IN_FLIGHT)
    errors: list[int] = []

    def read_all() -> None:
        failed = 0
        try:
            for _ in range(batches):
                failed += conn.read_reply()
                window.release()
        finally:
            errors.append(failed)
            window.release()

    reader = threading.Thread(target=read_all, daemon=True)
    started = time.monotonic()
    reader.start()
    try:
        for k in range(batches):
            window.acquire()
            if errors:
                break
            conn.sock.sendall(frames[k % len(frames)])
        reader.join()
    finally:
        conn.close()
    if not errors or errors[0]:
        raise RuntimeError(f"{errors} batches failed while loading")
    return time.monotonic() - started


class Probe(threading.Thread):
    """``ping`` every PROBE_INTERVAL_S on one connection; keeps every round trip (seconds)."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.conn = RawConnection(sock, timeout=600.0)
        self.frame = encode(Request(1, "ping", {}))
        self.rtts: list[tuple[float, float]] = []  # (sent at, round trip)
        self.stopping = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            sent = time.monotonic()
            self.conn.sock.sendall(self.frame)
            self.conn.read_reply()
            now = time.monotonic()
            self.rtts.append((sent, now - sent))
            next_at = max(next_at + PROBE_INTERVAL_S, now)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.conn.close()


def _smaps_private(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


class ChildWatch(threading.Thread):
    """Samples the store's forked children: peak RSS and peak private (copied) memory."""

    def __init__(self, parent: int) -> None:
        super().__init__(daemon=True)
        self.parent = parent
        self.peak_rss = 0
        self.peak_private = 0
        self.samples = 0
        self.pids: set[int] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            for pid in child_pids(self.parent):
                try:
                    rss, private = rss_bytes(pid), _smaps_private(pid)
                except (OSError, ValueError):
                    continue
                self.pids.add(pid)
                self.samples += 1
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_private = max(self.peak_private, private)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


async def call_snapshot(sock: Path) -> dict[str, Any]:
    client = StoreClient(f"unix:{sock}")
    try:
        return await client.call("snapshot", {}, timeout=600)
    finally:
        await client.close()


def stall_stats(rtts: list[tuple[float, float]], since: float, until: float) -> dict[str, Any]:
    window = sorted(rtt for at, rtt in rtts if since <= at <= until)
    if not window:
        return {"pings": 0}
    return {
        "pings": len(window),
        "max_ms": window[-1] * 1e3,
        "p50_ms": window[len(window) // 2] * 1e3,
        "p99_ms": window[min(len(window) - 1, int(len(window) * 0.99))] * 1e3,
        "over_10ms": sum(1 for r in window if r > 0.010),
    }


def large_cases(procs: Processes, tmp: Path, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"records": count}
    ldir = tmp / "large"
    data = ldir / "data"
    ldir.mkdir()
    proc, sock, _ = start_store_ready(procs, ldir, data, "no", HUGE_REWRITE)
    asyncio.run(create_table(f"unix:{sock}", "orders"))
    log(f"loading {count:,} records with batch({BATCH}) into a store (STORE_FSYNC=no)")
    out["load_s"] = load_large(sock, "orders", count)
    out["rss_loaded_bytes"] = rss_bytes(proc.pid)
    out["log_bytes"] = sum(p.stat().st_size for p in data.iterdir() if p.is_file())
    log(
        f"loaded in {out['load_s']:.1f} s ({count / out['load_s']:,.0f} records/s), RSS "
        f"{out['rss_loaded_bytes'] / 2**20:,.0f} MiB, log {out['log_bytes'] / 2**20:,.0f} MiB"
    )

    # Replay restart: SIGKILL, no snapshot on disk, a new store replays the whole log.
    proc.kill()
    proc.wait()
    forget(procs, proc)
    out["files_before_replay"] = sorted(p.name for p in data.iterdir())
    proc, sock, out["replay_restart_s"] = start_store_ready(procs, ldir, data, "no", HUGE_REWRITE)
    log(f"restart replaying the log: ready after {out['replay_restart_s']:.2f} s")

    # Snapshot with the probe running.
    out["rss_before_snapshot_bytes"] = rss_bytes(proc.pid)
    probe = Probe(sock)
    watch = ChildWatch(proc.pid)
    probe.start()
    watch.start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        reply = asyncio.run(call_snapshot(sock))
        t1 = time.monotonic()
        time.sleep(0.5)
    finally:
        probe.stop()
        watch.stop()
    out["snapshot_reply"] = reply
    out["snapshot_wall_s"] = t1 - t0
    out["snapshot_bytes"] = reply.get("bytes")
    out["rss_after_snapshot_bytes"] = rss_bytes(proc.pid)
    out["child_peak_rss_bytes"] = watch.peak_rss or None
    out["child_peak_private_bytes"] = watch.peak_private or None
    out["child_samples"] = watch.samples
    out["stall_baseline"] = stall_stats(probe.rtts, t0 - 1.0, t0)
    out["stall_during"] = stall_stats(probe.rtts, t0, t1)
    log(
        f"snapshot: {out['snapshot_wall_s']:.2f} s, {reply.get('bytes', 0) / 2**20:,.0f} MiB; "
        f"probe max {out['stall_during'].get('max_ms', 0):.1f} ms "
        f"(baseline max {out['stall_baseline'].get('max_ms', 0):.1f} ms); child peak RSS "
        f"{watch.peak_rss / 2**20:,.0f} MiB, private {watch.peak_private / 2**20:,.0f} MiB"
    )

    # Snapshot restart: SIGTERM writes a final snapshot; a new store loads it.
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(600)
    out["shutdown_s"] = time.monotonic() - t0
    forget(procs, proc)
    out["files_before_snapshot_restart"] = sorted(p.name for p in data.iterdir())
    proc, sock, out["snapshot_restart_s"] = start_store_ready(procs, ldir, data, "no", HUGE_REWRITE)
    out["rss_after_restart_bytes"] = rss_bytes(proc.pid)
    log(
        f"SIGTERM took {out['shutdown_s']:.2f} s (final snapshot); restart from the snapshot: "
        f"ready after {out['snapshot_restart_s']:.2f} s"
    )
    procs.stop(proc)
    forget(procs, proc)
    return out


# -- results ----------------------------------------------------------------------------------


def build_rows(data: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    by_policy = {c["policy"]: c for c in data.get("policies", [])}
    for policy, case in by_policy.items():
        s, r = case["store"], case["redis"]
        rows.append(
            Row(
                f"insert, fsync={policy}: server CPU per op",
                s["server_cpu_us"],
                "µs",
                r["server_cpu_us"],
                "redis SET",
                2 * r["server_cpu_us"],
                note="target: within 2x of Redis's per-op CPU",
            )
        )
        rows.append(
            Row(
                f"insert, fsync={policy}: throughput",
                s["ops_per_s"],
                "ops/s",
                r["ops_per_s"],
                "redis SET",
                None,
                "",
            )
        )
    if "no" in by_policy and "always" in by_policy:
        share = by_policy["always"]["store"]["ops_per_s"] / by_policy["no"]["store"]["ops_per_s"]
        redis_share = (
            by_policy["always"]["redis"]["ops_per_s"] / by_policy["no"]["redis"]["ops_per_s"]
        )
        rows.append(
            Row("insert: always / no throughput", share * 100, "%", redis_share * 100, "redis",
                20.0, ">=")
        )  # fmt: skip
    large = data.get("large")
    if large:
        n = f"{large['records']:,}"
        during = large["stall_during"]
        rows += [
            Row(f"load {n} records, batch({BATCH})", large["load_s"], "s", target_op=""),
            Row(f"snapshot of {n}: duration", large["snapshot_wall_s"], "s", target_op=""),
            Row(f"snapshot of {n}: file size", large["snapshot_bytes"] / 2**20, "MiB",
                target_op=""),
            Row(f"snapshot of {n}: max ping RTT (1 ms probe)", during.get("max_ms"), "ms",
                large["stall_baseline"].get("max_ms"), "before", target_op=""),
            Row("store RSS before snapshot", large["rss_before_snapshot_bytes"] / 2**20, "MiB",
                target_op=""),
            Row("store RSS after snapshot", large["rss_after_snapshot_bytes"] / 2**20, "MiB",
                target_op=""),
            Row("snapshot child peak RSS", (large["child_peak_rss_bytes"] or 0) / 2**20, "MiB",
                target_op=""),
            Row("snapshot child peak private (COW copies + own heap)",
                (large["child_peak_private_bytes"] or 0) / 2**20, "MiB", target_op=""),
            Row(f"restart, replay log of {n}", large["replay_restart_s"], "s", target_op=""),
            Row(f"shutdown (SIGTERM, final snapshot of {n})", large["shutdown_s"], "s",
                target_op=""),
            Row(f"restart, load snapshot of {n}", large["snapshot_restart_s"], "s",
                target_op=""),
        ]  # fmt: skip
        empty = [c.get("store_empty_start_s") for c in data.get("policies", [])]
        if empty:
            rows.append(Row("start, empty data dir", min(empty), "s", target_op=""))
    return rows


def note_lines(data: dict[str, Any]) -> list[str]:
    lines = [
        f"background load before the run: {data.get('background_busy', 0):.0%} of all cores "
        f"busy; load average at start {data.get('loadavg_start')}, at end {data.get('loadavg_end')}"
    ]
    for case in data.get("policies", []):
        s, r = case["store"], case["redis"]
        lines.append(
            f"fsync={case['policy']}: others busy during store run {s['others_busy']:.0%}, "
            f"during redis run {r['others_busy']:.0%}; store sys CPU {s['server_sys_us']:.2f} "
            f"µs/op, redis sys {r['server_sys_us']:.2f} µs/op; driver CPU "
            f"{s['loadgen_cpu_us']:.1f} µs/op, redis-benchmark {r['loadgen_cpu_us']:.1f} µs/op"
        )
    large = data.get("large")
    if large:
        d = large["stall_during"]
        lines.append(
            f"snapshot probe: {d.get('pings')} pings during the snapshot, p50 "
            f"{d.get('p50_ms', 0):.2f} ms, p99 {d.get('p99_ms', 0):.2f} ms, "
            f"{d.get('over_10ms')} over 10 ms; child sampled {large['child_samples']} times "
            "every 50 ms (RSS counts pages shared with the parent; private = copied)"
        )
    return lines


def write_outputs(data: dict[str, Any], rows: list[Row]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    data["rows"] = [r.as_dict() for r in rows]
    RESULTS_JSON.write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = data["machine"]
    md = [
        "# bench-durability: the cost of persistence, next to Redis's AOF",
        "",
        f"Generated by `{data['command']}` on {data['date']} (runtime "
        f"{data.get('runtime_s', 0):.0f} s). Raw figures: "
        "`loadtests/results/bench_durability.json`.",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, Python "
        f"{m['python']}, redis-server {m['redis_server']}, git {m['git_commit']}.",
        "",
        "Inserts: 50 connections, not pipelined; redis: `redis-benchmark -t set -c 50 -r 100000"
        " -d <an order record's msgpack size> -P 1` (runs before 2026-11-24: its default 3-byte"
        " values) against `redis-server --appendonly yes --appendfsync <policy> --save ''` on a "
        "Unix socket; ours: 2 `loadtests.store_driver` processes inserting an order-like record "
        "(~150 B) with `STORE_DATA_DIR` in a fresh temp dir. CPU per op is utime + stime of all "
        "the server's threads (/proc). Both compete with their load generator for the 2 cores.",
        "",
        render_markdown(rows),
        "",
        *[f"- {line}" for line in note_lines(data)],
        "",
    ]
    RESULTS_MD.write_text("\n".join(md))


# -- main -------------------------------------------------------------------------------------


def collect(procs: Processes, tmp: Path, data: dict[str, Any], large: int) -> None:
    ensure_redis()
    data["machine"] = machine_info()
    data["loadavg_start"] = os.getloadavg()
    busy = machine_busy_fraction()
    data["background_busy"] = busy
    if busy > 0.05:
        log(f"WARNING: the machine is {busy:.0%} busy before the run; figures will be noisy")
    data["policies"] = []
    for policy in POLICIES:
        data["policies"].append(policy_case(procs, tmp, policy))
    if large > 0:
        data["large"] = large_cases(procs, tmp, large)
    data["loadavg_end"] = os.getloadavg()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    large = LARGE
    if "--large" in argv:
        large = int(argv[argv.index("--large") + 1])
    started = time.monotonic()
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    data["command"] = " ".join(["python -m loadtests.bench_durability", *argv])
    data["load"] = {"connections": CONNECTIONS, "drivers": DRIVERS, "pipeline": 1}
    if not run_collecting(
        "bench-durability-", lambda procs, tmp: collect(procs, tmp, data, large), log
    ):
        return 130
    data["runtime_s"] = time.monotonic() - started
    rows = build_rows(data)
    print()
    print(render_text(rows))
    print()
    for line in note_lines(data):
        print(f"  {line}")
    write_outputs(data, rows)
    print(f"  wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
