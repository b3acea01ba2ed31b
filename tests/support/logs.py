"""Read a stack's JSON log files: every line must parse, or the test fails naming the line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Record = dict[str, Any]


def json_lines(path: Path, start: int = 0) -> list[Record]:
    """Every line of ``path`` from byte offset ``start``, parsed; fails on the first non-JSON."""
    data = path.read_bytes()[start:] if path.exists() else b""
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), f"{path.name} line {number} is not an object: {line!r}"
        records.append(record)
    return records


def wait_for_records(
    path: Path, found: Callable[[list[Record]], bool], start: int = 0, timeout: float = 10.0
) -> list[Record]:
    """Parse ``path`` until ``found(records)``; lines are written just after the response."""
    deadline = time.monotonic() + timeout
    while True:
        records = json_lines(path, start)
        if found(records):
            return records
        if time.monotonic() > deadline:
            tail = "\n".join(str(record) for record in records[-20:])
            raise AssertionError(f"{path.name}: the expected lines never came; last:\n{tail}")
        time.sleep(0.05)
