"""`make run` with a RUN_DIR it cannot use: one JSON line naming RUN_DIR and why, a non-zero
exit, nothing started (deploy/supervise.py creates the directory, not the Makefile). Before:
mkdir's plain text, or a traceback from supervise.py or from supervisord.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import ROOT, free_port

pytestmark = pytest.mark.integration


def make_run(run_dir: Path, data_dir: Path) -> tuple[int, list[str]]:
    """`make run` on ``run_dir``: its exit code and output lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    argv = ["make", "--no-print-directory", "-o", "install", "run", f"RUN_DIR={run_dir}"]
    argv += [f"STORE_DATA_DIR={data_dir}", f"PORT={free_port()}", "WEB_CONCURRENCY=1"]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # It started after all: stop it as Ctrl-C would (supervisord stops its programs).
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    return process.returncode, output.splitlines()


@pytest.mark.parametrize(
    ("in_the_way", "run_dir", "error"),
    [
        ("afile", "afile/run", "RUN_DIR: cannot create the directory: Not a directory"),
        ("run", "run", "RUN_DIR: cannot create the directory: File exists"),
        ("run/run.lock/", "run", "RUN_DIR: cannot open run.lock there: Is a directory"),
        (
            "run/supervisord.log/",
            "run",
            "RUN_DIR: supervisord cannot write supervisord.log there: Is a directory",
        ),
        (
            "run/supervisord.pid/",
            "run",
            "RUN_DIR: supervisord cannot write supervisord.pid there: Is a directory",
        ),
        ("run/stopped.json/", "run", "RUN_DIR: cannot remove stopped.json there: Is a directory"),
    ],
)
def test_an_unusable_run_dir_is_one_json_line_and_starts_nothing(
    tmp_path: Path, in_the_way: str, run_dir: str, error: str
) -> None:
    """``in_the_way``: a file, or a directory (ending in /) where a file should be."""
    path = tmp_path / in_the_way
    if in_the_way.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    code, lines = make_run(tmp_path / run_dir, tmp_path / "data")
    assert code != 0, lines
    (line, make_error) = lines
    event = json.loads(line)
    assert event["event"] == "invalid_settings" and event["errors"] == error, event
    assert event["run_dir"] == str(tmp_path / run_dir) and event["process"] == "supervisord"
    assert make_error.startswith("make: *** [") and make_error.endswith("run] Error 2")
    assert not (tmp_path / "data").exists()  # the store never started


def test_a_run_dir_too_long_for_the_store_socket_is_named_as_run_dir(tmp_path: Path) -> None:
    """QA: both programs said "STORE_SOCKET: ...", a variable the user never set."""
    run_dir = tmp_path / ("r" * 100)
    code, lines = make_run(run_dir, tmp_path / "data")
    assert code != 0, lines
    event = json.loads(lines[0])
    assert event["event"] == "invalid_settings", event
    assert event["errors"].startswith("RUN_DIR: too long for the store's socket"), event
    assert not (tmp_path / "data").exists()  # the store never started


@pytest.mark.parametrize("where", ["environment", "command line"])
def test_an_empty_setting_counts_as_unset_in_make(where: str) -> None:
    """QA: `?=` kept an empty STORE_DATA_DIR or RUN_DIR, so `STORE_DATA_DIR= make run` ran
    without persistence and `RUN_DIR=` put the socket and metrics at /. Read from `make -n`
    (what would run), with the defaults the docs give."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    empty = ("RUN_DIR", "STORE_DATA_DIR", "STORE_SOCKET", "PORT", "STORE_FSYNC", "ENV")
    argv = ["make", "--no-print-directory", "-n", "-o", "install", "run"]
    if where == "environment":
        env.update(dict.fromkeys(empty, ""))
    else:
        argv += [f"{name}=" for name in empty]
    planned = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    words = shlex.split(planned.stdout)  # as the shell reads it: values are quoted
    for expected in (
        f"RUN_DIR={ROOT}/run",
        f"STORE_DATA_DIR={ROOT}/data",
        f"STORE_SOCKET={ROOT}/run/store.sock",
        f"PROMETHEUS_MULTIPROC_DIR={ROOT}/run/prometheus",
        "PORT=8000",
        "STORE_FSYNC=everysec",
        "ENV=development",
    ):
        assert expected in words, (expected, planned.stdout)


@pytest.mark.parametrize("target", ["run", "seed", "load", "backup"])
def test_every_target_passes_paths_and_the_admin_password_as_given(target: str) -> None:
    """Review: `make run` took them as given, but `make seed` and `make load` still read a
    `$w` in ADMIN_PASSWORD as a make variable (logging in with another password than the one
    the admin was created with) and `make backup` split a RUN_DIR holding a space."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(RUN_DIR="/tmp/a dir/run$x", ADMIN_PASSWORD="pa$word's", HOST="")
    argv = ["make", "--no-print-directory", "-n", "-o", "install", target]
    planned = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    words = shlex.split(planned.stdout)
    if target == "backup":
        assert words[words.index("--address") + 1] == "/tmp/a dir/run$x/store.sock", words
    else:
        assert "ADMIN_PASSWORD=pa$word's" in words, planned.stdout
    if target == "run":
        assert "RUN_DIR=/tmp/a dir/run$x" in words, planned.stdout
