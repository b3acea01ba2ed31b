"""JSON logs for the API processes: the gunicorn master, its workers, uvicorn and our own events.

Everything goes through the standard library's ``logging`` to one handler whose formatter is
structlog's ``ProcessorFormatter``: structlog events (``structlog.get_logger(...)``) and foreign
records (gunicorn, uvicorn, libraries) get the same fields and the same JSON rendering (orjson).

The per-request access line takes a shorter road to the same output (``write_access_line``):
when every handler it would reach is a ``JsonLineHandler`` with our formatter, the line is
built here, with the same fields in the same order, and written directly.

Each line is written with a single ``os.write``: under gunicorn several processes share stdout,
and a line written in pieces would interleave with another process's line and stop being JSON.
(A pipe keeps only writes of up to PIPE_BUF, 4,096 bytes, whole: a longer line, one with a
traceback, can still be split by another process's; deploy/README.md says so.)

Fields: ``timestamp`` (ISO 8601, UTC), ``level``, ``event``, ``logger``, ``process`` ("api"),
``pid``; inside a request also ``request_id``, ``method`` and ``path`` (bound through
contextvars by the request middleware), and on the access line ``status``, ``duration_ms``,
``client`` and ``user_id`` when known. Tracebacks are one string field, ``exception``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from storeserver.logs import json_line

PROCESS = "api"
LEADING_KEYS = ("timestamp", "level", "event")


def add_process(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``process`` names the service; ``pid`` tells gunicorn's master and workers apart."""
    event_dict.setdefault("process", PROCESS)
    event_dict["pid"] = os.getpid()
    return event_dict


def lead_with_essentials(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level and event first: easier to read when tailing the output."""
    ordered = {key: event_dict.pop(key) for key in LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json_line(obj, kwargs.get("default"), orjson.OPT_NON_STR_KEYS).decode()


# Run on every event, ours and foreign, before rendering.
SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.stdlib.add_logger_name,
    add_process,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
]


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """The formatter that renders every record as one JSON object."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            lead_with_essentials,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )
    formatter.memdb_json = True  # type: ignore[attr-defined]  # see ``direct_fds``
    return formatter


class JsonLineHandler(logging.Handler):
    """Write each formatted record plus a newline to a file descriptor in one ``os.write``."""

    def __init__(self, fd: int = 1) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = memoryview(self.format(record).encode("utf-8", "replace") + b"\n")
            # One call writes the whole line to a file or a pipe in blocking mode; the loop only
            # matters if a signal interrupts a very large write.
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)


# structlog's level, once ``configure_logging`` has run (None: not configured by us).
_structlog_level: int | None = None
_UTC = datetime.UTC
_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LEN = len(_CONTEXT_PREFIX)


def direct_fds(logger: logging.Logger, level: int) -> list[int] | None:
    """The descriptors a record of ``logger`` at ``level`` would be written to, if it would only
    reach ``JsonLineHandler``s rendering with ``json_formatter`` (else None: go through logging).

    ``[]`` means the record would be dropped. Checked on every call: handlers may change.
    """
    if _structlog_level is None or level < _structlog_level:
        return None
    if logger.disabled or logger.filters or not logger.isEnabledFor(level):
        return None
    fds: list[int] = []
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            if level < handler.level:
                continue
            if (
                type(handler) is not JsonLineHandler
                or handler.filters
                or not getattr(handler.formatter, "memdb_json", False)
            ):
                return None
            fds.append(handler.fd)
        if not current.propagate:
            break
        current = current.parent
    return fds if found else None  # no handler at all: logging's last resort decides


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with values JSON cannot hold."""
    method = getattr(obj, "__structlog__", None)
    return method() if method is not None else repr(obj)


def write_access_line(fds: list[int], logger_name: str, event: str, fields: dict[str, Any]) -> None:
    """One info line, as ``structlog.get_logger(logger_name).info(event, **fields)`` renders it
    through ``json_formatter``: same fields, same order, one ``os.write`` per descriptor."""
    line: dict[str, Any] = {
        "timestamp": datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z"),
        "level": "info",
        "event": event,
    }
    for key, value in fields.items():
        if key not in line:
            line[key] = value
    ctx = contextvars.copy_context()
    for var in ctx:
        name = var.name
        if name.startswith(_CONTEXT_PREFIX):
            value = ctx[var]
            if value is not Ellipsis:
                line.setdefault(name[_CONTEXT_PREFIX_LEN:], value)
    line["logger"] = logger_name
    line.setdefault("process", PROCESS)
    line["pid"] = os.getpid()
    payload = json_line(line, _fallback, orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
    for fd in fds:
        data = memoryview(payload)
        while data:
            data = data[os.write(fd, data) :]


LOGGED_AT_START = ("api.main.StoreRefusedSetup: ", "api.store.StoreNotReady: ")
"""Exceptions that end a worker's start after their own line (``store_setup_refused``,
``worker_store_not_ready``): the lifespan's traceback, which uvicorn logs as text, would add
only noise to a known refusal."""


class DropLoggedErrors(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" traceback for an exception whose raiser
    already logged it (``already_logged``, e.g. ``api.errors.StreamCutOff``), and the text
    traceback of a failed start it logs for one in ``LOGGED_AT_START`` (ops QA: a multi-line
    traceback before each ``api_failed_to_start`` for a configuration the store refused)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if getattr(exc, "already_logged", False):
            return False
        text = record.msg if isinstance(record.msg, str) else ""
        return not (text.startswith("Traceback") and any(t in text for t in LOGGED_AT_START))


def logging_config(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` input: also gunicorn's ``logconfig_dict``."""
    level = level.upper()
    json_out = {"handlers": ["json"], "level": level, "propagate": False}
    # Our middleware writes one access line per request, with its request id; uvicorn's own
    # would be a second, context-less line. uvicorn logs access only if its logger has
    # handlers, and its worker copies gunicorn.access's handlers: none, so none is written.
    silent = {"handlers": [], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        "filters": {"already_logged": {"()": DropLoggedErrors}},
        "handlers": {"json": {"()": JsonLineHandler, "formatter": "json"}},
        "root": {"handlers": ["json"], "level": level},
        "loggers": {
            "gunicorn.error": json_out,
            "uvicorn.error": {**json_out, "filters": ["already_logged"]},
            "gunicorn.access": silent,
            "uvicorn.access": silent,
            # The multipart parser warns of each malformed part it meets: any client could
            # write a warning line at will (QA). The request is answered 400 and its access
            # line says so; its own errors still show.
            "python_multipart": {"level": "ERROR"},
            "multipart": {"level": "ERROR"},  # its name before python-multipart 0.0.13
        },
    }


def configure_logging(level: str) -> None:
    """Configure structlog for this process; add the JSON handler if nobody configured logging.

    Under gunicorn the master already applied ``logging_config`` (its ``logconfig_dict``) and the
    workers inherit it; under pytest the root logger belongs to pytest.
    """
    global _structlog_level
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    _structlog_level = logging.getLevelName(level.upper())
    root = logging.getLogger()
    if not root.handlers:
        handler = JsonLineHandler()
        handler.setFormatter(json_formatter())
        root.addHandler(handler)
        root.setLevel(level.upper())
