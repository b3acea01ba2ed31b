"""How a table stores its records (``Table.keep``): as key-sharing dicts, equal to what was
written, whatever the field names, and smaller than plain dicts."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from decimal import Decimal
from typing import Any

from storeserver.engine import Engine
from storeserver.protocol import decode_body, encode_request
from storeserver.tables import Table


def _order(n: int) -> dict[str, Any]:
    return {
        "id": f"o{n:07d}",
        "user_id": "u1",
        "product_name": "Widget",
        "quantity": n % 9,
        "total_price": Decimal("9.99"),
        "status": "paid",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        "version": 1,
    }


def _traced_bytes(make: Any, count: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        kept = [make(n) for n in range(count)]
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return size


def test_stored_records_take_less_memory_than_plain_dicts() -> None:
    table = Table("orders")
    orders = [_order(n) for n in range(2000)]
    plain = _traced_bytes(lambda n: dict(orders[n]), 2000)
    kept = _traced_bytes(lambda n: table.keep(orders[n]), 2000)
    # 9 fields: 280 bytes a plain dict, 168 kept (CPython 3.11); the values are shared here.
    assert kept < plain * 0.75


def test_a_stored_record_is_a_dict_equal_to_what_was_written() -> None:
    table = Table("t")
    odd = {"id": "r1", "__class__": 1, "__dict__": [2], "a b": {"c": None}, "é": "x"}
    table.insert(odd)
    stored = table.rows["r1"]
    assert type(stored) is dict and stored == odd and list(stored) == list(odd)
    assert stored is not odd  # a copy: the caller's dict is not the table's


def test_records_with_other_fields_and_orders_are_stored_whole() -> None:
    table = Table("t")
    records = [
        {"id": "r0", "a": 1, "b": 2},
        {"id": "r1", "b": 2, "a": 1},  # another order
        {"id": "r2", **{f"k{i}": i for i in range(40)}},  # past what a keys table shares
        {"id": "r3"},
    ]
    for record in records:
        table.insert(record)
    assert [list(r.items()) for r in table.rows.values()] == [list(r.items()) for r in records]
    table.replace(table.rows["r1"], {"id": "r1", "a": 5})
    assert table.rows["r1"] == {"id": "r1", "a": 5}


def test_records_loaded_from_the_log_are_stored_the_same_way() -> None:
    engine = Engine(journal=True)
    engine.execute("create_table", {"table": "orders"})
    for n in range(3):
        record = _order(n)
        del record["created_at"], record["updated_at"], record["version"]
        engine.execute("insert", {"table": "orders", "record": record})
    changes = engine.drain_changes()
    # Through the wire codec, as replay reads entries from disk.
    frame = encode_request(1, "apply", {"changes": changes})
    replayed = decode_body(frame[4:]).args["changes"]  # type: ignore[union-attr]
    other = Engine(journal=False)
    for change in replayed:
        other.apply_change(tuple(change))
    assert other.execute("find", {"table": "orders"}) == engine.execute("find", {"table": "orders"})


def test_an_insert_stores_the_compact_row_it_built() -> None:
    """The insert builds its record as the table's row (``Table.new_row``): the one dict the
    table keeps, the reply and the log's entry, whether the table existed or the insert made it."""
    engine = Engine(journal=True)
    for n in range(40):  # the first insert makes the table, the others find it
        record = _order(n)
        del record["created_at"], record["updated_at"], record["version"]
        reply = engine.execute("insert", {"table": "orders", "record": record})
        stored = engine._catalog.tables["orders"].rows[record["id"]]
        assert reply is stored and reply == {**record, **{k: reply[k] for k in _META}}
        assert ("put", "orders", stored) in engine.drain_changes()
    # Its keys table is shared (what a split dict's size counts of it shrinks as rows share it)
    assert sys.getsizeof(stored) < sys.getsizeof(dict(stored)) * 0.6


_META = ("created_at", "updated_at", "version")
