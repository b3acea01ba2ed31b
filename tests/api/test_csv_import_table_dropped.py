"""A CSV import whose table is dropped while it runs stops there (QA: a force drop between
two batches answered 204, the later batches made the table again, and the job "succeeded"
with every row counted over a fresh table holding part of them). After its first rows land,
the import's inserts carry ``create: false`` (to a store that announces it takes it): a
dropped table is ``NOT_FOUND``, and the import's error says how far it got."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.services.csv_import_batches import write_chunk
from api.services.csv_import_report import ImportReport
from storeserver.client import StoreClient
from storeserver.errors import NotFound
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.support.engine import EngineStore
from tests.support.store import short_tmp_dir


@pytest.fixture
async def client() -> AsyncIterator[StoreClient]:
    """A real store server on a Unix socket in this test's loop, and a client of it."""
    folder = short_tmp_dir()
    server = StoreServer(StoreSettings(socket=folder / "s.sock"))
    await server.start()
    store = StoreClient(f"unix:{folder / 's.sock'}", timeout=5.0)
    await store.connect()
    yield store
    await store.close()
    await server.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "rest",
    [
        [(3, {"id": "c"}), (4, {"n": 4})],  # ids: read first (get_many)
        [(3, {"n": 3}), (4, {"n": 4})],  # no ids: the batch itself
    ],
)
async def test_an_import_stops_at_its_dropped_table(
    client: StoreClient, rest: list[tuple[int, dict[str, Any]]]
) -> None:
    assert client.server_info.get("insert_create") is True
    report = ImportReport("t", atomic=False)
    await write_chunk(client, "t", [(1, {"id": "a"}), (2, {"n": 2})], report)
    assert report.imported == 2
    await client.call("drop_table", {"table": "t", "force": True})
    with pytest.raises(NotFound) as info:
        await write_chunk(client, "t", rest, report)
    assert info.value.details["table"] == "t"
    assert (report.imported, report.failed, report.last_row_written) == (2, 0, 2)
    with pytest.raises(NotFound):
        await client.call("count", {"table": "t"})  # not made again


async def test_the_first_rows_create_the_table(client: StoreClient) -> None:
    report = ImportReport("fresh", atomic=False)
    await write_chunk(client, "fresh", [(1, {"n": 1})], report)
    await write_chunk(client, "fresh", [(2, {"n": 2})], report)
    assert await client.call("count", {"table": "fresh"}) == 2


async def test_a_store_that_does_not_announce_it_gets_no_create_argument() -> None:
    """An earlier store refuses the argument: without its announcement the import sends the
    inserts as before (and a table dropped meanwhile is made again)."""
    store = EngineStore()
    report = ImportReport("t", atomic=False)
    await write_chunk(store, "t", [(1, {"n": 1})], report)  # type: ignore[arg-type]
    await write_chunk(store, "t", [(2, {"n": 2})], report)  # type: ignore[arg-type]
    assert [op for op in store.sent_ops("insert") if "create" in op] == []
    assert report.imported == 2
