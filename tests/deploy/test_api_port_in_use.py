"""A PORT another program listens on is refused by deploy/gunicorn.conf.py before gunicorn
starts: one ``invalid_settings`` line naming PORT and HOST, and exit 2, which `make run` stops
on at once. Before: gunicorn's five "Connection in use" tries and exit 1, again at each of
supervisord's five restarts (about 50 s and 66 lines, none naming PORT).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.test_api_start_checks import start_api
from tests.deploy.test_supervisord import failed_make_run
from tests.support.stack import ROOT, free_port, start_stack, wait_until_ready, worker_pids

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_port_in_use_is_an_invalid_setting(tmp_path: Path, taken_port: int, host: str) -> None:
    code, lines = start_api(tmp_path, HOST=host, PORT=str(taken_port))
    assert code == 2, lines
    (line,) = lines
    event = json.loads(line)
    assert event["event"] == "invalid_settings" and event["level"] == "error", event
    assert event["errors"] == (
        f"PORT: {taken_port} at HOST {host} is in use by another program: stop it, or set"
        " another PORT"
    )


def test_make_run_stops_at_once_on_a_port_in_use(taken_port: int) -> None:
    events = failed_make_run(PORT=str(taken_port))
    refused = [e for e in events if e.get("event") == "invalid_settings"]
    assert len(refused) == 1 and refused[0]["errors"].startswith(f"PORT: {taken_port} "), events
    assert not [e for e in events if "Connection in use" in str(e.get("event"))], events
    last = events[-1]
    assert last["event"] == "run_stopped" and last["program"] == "api", last


def test_a_reload_by_sighup_does_not_find_the_masters_own_port_in_use() -> None:
    """gunicorn reads its config file again on SIGHUP, in the master that holds PORT."""
    stack = start_stack(1)
    try:
        master = stack.processes["api"]
        before = worker_pids(stack)
        master.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while master.poll() is None and time.monotonic() < deadline:
            if worker_pids(stack) - before:
                break  # the new worker: the config was read again and accepted
            time.sleep(0.05)
        assert master.poll() is None, stack.logs()
        assert worker_pids(stack) - before, stack.logs()
        wait_until_ready(stack, 60)  # the new worker serves; the master did not exit
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)


RELOADED = """
import os, runpy, socket, sys
taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
os.environ.update(HOST="127.0.0.1", PORT=str(taken.getsockname()[1]), GUNICORN_FD="5")
conf = runpy.run_path("deploy/gunicorn.conf.py")  # a master re-executed by USR2
os.environ.pop("GUNICORN_FD")  # as gunicorn's Arbiter.start does once it has the sockets
print(conf["_port_error"](conf["bind"][0]))  # a SIGHUP re-reads the file: must not find it
"""


def test_a_master_given_its_sockets_is_not_refused_at_a_later_reload() -> None:
    """Review: a master started by USR2 (GUNICORN_FD) or by systemd (LISTEN_FDS) skipped the
    check without marking itself checked; gunicorn then drops the variable, and a SIGHUP found
    the master's own port in use and exited 2, taking its workers with it."""
    done = subprocess.run(
        [sys.executable, "-c", RELOADED], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "None"
