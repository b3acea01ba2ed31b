"""Checks the store makes of a socket by asking the OS directly, not through asyncio.

``hung_up``: whether a client closed its connection both ways, not just its writing side
(``StoreConnection.eof_received``). ``clear_stale_socket``: whether a socket file is one left by
a dead store, removed, or a live store's, refused (``StoreServer.start``); ``lock_socket``: the
lock a store holds on its socket's path from before it loads its data until it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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


def watch_peer(transport: asyncio.BaseTransport, idle: int, unacked: int) -> None:
    """Let the kernel end a TCP connection whose peer is gone without a word (a host powered
    off, a flow a firewall or NAT forgot): keepalive probes after ``idle`` seconds without
    traffic (3, ``idle / 3`` apart), and ``TCP_USER_TIMEOUT`` for data unacknowledged for
    ``unacked`` seconds. Without them such a connection lives until retransmissions give up
    (about 15 minutes) or, idle, for ever (QA: 4,096 connections of a vanished host held every
    slot of the store for good). Options the platform lacks are skipped."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, idle // 3)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), unacked * 1000),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


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


def lock_socket(path: Path) -> int:
    """Lock ``<socket>.lock`` beside ``path`` and return its descriptor, to close once the
    socket is removed; RuntimeError if another store holds it.

    ``clear_stale_socket`` alone looks once, before the data loads: a second store started
    meanwhile listened first, then lost its socket to the first one's bind, and its stop
    removed the socket the first one served on (QA). A POSIX lock (``lockf``), not ``flock``:
    a forked snapshot child does not inherit it, so a store killed while its child still
    writes does not keep the next start out. The kernel drops it when the process dies.
    """
    lock = path.with_name(f"{path.name}.lock")
    refused = RuntimeError(
        f"another store is already listening on {path}, or starting (it holds {lock.name})"
    )
    key = os.path.realpath(lock)
    if key in _HELD:
        # This process holds it (a second server in one process: tests). A POSIX lock is the
        # process's: taking it again would succeed, and closing that descriptor would drop
        # the first server's lock (review).
        raise refused
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise refused from None
    _HELD[key] = fd
    return fd


def unlock_socket(fd: int) -> None:
    """Release what ``lock_socket`` returned."""
    for key, held in list(_HELD.items()):
        if held == fd:
            del _HELD[key]
    os.close(fd)


_HELD: dict[str, int] = {}
"""The socket locks this process holds, by the lock file's real path."""
