"""The store's JSON log lines (``storeserver.logs``)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from storeserver import logs


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()


class Closed(io.RawIOBase):
    """A stdout whose reader is gone: every write fails as a closed pipe's does."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_lines_are_json_one_per_write(
    monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    read, write = os.pipe()
    out = os.fdopen(write, "w")
    monkeypatch.setattr(logs.sys, "stdout", out)
    logs.configure_logging("INFO")
    structlog.get_logger("t").info("store_listening", socket="/x.sock")
    out.close()
    line = os.read(read, 65536).decode()
    os.close(read)
    record = json.loads(line)
    assert record["event"] == "store_listening" and record["process"] == "store"


def test_a_line_that_cannot_be_written_is_dropped_not_raised(
    monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    """QA: with supervisord killed, the store's stdout pipe has no reader; a log call raising
    BrokenPipeError would end its stop before the final snapshot."""
    closed = io.TextIOWrapper(io.BufferedWriter(Closed()))
    monkeypatch.setattr(logs.sys, "stdout", closed)
    logs.configure_logging("INFO")
    log = structlog.get_logger("t")
    for _ in range(3):
        log.warning("final_snapshot_written", bytes=123)  # no exception
    log.error("store_stopped")


def test_a_path_that_is_not_utf8_is_logged_escaped_not_raised(
    monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    """QA: a data directory named with bytes that are not UTF-8 (Python decodes them to lone
    surrogates, which orjson refuses) made the store's first log line raise: it never started."""
    read, write = os.pipe()
    out = os.fdopen(write, "w")
    monkeypatch.setattr(logs.sys, "stdout", out)
    logs.configure_logging("INFO")
    path = os.fsdecode(b"/tmp/data\xff")
    structlog.get_logger("t").info("store_loaded", data_dir=path, rows=3)
    out.close()
    line = os.read(read, 65536)
    os.close(read)
    record = json.loads(line)
    assert record["data_dir"] == path and record["rows"] == 3
    assert line.isascii() and line.endswith(b"\n") and line.count(b"\n") == 1
