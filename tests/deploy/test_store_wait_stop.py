"""An API stopped while it waits for the store (gunicorn's ``on_starting``) says so and exits 0.
`make run` stops it that way when the store refuses to start; it ended by the signal, with no
line, where deploy/README.md promises "the other program's stop lines".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.stack import ROOT, free_port

pytestmark = pytest.mark.integration

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def events(output: Path) -> list[dict]:
    lines = output.read_text("utf-8", "replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_api_stopped_while_waiting_for_the_store_says_so_and_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    env = {
        **os.environ,
        "STORE_SOCKET": str(tmp_path / "no-store.sock"),
        "STORE_WAIT_SECONDS": "120",  # far longer than the test: it is stopped while waiting
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "JOB_RESULT_DIR": str(tmp_path / "jobs"),
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    output = tmp_path / "api.log"
    with output.open("wb") as stdout:
        api = subprocess.Popen(
            [str(ENTRYPOINT), "api"], env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not [e for e in events(output) if e["event"] == "waiting_for_store"]:
            assert api.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        api.send_signal(sig)
        assert api.wait(30) == 0, output.read_text()
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
    last = events(output)[-1]
    assert last["event"] == "store_wait_stopped" and last["signal"] == sig.name, last
    assert last["level"] == "info" and last["process"] == "api", last
