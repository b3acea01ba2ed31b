"""The CSV export's columns (api.services.csv_export) in-process, an engine answering the store's
calls: the same header whatever the chunk size (an export job reads ``DUMP_CHUNK_SIZE`` records
at a time, the request 1000) and whatever the filter."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from api.services.csv_export import HEADER_SAMPLE, open_export
from storeserver.errors import LimitExceeded
from tests.support.engine import EngineStore, run

MANAGED = ["created_at", "updated_at", "version"]


async def header_of(store: EngineStore, table: str, where: list[list[Any]], chunk: int) -> Any:
    chunks = await open_export(store, table, where, chunk)
    try:
        first = await anext(chunks)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    return next(csv.reader(io.StringIO(first.decode(), newline="")))


@pytest.mark.parametrize("chunk", [1000, 500, 100])
@pytest.mark.parametrize("where", [[], [["a", "gte", 0]]], ids=["all", "filtered"])
async def test_a_field_first_met_at_record_600_is_a_column_in_every_export(
    chunk: int, where: list[list[Any]]
) -> None:
    store = EngineStore()
    records = [
        {"id": f"h{n:04}", "a": n, **({"late": "x"} if n >= 600 else {})} for n in range(900)
    ]
    for start in (0, 450):
        ops = [{"op": "insert", "table": "t", "record": r} for r in records[start : start + 450]]
        run(store.engine, "batch", ops=ops)
    assert await header_of(store, "t", where, chunk) == ["id", "a", "late", *MANAGED, "_extra"]


async def test_a_field_first_met_past_the_sample_goes_in_extra() -> None:
    store = EngineStore()
    records = [{"id": f"h{n:04}", "a": n} for n in range(HEADER_SAMPLE)] + [{"id": "z", "b": 1}]
    for start in range(0, len(records), 500):
        ops = [{"op": "insert", "table": "t", "record": r} for r in records[start : start + 500]]
        run(store.engine, "batch", ops=ops)
    for chunk in (1000, 500):
        assert await header_of(store, "t", [], chunk) == ["id", "a", *MANAGED, "_extra"]


class SmallFrames(EngineStore):
    """An engine whose replies to ``find`` take at most ``fit`` records, as big records
    make a store answer LIMIT_EXCEEDED for a page that passes its frame."""

    def __init__(self, fit: int) -> None:
        super().__init__()
        self.fit = fit
        self.finds: list[int] = []

    async def call(self, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        if command == "find":
            self.finds.append(args["limit"] if args else 0)
            if args and args.get("limit", 0) > self.fit:
                raise LimitExceeded("the reply would exceed the maximum frame size")
        return await super().call(command, args, **kw)


async def test_a_header_sample_of_big_records_reads_smaller_pages() -> None:
    """A filtered export samples the table with ``find``; 100 big records at once passed
    the frame and the export answered 400."""
    store = SmallFrames(fit=3)
    ops = [{"op": "insert", "table": "t", "record": {"id": f"r{n}", f"f{n}": n}} for n in range(8)]
    run(store.engine, "batch", ops=ops)
    header = await header_of(store, "t", [["f0", "gte", 0]], 1000)
    assert header == ["id", *[f"f{n}" for n in range(8)], *MANAGED, "_extra"]
    assert store.finds[:3] == [100, 25, 6] and set(store.finds[3:]) == {1}
