"""The CSV export of values the store no longer takes but may still hold (kept in a snapshot or
journal from before it refused them): written, and the export goes on."""

from __future__ import annotations

import csv
import io
import math
from decimal import Decimal
from typing import Any

from api.services.csv_export import open_export
from tests.support.engine import EngineStore

STAMP = "2023-11-14T22:13:20.250000Z"


async def export(store: EngineStore, table: str) -> list[list[str]]:
    chunks = await open_export(store, table, [])
    text = b"".join([chunk async for chunk in chunks]).decode()
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_stored_infinities_and_huge_decimals_are_exported() -> None:
    store = EngineStore()
    values: list[Any] = [1, math.inf, [-math.inf], Decimal("1E-20000")]
    for n, value in enumerate(values):  # a journal's replay takes them unchecked
        record = {"id": f"r{n}", "created_at": STAMP, "updated_at": STAMP, "version": 1}
        store.engine.apply_change(("put", "t", {**record, "x": value}))
    rows = await export(store, "t")
    assert [row[:2] for row in rows] == [
        ["id", "x"],
        ["r0", "1"],
        ["r1", "1e999"],
        ["r2", "[-1e999]"],
        ["r3", "0." + "0" * 19_999 + "1"],
    ]
