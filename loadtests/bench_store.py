"""``make bench-store``: the store's CPU per operation and throughput, next to redis-server.

On a 2-core machine the load generator competes with the server for CPU, so the primary
figure is the CPU time each server process spends per operation (utime + stime deltas from
/proc/<pid>/stat around each run), with throughput beside it. One run does, in order:

1. a private redis-server on a Unix socket (installed with apt when missing) and our store
   (``python -m storeserver``), both without persistence;
2. redis-benchmark SET and GET, 50 connections, ``-r 100000``, ``-d`` an order record's size,
   not pipelined and ``-P 16``;
3. our store, 50 connections from 2 driver processes (``loadtests.store_driver``): ``get`` of
   100k preloaded ids, ``insert`` of an order-like record, and (for information) ``insert`` into
   a table with a hash index and a foreign key; not pipelined and 16 in flight per connection;
4. the floor under the store's figures: the same drivers against a uvloop server that answers
   every frame with a canned ``get`` reply and does nothing else (``loadtests.store_floor``);
5. worker-side client CPU per round trip: ``StoreClient`` and redis-py, over the floor of a bare
   uvloop echo round trip (``loadtests.client_cpu``);
6. where the store's CPU per request goes, in-process (``loadtests.store_profile``);
7. 100k users + 1M orders driven through the engine directly (``loadtests.large_table``).

``--skip-large`` leaves out step 7.

Results: a table on stdout, ``loadtests/results/bench_store.json`` and ``docs/bench-store.md``.
Each run lasts ~RUN_S seconds of load after a warm-up that also sizes it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from storeserver.client import StoreClient
from storeserver.probe import ping
from storeserver.protocol import pack_value

from .report import machine_info, render_text
from .servers import (
    ROOT,
    Processes,
    children_cpu_seconds,
    cpu_seconds,
    cpu_times,
    ensure_redis,
    machine_busy_fraction,
    machine_cpu_seconds,
    rss_bytes,
    run_collecting,
    start_redis,
    start_store,
)
from .store_driver import FK_USERS, GET_IDS, fk_user_id, order_record
from .store_results import RESULTS_JSON, RESULTS_MD, build_rows, noise_line, notes, write_outputs

RUN_S = 3.5
CONNECTIONS = 50
DRIVERS = 2
PIPELINE = 16
REDIS_PY = "redis==8.1.0"  # benchmark-only dependency (the anchor for client CPU)
REDIS_VALUE_BYTES = len(pack_value(order_record(random.Random(0), "u1")))
"""redis-benchmark's value size (``-d``): an order record as our drivers insert it (~85 B), so
both servers take, keep and answer values of one size. Runs before this used its default, 3
bytes, which made Redis's SET cheaper (QA: with ``appendfsync always`` 12-25 % less CPU)."""


