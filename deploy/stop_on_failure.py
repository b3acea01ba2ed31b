"""supervisord event listener (deploy/supervisord.conf): ends `make run` when a program cannot
start, instead of leaving supervisord in the foreground with that program down.

It asks supervisord to shut down (SIGTERM to its parent, supervisord, which then stops the
other programs as on Ctrl-C) and leaves ``$RUN_DIR/stopped.json`` naming the program and why,
for deploy/supervise.py to report and exit 1 with, when:

- a program exits with a code that means it refuses to start: supervisord.conf lists those
  codes as the program's ``exitcodes`` (with ``autorestart=unexpected``, so supervisord does not
  start it again) and reports such an exit as ``expected``;
- a program exits, with any other code, ``CRASH_LOOP_EXITS`` times within
  ``CRASH_LOOP_SECONDS``: restarting it does not help (supervisord restarts each exit at once);
- supervisord gives up on a program (``FATAL``: it could not even be spawned).

A program that crashes now and then (a store killed with ``kill -9``) is restarted by
supervisord as before.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import defaultdict, deque
from pathlib import Path

from supervisor import childutils

CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 60.0
STOPPED_FILE = "stopped.json"


class StartWatch:
    """What one event means: ``None`` (nothing to do), or why `make run` must stop."""

    def __init__(self) -> None:
        self._exits: dict[str, deque[float]] = defaultdict(deque)

    def reason_to_stop(self, event: str, state: dict[str, str], now: float) -> str | None:
        program = state["processname"]
        if event == "PROCESS_STATE_FATAL":
            return f"supervisord could not start {program} (FATAL): see run/supervisord.log"
        if event != "PROCESS_STATE_EXITED":
            return None
        if state.get("expected") == "1":
            return (
                f"{program} exited with a code that means it cannot start;"
                " its own error line above says why"
            )
        exits = self._exits[program]
        exits.append(now)
        while now - exits[0] > CRASH_LOOP_SECONDS:
            exits.popleft()
        if len(exits) >= CRASH_LOOP_EXITS:
            return (
                f"{program} exited {len(exits)} times within {CRASH_LOOP_SECONDS:g} s;"
                " its own error lines above say why"
            )
        return None


def main() -> None:
    stopped_file = Path(os.environ.get("RUN_DIR", "run")) / STOPPED_FILE
    watch = StartWatch()
    stopping = False
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        state = childutils.get_headers(payload)
        reason = watch.reason_to_stop(headers["eventname"], state, time.monotonic())
        childutils.listener.ok(sys.stdout)
        if reason is not None and not stopping:
            stopping = True
            record = {"program": state["processname"], "reason": reason}
            stopped_file.write_text(json.dumps(record) + "\n")
            os.kill(os.getppid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
