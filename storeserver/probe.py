"""``python -m storeserver.probe``: exit 0 when the store answers ping and is ready, else 1.

A blocking, dependency-free check for container healthchecks and start-up scripts (gunicorn's
``on_starting`` hook waits with ``wait_until_ready``). It speaks the same protocol as the
client through the shared codec. On failure it says why in one JSON line on stderr
(``{"error": "STORE_NOT_READY", "message": ...}``), as ``storeserver.backup`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .client import parse_address
from .protocol import PROTOCOL_VERSION, Error, FrameDecoder, Hello, Request, Result, encode


class ProbeFailed(Exception):
    """Why the store did not answer ping (its ``str`` is the reason)."""


def ping(address: str, *, secret: str | None = None, timeout: float = 2.0) -> dict | None:
    """The store's ping result, or None when it cannot be reached or refuses us."""
    try:
        return check(address, secret=secret, timeout=timeout)
    except ProbeFailed:
        return None


def check(address: str, *, secret: str | None = None, timeout: float = 2.0) -> dict:
    """The store's ping result; ``ProbeFailed`` saying why when there is none."""
    try:
        kind, target = parse_address(address)
    except ValueError as exc:
        raise ProbeFailed(str(exc)) from None
    messages: list = []
    try:
        with _connect(kind, target, timeout) as sock:
            sock.sendall(encode(Hello(PROTOCOL_VERSION, secret)) + encode(Request(1, "ping", {})))
            decoder = FrameDecoder()
            while len(messages) < 2 and not any(isinstance(m, Error) for m in messages):
                data = sock.recv(65536)
                if not data:
                    break
                messages += decoder.feed(data)
    except TimeoutError:
        raise ProbeFailed(f"no answer from {address} within {timeout:g} s") from None
    except OSError as exc:
        raise ProbeFailed(f"cannot connect to {address}: {exc.strerror or exc}") from None
    except Exception as exc:  # a ProtocolError from a peer that is not our store
        raise ProbeFailed(f"{address} does not answer as a store: {exc}") from None
    for message in messages:
        if isinstance(message, Error):  # a wrong STORE_SECRET: "authentication failed"
            raise ProbeFailed(f"the store at {address} refused the probe: {message.message}")
    if len(messages) < 2:
        raise ProbeFailed(f"{address} closed the connection without answering")
    hello, reply = messages[:2]
    if isinstance(hello, Hello) and isinstance(reply, Result) and isinstance(reply.value, dict):
        return reply.value
    raise ProbeFailed(f"{address} does not answer as a store: unexpected reply")


def _connect(kind: str, target: Any, timeout: float) -> socket.socket:
    """A connected socket, over whichever family a TCP host resolves to (QA: an AF_INET
    socket could not reach a store at ``[::1]``, which the client reaches)."""
    if kind != "unix":
        return socket.create_connection(target, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def wait_until_ready(address: str, *, secret: str | None = None, timeout: float = 30.0) -> bool:
    return wait_ready(address, secret=secret, timeout=timeout) is None


def wait_ready(address: str, *, secret: str | None, timeout: float) -> str | None:
    """Try until the store is ready: None then, else why the last attempt failed."""
    deadline = time.monotonic() + timeout
    while True:
        reason = not_ready_reason(address, secret=secret, timeout=1.0)
        if reason is None or time.monotonic() >= deadline:
            return reason
        time.sleep(0.1)


def not_ready_reason(address: str, *, secret: str | None, timeout: float) -> str | None:
    try:
        result = check(address, secret=secret, timeout=timeout)
    except ProbeFailed as exc:
        return str(exc)
    return (
        None
        if result.get("ready")
        else f"the store at {address} is not ready (loading its data, or stopping)"
    )


def wait_for_socket(
    path: Path, timeout: float = 15.0, proc: subprocess.Popen | None = None
) -> None:
    """Block until the Unix socket at ``path`` accepts a connection (a store just started;
    ``RuntimeError`` if ``proc`` exits first, ``TimeoutError`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited early with {proc.returncode}")
        if path.is_socket():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.02)
    raise TimeoutError(f"store socket {path} did not come up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storeserver.probe")
    parser.add_argument(
        "--address",
        default=os.environ.get("STORE_SOCKET") or "run/store.sock",  # empty: unset
        help="unix:/path, /path or tcp://host:port (default: $STORE_SOCKET)",
    )
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    args = parser.parse_args(argv)
    secret = os.environ.get("STORE_SECRET") or None
    if args.wait > 0:
        reason = wait_ready(args.address, secret=secret, timeout=args.wait)
    else:
        reason = not_ready_reason(args.address, secret=secret, timeout=2.0)
    if reason is None:
        return 0
    print(json.dumps({"error": "STORE_NOT_READY", "message": reason}), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
