"""A gunicorn master killed with ``kill -9`` takes its workers with it (deploy/gunicorn.conf.py,
``post_fork``): they drain and exit instead of living on under PID 1, holding PORT, so the
master supervisord starts next can bind it and `make run` goes on.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_supervisord import MakeRun, start_make_run
from tests.support.procs import running
from tests.support.stack import start_stack, worker_pids

pytestmark = pytest.mark.integration


def wait_until_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    """Those of ``pids`` still running after ``timeout`` (none, once all have exited)."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if running(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid for pid in left if running(pid)}
    return left


def kill_left(pids: set[int]) -> None:
    """Workers a failing check left behind would hold their port for the next tests."""
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_workers_of_a_killed_master_exit() -> None:
    stack = start_stack(2)
    workers: set[int] = set()
    try:
        workers = worker_pids(stack)
        assert len(workers) == 2
        master = stack.processes["api"]
        master.send_signal(signal.SIGKILL)
        master.wait(10)
        assert wait_until_gone(workers) == set(), stack.logs()
        # Nothing holds the port any more: the next master can bind it.
        with pytest.raises(httpx.ConnectError):
            httpx.get(stack.url("/api/v1/health"), timeout=5.0)
    finally:
        kill_left(workers)
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)


def api_master(run: MakeRun) -> int:
    (pid,) = [pid for pid, command in run.children().items() if "start_gunicorn" in command]
    return pid


def test_make_run_goes_on_after_a_kill_9_of_the_gunicorn_master() -> None:
    """Before: each new master failed "Connection in use" and, after 5 exits, `make run`
    stopped with the old workers still serving on PORT."""
    run = start_make_run()
    workers: set[int] = set()
    try:
        run.wait_ready()
        master = api_master(run)
        children = Path(f"/proc/{master}/task/{master}/children").read_text()
        workers = {int(pid) for pid in children.split()}
        assert workers
        os.kill(master, signal.SIGKILL)
        assert wait_until_gone(workers) == set(), "\n".join(run.lines()[-20:])
        run.wait_ready()  # a new master, supervisord's restart, serves on PORT
        assert api_master(run) != master
        supervisord = int((run.run_dir / "supervisord.pid").read_text())
        os.kill(supervisord, signal.SIGTERM)
        assert run.process.wait(60) == 0, "\n".join(run.lines()[-20:])
        assert not [e for e in run.events() if e.get("event") == "run_stopped"]
    finally:
        kill_left(workers)  # supervisord's group for the api is not make's
        run.stop()
        shutil.rmtree(run.run_dir, ignore_errors=True)
