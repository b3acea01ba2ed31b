"""Records and replies within the frame: a write that would leave a record over the record
limit is ``RECORD_TOO_LARGE`` and changes nothing, a batch whose results would not fit in a
reply is rolled back, and ``scan`` pages stop at a byte budget. Engines here take 1 MiB
frames (the smallest ``STORE_MAX_FRAME_BYTES``), so the records stay small."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from storeserver import engine as engine_module
from storeserver import protocol
from storeserver.client import StoreClient
from storeserver.engine import Engine
from storeserver.errors import LimitExceeded, StoreError
from storeserver.protocol import MAX_FRAME_SIZE, encode_result, pack_value
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.support.engine import fail, run

FRAME = 1 << 20
LIMIT = FRAME // 2 - 1024  # the record limit of a 1 MiB frame
KB = 1000


@pytest.fixture
def engine() -> Engine:
    return Engine(max_frame_bytes=FRAME)


def too_large(engine: Engine, command: str, **args: Any) -> StoreError:
    error = fail(engine, StoreError, command, **args)
    assert error.code == "RECORD_TOO_LARGE", error
    assert error.details["max"] == LIMIT and error.details["size"] > LIMIT
    return error


def test_the_record_limit_is_half_a_frame() -> None:
    assert Engine(max_frame_bytes=FRAME).max_record_bytes == LIMIT
    assert Engine().max_record_bytes == MAX_FRAME_SIZE // 2 - 1024


def test_a_bigger_frame_setting_does_not_raise_it_past_what_the_api_reads(tmp_path: Path) -> None:
    """The API's client reads frames of 16 MiB at most, whatever STORE_MAX_FRAME_BYTES says."""
    settings = StoreSettings(socket=tmp_path / "s.sock", max_frame_bytes=64 << 20)
    assert StoreServer(settings).engine.max_record_bytes == MAX_FRAME_SIZE // 2 - 1024
    settings = StoreSettings(socket=tmp_path / "s.sock", max_frame_bytes=FRAME)
    assert StoreServer(settings).engine.max_record_bytes == LIMIT


def test_a_patch_growing_a_record_past_the_limit_changes_nothing(engine: Engine) -> None:
    """QA's scenario: patches adding a field each, until the record is too big."""
    run(engine, "insert", table="t", record={"id": "h"})
    for n in range(2):
        run(engine, "patch", table="t", id="h", changes={f"f{n}": "x" * (200 * KB)})
    engine.drain_changes()
    audited = run(engine, "audit_list")["total"]
    error = too_large(engine, "patch", table="t", id="h", changes={"f2": "x" * (200 * KB)})
    assert error.details["table"] == "t" and error.details["id"] == "h"
    record = run(engine, "get", table="t", id="h")
    assert record["version"] == 3 and "f2" not in record
    assert engine.drain_changes() == []  # nothing journaled
    assert run(engine, "audit_list")["total"] == audited
    # A patch that keeps it within the limit still works.
    assert run(engine, "patch", table="t", id="h", changes={"f2": "y"})["version"] == 4


def test_upserts_and_bulk_updates_are_measured_too(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "a", "v": "x" * (300 * KB)})
    run(engine, "insert", table="t", record={"id": "b", "v": "small"})
    too_large(engine, "insert", table="t", record={"id": "a", "w": "y" * (300 * KB)}, upsert=True)
    # One row of update_where going over refuses it whole: the other row is not changed.
    too_large(engine, "update_where", table="t", changes={"w": "y" * (300 * KB)})
    assert [r["version"] for r in run(engine, "find", table="t")["items"]] == [1, 1]


@pytest.mark.parametrize("request_bytes", [None, 700 * KB])
def test_a_record_sent_whole_in_a_big_request_is_measured(
    engine: Engine, request_bytes: int | None
) -> None:
    """``request_bytes``: unknown (in-process) or that of a frame that can hold such a record."""
    big = {"id": "r", "v": "x" * (600 * KB)}
    for command, args in (
        ("insert", {"table": "new", "record": big}),
        ("insert", {"table": "t", "record": big}),
        ("replace", {"table": "t", "id": "a", "record": big}),
    ):
        run(engine, "insert", table="t", record={"id": "a"})
        with pytest.raises(StoreError) as info:
            engine.execute(command, args, request_bytes=request_bytes)
        assert info.value.code == "RECORD_TOO_LARGE"
        run(engine, "delete", table="t", id="a")
    assert "new" not in run(engine, "list_tables")  # not even created


