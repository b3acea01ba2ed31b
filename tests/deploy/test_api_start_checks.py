"""What deploy/gunicorn.conf.py refuses before gunicorn starts, beyond the settings' own
validation: an address gunicorn could not bind, a metrics directory the workers could not
write; and deploy/start_gunicorn.py, a job result directory they could not write.

Each is one ``invalid_settings`` JSON line and exit 2 from the entrypoint (supervisord and
`make run` then stop at once), not gunicorn's five "Can't connect" lines and exit 1, or the
shell's plain-text mkdir error, again at every restart.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.integration

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def start_api(tmp_path: Path, **settings: str) -> tuple[int, list[str]]:
    """The entrypoint's api role with no store: its exit code and output lines."""
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        # A setting let through then ends in store_not_ready and exit 1 within a second.
        "STORE_WAIT_SECONDS": "1",
        # Not the default, beside STORE_SOCKET: run/jobs in this checkout.
        "JOB_RESULT_DIR": str(tmp_path / "jobs"),
        **settings,
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(
        [str(ENTRYPOINT), "api"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return done.returncode, [line for line in (done.stdout + done.stderr).splitlines() if line]


@pytest.mark.parametrize(
    "host",
    [
        "256.1.1.1",  # neither an IP address nor a name that resolves
        "name.invalid",
        "192.0.2.1",  # TEST-NET-1: an IP address, but of no machine here
        "::1",  # gunicorn reads [::1]:8000, not ::1:8000
        "127.0.0.1:9000",  # QA: bound 9000, PORT silently dropped
        "unix:/tmp/x.sock",  # QA: a traceback and exit 1
        "[::1]:9000",
    ],
)
def test_a_host_gunicorn_cannot_bind_is_an_invalid_setting(tmp_path: Path, host: str) -> None:
    code, lines = start_api(tmp_path, HOST=host)
    assert code == 2, lines
    (line,) = lines
    event = json.loads(line)
    assert event["event"] == "invalid_settings" and event["errors"].startswith("HOST: "), event
    assert event["level"] == "error" and event["process"] == "api"


@pytest.mark.parametrize("directory", ["/proc/nope/x", "{tmp}/a-file/metrics"])
def test_a_metrics_directory_that_cannot_be_made_is_an_invalid_setting(
    tmp_path: Path, directory: str
) -> None:
    (tmp_path / "a-file").touch()
    code, lines = start_api(tmp_path, PROMETHEUS_MULTIPROC_DIR=directory.format(tmp=tmp_path))
    assert code == 2, lines
    (line,) = lines  # not the shell's "mkdir: cannot create directory"
    event = json.loads(line)
    assert event["event"] == "invalid_settings", event
    assert event["errors"].startswith("PROMETHEUS_MULTIPROC_DIR: cannot create"), event


@pytest.mark.parametrize(
    ("directory", "error"),
    [
        ("{tmp}/a-file/jobs", "JOB_RESULT_DIR: cannot create the directory: Not a directory"),
        ("{tmp}/a-file", "JOB_RESULT_DIR: not a directory"),
        ("/proc/nope/jobs", "JOB_RESULT_DIR: cannot create the directory: "),
    ],
)
def test_a_job_result_directory_that_cannot_be_made_is_an_invalid_setting(
    tmp_path: Path, directory: str, error: str
) -> None:
    """Not a start that looks healthy and fails every export job (INTERNAL_ERROR)."""
    (tmp_path / "a-file").touch()
    code, lines = start_api(tmp_path, JOB_RESULT_DIR=directory.format(tmp=tmp_path))
    assert code == 2, lines
    (line,) = lines
    event = json.loads(line)
    assert event["event"] == "invalid_settings" and event["errors"].startswith(error), event
    assert event["level"] == "error" and event["process"] == "api"


def test_a_missing_job_result_directory_is_made_owner_only(tmp_path: Path) -> None:
    """As the job runner makes it; the start goes on (no store here: store_not_ready)."""
    directory = tmp_path / "results" / "jobs"
    code, lines = start_api(tmp_path, JOB_RESULT_DIR=str(directory))
    assert code == 1 and json.loads(lines[-1])["event"] == "store_not_ready", lines
    assert directory.is_dir() and stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_bracketed_ipv6_host_and_a_new_metrics_directory_pass(tmp_path: Path) -> None:
    """Accepted: gunicorn starts and waits for the store (none here: store_not_ready)."""
    code, lines = start_api(tmp_path, HOST="[::1]")
    events = [json.loads(line)["event"] for line in lines]
    assert code == 1 and events[-1] == "store_not_ready", lines
    assert (tmp_path / "prometheus").is_dir()


def test_only_prometheus_files_are_removed_from_the_metrics_directory(tmp_path: Path) -> None:
    """The entrypoint emptied the whole directory (find -delete): pointed at a shared or
    mistyped one, it deleted everything there (pointed at /etc, all of /etc)."""
    directory = tmp_path / "shared"
    (directory / "keep.d").mkdir(parents=True)
    kept = [directory / "notes.txt", directory / "keep.d" / "counter_1.db", directory / "x.db"]
    for path in kept:
        path.write_text("mine")
    stale = [directory / name for name in ("counter_12.db", "gauge_livesum_12.db")]
    for path in stale:
        path.write_text("")
    code, lines = start_api(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(directory))
    assert code == 1, lines  # no store to wait for: store_not_ready
    assert all(path.read_text() == "mine" for path in kept)
    assert not any(path.exists() for path in stale)
