"""Ending a process with its parent: Linux's ``PR_SET_PDEATHSIG``.

Used by a snapshot's forked child (``snapshots``: it must never rename over the files of the
store that replaced a crashed one), by each gunicorn worker (``deploy/gunicorn.conf.py``) and
by ``make run``'s programs under supervisord (``deploy/die_with_parent.py``). ``prctl`` is
looked up once, at import, so a forked child does not load anything to call it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no such call
    _prctl = None


def end_with_parent(parent: int, signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when ``parent`` dies. False when it has
    died already (before the setting took, so no signal will come): the caller leaves. Where
    ``prctl`` does not exist nothing is set and the process outlives its parent."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    return os.getppid() == parent
