"""A store error in the middle of a streamed read (``dumps.TableScan``: the dump, the CSV
export, their jobs) ends it as a lost cursor does: one ``export_cut_off`` warning and
``StreamCutOff`` (the response ends without its last chunk, with no error-level traceback),
and the cursor, still open in the store, is closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.errors import StreamCutOff
from api.services import dumps
from api.services.csv_export import open_export
from api.services.dumps import open_dump
from storeserver.errors import LimitExceeded, StoreError, StoreUnavailable


class FailingStore:
    """Pages of two records behind cursor "c1"; the third ``scan`` raises ``error``."""

    def __init__(self, error: StoreError) -> None:
        self.error = error
        self.reads = 0
        self.closed: list[str] = []

    async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        await asyncio.sleep(0)
        args = args or {}
        if command == "scan_close":
            self.closed.append(args["cursor"])
            return True
        if command == "find":  # the CSV export's header sample
            return {"items": [{"id": "r1-0", "n": 0}], "total": 1}
        self.reads += 1
        if self.reads == 3:
            raise self.error
        return {"items": [{"id": f"r{self.reads}-{n}", "n": n} for n in range(2)], "cursor": "c1"}


class Warnings:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


@pytest.mark.parametrize(
    "error",
    [
        LimitExceeded("the reply would exceed the maximum frame size; ask for a smaller page"),
        StoreUnavailable("the connection to the store was lost"),
    ],
    ids=["limit", "unavailable"],
)
@pytest.mark.parametrize("kind", ["dump", "csv"])
async def test_a_store_error_mid_stream_cuts_it_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, error: StoreError, kind: str
) -> None:
    warnings = Warnings()
    monkeypatch.setattr(dumps, "log", warnings)
    store: Any = FailingStore(error)
    chunks = await (open_dump(store, "t", 2) if kind == "dump" else open_export(store, "t", [], 2))
    got: list[Any] = []
    with pytest.raises(StreamCutOff, match="scan of t was lost after 4 records"):
        async for chunk in chunks:
            got.append(chunk)
    for _ in range(5):  # the close runs in a task of its own
        await asyncio.sleep(0)
    assert len(got) == (2 if kind == "dump" else 3)  # the CSV has its header first
    assert warnings.lines == [
        ("export_cut_off", {"table": "t", "records": 4, "detail": error.message})
    ]
    assert store.closed == ["c1"]
