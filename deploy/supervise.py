"""`make run`: supervisord (deploy/supervisord.conf) in the foreground, in this process, so
Ctrl-C and SIGTERM reach it as they would reach ``supervisord`` itself.

supervisord exits 0 however it was shut down. When deploy/stop_on_failure.py shut it down
because a program cannot start, this prints one JSON line naming the program and why, last
(after the other programs' stop lines), and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from stop_on_failure import STOPPED_FILE  # this directory: sys.path[0]
from supervisor import supervisord

CONFIG = Path(__file__).with_name("supervisord.conf")


def main() -> int:
    stopped_file = Path(os.environ.get("RUN_DIR", "run")) / STOPPED_FILE
    stopped_file.unlink(missing_ok=True)
    supervisord.main(["--nodaemon", "--configuration", str(CONFIG)])
    if not stopped_file.exists():
        return 0
    stopped = json.loads(stopped_file.read_text())
    line = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": "critical",
        "event": "run_stopped",
        "program": stopped["program"],
        "reason": stopped["reason"],
        "process": "supervisord",
        "pid": os.getpid(),
    }
    os.write(sys.stdout.fileno(), (json.dumps(line, separators=(",", ":")) + "\n").encode())
    return 1


if __name__ == "__main__":
    sys.exit(main())