def test_batch_references_can_build_big_records_from_a_small_request(engine: Engine) -> None:
    blob = "x" * (200 * KB)
    ops = [
        {"op": "insert", "table": "t", "record": {"id": "a", "blob": blob}},
        {"op": "insert", "table": "t", "record": {f"c{n}": {"$ref": "0.blob"} for n in range(3)}},
    ]
    request = len(pack_value({"ops": ops}))
    with pytest.raises(StoreError) as info:
        engine.execute("batch", {"ops": ops}, request_bytes=request)
    assert info.value.code == "RECORD_TOO_LARGE" and info.value.details["index"] == 1
    assert "t" not in run(engine, "list_tables")  # the first insert was rolled back


def test_a_batch_op_over_the_limit_rolls_the_batch_back(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "a", "v": "x" * (400 * KB)})
    ops = [
        {"op": "insert", "table": "t", "record": {"id": "b"}},
        {"op": "patch", "table": "t", "id": "a", "changes": {"w": "y" * (200 * KB)}},
    ]
    error = too_large(engine, "batch", ops=ops)
    assert error.details["index"] == 1 and error.details["op"] == "patch"
    assert run(engine, "count", table="t") == 1


def test_a_batch_whose_results_would_not_fit_in_a_reply_is_rolled_back(engine: Engine) -> None:
    """A request near the frame limit: each result adds the store's fields (id, timestamps,
    version) to the record it sent. Before, the batch was applied and then its reply refused."""
    ops = [{"op": "insert", "table": "t", "record": {"p": "x" * 940}} for _ in range(1000)]
    request = len(pack_value([0, 1, "batch", {"ops": ops}]))
    assert request < FRAME
    with pytest.raises(LimitExceeded, match="send fewer operations") as info:
        engine.execute("batch", {"ops": ops}, request_bytes=request)
    assert info.value.details["arg"] == "ops"
    assert "t" not in run(engine, "list_tables") and engine.drain_changes() == []
    # Patches return whole records whatever the request's size: measured too.
    for n in range(3):
        run(engine, "insert", table="t", record={"id": f"r{n}", "v": "x" * (400 * KB)})
    patches = [{"op": "patch", "table": "t", "id": f"r{n}", "changes": {"n": n}} for n in range(3)]
    with pytest.raises(LimitExceeded):
        engine.execute("batch", {"ops": patches}, request_bytes=200)
    assert [r["version"] for r in run(engine, "find", table="t")["items"]] == [1, 1, 1]
    # Fewer of them fit.
    engine.execute("batch", {"ops": patches[:2]}, request_bytes=200)


