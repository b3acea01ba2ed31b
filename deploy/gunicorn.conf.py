"""Gunicorn settings for the API workers (``gunicorn -c deploy/gunicorn.conf.py``; the image and
`make run` start it through deploy/entrypoint.sh and deploy/start_gunicorn.py).

Everything comes from the same environment the workers read (``api.settings``): PORT, HOST,
WEB_CONCURRENCY, GRACEFUL_TIMEOUT, CONTROL_SOCKET, LOG_LEVEL, STORE_SOCKET, STORE_SECRET,
STORE_WAIT_SECONDS, and PROMETHEUS_MULTIPROC_DIR, which must be in the environment before
Python starts (deploy/entrypoint.sh sets it and empties the directory).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import structlog
from gunicorn import util as gunicorn_util
from prometheus_client import multiprocess
from pydantic import ValidationError

from api import collector
from api.connections import HeaderDeadlineProtocol
from api.logs import configure_logging, logging_config
from api.ratelimit import trusted_peers
from api.settings import get_settings
from api.store import START as app_start
from api.store import wait_for_store
from storeserver.errors import SecretRefused, StoreError
from storeserver.parentdeath import end_with_parent
from storeserver.settings import settings_errors


def log_start_failure(event: str, **fields: Any) -> None:
    """The line saying why the API cannot start, at error but written whatever LOG_LEVEL says
    (`make run`'s last line, ``run_stopped``, points to it: with LOG_LEVEL=critical there was
    none). Also used by start_gunicorn.py."""
    configure_logging("INFO")
    # Under gunicorn the root logger has LOG_LEVEL (logconfig_dict): this logger's own level
    # decides instead. The process exits right after, so nothing else is logged below it.
    logging.getLogger("api").setLevel(logging.INFO)
    structlog.get_logger("api").error(event, **fields)


def _refuse(errors: str) -> NoReturn:
    """One JSON line and exit 2, as the store does with its settings, instead of gunicorn's
    "Failed to read config file" and a multi-line traceback (which would repeat on every
    restart under supervisord)."""
    log_start_failure("invalid_settings", errors=errors)
    sys.exit(2)


def _bind_error(address: str) -> str | None:
    """Why gunicorn could not bind ``address`` (its ``bind`` syntax), or None: found here
    rather than by gunicorn, which logs "Can't connect" five times and exits 1, again at
    every restart."""
    host_setting = address.rpartition(":")[0]
    if ":" in host_setting.removeprefix("[").removesuffix("]") and not (
        host_setting.startswith("[") and host_setting.endswith("]")
    ):
        # "127.0.0.1:9000" would bind 9000 and drop PORT, "unix:/path" a Unix socket or a
        # traceback (QA): HOST is an address or a name alone.
        return (
            "HOST: not an address (no port: PORT sets it; an IPv6 address goes in brackets: [::1])"
        )
    try:
        host, _ = gunicorn_util.parse_address(address)
    except (RuntimeError, ValueError):
        return "HOST: not an address (an IPv6 address goes in brackets: [::1])"
    family = socket.AF_INET6 if gunicorn_util.is_ipv6(host) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Any free port: this is about HOST; PORT itself is _port_error's to check.
            probe.bind((host, 0))
    except OSError as exc:
        # Also a name the resolver cannot look up now: gunicorn's bind would fail alike.
        return (
            f"HOST: not an IP address of this machine nor a name resolving to one: {exc.strerror}"
        )
    return None


# gunicorn's own wait for a port in use (five tries a second apart): the workers of a master
# that died a moment ago close their listener as they drain (post_fork), and supervisord
# starts the next master at once. Held longer, the port is another program's.
PORT_WAIT_SECONDS = 5.0
# The pid of a process that checked PORT already: gunicorn reads this file again on SIGHUP,
# in the master listening on PORT, which must not find its own socket in the way (and exit).
PORT_CHECKED_ENV = "MEMDB_PORT_CHECKED_PID"


def _port_error(address: str) -> str | None:
    """Why gunicorn could not listen on ``address`` (HOST already known good), or None: found
    here rather than by gunicorn, which tries five times, logs "Connection in use" each time
    and exits 1, again at every restart (50 s of lines under `make run`, none naming PORT)."""
    if os.environ.get(PORT_CHECKED_ENV) == str(os.getpid()):
        return None
    if os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        # gunicorn takes its sockets bound already (re-exec on USR2, systemd). Marked checked
        # too: gunicorn drops these variables once it has the sockets, and a SIGHUP re-reads
        # this file in a master listening on PORT (it found it in use, and exited).
        os.environ[PORT_CHECKED_ENV] = str(os.getpid())
        return None
    host, port = gunicorn_util.parse_address(address)
    family = socket.AF_INET6 if gunicorn_util.is_ipv6(host) else socket.AF_INET
    deadline = time.monotonic() + PORT_WAIT_SECONDS
    while True:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As gunicorn binds: only a socket still listening there is in the way.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            os.environ[PORT_CHECKED_ENV] = str(os.getpid())
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return f"PORT: cannot listen on {port} at HOST {host}: {exc.strerror}"
        if time.monotonic() >= deadline:
            return (
                f"PORT: {port} at HOST {host} is in use by another program: stop it, or set"
                " another PORT"
            )
        time.sleep(0.2)


def _metrics_dir_error() -> str | None:
    """Why the workers could not write their metric files there, or None: found here rather
    than by the entrypoint's shell (plain text) or the first metric (a traceback)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return None
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"PROMETHEUS_MULTIPROC_DIR: cannot create the directory: {exc.strerror}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "PROMETHEUS_MULTIPROC_DIR: the directory is not writable by this user"
    return None


