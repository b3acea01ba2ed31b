"""deploy/gunicorn.conf.py's hooks, run in a fresh interpreter as a worker would run them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


def test_start_up_lines_are_named_events_with_their_details_as_fields() -> None:
    """Alerts match ``event`` exactly (deploy/README.md, Logs): the master's wait for the store
    and the development signing key's generation name themselves, the socket in a field."""
    env = {"LOG_LEVEL": "info"}
    stack = start_stack(1, env, 60.0)
    try:
        try:
            wait_for_app_startup(stack.workdir / "api.log", worker_pids(stack))
        finally:
            stack.stop()
        events = log_events(stack.workdir / "api.log")
    finally:
        shutil.rmtree(stack.workdir, ignore_errors=True)
    socket = stack.env["STORE_SOCKET"]
    for name in ("waiting_for_store", "store_ready"):
        assert [e["store_socket"] for e in events if e.get("event") == name] == [socket], name
    (generated,) = [e for e in events if e.get("event") == "signing_key_generated"]
    assert generated["level"] == "warning" and "JWT_SECRET is not set" in generated["message"]


def test_invalid_settings_are_one_json_line_and_exit_2() -> None:
    # ENV=production without JWT_SECRET: gunicorn must not start, and say why in the log
    # format (one JSON line naming the setting), never with the secret's value.
    env = {**os.environ, "ENV": "production", "JWT_SECRET": "short-secret-value"}
    event, line = one_line_and_exit(env, 2)
    assert event["event"] == "invalid_settings" and event["level"] == "error"
    assert "JWT_SECRET" in event["errors"] and "short-secret-value" not in line


def one_line_and_exit(env: dict[str, str], code: int) -> tuple[dict[str, Any], str]:
    """gunicorn with the config, expected to stop at once with ``code`` and exactly one line
    of output: that line parsed, and as it came."""
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return json.loads(lines[0]), lines[0]


@dataclass
class Download:
    """A GET read in a thread as its body comes: bytes so far, and how the body ended (the
    exception's name; None while it goes on, or when it ended whole)."""

    url: str
    received: int = 0
    error: str | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._read, daemon=True)
        thread.start()
        return thread

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=30.0) as response:
                for chunk in response.iter_raw():
                    self.received += len(chunk)
        except httpx.HTTPError as exc:
            self.error = type(exc).__name__


def test_a_download_longer_than_the_graceful_timeout_is_cancelled_and_logged() -> None:
    """A request still running when GRACEFUL_TIMEOUT is nearly spent is cancelled by uvicorn in
    the worker (an error line saying so, the request's access line with its ``error``), and the
    worker still exits normally, before the master's SIGKILL would have come."""
    app = "tests.deploy.slow_download_app:create_slow_download_app()"
    # Cancelled at 4.8 s (6 less a fifth), where the master would send SIGKILL at 6 s.
    stack = start_stack(1, {"LOG_LEVEL": "info", "GRACEFUL_TIMEOUT": "6"}, 60.0, app=app)
    try:
        try:
            workers = worker_pids(stack)
            wait_for_app_startup(stack.workdir / "api.log", workers)
            download = Download(stack.url("/slow-download"))
            thread = download.start()
            deadline = time.monotonic() + 10
            while not download.received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert download.received, stack.logs()
            stack.processes["api"].send_signal(signal.SIGTERM)
            assert stack.processes["api"].wait(30) == 0
            thread.join(10)
        finally:
            stack.stop()
        events = log_events(stack.workdir / "api.log")
    finally:
        shutil.rmtree(stack.workdir, ignore_errors=True)
    assert download.error is not None  # the client saw an incomplete body, not a whole one
    # The worker ran to its own end (the master's SIGKILL at 6 s would have cut these lines);
    # not a time limit on the shutdown, which a loaded machine stretches.
    (worker,) = workers
    exits = [e["event"] for e in events if e.get("event", "").startswith("Worker exiting")]
    assert exits == [f"Worker exiting (pid: {worker})"], events[-10:]
    access = [e for e in events if e.get("event") == "access" and e.get("path") == "/slow-download"]
    assert len(access) == 1, events[-10:]
    assert access[0]["status"] == 200 and access[0]["error"] == "CancelledError", access
    cut_off = [e for e in events if "timeout graceful shutdown exceeded" in e.get("event", "")]
    assert [e["level"] for e in cut_off] == ["error"], events[-10:]
    messages = [str(event.get("event", "")) for event in events]
    # the access line names the request: no traceback line for the cancellation besides
    assert not [m for m in messages if "Exception in ASGI application" in m], events[-10:]
    (worker,) = workers
    assert f"Worker exiting (pid: {worker})" in messages
    assert not [message for message in messages if "was sent" in message]


def test_a_store_not_ready_in_time_is_one_json_line_and_exit_1(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STORE_SOCKET": str(tmp_path / "no-store.sock"),
        "STORE_WAIT_SECONDS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "LOG_LEVEL": "warning",
    }
    event, _ = one_line_and_exit(env, 1)
    assert event["event"] == "store_not_ready" and event["level"] == "error"
    assert event["store_socket"] == env["STORE_SOCKET"] and event["wait_seconds"] == 1
    assert "No such file or directory" in event["error"]  # why the last attempt failed
