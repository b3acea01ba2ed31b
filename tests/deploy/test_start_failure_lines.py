"""The line saying why a program cannot start is written whatever its log level, as
``invalid_settings`` is: with LOG_LEVEL=critical (STORE_LOG_LEVEL=CRITICAL for the store) it
was dropped, and `make run`'s last line, ``run_stopped``, pointed to an error line above that
was not there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import test_api_start_checks, test_api_store_refusal
from tests.support.store import short_tmp_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_tmp_dir()  # a store socket's path must be short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_store_failed_to_start_is_written_at_store_log_level_critical(tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    command = [sys.executable, "-m", "storeserver", "--socket", str(tmp_path / "s.sock")]
    command += ["--data-dir", str(in_the_way / "data")]
    env = {**os.environ, "STORE_LOG_LEVEL": "CRITICAL"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = (done.stdout + done.stderr).splitlines()
    event = json.loads(line)
    assert event["event"] == "store_failed_to_start" and event["level"] == "error", event
    assert "Not a directory" in event["error"], event


def test_api_failed_to_start_is_written_at_log_level_critical(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "critical")
    code, events = test_api_store_refusal.start_api(sock_dir, STORE_MAX_TABLES="2")
    assert code == 2, events
    (last,) = events  # gunicorn's own lines, all below critical, are not
    assert last["event"] == "api_failed_to_start" and last["level"] == "error", last
    assert "STORE_MAX_TABLES=2" in last["error"], last


def test_store_not_ready_is_written_at_log_level_critical(tmp_path: Path) -> None:
    """Exit 1, restarted: after 5 in a minute `make run` stops, pointing to these lines."""
    code, lines = test_api_start_checks.start_api(tmp_path, LOG_LEVEL="critical")
    assert code == 1, lines
    (line,) = lines
    event = json.loads(line)
    assert event["event"] == "store_not_ready" and event["level"] == "error", event
