"""`make run`: supervisord (deploy/supervisord.conf) in the foreground, in this process, so
Ctrl-C and SIGTERM reach it as they would reach ``supervisord`` itself.

First it locks ``$RUN_DIR/run.lock`` for its lifetime: a second `make run` on the same run
directory would otherwise empty the first one's metrics directory, replace its pid file and
leave a stop record that the first would report at its own stop. The second one touches
nothing, prints one JSON line (``run_dir_in_use``) and exits 3. It creates the run directory
too: one it cannot create, or whose files supervisord could not write (a directory named
``supervisord.log``), is one JSON line (``invalid_settings``, ``RUN_DIR: ...``) and exit 2,
before anything starts, rather than mkdir's plain text or a traceback.

supervisord exits 0 however it was shut down. When deploy/stop_on_failure.py shut it down
because a program cannot start, this prints one JSON line naming the program and why, last
(after the other programs' stop lines), and exits 1. So it does when a program did not stop
cleanly: supervisord's log says how each one it stopped ended, and a store that exits 4
(``writes_lost``: its final snapshot failed, acknowledged writes are gone) or an API killed
after its drain ran out is not a clean stop, though supervisord itself exits 0 (QA).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stop_on_failure import STOPPED_FILE  # this directory: sys.path[0]
from supervisor import options, supervisord

CONFIG = Path(__file__).with_name("supervisord.conf")
LOCK_FILE = "run.lock"
# As the store's exit code for a data directory or socket held by another store.
EXIT_IN_USE = 3
EXIT_INVALID_SETTINGS = 2  # as either program's invalid_settings
# What supervisord writes in the run directory (supervisord.conf); it fails on one it cannot
# write with a traceback (the log) or a line in its own log only (the pid file).
SUPERVISORD_FILES = ("supervisord.log", "supervisord.pid")


# supervisord's own log line for a program it stopped: "... INFO stopped: store (exit status 4)"
# or "(terminated by SIGKILL)". The event listener's is not ours to judge.
STOPPED_LINE = re.compile(r" stopped: (store|api) \((.+)\)$")
# Both programs stop on SIGTERM and exit 0 once their handlers are in place, before they
# load or serve anything: one ended by SIGTERM itself was stopped while still starting, with
# nothing to lose (QA: a stop in the first second was reported as unclean, exit 1).
CLEAN_ENDS = ("exit status 0", "terminated by SIGTERM")
GROUP_WAIT_S = 2.0
"""How long a stop waits for a just-spawned program to form its process group."""


def adapt_supervisor() -> None:
    """Two changes to supervisord, which this process runs in-process:

    - SIGHUP stops, as SIGTERM does, instead of restarting both programs: a terminal that
      hangs up (an SSH session lost) sends it to the foreground job (QA: the service
      restarted, its data reloaded, and kept running with no terminal).
    - A stop signal for a program whose process group does not exist yet (spawned a moment
      ago: the child has not reached its ``setpgrp``) is sent again once it does, rather
      than dropped; and the child, until it execs the program, takes the stop signals as
      the default does (it ends) rather than through supervisord's own handlers, which it
      inherited and which only note a signal for a loop that never runs there (QA: a stop in
      the first second left the API serving for the 40 s until supervisord's SIGKILL, with
      no drain; after the first of these changes alone, 1 try in 5 still did).
    """
    receiver = options.SignalReceiver

    def get_signal(self: Any) -> int | None:
        sig: int | None = receive(self)
        return signal.SIGTERM if sig == signal.SIGHUP else sig

    receive = receiver.get_signal
    receiver.get_signal = get_signal  # type: ignore[method-assign]

    send = options.ServerOptions.kill

    def kill(self: Any, pid: int, sig: int) -> None:
        deadline = time.monotonic() + GROUP_WAIT_S
        while True:
            try:
                return send(self, pid, sig)
            except ProcessLookupError:
                if pid >= 0 or time.monotonic() > deadline:
                    raise
                os.kill(-pid, 0)  # the program itself gone: ProcessLookupError, as before
                time.sleep(0.01)

    options.ServerOptions.kill = kill  # type: ignore[method-assign]

    form_group = options.ServerOptions.setpgrp

    def setpgrp(self: Any) -> None:  # in the forked child, before it forms its group
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        form_group(self)

    options.ServerOptions.setpgrp = setpgrp  # type: ignore[method-assign]


def unclean_stops(log: Path, offset: int) -> list[tuple[str, str]]:
    """``(program, how it ended)`` for each program supervisord stopped, per its log from
    ``offset`` (this run's part), that did not exit 0."""
    try:
        with log.open("rb") as lines:
            lines.seek(offset)
            text = lines.read().decode("utf-8", "replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        match = STOPPED_LINE.search(line)
        if match is not None and match[2] not in CLEAN_ENDS:
            found.append((match[1], match[2]))
    return found


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_line(level: str, event: str, **fields: Any) -> None:
    line = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": level,
        "event": event,
        **fields,
        "process": "supervisord",
        "pid": os.getpid(),
    }
    os.write(sys.stdout.fileno(), (json.dumps(line, separators=(",", ":")) + "\n").encode())


class RunDirInUse(Exception):
    """Another run holds the lock; ``holder`` is the pid it wrote there ("" if unreadable)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_run_dir(run_dir: Path) -> int:
    """Lock ``run_dir`` and return the locked file's descriptor, to keep open: the lock lasts
    as long as this process (supervisord's children do not inherit it)."""
    # No O_TRUNC: the holder's pid must survive a refused open.
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        raise RunDirInUse(holder) from None
    os.ftruncate(fd, 0)
    # This process becomes supervisord: the pid in its supervisord.pid too.
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def check_writable(path: Path) -> None:
    """Raise OSError if ``path`` exists and cannot be written (a directory, say). A missing one
    is fine: the directory took run.lock, so it can take this file too."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return
    os.close(fd)


MAX_UNIX_PATH = 107
"""Bytes a Unix socket's path may hold (``storeserver.client.MAX_UNIX_PATH_BYTES``)."""


def prepare_run_dir(run_dir: Path) -> str | None:
    """Create and lock ``run_dir`` (RunDirInUse if another run holds it), and clear the last
    stop record. Why it is unusable, or None."""
    socket = os.environ.get("STORE_SOCKET", "")
    if socket and Path(socket).parent == run_dir and len(os.fsencode(socket)) > MAX_UNIX_PATH:
        # The store's socket goes there: named by what the user set (QA: both programs said
        # "STORE_SOCKET: ...", which the user never set).
        return (
            f"RUN_DIR: too long for the store's socket in it ({socket}: a Unix socket path has"
            f" at most {MAX_UNIX_PATH} bytes): use a shorter RUN_DIR, or set STORE_SOCKET"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"RUN_DIR: cannot create the directory: {exc.strerror}"
    try:
        lock_run_dir(run_dir)  # held until this process ends; RunDirInUse goes up
    except OSError as exc:
        return f"RUN_DIR: cannot open {LOCK_FILE} there: {exc.strerror}"
    for name in SUPERVISORD_FILES:
        try:
            check_writable(run_dir / name)
        except OSError as exc:
            return f"RUN_DIR: supervisord cannot write {name} there: {exc.strerror}"
    try:
        (run_dir / STOPPED_FILE).unlink(missing_ok=True)
    except OSError as exc:
        return f"RUN_DIR: cannot remove {STOPPED_FILE} there: {exc.strerror}"
    return None


API_STOP_MARGIN_S = 10
"""supervisord's wait before it SIGKILLs the API (``stopwaitsecs``): GRACEFUL_TIMEOUT, the
drain, plus this margin for the workers to end."""


def api_stop_seconds(graceful_timeout: str | None) -> int:
    """``stopwaitsecs`` for the API from GRACEFUL_TIMEOUT as the API reads it (an integer,
    "+600" and "1_000" included, 1 to 3600 s). Computed here, not by the Makefile's ``expr``,
    which read "+600" as an error (QA: supervisord then SIGKILLed a 600 s drain at 40 s) and
    "-10" as "0 40", a command line that could not run. A value the API refuses: any wait
    (the API exits 2 before it serves)."""
    text = (graceful_timeout or "").strip() or "30"
    try:
        seconds = int(text)
    except ValueError:
        try:  # "600.0", which pydantic takes as 600 (review: was a 40 s wait for it)
            number = float(text)
            seconds = int(number) if number.is_integer() else 30
        except (ValueError, OverflowError):
            seconds = 30
    return min(max(seconds, 1), 3600) + API_STOP_MARGIN_S


def checkout_problem(deploy_dir: Path) -> str | None:
    """Why supervisord could not spawn the programs from this checkout, or None. Its commands
    are ``%(here)s/...`` in double quotes (a space is fine): a ``"`` in the path ends them, and
    a ``%`` starts an expansion; nothing would start, silently (review)."""
    if '"' in str(deploy_dir) or "%" in str(deploy_dir):
        return f"the checkout's path holds \" or %, which supervisord cannot run from: {deploy_dir}"
    return None


def main() -> int:
    problem = checkout_problem(CONFIG.parent.absolute())
    if problem is not None:
        log_line("error", "invalid_settings", errors=problem)
        return EXIT_INVALID_SETTINGS
    run_dir = Path(os.environ.get("RUN_DIR") or "run")
    os.environ["RUN_DIR"] = str(run_dir)  # supervisord.conf names its files by it (QA: unset)
    os.environ["API_STOP_SECONDS"] = str(api_stop_seconds(os.environ.get("GRACEFUL_TIMEOUT")))
    try:
        unusable = prepare_run_dir(run_dir)
    except RunDirInUse as exc:
        log_line(
            "critical",
            "run_dir_in_use",
            run_dir=str(run_dir),
            holder_pid=int(exc.holder) if exc.holder.isdigit() else None,
            reason="another make run uses this RUN_DIR: stop it, or give this one its own"
            " RUN_DIR, PORT and STORE_DATA_DIR",
        )
        return EXIT_IN_USE
    if unusable is not None:
        log_line("error", "invalid_settings", errors=unusable, run_dir=str(run_dir))
        return EXIT_INVALID_SETTINGS
    stopped_file = run_dir / STOPPED_FILE
    supervisord_log = run_dir / SUPERVISORD_FILES[0]
    offset = log_size(supervisord_log)  # supervisord appends: this run's lines come after
    adapt_supervisor()
    supervisord.main(["--nodaemon", "--configuration", str(CONFIG)])
    if stopped_file.exists():
        stopped = json.loads(stopped_file.read_text())
        log_line("critical", "run_stopped", program=stopped["program"], reason=stopped["reason"])
        return 1
    unclean = unclean_stops(supervisord_log, offset)
    if not unclean:
        return 0
    program, how = unclean[0]
    log_line(
        "critical",
        "run_stopped",
        program=program,
        reason=f"{program} did not stop cleanly ({how}): its own lines above say why",
        unclean=[{"program": name, "ended": ended} for name, ended in unclean],
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
