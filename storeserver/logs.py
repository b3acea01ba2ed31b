"""JSON logs for the store process: one line per event, written with a single write call.

Several processes share one stdout under ``make run`` and in containers; a line written in
pieces would interleave with another process's line and stop being JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any

import orjson
import structlog


def json_line(obj: Any, default: Any = None, option: int = 0) -> bytes:
    """orjson's rendering of a log line, with the standard library's for what orjson refuses: a
    string holding a lone surrogate, which is how Python decodes bytes that are not UTF-8 (a data
    directory or socket path, a file name), would otherwise raise from the log call itself (QA:
    the store failed to start with a traceback on such a path). The standard library writes it
    escaped (``\\udcff``), so the line stays ASCII and valid JSON."""
    try:
        return orjson.dumps(obj, default=default, option=option)
    except TypeError:
        text = json.dumps(obj, default=default).encode()
        return text + b"\n" if option & orjson.OPT_APPEND_NEWLINE else text


class _LineLogger(structlog.BytesLogger):
    """A line it cannot write (stdout closed: the supervisor that read it is gone) is dropped
    instead of raising into the command, or the stop, that logged it: a store whose
    supervisord was killed still writes its final snapshot."""

    def msg(self, message: bytes) -> None:
        with contextlib.suppress(OSError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineLoggerFactory:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _LineLogger:
        return _LineLogger(self._file)


def configure_logging(level: str = "INFO", *, process: str = "store") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=json_line),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_LineLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=process)
