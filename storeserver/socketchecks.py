"""Checks the store makes of a socket by asking the OS directly, not through asyncio.

``hung_up``: whether a client closed its connection both ways, not just its writing side
(``StoreConnection.eof_received``). ``clear_stale_socket``: whether a socket file is one left by
a dead store, removed, or a live store's, refused (``StoreServer.start``).
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from pathlib import Path


def hung_up(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the peer closed both ways (``POLLHUP``), not just its writing side."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # reports hang-ups and errors only
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead store; refuse if a live store is listening on it."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another store is already listening on {path}")