try:
    _settings = get_settings()
except ValidationError as exc:
    _refuse(settings_errors(exc))

wsgi_app = "api.main:create_app()"
worker_class = "uvicorn_worker.UvicornWorker"
workers = _settings.web_concurrency
bind = [f"{_settings.host}:{_settings.port}"]
# The port only once HOST is known good: a bad HOST is named as such, not as a PORT error.
_address_error = _bind_error(bind[0]) or _port_error(bind[0])
_unusable = [error for error in (_address_error, _metrics_dir_error()) if error]
if _unusable:
    _refuse("; ".join(_unusable))

# Seconds a worker gets to finish in-flight requests after SIGTERM before the master kills it.
graceful_timeout = _settings.graceful_timeout
# ...but the worker does not wait for that SIGKILL, which would end it with no log line at all:
# uvicorn cancels what is still running this long after SIGTERM (post_fork), logs it, and
# the worker ends normally in the time left (a fifth of GRACEFUL_TIMEOUT, at most 5 s).
_drain_seconds = graceful_timeout - min(5.0, graceful_timeout / 5)
# A worker silent for this long is restarted (heartbeat, not request duration).
timeout = 30
keepalive = 5
# uvicorn rewrites the client address from X-Forwarded-For only for these peers (the rate
# limiter keys anonymous clients by that address): TRUSTED_PROXIES, else nobody. uvicorn's
# own default would trust 127.0.0.1. IPv4 entries also match their ::ffff: form (HOST=[::]).
forwarded_allow_ips = ",".join(trusted_peers(_settings.trusted_proxies))
loglevel = _settings.log_level
errorlog = "-"
accesslog = None
# JSON lines for gunicorn's own loggers and uvicorn's; the access line comes from our middleware.
logconfig_dict = logging_config(_settings.log_level)
proc_name = "memdb-api"
# gunicorn's control socket (for ``gunicornc``) defaults to one path per user, which two
# instances on a host would fight over: off unless CONTROL_SOCKET names a path.
control_socket_disable = not _settings.control_socket
if _settings.control_socket:
    control_socket = _settings.control_socket


def clear_metrics_dir() -> None:
    """Remove stale multiprocess files: dead workers of a previous run would add to the counts.

    The entrypoint already removed them; this also covers launchers that only set the
    variable. Only prometheus-client's own files go (``METRIC_FILES``), in case the variable
    names somewhere shared.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for pattern in METRIC_FILES:
            for stale in Path(directory).glob(pattern):
                if stale.is_file():
                    stale.unlink(missing_ok=True)


METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")
"""prometheus-client's multiprocess files (``<kind>_<pid>.db``, ``gauge_<mode>_<pid>.db``)."""


