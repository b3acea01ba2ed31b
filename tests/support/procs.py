"""Processes seen from /proc."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Not exited: a zombie has exited, whether or not its new parent reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
