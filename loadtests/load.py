"""``make load``: the locust scenarios (``loadtests/locustfile.py``) headless, with thresholds.

Without ``--host`` it starts the service locally first, in a temporary directory: one store
(persistence on, ``STORE_FSYNC=everysec``, as ``make run``) and gunicorn with ``--workers``
workers, with these documented differences from the defaults, so the run measures the service
rather than its guards:

- ``RATE_LIMIT`` and ``AUTH_RATE_LIMIT`` = ``--rate-limit`` (default 1000000/minute). With the
  defaults a 100-user run would mostly measure 429s: ``AUTH_RATE_LIMIT`` (10/minute per client
  IP; failed ones also 50/minute per username) counts every login and every registration, and
  all simulated users register and log in from 127.0.0.1;
  ``RATE_LIMIT`` (100/minute) is per user for the shoppers (each has its own token) but per IP
  for the requests without a token (registrations, logins, refreshes), and all the Reporters
  of a run share one admin token, so one budget. Every request still makes its rate-limit hit
  in the store, so the limiter's cost is measured.
- ``BCRYPT_ROUNDS`` = ``--bcrypt-rounds`` (default 4; production's is 12): each of the 100
  users registers and logs in once, all within the first 5 s of spawning. At cost 12 a hash is
  ~0.3 s of CPU, so those 200 hashes hold both cores of a 2-core machine for 30 s and more and
  the run measures bcrypt, not the service (measured: registrations at p50 63 s, a third of
  them timed out). The login cost at 12 is measured by ``make bench-api``.

With ``--host`` (an http(s) URL) it targets that deployment as it is, with ``ADMIN_EMAIL`` /
``ADMIN_PASSWORD`` from the environment for the reporting user (``make load`` passes the
development admin's, as ``make seed`` does). Its own limits apply: raise ``AUTH_RATE_LIMIT``
and ``RATE_LIMIT`` in the target's environment (and restart it) for a run of more than a few
users from one machine, or the run fails on 429s; the limits that applied are the
``X-Rate-Limit-Limit`` values the responses carried, written in the summary, as are the 429s.
A run against a deployment leaves its accounts (emails ``shop<run id>x...@example.com`` and
``refresh<run id>x...@example.com``, with a random password), their orders and its ``lt_*``
records (tagged ``t<run id>x...``) there; the run id is in the summary.

Writes under ``loadtests/results/`` (``--prefix``, default ``load``): ``<prefix>_stats.csv``,
``<prefix>_stats_history.csv``, ``<prefix>_failures.csv``, ``<prefix>.html`` (locust's report),
``<prefix>.json`` (settings, per-route figures, the verdict, and, for a local target, RSS and CPU
of the store and each worker sampled every ``--sample`` seconds). Exits with locust's exit code:
non-zero when a threshold is broken (see the locustfile).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .bench_api import Server, start_gunicorn, wait_ready
from .bench_durability import start_store_ready
from .report import machine_info
from .servers import (
    ROOT,
    Processes,
    child_pids,
    cpu_seconds,
    machine_busy_fraction,
    rss_bytes,
    run_collecting,
)

RESULTS = ROOT / "loadtests" / "results"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
DEFAULT_RATE_LIMIT = "1000000/minute"
ADMIN_EMAIL = "load-admin@example.com"


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Sampler(threading.Thread):
    """RSS and CPU seconds of the store and of each gunicorn worker, every ``interval`` s."""

    def __init__(self, store_pid: int, master_pid: int, interval: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.store_pid, self.master_pid, self.interval = store_pid, master_pid, interval
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        row: dict[str, Any] = {"t": time.monotonic() - self.t0, "workers": {}}
        try:
            row["store_rss"] = rss_bytes(self.store_pid)
            row["store_cpu"] = cpu_seconds(self.store_pid)
            for pid in child_pids(self.master_pid):
                row["workers"][str(pid)] = {"rss": rss_bytes(pid), "cpu": cpu_seconds(pid)}
        except (OSError, ValueError):
            return  # a process went away between two reads
        self.samples.append(row)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
        self.sample()


def start_local(
    procs: Processes, tmp: Path, args: argparse.Namespace, admin_password: str
) -> tuple[Server, int]:
    store, sock, _ = start_store_ready(procs, tmp, tmp / "data", "everysec")
    env = {
        "RATE_LIMIT": args.rate_limit,
        "AUTH_RATE_LIMIT": args.rate_limit,
        "BCRYPT_ROUNDS": str(args.bcrypt_rounds),
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": admin_password,
    }
    server = start_gunicorn(procs, tmp, "api", sock, workers=args.workers, extra_env=env)
    wait_ready(server, "/api/v1/ready", args.workers, tmp)
    return server, store.pid


def run_locust(args: argparse.Namespace, host: str, env: dict[str, str]) -> int:
    prefix = RESULTS / args.prefix
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    cmd += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time]
    cmd += ["--host", host, "--csv", str(prefix), "--html", f"{prefix}.html"]
    cmd += ["--only-summary", "--stop-timeout", "5"]
    log(" ".join(cmd[2:]))
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def run(procs: Processes, tmp: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    verdict_file = RESULTS / f"{args.prefix}_verdict.json"
    verdict_file.unlink(missing_ok=True)
    env = {**os.environ, "LOAD_VERDICT_FILE": str(verdict_file)}
    out["background_busy"] = machine_busy_fraction(1.0)
    out["loadavg_start"] = os.getloadavg()
    sampler = None
    if args.host:
        host = args.host
        out["target"] = {"host": host, "local": False}
        out["rate_limit"] = "the target's own (see rate_limit_observed)"
    else:
        admin_password = secrets.token_urlsafe(18)
        server, store_pid = start_local(procs, tmp, args, admin_password)
        host = server.base
        env.update(ADMIN_EMAIL=ADMIN_EMAIL, ADMIN_PASSWORD=admin_password)
        out["target"] = {
            "host": host,
            "local": True,
            "workers": args.workers,
            "store_fsync": "everysec",
            "bcrypt_rounds": args.bcrypt_rounds,
            "log_level": "info",
        }
        out["rate_limit"] = args.rate_limit
        log(f"local target {host}: store pid {store_pid}, gunicorn workers {server.workers}")
        sampler = Sampler(store_pid, server.proc.pid, args.sample)
        sampler.start()
    started = time.monotonic()
    out["exit_code"] = run_locust(args, host, env)
    out["locust_wall_s"] = time.monotonic() - started
    if sampler is not None:
        sampler.stop()
        out["samples"] = sampler.samples
    out["loadavg_end"] = os.getloadavg()
    if verdict_file.exists():
        out["verdict"] = json.loads(verdict_file.read_text())


def summary_lines(out: dict[str, Any]) -> list[str]:
    verdict = out.get("verdict") or {}
    where = "started locally" if out["target"]["local"] else "given"
    lines = [
        f"target {out['target']['host']} ({where}),"
        f" {out['users']} users, spawn rate {out['spawn_rate']}/s, {out['run_time']}",
        f"rate limit: {out['rate_limit']}; X-Rate-Limit-Limit seen: "
        f"{', '.join(verdict.get('rate_limit_observed', [])) or 'none'}; "
        f"429 answers: {verdict.get('status_429', '?')}",
    ]
    head = f"{'route':52} {'kind':>6} {'reqs':>7} {'fail':>5} {'p50':>6} {'p95':>6} {'p99':>6}"
    lines.append(head + "  (ms)")
    routes = dict(sorted(verdict.get("routes", {}).items()))
    for name, r in [*routes.items(), ("ALL", {**verdict.get("total", {}), "kind": ""})]:
        lines.append(
            f"{name:52.52} {r['kind']:>6} {r.get('requests', 0):7d} {r.get('failures', 0):5d} "
            + " ".join(f"{r.get(k) or 0:6.0f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        )
    if verdict.get("unmeasured_routes"):
        lines.append("gated routes without a request: " + ", ".join(verdict["unmeasured_routes"]))
    if verdict:
        state = "PASSED" if verdict["passed"] else "FAILED: " + "; ".join(verdict["problems"])
        lines.append(f"thresholds {state}")
        lines.append(f"run id {verdict.get('run_id')} (in the accounts' emails and records' tags)")
    return lines


def target_url(value: str) -> str:
    """``--host``: empty, or an http(s) URL. A bare host (``HOST=0.0.0.0`` exported for
    ``make run``) would otherwise become a target that every request fails against."""
    url = urllib.parse.urlsplit(value)
    if value and (url.scheme not in ("http", "https") or not url.hostname):
        hint = ""
        if "://" not in value and not value.replace(".", "").isdigit():
            hint = f" (add the scheme: http://{value})"
        elif "://" not in value:  # an address alone: most likely HOST exported for make run
            hint = " (make load reads HOST as the target URL: unset a HOST meant for make run)"
        raise argparse.ArgumentTypeError(
            f"the target must be an http(s) URL such as http://127.0.0.1:8000, not {value!r}" + hint
        )
    return value.rstrip("/")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.load")
    p.add_argument(
        "--host", type=target_url, default="", help="target URL; empty: start the service here"
    )
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--spawn-rate", type=float, default=20)
    p.add_argument("--run-time", default="60s")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of a local target")
    p.add_argument("--rate-limit", default=DEFAULT_RATE_LIMIT)
    p.add_argument("--bcrypt-rounds", type=int, default=4)
    p.add_argument("--sample", type=float, default=5.0, help="RSS/CPU sampling interval, s")
    p.add_argument("--prefix", default="load", help="file name prefix under loadtests/results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python -m loadtests.load " + " ".join(sys.argv[1:] if argv is None else argv),
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time": args.run_time,
        "machine": machine_info(),
    }
    if not run_collecting("load-", lambda procs, tmp: run(procs, tmp, args, out), log):
        return 130
    (RESULTS / f"{args.prefix}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print()
    for line in summary_lines(out):
        print(f"  {line}")
    print(
        f"  wrote loadtests/results/{args.prefix}.json, {args.prefix}_stats.csv, {args.prefix}.html"
    )
    return int(out["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