def test_a_batch_copying_values_by_reference_is_refused_once_past_a_reply(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: 100 ops each copying a 200 kB string 40 times (8 MB a record, each under the
    record limit) held the store 1.1 s and left it 800 MB bigger before it was refused:
    every op ran, then the whole reply was encoded to measure it. Now the batch stops at the
    op that takes the reply's floor past a frame, before any encoding of the reply."""
    blob = "x" * (100 * KB)
    ops: list[dict[str, Any]] = [{"op": "insert", "table": "t", "record": {"blob": blob}}]
    ops += [
        {"op": "insert", "table": "t", "record": {"v": [{"$ref": "0.blob"}] * 4}} for _ in range(99)
    ]
    packed: list[int] = []

    def counting(value: Any) -> bytes:
        body = pack_value(value)
        packed.append(len(body))
        return body

    monkeypatch.setattr(engine_module, "pack_value", counting)
    with pytest.raises(LimitExceeded, match="send fewer operations") as info:
        engine.execute("batch", {"ops": ops}, request_bytes=len(pack_value({"ops": ops})))
    assert info.value.details["index"] == 3  # 100 kB + 3 x 400 kB passes 1 MiB
    assert sum(packed) < FRAME  # the reply was never encoded
    assert "t" not in run(engine, "list_tables")
    # Patches return whole records: a batch of them stops the same way.
    for n in range(3):
        run(engine, "insert", table="t", record={"id": f"r{n}", "v": "x" * (400 * KB)})
    patches = [
        {"op": "patch", "table": "t", "id": f"r{n % 3}", "changes": {"n": n}} for n in range(30)
    ]
    with pytest.raises(LimitExceeded) as info:
        engine.execute("batch", {"ops": patches}, request_bytes=200)
    assert info.value.details["index"] == 2
    assert [r["version"] for r in run(engine, "find", table="t")["items"]] == [1, 1, 1]


def test_a_patch_among_records_sent_whole_is_measured_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import job's batch: 500 records sent whole and one patch of the job's record. The
    patch's result is measured; the reply of 501 results is not packed to measure it (it was,
    then packed again to be sent)."""
    run(engine, "insert", table="jobs", record={"id": "job", "n": 0})
    ops: list[dict[str, Any]] = [
        {"op": "insert", "table": "t", "record": {"p": "x" * 10}} for _ in range(500)
    ]
    ops.append({"op": "patch", "table": "jobs", "id": "job", "changes": {"n": 1}})
    request = len(pack_value([0, 1, "batch", {"ops": ops}]))
    packed: list[Any] = []

    def counting(value: Any) -> bytes:
        packed.append(value)
        return pack_value(value)

    monkeypatch.setattr(engine_module, "pack_value", counting)
    reply = engine.execute("batch", {"ops": ops}, request_bytes=request)
    assert len(reply["results"]) == 501 and reply["results"][-1]["n"] == 1
    assert [v["id"] for v in packed] == ["job"]


def read_pages(engine: Engine, limit: int = 1000) -> list[list[dict[str, Any]]]:
    pages = []
    page = run(engine, "scan", table="t", limit=limit)
    pages.append(page["items"])
    while page["cursor"]:
        page = run(engine, "scan", cursor=page["cursor"], limit=limit)
        pages.append(page["items"])
    return pages


def test_scan_pages_stop_at_a_quarter_frame(engine: Engine) -> None:
    """QA's dump of 40 KB records: 1000 records a page was far over the frame."""
    for n in range(5):
        run(engine, "insert", table="t", record={"n": n})
    for n in range(5, 60):
        run(engine, "insert", table="t", record={"n": n, "body": "x" * (40 * KB)})
    run(engine, "insert", table="t", record={"n": 60, "body": "x" * (LIMIT - 300)})
    pages = read_pages(engine)
    assert [r["n"] for page in pages for r in page] == list(range(61))
    for page in pages:
        # It stops at the record that passes the budget: at most the budget and one record,
        # which fits in a reply.
        assert len(page) == 1 or len(pack_value(page[:-1])) < FRAME // 4
        assert len(pack_value(page)) < FRAME // 4 + LIMIT < FRAME - 1024
    assert len(pages) >= 8  # 2.2 MB of 40 KB records, 7 of them a page


def test_a_scan_page_is_sent_as_encoded_while_measured() -> None:
    """The server sends the bytes the scan measured: the same bytes as encoding it anew."""
    from storeserver.protocol import EncodedPage, encode_page_result, item_packer

    items = [{"id": "a", "n": 1}, {"id": "b", "s": "x" * 300, "m": {"k": [1.5, None]}}]
    packer = item_packer()
    packer.reset()
    for item in items:
        packer.pack(item)
    page = EncodedPage({"items": items, "cursor": "c"}, "items", packer.bytes())
    assert page == {"items": items, "cursor": "c"}
    assert encode_page_result(7, page) == encode_result(7, {"items": items, "cursor": "c"})


# -- over the socket ----------------------------------------------------------------------


@pytest.fixture
async def small(sock_dir: Path) -> AsyncIterator[StoreClient]:
    """A client of a store with 1 MiB frames."""
    server = StoreServer(StoreSettings(socket=sock_dir / "small.sock", max_frame_bytes=FRAME))
    await server.start()
    client = StoreClient(f"unix:{sock_dir / 'small.sock'}", timeout=5.0)
    try:
        yield client
    finally:
        await client.close()
        await server.shutdown()


async def code_of(client: StoreClient, command: str, args: dict[str, Any]) -> str:
    with pytest.raises(StoreError) as info:
        await client.call(command, args)
    return info.value.code


async def test_no_write_is_applied_and_then_reported_failed(small: StoreClient) -> None:
    """Before, a record could grow until its reply passed the frame: LIMIT_EXCEEDED, with the
    write applied (journaled, audited). So were the insert and the batch below, whose replies
    add the store's fields to what they sent."""
    await small.call("insert", {"table": "h", "record": {"id": "h"}})
    for n in range(3):
        args = {"table": "h", "id": "h", "changes": {f"f{n}": "x" * (200 * KB)}}
        if n < 2:
            await small.call("patch", args)
        else:
            assert await code_of(small, "patch", args) == "RECORD_TOO_LARGE"
    record = await small.call("get", {"table": "h", "id": "h"})
    assert record["version"] == 3 and "f2" not in record
    assert (await small.call("find", {"table": "h"}))["total"] == 1
    near = {"table": "n", "record": {"v": "x" * (FRAME - 100)}}
    assert await code_of(small, "insert", near) == "RECORD_TOO_LARGE"
    ops = [{"op": "insert", "table": "b", "record": {"p": "x" * 940}} for _ in range(1000)]
    assert await code_of(small, "batch", {"ops": ops}) == "LIMIT_EXCEEDED"
    tables = await small.call("list_tables")
    assert "n" not in tables and "b" not in tables