def on_starting(server: Any) -> None:
    """Prepare the metrics directory, then wait (bounded) for the store to answer ping ready
    before any worker is forked."""
    clear_metrics_dir()
    configure_logging(_settings.log_level)  # the master's own lines are named events too
    # Before the line that says it waits: a stop sent on seeing it must find the handlers.
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _stop_waiting) for sig in stop_signals}
    structlog.get_logger("api").info("waiting_for_store", store_socket=_settings.store_socket)
    try:
        wait_for_store(
            _settings.store_socket,
            _settings.store_timeout,
            _settings.store_wait_seconds,
            _settings.store_secret_value,
        )
    except SecretRefused as exc:
        # A setting, as invalid_settings are: exit 2, which `make run` and supervisord stop
        # on (QA: retried as a store still starting, exit 1, restarted for ever).
        log_start_failure("invalid_settings", errors=f"STORE_SECRET: {exc.message}")
        sys.exit(2)
    except StoreError as exc:
        # One JSON line and exit 1 (gunicorn would print its traceback): a store that is
        # late may come back, so supervisord and compose start the API again.
        last_error = exc.__cause__ or exc  # why the last attempt failed
        log_start_failure(
            "store_not_ready",
            store_socket=_settings.store_socket,
            wait_seconds=_settings.store_wait_seconds,
            error=str(last_error),
        )
        sys.exit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    structlog.get_logger("api").info("store_ready", store_socket=_settings.store_socket)


def _stop_waiting(signum: int, frame: Any) -> None:
    """Stopped while waiting for the store, before gunicorn has signal handlers of its own: a
    stop line and exit 0 rather than an end by the signal without a line (`make run` stops
    the API so when the store refuses to start)."""
    structlog.get_logger("api").info("store_wait_stopped", signal=signal.Signals(signum).name)
    sys.exit(0)


def _end_with_the_master(server: Any) -> None:
    """SIGTERM to this worker when the master dies: it drains and exits as on a normal stop.

    uvicorn's worker never checks its parent (gunicorn's sync worker does): after a ``kill -9``
    of the master its workers lived on under PID 1, holding PORT (health 200, ready 503), and
    every new master failed "Connection in use". Linux only; elsewhere they still outlive it.
    The signal follows the master's main thread, which is the one that forks the workers.
    """
    if not sys.platform.startswith("linux"):
        return
    # The master's SIGTERM handler, inherited by the fork, only queues the signal for a loop
    # this process never runs: until the worker installs its own, the default ends it (it has
    # served nothing yet).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not end_with_parent(server.pid, signal.SIGTERM):
        sys.exit(0)  # the master died before the prctl: no signal will come


def post_fork(server: Any, worker: Any) -> None:
    """End the worker with its master (``_end_with_the_master``).

    Bound uvicorn's drain (its ``timeout_graceful_shutdown``, unbounded by default) so that
    a download still running at the end is cancelled in the worker, with its access line
    (``error``) and uvicorn's "Cancel N running task(s)" line, instead of being SIGKILLed by
    the master. The worker built its uvicorn config before the fork; it serves with it later."""
    _end_with_the_master(server)
    worker.config.timeout_graceful_shutdown = _drain_seconds
    # uvicorn's httptools protocol with a deadline for request headers (api/connections.py):
    # connections that send nothing, or headers in part, are closed instead of kept forever.
    HeaderDeadlineProtocol.header_timeout = _settings.header_timeout
    HeaderDeadlineProtocol.send_timeout = _settings.send_timeout
    worker.config.http = HeaderDeadlineProtocol


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(0)


def post_worker_init(worker: Any) -> None:
    """The app is loaded in this worker and nothing has been served: freeze what the imports
    and the app allocated out of the garbage collector's reach (``api.collector``).

    And end the worker normally on SIGTERM. uvicorn drains on SIGTERM, then raises the signal
    again under the handler it found; the worker class had reset that to the default, which
    kills the process: no ``atexit`` handlers (coverage data in the tests, for one), no
    ``worker_exit`` hook, and an error-looking "was sent SIGTERM!" line per worker at every
    shutdown. With this handler the re-raised signal becomes ``SystemExit(0)`` after the drain.
    """
    collector.tune()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


WORKER_RETRY_EXIT = 1
"""A worker's exit code when the store was not ready within STORE_WAIT_SECONDS: the master
starts another in its place (on 3, gunicorn's boot error, it would stop altogether)."""


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it ends. One whose store did not come within STORE_WAIT_SECONDS ends
    with WORKER_RETRY_EXIT instead of gunicorn's boot error: on that the master halts, and the
    workers already serving go down with it (QA: a worker replaced during a store outage
    longer than the wait took the whole API down, /health included). The store is away, not
    misconfigured: the master starts another worker, which waits again, while the others serve
    (503 without the store, /health 200). A store refusing a setting still fails the boot."""
    if app_start.store_not_ready:
        os._exit(WORKER_RETRY_EXIT)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's in-progress gauge must stop counting (its counters are kept)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