def log(message: str) -> None:
    print(f"[bench-store {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- redis ------------------------------------------------------------------------------------


def redis_benchmark(sock: Path, redis_pid: int, test: str, n: int, pipeline: int) -> dict[str, Any]:
    cmd = ["redis-benchmark", "-s", str(sock), "-c", str(CONNECTIONS), "-n", str(n)]
    cmd += ["-t", test, "-r", "100000", "-d", str(REDIS_VALUE_BYTES), "-P", str(pipeline), "--csv"]
    (user0, sys0), gen0, wall0 = cpu_times(redis_pid), children_cpu_seconds(), time.monotonic()
    busy0, total0 = machine_cpu_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - wall0
    busy1, total1 = machine_cpu_seconds()
    user1, sys1 = cpu_times(redis_pid)
    server_cpu, gen_cpu = user1 - user0 + sys1 - sys0, children_cpu_seconds() - gen0
    others = (busy1 - busy0 - server_cpu - gen_cpu) / max(1e-9, total1 - total0)
    rows = [r for r in csv.reader(io.StringIO(out)) if r and r[0] != "test"]
    if not rows:
        raise RuntimeError(f"no CSV result from redis-benchmark: {out!r}")
    return {
        "server": "redis",
        "command": test.upper(),
        "depth": pipeline,
        "ops": n,
        "ops_per_s": float(rows[0][1]),
        "server_cpu_us": server_cpu / n * 1e6,
        "server_sys_us": (sys1 - sys0) / n * 1e6,
        "loadgen_cpu_us": gen_cpu / n * 1e6,
        "wall_s": wall,
        "p50_ms": float(rows[0][4]) if len(rows[0]) > 4 else None,
        "others_busy": max(0.0, others),
    }


def redis_case(sock: Path, redis_pid: int, test: str, pipeline: int) -> dict[str, Any]:
    warm = redis_benchmark(sock, redis_pid, test, 100_000 if pipeline == 1 else 400_000, pipeline)
    n = max(100_000, round(warm["ops_per_s"] * RUN_S, -4))
    result = redis_benchmark(sock, redis_pid, test, int(n), pipeline)
    log(
        f"redis {test.upper()} depth {pipeline}: {result['server_cpu_us']:.2f} µs CPU/op, "
        f"{result['ops_per_s']:,.0f} ops/s ({result['wall_s']:.1f} s)"
    )
    return result


# -- our store --------------------------------------------------------------------------------


class Drivers:
    """The driver processes: send each the same run, collect their results."""

    def __init__(
        self,
        procs: Processes,
        sock: Path,
        connections: int = CONNECTIONS,
        get_ids: int | None = None,
    ) -> None:
        """``get_ids``: ids each driver reads first for its gets (``--get-ids``; 0 for none)."""
        self.procs = []
        for k in range(DRIVERS):
            args = [sys.executable, "-m", "loadtests.store_driver", "--socket", str(sock)]
            args += ["--conns", str(max(1, connections // DRIVERS)), "--index", str(k)]
            args += ["--drivers", str(DRIVERS), "--seed", str(k + 1)]
            if get_ids is not None:
                args += ["--get-ids", str(get_ids)]
            proc = procs.start(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
            )
            self.procs.append(proc)
        for proc in self.procs:
            self._read(proc)  # {"ready": true}

    @staticmethod
    def _read(proc: subprocess.Popen) -> dict[str, Any]:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"load driver {proc.pid} exited with {proc.wait()}")
        return json.loads(line)

    def run(self, kind: str, depth: int, ops_each: list[int]) -> list[dict[str, Any]]:
        for proc, ops in zip(self.procs, ops_each, strict=True):
            proc.stdin.write(json.dumps({"kind": kind, "depth": depth, "ops": ops}) + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        return [self._read(proc) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.stdin.write("\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
        for proc in self.procs:
            proc.wait(10)


def store_run(drivers: Drivers, store_pid: int, kind: str, depth: int, ops: int) -> dict[str, Any]:
    each = [ops // DRIVERS] * DRIVERS
    user0, sys0 = cpu_times(store_pid)
    busy0, total0 = machine_cpu_seconds()
    results = drivers.run(kind, depth, each)
    user1, sys1 = cpu_times(store_pid)
    server_cpu = user1 - user0 + sys1 - sys0
    busy1, total1 = machine_cpu_seconds()
    loadgen_cpu = sum(r["cpu"] for r in results)
    others = (busy1 - busy0 - server_cpu - loadgen_cpu) / max(1e-9, total1 - total0)
    total = sum(r["ops"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "server": "store",
        "command": kind,
        "depth": depth,
        "ops": total,
        "errors": sum(r["errors"] for r in results),
        "ops_per_s": total / wall,
        "server_cpu_us": server_cpu / total * 1e6,
        "server_sys_us": (sys1 - sys0) / total * 1e6,
        "loadgen_cpu_us": loadgen_cpu / total * 1e6,
        "wall_s": wall,
        "others_busy": max(0.0, others),
    }


def store_case(
    drivers: Drivers, store_pid: int, kind: str, depth: int, server: str = "store"
) -> dict[str, Any]:
    warm = store_run(drivers, store_pid, kind, depth, 20_000 if depth == 1 else 60_000)
    n = max(20_000, round(warm["ops_per_s"] * RUN_S, -4))
    result = store_run(drivers, store_pid, kind, depth, int(n))
    result["server"] = server
    result["rss_after_bytes"] = rss_bytes(store_pid)
    log(
        f"{server} {kind} depth {depth}: {result['server_cpu_us']:.2f} µs CPU/op, "
        f"{result['ops_per_s']:,.0f} ops/s ({result['wall_s']:.1f} s, {result['errors']} errors)"
    )
    if warm["errors"] or result["errors"]:
        raise RuntimeError(f"store {kind} answered errors: {warm['errors'] + result['errors']}")
    return result


async def create_tables(address: str) -> None:
    client = StoreClient(address)
    try:
        for table in ("bench_get", "bench_insert"):
            await client.call("create_table", {"table": table})
        await client.call("create_table", {"table": "bench_users"})
        for i in range(FK_USERS):
            record = {"id": fk_user_id(i), "email": f"u{i}@example.com", "role": "user"}
            await client.call("insert", {"table": "bench_users", "record": record})
        await client.call(
            "create_table",
            {
                "table": "bench_orders",
                "indexes": [{"field": "user_id"}],
                "foreign_keys": [{"field": "user_id", "table": "bench_users"}],
            },
        )
    finally:
        await client.close()


# -- the other processes ----------------------------------------------------------------------


def ensure_redis_py() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        log(f"redis-py missing: pip install {REDIS_PY} (benchmark-only)")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", REDIS_PY]
        if subprocess.run(cmd).returncode != 0:
            log("could not install redis-py: the client anchor will be missing")
            return False
    return True


def run_json(procs: Processes, module: str, args: list[str]) -> dict[str, Any]:
    proc = procs.start(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def idle_cpu_us_per_s(pid: int, seconds: float = 1.0) -> float:
    cpu0 = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / seconds * 1e6


# -- main -------------------------------------------------------------------------------------


def collect(procs: Processes, tmp: Path, data: dict[str, Any], skip_large: bool) -> None:
    ensure_redis()
    have_redis_py = ensure_redis_py()
    data["machine"] = machine_info()
    redis_proc, redis_sock = start_redis(procs, tmp)
    store_proc, store_sock = start_store(procs, tmp)
    if ping(f"unix:{store_sock}") is None:
        tail = (tmp / "store.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the store does not answer ping; its log ends with:\n{tail}")
    log(f"redis-server pid {redis_proc.pid}, store pid {store_proc.pid}, sockets in {tmp}")
    busy = machine_busy_fraction()
    data["background_busy"] = busy
    if busy > 0.05:
        log(f"WARNING: the machine is {busy:.0%} busy before the run; figures will be noisy")
    data["idle_cpu_us_per_s"] = {
        "store": idle_cpu_us_per_s(store_proc.pid),
        "redis": idle_cpu_us_per_s(redis_proc.pid),
    }

    data["redis_cases"] = [
        redis_case(redis_sock, redis_proc.pid, test, depth)
        for depth in (1, PIPELINE)
        for test in ("set", "get")
    ]

    asyncio.run(create_tables(f"unix:{store_sock}"))
    drivers = Drivers(procs, store_sock)
    preload = [len(range(k, GET_IDS, DRIVERS)) for k in range(DRIVERS)]
    loaded = drivers.run("preload", PIPELINE, preload)
    if sum(r["errors"] for r in loaded):
        raise RuntimeError("preloading the get table failed")
    log(f"preloaded {GET_IDS:,} records into bench_get")
    data["store_cases"] = [
        store_case(drivers, store_proc.pid, kind, depth)
        for depth in (1, PIPELINE)
        for kind in ("get", "insert", "insert_fk")
    ]
    drivers.close()

    log("floor: the same drivers against a server that does no work (loadtests.store_floor)")
    floor_sock = tmp / "floor.sock"
    floor = procs.start(
        [sys.executable, "-m", "loadtests.store_floor", "--socket", str(floor_sock)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    if floor.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
        raise RuntimeError(f"loadtests.store_floor exited with {floor.wait()}")
    drivers = Drivers(procs, floor_sock)
    data["floor_cases"] = [
        store_case(drivers, floor.pid, "get", depth, server="floor") for depth in (1, PIPELINE)
    ]
    drivers.close()
    procs.stop(floor)

    log("client CPU per round trip (StoreClient, redis-py)")
    args = ["--store", f"unix:{store_sock}", "--n", "20000"]
    if have_redis_py:
        args += ["--redis-socket", str(redis_sock)]
    data["client_cpu"] = run_json(procs, "loadtests.client_cpu", args)
    procs.stop(store_proc)
    procs.stop(redis_proc)

    log("in-process breakdown of the store's CPU per request (loadtests.store_profile)")
    try:
        data["profile"] = run_json(procs, "loadtests.store_profile", [])
    except (RuntimeError, ValueError) as exc:  # internals it pokes at may change: not fatal
        log(f"WARNING: store_profile failed ({exc}); no breakdown in this run")

    if not skip_large:
        log("large table: 100k users + 1M orders through the engine (about a minute or two)")
        data["large_table"] = run_json(procs, "loadtests.large_table", [])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    skip_large = "--skip-large" in argv
    started = time.monotonic()
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    data["command"] = "python -m loadtests.bench_store " + " ".join(argv)
    data["load"] = {"connections": CONNECTIONS, "drivers": DRIVERS, "pipeline": PIPELINE}
    if not run_collecting(
        "bench-store-", lambda procs, tmp: collect(procs, tmp, data, skip_large), log
    ):
        return 130
    data["runtime_s"] = time.monotonic() - started
    rows = build_rows(data)
    print()
    print(render_text(rows))
    print()
    for line in notes(data):
        print(f"  {line}")
    print(f"  {noise_line(data)}")
    m = data["machine"]
    print(
        f"\n  machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, redis "
        f"{m['redis_server']}, msgpack {m['msgpack']}, uvloop {m['uvloop']}, "
        f"redis-py {m['redis_py']}, hiredis {m['hiredis']}; runtime {data['runtime_s']:.0f} s"
    )
    write_outputs(data, rows)
    print(f"  wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
