"""``python -m storeserver.probe``: exit 0 when the store answers ping and is ready, else 1.

A blocking, dependency-free check for container healthchecks and start-up scripts (gunicorn's
``on_starting`` hook waits with ``wait_until_ready``). It speaks the same protocol as the
client through the shared codec.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .client import parse_address
from .protocol import PROTOCOL_VERSION, FrameDecoder, Hello, Request, Result, encode


def ping(address: str, *, secret: str | None = None, timeout: float = 2.0) -> dict | None:
    """The store's ping result, or None when it cannot be reached or refuses us."""
    kind, target = parse_address(address)
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            sock.sendall(encode(Hello(PROTOCOL_VERSION, secret)) + encode(Request(1, "ping", {})))
            decoder = FrameDecoder()
            messages: list = []
            while len(messages) < 2:
                data = sock.recv(65536)
                if not data:
                    return None
                messages += decoder.feed(data)
    except (OSError, ValueError):
        return None
    except Exception:  # a ProtocolError from a peer that is not our store
        return None
    reply = messages[1]
    if isinstance(messages[0], Hello) and isinstance(reply, Result):
        return reply.value if isinstance(reply.value, dict) else None
    return None


def wait_until_ready(address: str, *, secret: str | None = None, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ping(address, secret=secret, timeout=1.0)
        if result and result.get("ready"):
            return True
        time.sleep(0.1)
    return False


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
        default=os.environ.get("STORE_SOCKET", "run/store.sock"),
        help="unix:/path, /path or tcp://host:port (default: $STORE_SOCKET)",
    )
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    args = parser.parse_args(argv)
    secret = os.environ.get("STORE_SECRET") or None
    if args.wait > 0:
        return 0 if wait_until_ready(args.address, secret=secret, timeout=args.wait) else 1
    result = ping(args.address, secret=secret)
    return 0 if result and result.get("ready") else 1


if __name__ == "__main__":
    sys.exit(main())
