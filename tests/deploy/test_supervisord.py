"""`make run` as a developer runs it: supervisord (deploy/supervisord.conf) with its event
listener (deploy/stop_on_failure.py), in a run directory and on a port of its own.

A crash is restarted; a program that cannot start ends `make run` with one JSON line saying
which, and a non-zero exit, instead of a restart loop in the foreground. A second `make run` on
the same run directory refuses before touching anything in it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.settings import Settings
from tests.support.stack import ROOT, free_port

pytestmark = pytest.mark.integration


@dataclass
class MakeRun:
    process: subprocess.Popen[bytes]
    run_dir: Path
    port: int
    output: Path

    def lines(self) -> list[str]:
        return self.output.read_text("utf-8", "replace").splitlines()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def children(self) -> dict[int, str]:
        """supervisord's children: pid → command line."""
        supervisord = int((self.run_dir / "supervisord.pid").read_text())
        found = {}
        for pid in Path(f"/proc/{supervisord}/task/{supervisord}/children").read_text().split():
            found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return {pid: command.decode() for pid, command in found.items()}

    def store_pid(self) -> int:
        (pid,) = [pid for pid, command in self.children().items() if "storeserver" in command]
        return pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "\n".join(self.lines()[-20:])
            try:
                url = f"http://127.0.0.1:{self.port}/api/v1/ready"
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("\n".join(self.lines()[-20:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # make, and supervisord through it
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_make_run(
    run_dir: Path | None = None, /, environ: dict[str, str] | None = None, **settings: str
) -> MakeRun:
    """`make run` in a new run directory, or in ``run_dir`` (its output in a file of its own);
    ``settings`` on make's command line, ``environ`` in its environment."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="memdb-run-"))
    port = free_port()
    output = run_dir / f"output-{port}"
    variables = {
        "RUN_DIR": str(run_dir),
        "STORE_DATA_DIR": str(run_dir / "data"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        **settings,
    }
    # Not a parent make's flags (under `make test`): this make is a separate run.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(environ or {})
    argv = ["make", "--no-print-directory", "-o", "install", "run"]
    argv += [f"{name}={value}" for name, value in variables.items()]
    with output.open("wb") as stdout:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return MakeRun(process, run_dir, port, output)


def failed_make_run(**settings: str) -> list[dict[str, Any]]:
    """The events of a `make run` that must stop by itself (non-zero), once it has."""
    run = start_make_run(**settings)
    try:
        assert run.process.wait(90) != 0, "\n".join(run.lines()[-20:])
        return run.events()
    finally:
        run.stop()
        shutil.rmtree(run.run_dir, ignore_errors=True)


@pytest.fixture
def make_run() -> Iterator[list[MakeRun]]:
    """Started runs, stopped and removed at the end."""
    runs: list[MakeRun] = []
    yield runs
    for run in runs:
        run.stop()
        shutil.rmtree(run.run_dir, ignore_errors=True)


def test_make_run_listens_on_loopback_restarts_a_killed_store_and_stops_with_0(
    make_run: list[MakeRun],
) -> None:
    run = start_make_run()
    make_run.append(run)
    run.wait_ready()
    # Not every interface: `make run`'s administrator has a password anyone can read.
    listening = [e["event"] for e in run.events() if "Listening at" in e.get("event", "")]
    assert len(listening) == 1, listening
    assert listening[0].startswith(f"Listening at: http://127.0.0.1:{run.port} "), listening

    killed = run.store_pid()
    os.kill(killed, signal.SIGKILL)  # a crash at run time: supervisord starts it again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [pid for pid, command in run.children().items() if "storeserver" in command]
        if pids and pids != [killed]:
            break
        time.sleep(0.1)
    run.wait_ready(30)
    assert run.store_pid() != killed

    supervisord = int((run.run_dir / "supervisord.pid").read_text())
    # supervisord alone: Ctrl-C in a terminal also reaches make, which then exits 130 (as
    # make does on SIGINT) while the stack stops the same way
    os.kill(supervisord, signal.SIGTERM)
    assert run.process.wait(60) == 0, "\n".join(run.lines()[-20:])
    assert not [e for e in run.events() if e.get("event") == "run_stopped"]


def test_make_run_takes_paths_and_passwords_as_given(make_run: list[MakeRun]) -> None:
    """QA: make read a `$w` in ADMIN_PASSWORD as a variable (the admin got another password,
    silently), and a space in a path or an apostrophe in a password broke the command."""
    parent = Path(tempfile.mkdtemp(prefix="memdb-run-"))
    run_dir = parent / "it's a dir"
    run_dir.mkdir()
    password = "Tr0ub4dor$word&it's-horse battery"
    environ = {"ADMIN_EMAIL": "ops@example.com", "ADMIN_PASSWORD": password}
    run = start_make_run(run_dir, environ, STORE_DATA_DIR=str(run_dir / "my data"))
    make_run.append(run)
    try:
        run.wait_ready()
        url = f"http://127.0.0.1:{run.port}/api/v1/auth/token"
        login = httpx.post(url, data={"username": "ops@example.com", "password": password})
        assert login.status_code == 200, login.text
        assert (run_dir / "store.sock").is_socket() and (run_dir / "my data").is_dir()
    finally:
        run.stop()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize(
    ("name", "refused"),
    [("my clone", False), ("it's", False), ('my "clone"', True), ("100%", True)],
)
def test_a_checkout_path_supervisord_cannot_run_from_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, refused: bool
) -> None:
    """Review: a `"` in the checkout's path ended supervisord's quoted commands: nothing
    spawned, silently, as with a space before."""
    supervise = load_supervise(monkeypatch)
    problem = supervise.checkout_problem(tmp_path / name / "deploy")
    assert (problem is not None) == refused
    if refused:
        assert "supervisord cannot run from" in problem


def test_an_empty_admin_email_counts_as_unset(make_run: list[MakeRun]) -> None:
    """QA: `ADMIN_EMAIL= make run` passed the empty email beside the default password and the
    API refused to start ("go together"); an empty setting counts as unset, as the others."""
    run = start_make_run(environ={"ADMIN_EMAIL": ""})
    make_run.append(run)
    run.wait_ready()
    url = f"http://127.0.0.1:{run.port}/api/v1/auth/token"
    login = httpx.post(
        url, data={"username": "admin@example.com", "password": "dev-only-admin-password"}
    )
    assert login.status_code == 200, login.text


def test_each_program_starts_from_a_checkout_whose_path_has_a_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: from a clone in "my clone", supervisord split ``%(here)s/../.venv/bin/python`` at the
    space, spawned nothing (its listener neither) and `make run` sat silent for good. Here
    supervisord's own parser reads the configuration from such a directory and resolves each
    program's command as it would spawn it."""
    root = tmp_path / "my clone"
    (root / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "supervisord.conf", root / "deploy")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    (root / "run").mkdir()
    monkeypatch.setenv("RUN_DIR", str(root / "run"))
    monkeypatch.setenv("API_STOP_SECONDS", "40")
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.realize(args=["-c", str(root / "deploy" / "supervisord.conf")])
    commands = {}
    for group in options.process_group_configs:
        for config in group.process_configs:
            commands[config.name] = config.make_process().get_execv_args()
    assert sorted(commands) == ["api", "stop_on_failure", "store"]
    deploy = f"{root}/deploy"
    for name, (program, argv) in commands.items():
        assert program == argv[0] == f"{deploy}/../.venv/bin/python", name
    assert commands["stop_on_failure"][1][1:] == [f"{deploy}/stop_on_failure.py"]
    assert commands["store"][1][1:3] == [
        f"{deploy}/die_with_parent.py",
        str(python).replace(f"{root}/", f"{deploy}/../"),
    ]
    assert commands["api"][1][1:] == [
        f"{deploy}/die_with_parent.py",
        f"{deploy}/entrypoint.sh",
        "api",
    ]


def test_a_second_make_run_on_the_same_run_dir_refuses_and_touches_nothing(
    make_run: list[MakeRun],
) -> None:
    first = start_make_run()
    make_run.append(first)
    first.wait_ready()
    for _ in range(5):
        httpx.get(f"http://127.0.0.1:{first.port}/api/v1/health", timeout=5.0)
    metrics_dir = first.run_dir / "prometheus"
    metric_files = sorted(path.name for path in metrics_dir.iterdir())
    assert metric_files, "the first run's workers wrote no metric files"
    pid_file = first.run_dir / "supervisord.pid"
    supervisord = pid_file.read_text()

    second = start_make_run(first.run_dir, STORE_DATA_DIR=str(first.run_dir / "data-second"))
    make_run.append(second)
    assert second.process.wait(30) != 0, "\n".join(second.lines()[-20:])
    (refused,) = second.events()
    assert refused["event"] == "run_dir_in_use", refused
    assert refused["holder_pid"] == int(supervisord), refused
    assert refused["run_dir"] == str(first.run_dir)
    (not_json,) = [line for line in second.lines() if not line.startswith("{")]
    assert not_json.endswith("run] Error 3"), not_json

    assert sorted(path.name for path in metrics_dir.iterdir()) == metric_files
    assert pid_file.read_text() == supervisord
    assert not (first.run_dir / "stopped.json").exists()
    assert not (first.run_dir / "data-second").exists()
    metrics = httpx.get(f"http://127.0.0.1:{first.port}/metrics", timeout=5.0).text
    assert 'handler="/api/v1/health"' in metrics

    os.kill(int(supervisord), signal.SIGTERM)
    assert first.process.wait(60) == 0, "\n".join(first.lines()[-20:])
    assert not [e for e in first.events() if e.get("event") == "run_stopped"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT", "abc"),
        # Before: five "Can't connect" lines, then run_stopped for a crash loop after ~35 s.
        ("HOST", "256.1.1.1"),
        # QA: the Makefile's `expr` made "API_STOP_SECONDS=0 40": env ran "40", exit 127.
        ("GRACEFUL_TIMEOUT", "-10"),
        # Before: the entrypoint's plain-text mkdir error at each of five restarts.
        ("PROMETHEUS_MULTIPROC_DIR", "/proc/nope/x"),
    ],
)
def test_make_run_stops_when_the_api_refuses_its_settings(
    make_run: list[MakeRun], name: str, value: str
) -> None:
    run = start_make_run(**{name: value})
    make_run.append(run)
    assert run.process.wait(60) != 0, "\n".join(run.lines()[-20:])
    events = run.events()
    refused = [e for e in events if e.get("event") == "invalid_settings"]
    assert len(refused) == 1 and refused[0]["errors"].startswith(f"{name}:"), events
    last = events[-1]
    assert last["event"] == "run_stopped" and last["program"] == "api", last
    assert "above" in last["reason"]
    # Every line is JSON but make's own "make: *** [Makefile:N: run] Error 1" on the way out.
    (not_json,) = [line for line in run.lines() if not line.startswith("{")]
    assert not_json.startswith("make: *** [") and not_json.endswith("run] Error 1"), not_json


def test_make_run_stops_when_the_store_refuses_its_data(make_run: list[MakeRun]) -> None:
    """A corrupt snapshot: the store refuses to start (store_failed_to_start), every time."""
    data = Path(tempfile.mkdtemp(prefix="memdb-corrupt-"))  # 0700, as the store wants it
    try:
        (data / "snapshot.mdb").write_bytes(b"\x00not a snapshot" * 100)
        os.chmod(data / "snapshot.mdb", 0o600)
        run = start_make_run(STORE_DATA_DIR=str(data))
        make_run.append(run)
        assert run.process.wait(90) != 0, "\n".join(run.lines()[-20:])
    finally:
        shutil.rmtree(data, ignore_errors=True)
    events = run.events()
    # It exits 3 for that, one of its refusal codes: not started again.
    refusals = [e for e in events if e.get("event") == "store_failed_to_start"]
    assert len(refusals) == 1, len(refusals)
    last = events[-1]
    assert last["event"] == "run_stopped" and last["program"] == "store", last
    assert "cannot start" in last["reason"]


def test_make_run_stops_when_the_store_refuses_its_settings(make_run: list[MakeRun]) -> None:
    run = start_make_run(STORE_FSYNC="sometimes")
    make_run.append(run)
    assert run.process.wait(60) != 0, "\n".join(run.lines()[-20:])
    events = run.events()
    refused = [e for e in events if e.get("event") == "invalid_settings"]
    assert [e["process"] for e in refused] == ["store"], events
    last = events[-1]
    assert last["event"] == "run_stopped" and last["program"] == "store", last


def load_listener() -> Any:
    """deploy/stop_on_failure.py (a script supervisord runs, not a package module)."""
    spec = importlib.util.spec_from_file_location(
        "stop_on_failure", ROOT / "deploy" / "stop_on_failure.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_listener_stops_on_a_refusal_a_crash_loop_or_fatal_not_on_a_crash() -> None:
    listener = load_listener()
    exited = "PROCESS_STATE_EXITED"
    crash = {"processname": "store", "expected": "0"}
    watch = listener.StartWatch()
    assert watch.reason_to_stop(exited, crash, 0.0) is None  # kill -9: restarted
    assert watch.reason_to_stop("PROCESS_STATE_RUNNING", crash, 1.0) is None
    for second in (100.0, 200.0, 300.0, 400.0, 500.0):  # now and then: never a loop
        assert watch.reason_to_stop(exited, crash, second) is None
    for second in (600.0, 601.0, 602.0, 603.0):
        assert watch.reason_to_stop(exited, crash, second) is None
    assert "5 times" in watch.reason_to_stop(exited, crash, 604.0)

    refused = {"processname": "api", "expected": "1"}  # an exit code in its `exitcodes`
    assert "cannot start" in listener.StartWatch().reason_to_stop(exited, refused, 0.0)
    fatal = {"processname": "api", "from_state": "BACKOFF"}
    assert "FATAL" in listener.StartWatch().reason_to_stop("PROCESS_STATE_FATAL", fatal, 0.0)


def load_supervise(monkeypatch: pytest.MonkeyPatch) -> Any:
    """deploy/supervise.py, which imports its neighbour stop_on_failure as a script does."""
    monkeypatch.syspath_prepend(str(ROOT / "deploy"))
    spec = importlib.util.spec_from_file_location("supervise", ROOT / "deploy" / "supervise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value", ["30", " 45 ", "+600", "1_000", "600.0", "3600", None, ""])
def test_the_api_stop_wait_is_the_drain_the_api_reads_plus_a_margin(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """QA: the Makefile's ``expr`` read "+600" and "1_000", which the API takes, as errors:
    supervisord would SIGKILL a 600 s drain at 40 s."""
    supervise = load_supervise(monkeypatch)
    monkeypatch.delenv("GRACEFUL_TIMEOUT", raising=False)
    if value is not None:
        monkeypatch.setenv("GRACEFUL_TIMEOUT", value)
    api = Settings()
    assert supervise.api_stop_seconds(value) == api.graceful_timeout + 10


@pytest.mark.parametrize("value", ["-10", "0", "abc", "99999", "600.5", "inf", "1e999"])
def test_a_drain_the_api_refuses_still_gives_a_command_line_that_runs(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    supervise = load_supervise(monkeypatch)
    assert 11 <= supervise.api_stop_seconds(value) <= 3610  # a number: the API exits 2 itself


@pytest.mark.parametrize(
    ("stop_lines", "status", "unclean"),
    [
        (["stopped: api (exit status 0)", "stopped: store (exit status 0)"], 0, []),
        (
            ["stopped: api (exit status 0)", "stopped: store (exit status 4)"],
            1,
            [{"program": "store", "ended": "exit status 4"}],
        ),
        (
            ["stopped: api (terminated by SIGKILL)", "stopped: store (exit status 0)"],
            1,
            [{"program": "api", "ended": "terminated by SIGKILL"}],
        ),
        (["stopped: stop_on_failure (terminated by SIGTERM)"], 0, []),  # the listener's own
        # Stopped while starting, before its handler (QA: reported unclean, exit 1).
        (["stopped: api (terminated by SIGTERM)", "stopped: store (exit status 0)"], 0, []),
    ],
)
def test_a_stop_that_did_not_end_cleanly_ends_make_run_with_run_stopped(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    stop_lines: list[str],
    status: int,
    unclean: list[dict[str, str]],
) -> None:
    """QA: a store whose final snapshot failed (exit 4, writes_lost) left `make run` exiting
    0 with no run_stopped line, the docs' sign of a clean stop. supervisord's log says how
    each program it stopped ended; only this run's lines count."""
    supervise = load_supervise(monkeypatch)
    run_dir = Path(tempfile.mkdtemp(prefix="sv-"))
    try:
        log = run_dir / "supervisord.log"
        log.write_text("2026-01-01 00:00:00,000 WARN stopped: store (exit status 4)\n")  # before

        def fake_supervisord(argv: list[str]) -> None:
            with log.open("a") as out:
                for line in stop_lines:
                    out.write(f"2026-01-02 00:00:00,000 WARN {line}\n")

        monkeypatch.setenv("RUN_DIR", str(run_dir))
        monkeypatch.setattr(supervise.supervisord, "main", fake_supervisord)
        monkeypatch.setattr(supervise, "adapt_supervisor", lambda: None)  # no supervisord here
        assert supervise.main() == status
        printed = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
        if not unclean:
            assert printed == []
            return
        [line] = printed
        assert line["event"] == "run_stopped" and line["level"] == "critical"
        assert line["program"] == unclean[0]["program"] and line["unclean"] == unclean
        assert unclean[0]["ended"] in line["reason"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_stop_reaches_a_program_that_has_not_formed_its_process_group_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: a stop in `make run`'s first second signalled a just-spawned program's process
    group before the child had made it: the signal was lost, and gunicorn served for 40 s
    until supervisord's SIGKILL. The stop is sent again once the group exists."""
    supervise = load_supervise(monkeypatch)
    for owner, name in (
        (supervise.options.ServerOptions, "kill"),
        (supervise.options.ServerOptions, "setpgrp"),
        (supervise.options.SignalReceiver, "get_signal"),
    ):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    supervise.adapt_supervisor()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a spawned program on its way to setpgrp and exec, as supervisord's is
        signal.signal(signal.SIGTERM, lambda *_: None)  # supervisord's handler, inherited
        os.close(ready_r)
        os.write(ready_w, b"x")
        time.sleep(0.3)
        supervise.options.ServerOptions.setpgrp(None)
        time.sleep(30)  # the exec the stop must not wait for
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    try:
        supervise.options.ServerOptions.kill(None, -pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # a failure bound, not a timing check
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the stop did not reach the spawned child"
            time.sleep(0.02)
        status = ended[1]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    # SIGHUP (a terminal hanging up) reads as SIGTERM: a stop, not supervisord's restart.
    receiver = supervise.options.SignalReceiver()
    receiver.receive(signal.SIGHUP, None)
    assert receiver.get_signal() == signal.SIGTERM


def test_a_terminal_hangup_stops_make_run_instead_of_restarting_it(
    make_run: list[MakeRun],
) -> None:
    """QA: SIGHUP to `make run`'s job (an SSH session lost) made supervisord restart both
    programs, reload the data, and keep serving with no terminal."""
    run = start_make_run()
    make_run.append(run)
    run.wait_ready()
    children = list(run.children())
    os.killpg(run.process.pid, signal.SIGHUP)
    run.process.wait(60)
    deadline = time.monotonic() + 10  # a failure bound: reaped once supervisord is gone
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    log = (run.run_dir / "supervisord.log").read_text()
    assert "restart request" not in log and "exit request" in log, log[-2000:]
    assert not [e for e in run.events() if e.get("event") == "run_stopped"], run.events()


def test_a_killed_supervisord_stops_its_programs_and_the_store_keeps_its_data(
    make_run: list[MakeRun],
) -> None:
    """QA: `kill -9` of supervisord left the store and gunicorn running, unsupervised, and the
    next `make run` found the store's socket taken. Now each gets SIGTERM (die_with_parent.py)
    and stops as on Ctrl-C: the store's final snapshot keeps what was written."""
    run = start_make_run()
    make_run.append(run)
    run.wait_ready()
    children = run.children()
    store = run.store_pid()
    with httpx.Client(base_url=f"http://127.0.0.1:{run.port}", timeout=10.0) as http:
        token = http.post(
            "/api/v1/auth/token",
            data={"username": "admin@example.com", "password": "dev-only-admin-password"},
        ).json()["access_token"]
        created = http.post(
            "/api/v1/data/kept",
            json={"data": {"n": 1}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
    supervisord = int((run.run_dir / "supervisord.pid").read_text())
    os.kill(supervisord, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
        time.sleep(0.2)
    left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert left == [], f"still running: {left}"
    assert store in children
    run.process.wait(30)

    again = start_make_run(run.run_dir)  # same RUN_DIR and data directory: not in use
    make_run.append(again)
    again.wait_ready()
    with httpx.Client(base_url=f"http://127.0.0.1:{again.port}", timeout=10.0) as http:
        token = http.post(
            "/api/v1/auth/token",
            data={"username": "admin@example.com", "password": "dev-only-admin-password"},
        ).json()["access_token"]
        listed = http.get("/api/v1/data/kept", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200 and listed.json()["meta"]["total"] == 1
