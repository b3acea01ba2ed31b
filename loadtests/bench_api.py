"""``make bench-api``: ``GET /api/v1/users/{id}`` through gunicorn, next to a minimal FastAPI app.

One run, on this machine, with wrk (installed with apt when missing), CONNECTIONS connections,
WORKERS gunicorn workers and the same gunicorn settings (``deploy/gunicorn.conf.py``) for every
app:

1. **ceiling**: ``loadtests.baseline_app``, a minimal FastAPI app returning the same user
   record from an in-process dict in the same envelope (no auth, no store, no middleware);
2. **ours**: the real stack (``python -m storeserver`` + gunicorn running ``api.main``). When
   authentication is present (``api/routes/auth.py`` exists and the GET answers 401 without a
   token) the request carries a bearer token of the user reading itself and is rate-limited
   (RATE_LIMIT set far above what the run can reach): issue 4's figure. No setting turns
   authentication off, so issue 3's "no auth" figure comes from ``loadtests.noauth_app`` (the
   real app with ``UserId`` declared as a plain path parameter; every middleware, including the
   rate-limit hit keyed by client IP, still runs);
3. per case: throughput, p50/p99 latency (wrk's), ratio to the ceiling, and CPU seconds per
   request of the gunicorn workers and of the store (utime + stime from /proc), plus the share
   of the machine other processes used meanwhile. The cases run interleaved, ROUNDS times
   (ceiling, ours, ...), RUN_S seconds each after one warm-up per app; medians are reported;
4. with authentication: ``POST /auth/token`` latency (LOGINS sequential logins, bcrypt at the
   default cost), and a stall check: one worker under a wrk GET load with and without logins
   arriving every LOGIN_INTERVAL_S, comparing GET p99/max.

Results: a table on stdout, ``loadtests/results/bench_api.json`` and ``docs/bench-api.md``.
``--rounds N`` and ``--duration S`` change the number of rounds and the seconds per run.
Where a worker's CPU per request goes: ``python -m loadtests.api_profile`` (in-process, ~1 min).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from api.settings import Settings

from .report import Row, machine_info, render_markdown, render_text
from .servers import (
    ROOT,
    Processes,
    child_pids,
    children_cpu_seconds,
    cpu_seconds,
    ensure_apt,
    machine_busy_fraction,
    machine_cpu_seconds,
    run_collecting,
    start_store,
)

CONNECTIONS = 50
WRK_THREADS = 2
WORKERS = 2
RUN_S = 10.0
WARMUP_S = 3.0
ROUNDS = 3
LOGINS = 20
STALL_RUN_S = 8.0
STALL_ROUNDS = 2
LOGIN_INTERVAL_S = 0.5
# Far above what a run can reach, so the limiter is exercised (one store hit per request)
# but never refuses.
RATE_LIMIT = "100000000/minute"
LOG_LEVEL = "info"  # the shipped default: one JSON access line per request
BCRYPT_ROUNDS = "12"  # the default, and production's minimum
TARGET_AUTH = 60.0  # % of the ceiling, issue 4
TARGET_NO_AUTH = 75.0  # % of the ceiling, issue 3
PASSWORD = "bench-api password 1"
JWT_SECRET = secrets.token_urlsafe(48)  # one per run, shared by every gunicorn of the run
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
TOKEN_PATH = "/api/v1/auth/token"
RESULTS_JSON = ROOT / "loadtests" / "results" / "bench_api.json"
RESULTS_MD = ROOT / "docs" / "bench-api.md"

CASE_LABELS = {
    "ceiling": "ceiling (minimal FastAPI, in-process dict)",
    "auth": "ours, authenticated + rate-limited",
    "noauth": "ours, no auth (bench-only app), rate-limited by IP",
    "plain": "ours, no auth",
}

# wrk prints this line at the end of a run: its own figures, machine-readable.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, "
    .. "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, "
    .. "\\"mean_us\\": %.1f}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def log(message: str) -> None:
    print(f"[bench-api {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One gunicorn (master + workers) on a local port."""

    name: str
    proc: subprocess.Popen
    port: int
    workers: list[int]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def api_env(tmp: Path, name: str, store_sock: Path, workers: int, port: int) -> dict[str, str]:
    """The environment for one gunicorn: every setting api.settings reads is set here or
    removed from the inherited environment (the Makefile exports some)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    metrics_dir = tmp / f"prometheus-{name}"
    metrics_dir.mkdir()
    env.update(
        {
            "ENV": "development",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
            "STORE_SOCKET": str(store_sock),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "LOG_LEVEL": LOG_LEVEL,
            "JWT_SECRET": JWT_SECRET,
            "BCRYPT_ROUNDS": BCRYPT_ROUNDS,
            "RATE_LIMIT": RATE_LIMIT,
            "AUTH_RATE_LIMIT": RATE_LIMIT,
        }
    )
    return env


def start_gunicorn(
    procs: Processes,
    tmp: Path,
    name: str,
    store_sock: Path,
    app: str | None = None,
    workers: int = WORKERS,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """``gunicorn -c deploy/gunicorn.conf.py [app]``; the config's app when ``app`` is None."""
    port = free_port()
    env = {**api_env(tmp, name, store_sock, workers, port), **(extra_env or {})}
    args = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *([app] if app else [])]
    out = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = procs.start(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out.close()
    return Server(name, proc, port, [])


def wait_ready(server: Server, path: str, workers: int, tmp: Path, timeout: float = 60) -> None:
    """Until ``path`` answers 200 and the master has all its workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = (tmp / f"{server.name}.log").read_text("utf-8", "replace")[-3000:]
            raise RuntimeError(
                f"gunicorn {server.name} exited with {server.proc.returncode}\n{tail}"
            )
        try:
            ok = httpx.get(server.base + path, timeout=2).status_code == 200
        except httpx.TransportError:
            ok = False
        server.workers = child_pids(server.proc.pid)
        if ok and len(server.workers) == workers:
            # Each uvicorn worker accepts only after its lifespan ran; give the last one a moment.
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise TimeoutError(f"gunicorn {server.name} not ready within {timeout:g} s")


# -- load and measurement ---------------------------------------------------------------------


def wrk(
    script: Path, url: str, seconds: float, headers: list[str], connections: int = CONNECTIONS
) -> dict[str, Any]:
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    cmd += ["--timeout", "5s", "-s", str(script)]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("WRKJSON ")]
    if not lines:
        raise RuntimeError(f"no result line from wrk:\n{out}")
    result: dict[str, Any] = json.loads(lines[-1][len("WRKJSON ") :])
    return result


def measure(
    case: str,
    server: Server,
    script: Path,
    url: str,
    headers: list[str],
    store_pid: int | None,
    seconds: float,
) -> dict[str, Any]:
    """One wrk run, with the CPU each process spent during it."""
    workers0 = {pid: cpu_seconds(pid) for pid in server.workers}
    store0 = cpu_seconds(store_pid) if store_pid else 0.0
    gen0 = children_cpu_seconds()
    busy0, total0 = machine_cpu_seconds()
    r = wrk(script, url, seconds, headers)
    busy1, total1 = machine_cpu_seconds()
    gen_cpu = children_cpu_seconds() - gen0
    worker_cpu = {pid: cpu_seconds(pid) - cpu0 for pid, cpu0 in workers0.items()}
    store_cpu = cpu_seconds(store_pid) - store0 if store_pid else 0.0
    n = max(1, r["requests"])
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    if r["status"]:
        raise RuntimeError(f"{case}: {r['status']} of {n} responses were not 2xx/3xx")
    ours = sum(worker_cpu.values()) + store_cpu + gen_cpu
    machine = (total1 - total0) or 1e-9
    return {
        "case": case,
        "requests": r["requests"],
        "seconds": r["duration_us"] / 1e6,
        "req_per_s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "mean_ms": r["mean_us"] / 1000,
        "bytes_per_response": r["bytes"] / n,
        "socket_errors": socket_errors,
        "worker_cpu_us": sum(worker_cpu.values()) / n * 1e6,
        "store_cpu_us": store_cpu / n * 1e6 if store_pid else None,
        "wrk_cpu_us": gen_cpu / n * 1e6,
        "busiest_worker_share": max(worker_cpu.values()) / max(1e-9, sum(worker_cpu.values())),
        "worker_cores": sum(worker_cpu.values()) / (r["duration_us"] / 1e6),
        "others_busy": max(0.0, (busy1 - busy0 - ours) / machine),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "worker_cpu_us", "wrk_cpu_us")
    keys += ("busiest_worker_share", "others_busy", "bytes_per_response", "worker_cores")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    stores = [r["store_cpu_us"] for r in runs if r["store_cpu_us"] is not None]
    out["store_cpu_us"] = statistics.median(stores) if stores else None
    out["requests"] = sum(r["requests"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    out["rounds"] = len(runs)
    return out


# -- the stack's user -------------------------------------------------------------------------


def register(base: str) -> tuple[str, str]:
    """A new user (open registration); returns (id, email)."""
    email = f"bench-{secrets.token_hex(6)}@example.com"
    body = {"email": email, "full_name": "Bench User", "age": 42, "password": PASSWORD}
    r = httpx.post(base + "/api/v1/users", json=body, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"registration failed: {r.status_code} {r.text}")
    return str(r.json()["data"]["id"]), email


def login(client: httpx.Client, email: str) -> str:
    r = client.post(TOKEN_PATH, data={"username": email, "password": PASSWORD}, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"login failed: {r.status_code} {r.text}")
    return str(r.json()["access_token"])


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (QA: ``round(x + 0.5)`` took the rank after it whenever
    p·n is odd, Python rounding halves to even: the p95 of 20 logins was their maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered) / 100) - 1))]


def login_latency(server: Server, email: str, n: int) -> dict[str, Any]:
    """``n`` sequential logins on one keep-alive connection (so on one worker)."""
    times = []
    workers0 = {pid: cpu_seconds(pid) for pid in server.workers}
    with httpx.Client(base_url=server.base) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            login(client, email)
            times.append((time.perf_counter() - t0) * 1000)
    cpu = sum(cpu_seconds(pid) - c for pid, c in workers0.items())
    return {
        "logins": n,
        "p50_ms": statistics.median(times),
        "p95_ms": percentile(times, 95),
        "max_ms": max(times),
        "worker_cpu_ms": cpu / n * 1000,
        "times_ms": times,
    }


@contextmanager
def logins_every(base: str, email: str, interval: float) -> Iterator[list[float]]:
    """Log in from a thread every ``interval`` seconds (sequentially) while the block runs."""
    times: list[float] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            with httpx.Client(base_url=base) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    login(client, email)
                    spent = time.perf_counter() - t0
                    times.append(spent * 1000)
                    stop.wait(max(0.0, interval - spent))
        except BaseException as exc:  # reported after the run
            failures.append(exc)

    thread = threading.Thread(target=loop, name="logins", daemon=True)
    thread.start()
    try:
        yield times
    finally:
        stop.set()
        thread.join(60)
    if failures:
        raise RuntimeError(f"logins during the load failed: {failures[0]}")


# -- machine ----------------------------------------------------------------------------------


def busiest_processes(seconds: float = 1.0, n: int = 5) -> list[dict[str, Any]]:
    """The processes that used the most CPU over ``seconds`` (other load on the machine)."""

    def snapshot() -> dict[int, float]:
        cpu = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError, ValueError, IndexError):
                    cpu[int(entry.name)] = cpu_seconds(int(entry.name))
        return cpu

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    used = sorted(((after[pid] - before[pid], pid) for pid in after if pid in before), reverse=True)
    out = []
    for spent, pid in used[:n]:
        if spent <= 0:
            break
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:100]
        except OSError:
            command = "?"
        out.append({"pid": pid, "cpu_share_of_one_core": spent / seconds, "command": command})
    return out


def gunicorn_settings() -> dict[str, str]:
    text = GUNICORN_CONF.read_text()
    wanted = ("worker_class", "keepalive", "timeout", "graceful_timeout", "workers")
    found = re.findall(r"^(\w+) = (.+)$", text, flags=re.MULTILINE)
    return {key: value for key, value in found if key in wanted}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for package in ("fastapi", "starlette", "pydantic", "uvicorn", "uvicorn-worker", "gunicorn"):
        out[package] = metadata.version(package)
    out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    return out


# -- the run ----------------------------------------------------------------------------------


def collect(procs: Processes, tmp: Path, data: dict[str, Any], rounds: int, run_s: float) -> None:
    ensure_apt("wrk", "wrk")
    data["machine"] = {**machine_info(), **versions()}
    data["gunicorn"] = gunicorn_settings()
    load = os.getloadavg()
    busy = machine_busy_fraction(2.0)
    data["background"] = {
        "busy": busy,
        "loadavg": load,
        "top": busiest_processes(1.0),
    }
    log(f"machine before the run: {busy:.0%} busy over 2 s, load average {load[0]:.2f}")
    if busy > 0.10:
        log("WARNING: other processes are using the machine; figures will be noisy")
    script = tmp / "report.lua"
    script.write_text(WRK_REPORT)

    store_proc, store_sock = start_store(procs, tmp)
    ours = start_gunicorn(procs, tmp, "ours", store_sock)
    wait_ready(ours, "/api/v1/ready", WORKERS, tmp)
    user_id, email = register(ours.base)
    path = f"/api/v1/users/{user_id}"
    auth = (ROOT / "api" / "routes" / "auth.py").exists() and (
        httpx.get(ours.base + path).status_code == 401
    )
    data["auth_present"] = auth
    data["auth_switches"] = [
        name for name in Settings.model_fields if "auth" in name and "able" in name
    ]
    headers: list[str] = []
    if auth:
        with httpx.Client(base_url=ours.base) as client:
            headers = [f"Authorization: Bearer {login(client, email)}"]
    reply = httpx.get(ours.base + path, headers=dict(h.split(": ", 1) for h in headers))
    if reply.status_code != 200:
        raise RuntimeError(f"GET {path}: {reply.status_code} {reply.text}")
    record = reply.json()["data"]
    data["record"] = record
    data["response_headers"] = {"ours": dict(reply.headers)}

    servers = {"ceiling": None, "auth" if auth else "plain": ours}
    ceiling = start_gunicorn(
        procs,
        tmp,
        "ceiling",
        store_sock,
        app="loadtests.baseline_app:create_app()",
        extra_env={"BASELINE_RECORD": json.dumps(record)},
    )
    servers["ceiling"] = ceiling
    case_headers = {"ceiling": [], "auth": headers, "plain": [], "noauth": []}
    if auth:
        noauth = start_gunicorn(
            procs, tmp, "noauth", store_sock, app="loadtests.noauth_app:create_noauth_app()"
        )
        servers["noauth"] = noauth
        wait_ready(noauth, "/api/v1/ready", WORKERS, tmp)
    wait_ready(ceiling, path, WORKERS, tmp)
    base_reply = httpx.get(ceiling.base + path)
    if base_reply.json() != reply.json():
        raise RuntimeError(f"the ceiling answers {base_reply.text}, ours {reply.text}")
    data["response_headers"]["ceiling"] = dict(base_reply.headers)
    log(
        f"store pid {store_proc.pid}; gunicorn ours {ours.proc.pid} workers {ours.workers}, "
        f"ceiling {ceiling.proc.pid} workers {ceiling.workers}; auth present: {auth}"
    )

    order = list(servers)  # ceiling first, then ours
    for case in order:
        server = servers[case]
        assert server is not None
        wrk(script, server.base + path, WARMUP_S, case_headers[case])
    log(f"warmed up {', '.join(order)} ({WARMUP_S:g} s each)")

    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in order}
    for k in range(rounds):
        for case in order:
            server = servers[case]
            assert server is not None
            store_pid = None if case == "ceiling" else store_proc.pid
            r = measure(
                case, server, script, server.base + path, case_headers[case], store_pid, run_s
            )
            runs[case].append(r)
            store = f", store {r['store_cpu_us']:.0f}" if r["store_cpu_us"] is not None else ""
            log(
                f"round {k + 1} {case}: {r['req_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, CPU/req workers {r['worker_cpu_us']:.0f} µs{store}, "
                f"busiest worker {r['busiest_worker_share']:.0%}, others {r['others_busy']:.0%}"
            )
    data["runs"] = runs
    data["cases"] = {case: median_of(rs) for case, rs in runs.items()}

    if not auth:
        return
    for case in ("ceiling", "noauth"):
        procs.stop(servers[case].proc)  # type: ignore[union-attr]
    log(f"{LOGINS} sequential logins (POST {TOKEN_PATH}, BCRYPT_ROUNDS={BCRYPT_ROUNDS})")
    data["login"] = login_latency(ours, email, LOGINS)
    procs.stop(ours.proc)

    log(f"stall check: 1 worker, GET load with and without a login every {LOGIN_INTERVAL_S} s")
    solo = start_gunicorn(procs, tmp, "solo", store_sock, workers=1)
    wait_ready(solo, "/api/v1/ready", 1, tmp)
    with httpx.Client(base_url=solo.base) as client:
        solo_headers = [f"Authorization: Bearer {login(client, email)}"]
    url = solo.base + path
    wrk(script, url, WARMUP_S, solo_headers)
    stall: dict[str, Any] = {"quiet": [], "logins": [], "login_ms": []}
    for _ in range(STALL_ROUNDS):
        stall["quiet"].append(
            measure("solo", solo, script, url, solo_headers, store_proc.pid, STALL_RUN_S)
        )
        with logins_every(solo.base, email, LOGIN_INTERVAL_S) as times:
            busy_run = measure("solo", solo, script, url, solo_headers, store_proc.pid, STALL_RUN_S)
        busy_run["logins"] = len(times)
        stall["logins"].append(busy_run)
        stall["login_ms"].extend(times)
        q, b = stall["quiet"][-1], busy_run
        log(
            f"  GET p99 {q['p99_ms']:.2f} ms (max {q['max_ms']:.0f}) without logins, "
            f"{b['p99_ms']:.2f} ms (max {b['max_ms']:.0f}) with {len(times)} logins "
            f"(login median {statistics.median(times):.0f} ms)"
        )
    data["stall"] = stall


# -- the table --------------------------------------------------------------------------------


def build_rows(data: dict[str, Any]) -> list[Row]:
    cases = data["cases"]
    top = cases["ceiling"]
    rows: list[Row] = []
    ours_cases = [("auth", TARGET_AUTH, "issue 4")] if data["auth_present"] else []
    ours_cases += [
        ("noauth" if data["auth_present"] else "plain", TARGET_NO_AUTH, "issue 3"),
    ]
    rows.append(
        Row(f"throughput, {CASE_LABELS['ceiling']}", top["req_per_s"], "req/s", target_op="")
    )
    for case, target, issue in ours_cases:
        c = cases[case]
        label = CASE_LABELS[case]
        rows += [
            Row(f"throughput, {label}", c["req_per_s"], "req/s", top["req_per_s"], "ceiling"),
            Row(
                f"share of the ceiling, {label} ({issue})",
                c["req_per_s"] / top["req_per_s"] * 100,
                "%",
                target=target,
                target_op=">=",
            ),
            Row(f"p50 latency, {label}", c["p50_ms"], "ms", top["p50_ms"], "ceiling"),
            Row(f"p99 latency, {label}", c["p99_ms"], "ms", top["p99_ms"], "ceiling"),
            Row(
                f"gunicorn workers' CPU per request, {label}",
                c["worker_cpu_us"],
                "µs",
                top["worker_cpu_us"],
                "ceiling",
            ),
            Row(f"store CPU per request, {label}", c["store_cpu_us"], "µs"),
        ]
    login = data.get("login")
    if login:
        rows += [
            Row(
                f"POST /auth/token latency p50 ({login['logins']} sequential)",
                login["p50_ms"],
                "ms",
            ),
            Row("POST /auth/token latency p95", login["p95_ms"], "ms"),
            Row("worker CPU per login (bcrypt)", login["worker_cpu_ms"], "ms"),
        ]
    stall = data.get("stall")
    if stall:
        quiet = statistics.median(r["p99_ms"] for r in stall["quiet"])
        busy = statistics.median(r["p99_ms"] for r in stall["logins"])
        quiet_max = max(r["max_ms"] for r in stall["quiet"])
        busy_max = max(r["max_ms"] for r in stall["logins"])
        rows += [
            Row(
                "GET p99, 1 worker, logins arriving (vs none)",
                busy,
                "ms",
                quiet,
                "no logins",
                # A login run on the event loop would hold every GET for one bcrypt call.
                target=login["worker_cpu_ms"] if login else None,
                target_op="<",
            ),
            Row("GET max latency, 1 worker, logins arriving (vs none)", busy_max, "ms", quiet_max),
        ]
    return rows


def notes(data: dict[str, Any]) -> list[str]:
    out = []
    bg = data["background"]
    load = ", ".join(f"{v:.2f}" for v in bg["loadavg"])
    top = "; ".join(f"{p['cpu_share_of_one_core']:.0%} {p['command'][:60]}" for p in bg["top"][:4])
    out.append(
        f"machine before the run: {bg['busy']:.0%} of both cores busy over 2 s, load average "
        f"{load}; busiest processes (share of one core): {top or 'none'}"
    )
    for case, c in data["cases"].items():
        store = f", store {c['store_cpu_us']:.0f} µs" if c["store_cpu_us"] is not None else ""
        out.append(
            f"{CASE_LABELS[case]}: median of {c['rounds']} runs; {c['requests']:,} requests in "
            f"all, {c['socket_errors']} socket errors; CPU per request: workers "
            f"{c['worker_cpu_us']:.0f} µs{store}, wrk {c['wrk_cpu_us']:.0f} µs; workers used "
            f"{c['worker_cores']:.2f} cores, the busiest worker {c['busiest_worker_share']:.0%} "
            f"of their CPU; p90 {c['p90_ms']:.2f} ms, max {c['max_ms']:.0f} ms; "
            f"{c['bytes_per_response']:.0f} bytes per response (headers included); other "
            f"processes used {c['others_busy']:.0%} of the machine"
        )
    for case, runs in data["runs"].items():
        per_run = ", ".join(f"{r['req_per_s']:,.0f}" for r in runs)
        out.append(f"  {case} req/s per round: {per_run}")
    if "ceiling" in data["runs"]:
        for case in data["runs"]:
            if case == "ceiling":
                continue
            ratios = [
                o["req_per_s"] / c["req_per_s"]
                for o, c in zip(data["runs"][case], data["runs"]["ceiling"], strict=True)
            ]
            out.append(
                f"  {case} / ceiling per round (paired, back to back): "
                + ", ".join(f"{r:.0%}" for r in ratios)
            )
    login = data.get("login")
    if login:
        out.append(
            f"logins: {login['logins']} sequential on one idle worker, "
            f"p50 {login['p50_ms']:.0f} ms, p95 {login['p95_ms']:.0f} ms, max "
            f"{login['max_ms']:.0f} ms; BCRYPT_ROUNDS={BCRYPT_ROUNDS} (the default)"
        )
    stall = data.get("stall")
    if stall:
        for q, b in zip(stall["quiet"], stall["logins"], strict=True):
            out.append(
                f"stall check (1 worker, {STALL_RUN_S:g} s each): without logins "
                f"{q['req_per_s']:,.0f} req/s, p99 {q['p99_ms']:.2f} ms, max {q['max_ms']:.0f} ms"
                f" | with {b['logins']} logins {b['req_per_s']:,.0f} req/s, p99 "
                f"{b['p99_ms']:.2f} ms, max {b['max_ms']:.0f} ms, worker used "
                f"{b['worker_cores']:.2f} cores"
            )
        out.append(
            f"  login latency under that load: median {statistics.median(stall['login_ms']):.0f}"
            f" ms, max {max(stall['login_ms']):.0f} ms"
        )
        bcrypt_ms = login["worker_cpu_ms"] if login else 0.0
        quiet = statistics.median(r["p99_ms"] for r in stall["quiet"])
        out.append(
            f"  the stall target is one login's worker CPU ({bcrypt_ms:.0f} ms): a login run on "
            "the event loop would hold every GET behind it that long; "
            + (
                "INCONCLUSIVE this run: GET p99 without logins is already above half of it"
                if quiet > bcrypt_ms / 2
                else "GET p99 without logins is below half of it, so the check can see such a stall"
            )
        )
    return out


def auth_line(data: dict[str, Any]) -> str:
    if not data["auth_present"]:
        return "Authentication is not in the app yet: ours is called without a token."
    switches = data.get("auth_switches")
    return (
        "Authenticated: the user reads itself with a bearer token (one token for all "
        "connections, as a client reuses it). "
        + (
            f"Settings that may switch auth (not used): {', '.join(switches)}. "
            if switches
            else "No setting turns auth off, so "
        )
        + "'no auth' is `loadtests/noauth_app.py`: the real app "
        "with `UserId` declared as a plain path parameter (no token, no JWT or revocation "
        "check, no dependency chain; the rate-limit hit, keyed by client IP, and every "
        "middleware still run)."
    )


def setup_lines(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    g = data["gunicorn"]
    return [
        f"Machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, Python "
        f"{m['python']}, fastapi {m['fastapi']}, starlette {m['starlette']}, pydantic "
        f"{m['pydantic']}, uvicorn {m['uvicorn']}, uvicorn-worker {m['uvicorn-worker']}, "
        f"gunicorn {m['gunicorn']}, uvloop {m['uvloop']}, wrk {m['wrk']}, git {m['git_commit']}.",
        "",
        f"Load: wrk `-t{WRK_THREADS} -c{CONNECTIONS} --latency`, {data['run_s']:g} s per run after "
        f"a {WARMUP_S:g} s warm-up per app, the cases interleaved ({', '.join(data['runs'])}) "
        f"{data['rounds']} times; medians reported. Every app runs under `deploy/gunicorn.conf.py` "
        f"with {WORKERS} workers (worker_class {g.get('worker_class')}, keepalive "
        f"{g.get('keepalive')}, timeout {g.get('timeout')}). Ours: LOG_LEVEL={LOG_LEVEL} (one "
        f"JSON access line per request, to a file), RATE_LIMIT and AUTH_RATE_LIMIT = "
        f"{RATE_LIMIT} (so nothing is throttled but every request still makes its rate-limit "
        f"hit), BCRYPT_ROUNDS={BCRYPT_ROUNDS}, the store without persistence. CPU per request is "
        "utime + stime from /proc/<pid>/stat over the run divided by the requests.",
        "",
        "Ceiling: `loadtests/baseline_app.py`, FastAPI returning `{status, data}` from a dict "
        "(no auth, no store, no middleware). " + auth_line(data),
        "",
        "Where the worker's CPU per request goes: `python -m loadtests.api_profile` (the app "
        "called in-process, one part removed at a time).",
    ]


def write_outputs(data: dict[str, Any], rows: list[Row]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(
        json.dumps({**data, "rows": [r.as_dict() for r in rows]}, indent=2, default=str) + "\n"
    )
    md = [
        "# API benchmark (`make bench-api`)",
        "",
        f"Generated by `{data['command']}` on {data['date']} in {data['runtime_s']:.0f} s. "
        "Do not edit by hand; rerun the target.",
        "",
        *setup_lines(data),
        "",
        render_markdown(rows),
        "",
        "## Details",
        "",
        *[f"- {line}" for line in notes(data)],
        "",
    ]
    RESULTS_MD.write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rounds, run_s = ROUNDS, RUN_S
    if "--rounds" in argv:
        rounds = int(argv[argv.index("--rounds") + 1])
    if "--duration" in argv:
        run_s = float(argv[argv.index("--duration") + 1])
    started = time.monotonic()
    data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    data["command"] = " ".join(["python -m loadtests.bench_api", *argv])
    data["rounds"], data["run_s"] = rounds, run_s
    if not run_collecting(
        "bench-api-", lambda procs, tmp: collect(procs, tmp, data, rounds, run_s), log
    ):
        return 130
    data["runtime_s"] = time.monotonic() - started
    rows = build_rows(data)
    print()
    print(render_text(rows))
    print()
    for line in notes(data):
        print(f"  {line}")
    print(f"\n  runtime {data['runtime_s']:.0f} s")
    write_outputs(data, rows)
    print(f"  wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