async def test_the_handshake_names_the_record_limit(small: StoreClient) -> None:
    await small.connect()
    assert small.server_info["max_record_bytes"] == LIMIT


async def test_a_scan_of_big_records_reads_every_page(small: StoreClient) -> None:
    """QA's fat tables: 1000 small records, then 2 MB of 40 KB ones (over a 1 MiB frame)."""
    small_rows = [{"op": "insert", "table": "f", "record": {"n": n}} for n in range(1000)]
    await small.call("batch", {"ops": small_rows})
    for _ in range(5):
        row = {"op": "insert", "table": "f", "record": {"body": "x" * (40 * KB)}}
        await small.call("batch", {"ops": [row] * 10})
    page = await small.call("scan", {"table": "f", "limit": 1000})
    seen = len(page["items"])
    while page["cursor"]:
        page = await small.call("scan", {"cursor": page["cursor"], "limit": 1000})
        seen += len(page["items"])
    assert seen == 1050


def watch_encoding(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """(one entry per value the item packer packs, the size of each whole ``pack_value``)."""
    packed: list[int] = []
    encoded: list[int] = []
    real_items, real_pack_value = protocol.item_packer, protocol.pack_value

    def counting() -> Any:
        packer = real_items()
        return SimpleNamespace(
            pack=lambda item: (packed.append(1), packer.pack(item))[1],
            getbuffer=packer.getbuffer,
            bytes=packer.bytes,
            reset=packer.reset,
        )

    def measured(obj: Any) -> bytes:
        data = real_pack_value(obj)
        encoded.append(len(data))
        return data

    monkeypatch.setattr(protocol, "item_packer", counting)
    monkeypatch.setattr(protocol, "pack_value", measured)
    return packed, encoded


async def test_a_page_over_the_frame_is_refused_before_it_is_all_encoded(
    small: StoreClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """big-records QA: a page of 100 records of 7 MB was encoded whole (700 MB, seconds of the
    loop) before it was refused; it stops once past the frame now, and the packers' buffers
    are let go, so a refused read leaves no memory behind (its RSS counted against
    STORE_MAX_MEMORY: 507s for the writes after it)."""
    for n in range(40):
        await small.call("insert", {"table": "big", "record": {"n": n, "blob": "x" * (100 * KB)}})
    packed, encoded = watch_encoding(monkeypatch)
    assert await code_of(small, "find", {"table": "big", "limit": 40}) == "LIMIT_EXCEEDED"
    assert len(packed) <= FRAME // (100 * KB) + 1  # 11 of the 40
    assert max(encoded) < FRAME  # not the 4 MB page whole
    assert not hasattr(protocol._local, "items")  # its buffer held a frame: let go
    page = await small.call("find", {"table": "big", "limit": 3})
    assert [r["n"] for r in page["items"]] == [0, 1, 2]
    protocol.pack_value({"blob": "x" * (2 * protocol.KEPT_BUFFER_BYTES)})
    assert not hasattr(protocol._local, "packer")


@pytest.mark.parametrize("command", ["get_many", "kv_get_many"])
async def test_a_list_over_the_frame_is_refused_before_it_is_all_encoded(
    small: StoreClient, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """server QA: one 3 MB record asked for 120 times by get_many was 360 MB encoded (0.7 s
    of the loop) before it was refused; a list stops once past the frame, as a page does."""
    await small.call("insert", {"table": "big", "record": {"id": "r", "blob": "x" * (60 * KB)}})
    await small.call("kv_set", {"key": "k", "value": "x" * (60 * KB)})
    args = {"table": "big", "ids": ["r"] * 40} if command == "get_many" else {"keys": ["k"] * 40}
    packed, encoded = watch_encoding(monkeypatch)
    assert await code_of(small, command, args) == "LIMIT_EXCEEDED"
    assert max(encoded) < FRAME  # not the 2.4 MB list whole
    assert len(packed) <= FRAME // (60 * KB) + 1  # 18 of the 40
    few = {**args, "ids": ["r", "nope"]} if command == "get_many" else {"keys": ["k", "nope"]}
    got = await small.call(command, few)
    assert len(got) == 2 and got[1] is None
    assert (got[0]["blob"] if command == "get_many" else got[0]) == "x" * (60 * KB)
