"""deploy/gunicorn.conf.py's hooks, run in a fresh interpreter as a worker would run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from api import collector
from tests.support.stack import start_stack, worker_pids

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import gc, json, runpy
conf = runpy.run_path("deploy/gunicorn.conf.py")
from api.main import create_app
create_app()  # what the worker loads before post_worker_init
before = (gc.get_freeze_count(), gc.get_threshold())
conf["post_worker_init"](None)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "after": gc.get_threshold()}))
"""


def test_post_worker_init_freezes_the_loaded_app_and_raises_the_young_threshold() -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    done = subprocess.run(
        [sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == [0, [700, 10, 10]]  # Python's defaults until the hook runs
    assert seen["frozen"] > 50_000  # the app's objects (~100k): out of every collection's way
    assert seen["after"] == [collector.GEN0_THRESHOLD, 10, 10]


def log_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line[:1] == "{"]


def wait_for_app_startup(path: Path, pids: set[int], timeout: float = 30.0) -> None:
    """Ready means one worker answers; the other may still be importing the app, and a worker
    signalled before its post_worker_init hook has nothing to drain and dies by the signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = {
            event.get("pid")
            for event in log_events(path)
            if event.get("event") == "Application startup complete."
        }
        if pids <= started:
            return
        time.sleep(0.05)
    raise TimeoutError(f"workers {pids - started} did not start within {timeout:g}s")


def test_workers_stopped_by_sigterm_exit_normally_after_draining() -> None:
    """SIGTERM to the master: each worker drains and exits 0 through gunicorn's own exit path
    ("Worker exiting"), not killed by the signal uvicorn raises again after the drain."""
    stack = start_stack(2, {"LOG_LEVEL": "info"}, 60.0)  # gunicorn logs exits at info
    try:
        try:
            workers = worker_pids(stack)
            wait_for_app_startup(stack.workdir / "api.log", workers)
        finally:
            stack.stop()
        assert len(workers) == 2
        assert stack.processes["api"].returncode == 0
        events = [event.get("event", "") for event in log_events(stack.workdir / "api.log")]
    finally:
        shutil.rmtree(stack.workdir, ignore_errors=True)
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in events
    assert not [event for event in events if "was sent" in str(event)]


def test_invalid_settings_are_one_json_line_and_exit_2() -> None:
    # ENV=production without JWT_SECRET: gunicorn must not start, and say why in the log
    # format (one JSON line naming the setting), never with the secret's value.
    env = {**os.environ, "ENV": "production", "JWT_SECRET": "short-secret-value"}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    event = json.loads(lines[0])
    assert event["event"] == "invalid_settings" and event["level"] == "error"
    assert "JWT_SECRET" in event["errors"] and "short-secret-value" not in lines[0]
