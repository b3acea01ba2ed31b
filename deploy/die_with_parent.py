"""Run a command that stops when its parent dies: supervisord's programs under `make run`.

supervisord killed with SIGKILL left the store and gunicorn running, unsupervised and with
nowhere to log, and the next `make run` found the store's socket taken (QA). Linux's
``PR_SET_PDEATHSIG`` sends this process SIGTERM when its parent (supervisord) dies, and it
survives the ``exec`` below, so the store (or gunicorn's master) stops as on any stop: the
store writes its final snapshot, gunicorn drains. Their lines of that stop are lost, as their
output went through supervisord. Where ``prctl`` does not exist, the command just runs.

    python deploy/die_with_parent.py PROGRAM [ARGS...]
"""

from __future__ import annotations

import os
import signal
import sys

from storeserver.parentdeath import end_with_parent


def die_with_parent() -> None:
    if not end_with_parent(os.getppid(), signal.SIGTERM):
        sys.exit(0)  # the parent died before the setting took: no signal will come


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: die_with_parent.py PROGRAM [ARGS...]")
    die_with_parent()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
