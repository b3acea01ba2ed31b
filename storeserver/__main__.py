"""``python -m storeserver``: run the store process until SIGTERM/SIGINT, then exit 0.

Exit 3 when it refuses to start (``store_failed_to_start``: corrupt or incomplete data, data
this release cannot apply (written by a newer one), a data directory it cannot create or use,
its data directory or socket held by another store: starting it again will not help, and
deploy/supervisord.conf does not), 1 when its shutdown failed (``store_stop_failed``: the final
flush or snapshot could not be written, e.g. a full disk) or it failed while running, 2 for
invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog
from pydantic import ValidationError

from .errors import StoreError
from .finalsnapshot import WritesLost
from .logs import configure_logging
from .server import StoreServer
from .settings import StoreSettings, settings_errors

EXIT_REFUSED_TO_START = 3
# Stopped with writes only in memory: the final snapshot never fit (finalsnapshot.py).
EXIT_WRITES_LOST = 4


class StopFailed(Exception):
    """The store ran, but stopping it failed: not to be reported as a failure to start."""


class StartRefused(Exception):
    """The store could not start (its data, its socket): starting it again will not help."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m storeserver",
        description="The single-threaded store process. Settings also come from STORE_* "
        "environment variables; flags override them.",
    )
    # A string: the settings read it as they read STORE_SOCKET (a Path made tcp://h:p a
    # relative "tcp:/h:p" the store listened at, QA).
    parser.add_argument("--socket", help="Unix socket path (STORE_SOCKET)")
    parser.add_argument("--tcp", help="also listen on host:port (STORE_TCP; needs STORE_SECRET)")
    # A string, not a Path: Path("") is ".", and --data-dir "$UNSET" persisted into the cwd.
    parser.add_argument("--data-dir", help="persistence directory (STORE_DATA_DIR)")
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (STORE_LOG_LEVEL)"
    )
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> StoreSettings:
    overrides = {
        key: value
        for key, value in (
            ("socket", args.socket),
            ("tcp", args.tcp),
            ("data_dir", args.data_dir),
            ("log_level", args.log_level),
        )
        if value is not None and (value or key != "socket")  # empty: unset, as STORE_SOCKET=
    }
    return StoreSettings(**overrides)


async def serve(settings: StoreSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Building the server creates the data directory: one it cannot create (no such
        # parent, no permission, a file in the way) fails the same way on every restart.
        # Loading the data raises CorruptData (a RuntimeError) for data it cannot apply; a
        # store error left over from loading would fail the same way every time too.
        server = StoreServer(settings)
        await server.start()
    except (RuntimeError, OSError, StoreError) as exc:
        raise StartRefused(str(exc)) from exc
    await stop.wait()
    structlog.get_logger("storeserver").info("store_stopping")
    try:
        await server.shutdown()
    except (OSError, WritesLost) as exc:
        # shutdown() stops before removing the socket: a stale one would tell the next
        # start (and its probes) that a store is still there.
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
        if isinstance(exc, WritesLost):
            raise
        raise StopFailed(str(exc)) from exc


def _run(settings: StoreSettings) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on platforms without wheels)
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def log_start_failure(error: str) -> None:
    """``store_failed_to_start`` at error, written whatever STORE_LOG_LEVEL says, as
    ``invalid_settings`` is: `make run`'s last line (``run_stopped``) points to it."""
    configure_logging("INFO")
    structlog.get_logger("storeserver").error("store_failed_to_start", error=error)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        configure_logging("INFO")
        structlog.get_logger("storeserver").error("invalid_settings", errors=settings_errors(exc))
        return 2
    configure_logging(settings.log_level)
    try:
        _run(settings)
    except StopFailed as exc:
        structlog.get_logger("storeserver").error("store_stop_failed", error=str(exc))
        return 1
    except WritesLost:
        return EXIT_WRITES_LOST  # its critical line ("N acknowledged writes lost") was the last
    except StartRefused as exc:
        log_start_failure(str(exc))
        return EXIT_REFUSED_TO_START
    except (RuntimeError, OSError) as exc:
        log_start_failure(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
