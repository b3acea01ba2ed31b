"""Unit tests of the store engine: every command of docs/STORE.md and its error paths."""

from __future__ import annotations

import contextlib
import re
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storeserver import engine as engine_module
from storeserver import scans
from storeserver.audit import SHARED_NAME_SETS, AuditLog
from storeserver.engine import Engine
from storeserver.errors import (
    BadRequest,
    Conflict,
    InternalError,
    LimitExceeded,
    NotFound,
    StoreBusy,
    StoreError,
    UnknownCommand,
    VersionMismatch,
)
from storeserver.protocol import pack_value, unpack_value
from storeserver.records import MAX_ID_LENGTH
from tests.support.engine import T0, FakeClock

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    return Engine(clock=clock, max_tables=6, max_limit=50, max_batch=10, max_in=5)


@pytest.fixture
def shop(engine: Engine) -> Engine:
    """users (unique casefold email, hidden password_hash) and orders (FK user_id)."""
    engine.execute(
        "create_table",
        {
            "table": "users",
            "indexes": [{"field": "email", "unique": True, "casefold": True}],
            "hidden": ["password_hash"],
        },
    )
    engine.execute(
        "create_table",
        {"table": "orders", "foreign_keys": [{"field": "user_id", "table": "users"}]},
    )
    engine.drain_changes()
    return engine


def run(engine: Engine, command: str, **args: Any) -> Any:
    return engine.execute(command, args)


def data_changes(engine: Engine) -> list[tuple[Any, ...]]:
    """The drained journal without its audit entries."""
    return [c for c in engine.drain_changes() if c[0] != "audit"]


def insert(engine: Engine, table: str, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = engine.execute("insert", {"table": table, "record": fields})
    return result


def fail(engine: Engine, exc: type[StoreError], command: str, **args: Any) -> StoreError:
    with pytest.raises(exc) as info:
        engine.execute(command, args)
    assert type(info.value) is exc
    return info.value


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in items]


# -- dispatch ---------------------------------------------------------------------------------


def test_every_documented_command_but_the_servers_own_is_dispatched() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "STORE.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.MULTILINE))
    assert "find" in documented and "rate_hit" in documented
    # ping, snapshot and cancel are answered by the server itself (readiness, the fork, the
    # jobs it runs).
    assert documented - {"ping", "snapshot", "cancel"} <= Engine.COMMANDS
    assert Engine.WRITE_COMMANDS < Engine.COMMANDS
    assert (
        not {"get", "find", "count", "join", "aggregate", "scan", "kv_get", "rate_hit"}
        & Engine.WRITE_COMMANDS
    )
    engine = Engine()
    for command in Engine.COMMANDS:  # every listed command has a handler
        try:
            engine.execute(command, {})
        except UnknownCommand:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"{command} is not dispatched")
        except StoreError:
            pass


@pytest.mark.parametrize("command", ["nope", "ping", "", 5, None, ["get"]])
def test_unknown_commands(engine: Engine, command: Any) -> None:
    with pytest.raises(UnknownCommand):
        engine.execute(command, {})


@pytest.mark.parametrize("args", [None, [], "x", [("table", "t")]])
def test_arguments_must_be_a_map(engine: Engine, args: Any) -> None:
    with pytest.raises(BadRequest):
        engine.execute("list_tables", args)


def test_unknown_arguments_are_refused(shop: Engine) -> None:
    err = fail(shop, BadRequest, "get", table="users", id="x", bogus=1)
    assert err.details == {"arg": "bogus"}
    fail(shop, BadRequest, "insert", table="users", record={}, extra=True)
    fail(shop, BadRequest, "list_tables", table="users")


# -- create_table / list_tables ---------------------------------------------------------------


def test_create_table_is_idempotent_and_journaled_once(engine: Engine) -> None:
    assert run(engine, "create_table", table="a") == {"created": True}
    assert run(engine, "create_table", table="a") == {"created": False}
    assert run(engine, "create_table", table="b") == {"created": True}
    assert run(engine, "list_tables") == ["a", "b"]
    empty = {"indexes": [], "foreign_keys": [], "hidden": []}
    assert engine.drain_changes() == [("table", "a", empty), ("table", "b", empty)]


@pytest.mark.parametrize("name", ["", "1a", "a-b", "a b", "é", "x" * 65, 5, None, "a.b"])
def test_table_names_are_checked(engine: Engine, name: Any) -> None:
    fail(engine, BadRequest, "create_table", table=name)
    fail(engine, BadRequest, "insert", table=name, record={})


def test_table_name_limits(engine: Engine) -> None:
    assert run(engine, "create_table", table="_" + "x" * 63)["created"]
    assert run(engine, "create_table", table="A_9")["created"]


def test_max_tables(engine: Engine) -> None:
    for n in range(6):
        run(engine, "create_table", table=f"t{n}")
    err = fail(engine, LimitExceeded, "create_table", table="t6")
    assert err.details["max"] == 6
    fail(engine, LimitExceeded, "insert", table="t6", record={})
    assert run(engine, "create_table", table="t0") == {"created": False}
    assert len(run(engine, "list_tables")) == 6


@pytest.mark.parametrize(
    "spec",
    [
        {"indexes": "email"},
        {"indexes": [{"field": "email", "casefold": True}]},
        {"indexes": [{"field": "id"}]},
        {"indexes": [{"field": ""}]},
        {"indexes": [{"field": "a", "unique": "yes"}]},
        {"indexes": [{"field": "a", "sparse": True}]},
        {"foreign_keys": [{"field": "a"}]},
        {"foreign_keys": [{"field": "a.b", "table": "users"}]},
        {"foreign_keys": [{"field": "a", "table": "bad name"}]},
        {"hidden": ["id"]},
        {"indexes": [{"field": "a"}, {"field": "a", "unique": True}]},
        {"foreign_keys": [{"field": "a", "table": "x"}, {"field": "a", "table": "y"}]},
        {"hidden": ["a.b"]},
        {"hidden": "pw"},
    ],
)
def test_create_table_refuses_bad_specs(engine: Engine, spec: dict[str, Any]) -> None:
    fail(engine, BadRequest, "create_table", table="t", **spec)
    assert run(engine, "list_tables") == []


def test_foreign_key_declares_a_hash_index(shop: Engine) -> None:
    stats = run(shop, "stats")["tables"]
    assert stats["orders"]["indexes"] == [{"field": "user_id", "unique": False, "casefold": False}]
    assert stats["orders"]["foreign_keys"] == [{"field": "user_id", "table": "users"}]
    assert stats["users"]["hidden"] == ["password_hash"]


def test_extending_a_table_builds_new_indexes(shop: Engine) -> None:
    for n in range(3):
        insert(shop, "users", email=f"u{n}@x", team="red" if n != 1 else "blue")
    result = run(shop, "create_table", table="users", indexes=[{"field": "team"}])
    assert result == {"created": False}
    assert shop._catalog.tables["users"].hashes["team"].count("red") == 2
    found = run(shop, "find", table="users", where=[["team", "eq", "red"]])
    assert [r["email"] for r in found["items"]] == ["u0@x", "u2@x"]
    assert shop.drain_changes()[-1][0] == "table"
    # same declaration again: nothing changes, nothing journaled
    run(shop, "create_table", table="users", indexes=[{"field": "team"}])
    assert shop.drain_changes() == []


def test_extending_a_table_refuses_conflicts_without_changing_it(shop: Engine) -> None:
    insert(shop, "users", email="a@x", team="red")
    insert(shop, "users", email="b@x", team="red")
    err = fail(
        shop, Conflict, "create_table", table="users", indexes=[{"field": "team", "unique": True}]
    )
    assert err.details["reason"] == "duplicate" and err.details["field"] == "team"
    fail(shop, BadRequest, "create_table", table="users", indexes=[{"field": "email"}])
    fail(
        shop,
        BadRequest,
        "create_table",
        table="orders",
        foreign_keys=[{"field": "user_id", "table": "other"}],
    )
    insert(shop, "orders", note="x", owner="ghost")
    err = fail(
        shop,
        Conflict,
        "create_table",
        table="orders",
        foreign_keys=[{"field": "owner", "table": "users"}],
    )
    assert err.details["reason"] == "foreign_key"
    tables = run(shop, "stats")["tables"]
    assert [i["field"] for i in tables["users"]["indexes"]] == ["email"]
    assert tables["orders"]["foreign_keys"] == [{"field": "user_id", "table": "users"}]


def test_create_index(shop: Engine) -> None:
    insert(shop, "orders", status="new")
    assert run(shop, "create_index", table="orders", field="status") == {"created": True}
    assert run(shop, "create_index", table="orders", field="status") == {"created": False}
    fail(shop, NotFound, "create_index", table="missing", field="status")
    fail(shop, BadRequest, "create_index", table="orders", field="status", unique=True)


# -- insert -----------------------------------------------------------------------------------


def test_insert_fills_id_timestamps_and_version(engine: Engine) -> None:
    record = insert(engine, "notes", text="hi", created_at="forged", updated_at="x", version=99)
    assert uuid.UUID(record["id"]).version == 4
    assert str(uuid.UUID(record["id"])) == record["id"]
    assert record["created_at"] == record["updated_at"] == "2023-11-14T22:13:20.250000Z"
    assert record["version"] == 1
    assert record == {
        "id": record["id"],
        "text": "hi",
        "created_at": record["created_at"],
        "updated_at": record["created_at"],
        "version": 1,
    }
    assert run(engine, "get", table="notes", id=record["id"]) == record
    assert run(engine, "list_tables") == ["notes"]


def test_ids_are_unique_uuid4_strings(engine: Engine) -> None:
    made = {insert(engine, "t")["id"] for _ in range(3000)}
    assert len(made) == 3000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in made)


def test_timestamps_strictly_increase_even_when_the_clock_does_not(
    engine: Engine, clock: FakeClock
) -> None:
    stamps = [insert(engine, "t")["created_at"] for _ in range(3)]
    assert stamps == [
        "2023-11-14T22:13:20.250000Z",
        "2023-11-14T22:13:20.250001Z",
        "2023-11-14T22:13:20.250002Z",
    ]
    clock.advance(-10)  # a clock stepping back never reorders records
    assert insert(engine, "t")["created_at"] == "2023-11-14T22:13:20.250003Z"
    clock.advance(3610.5)
    stamp = insert(engine, "t")["created_at"]
    assert stamp == "2023-11-14T23:13:20.750000Z" and STAMP.fullmatch(stamp)


def test_insert_with_create_false_needs_the_table(engine: Engine) -> None:
    """An import's later batches: a table dropped meanwhile is not made again (QA)."""
    err = fail(engine, NotFound, "insert", table="gone", record={"n": 1}, create=False)
    assert err.details == {"table": "gone"}
    assert "gone" not in run(engine, "list_tables")
    fail(engine, BadRequest, "insert", table="gone", record={"n": 1}, create="no")
    run(engine, "insert", table="gone", record={"n": 1}, create=True)
    run(engine, "insert", table="gone", record={"n": 2}, create=False)
    fail(engine, BadRequest, "insert", table="gone", record={"n": 3}, create=0)
    assert run(engine, "count", table="gone") == 2


def test_insert_with_a_given_id(engine: Engine) -> None:
    assert insert(engine, "t", id="a" * 128)["id"] == "a" * 128
    err = fail(engine, Conflict, "insert", table="t", record={"id": "a" * 128})
    assert err.details == {"reason": "duplicate_id", "table": "t", "id": "a" * 128}
    assert insert(engine, "t", id="Az09._~:@-")["id"] == "Az09._~:@-"
    # one URL path segment, as the API's rule (an id from a batch $ref is checked here only)
    for bad in ["", "a" * 129, 5, ["x"], True, "a/b", ".", "..", "has space", "é", "a\n"]:
        err = fail(engine, BadRequest, "insert", table="t", record={"id": bad})
        assert err.details == {"arg": "id"}


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        {1: "x"},
        {"a": float("nan")},
        {"a": Decimal("NaN")},
        {"a": Decimal("sNaN")},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": (1, 2)},
        {"a": 2**64},
        {"a": -(2**63) - 1},
        {"a": {"b": {3: 4}}},
        {"a": [1, [float("nan")]]},
        {"a": object()},
    ],
)
def test_insert_refuses_unstorable_records(engine: Engine, record: Any) -> None:
    fail(engine, BadRequest, "insert", table="t", record=record)
    assert run(engine, "list_tables") == []  # a failed insert does not create the table
    assert engine.drain_changes() == []


def test_deep_nesting_is_refused_not_a_crash(engine: Engine) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    fail(engine, BadRequest, "insert", table="t", record={"a": deep})
    ok: Any = 1
    for _ in range(20):
        ok = {"k": ok}
    insert(engine, "t", a=ok)


def test_insert_copies_its_input(engine: Engine) -> None:
    tags = ["a"]
    meta = {"k": {"n": 1}}
    record = {"tags": tags, "meta": meta}
    stored = insert(engine, "t", **record)
    tags.append("b")
    meta["k"]["n"] = 2
    got = run(engine, "get", table="t", id=stored["id"])
    assert got["tags"] == ["a"] and got["meta"] == {"k": {"n": 1}}


def test_values_keep_their_types(engine: Engine) -> None:
    values = {
        "d": Decimal("10.10"),
        "i": 2**63 - 1,
        "f": 0.5,
        "b": False,
        "n": None,
        "s": "",
        "l": [Decimal("1.5"), None],
        "m": {"x": {"y": [1]}},
    }
    stored = insert(engine, "t", **values)
    got = run(engine, "get", table="t", id=stored["id"])
    for key, value in values.items():
        assert got[key] == value and type(got[key]) is type(value)
    assert str(got["d"]) == "10.10"


def test_insert_foreign_keys(shop: Engine) -> None:
    user = insert(shop, "users", email="a@x")
    assert insert(shop, "orders", user_id=user["id"])["user_id"] == user["id"]
    assert insert(shop, "orders", user_id=None)["user_id"] is None
    assert "user_id" not in insert(shop, "orders")
    for bad in ["ghost", 5, ["x"]]:
        err = fail(shop, Conflict, "insert", table="orders", record={"user_id": bad})
        assert err.details["reason"] == "foreign_key" and err.details["field"] == "user_id"


def test_repeated_values_share_one_object(shop: Engine) -> None:
    """Memory: references hold the target's own id string, short strings are interned."""
    user = insert(shop, "users", email="a@x")
    copy_of_id = "".join(list(user["id"]))  # equal, but a different object (as off the wire)
    assert copy_of_id is not user["id"]
    first = insert(shop, "orders", user_id=copy_of_id, status="".join(["pai", "d"]))
    second = insert(shop, "orders", user_id="".join(list(user["id"])), status="".join(["pa", "id"]))
    patched = run(shop, "patch", table="orders", id=second["id"], changes={"user_id": copy_of_id})
    assert first["user_id"] is user["id"] and patched["user_id"] is user["id"]
    assert first["status"] is second["status"]
    long_text = "x" * 40
    assert insert(shop, "orders", note="".join(long_text))["note"] == long_text


def test_foreign_key_to_a_missing_table_and_to_itself(engine: Engine) -> None:
    run(engine, "create_table", table="nodes", foreign_keys=[{"field": "parent", "table": "nodes"}])
    root = insert(engine, "nodes", id="root", parent="root")
    child = insert(engine, "nodes", parent=root["id"])
    assert child["parent"] == "root"
    run(engine, "create_table", table="pets", foreign_keys=[{"field": "owner", "table": "people"}])
    err = fail(engine, Conflict, "insert", table="pets", record={"owner": "x"})
    assert err.details["reason"] == "foreign_key"


def test_insert_unique_casefold(shop: Engine) -> None:
    insert(shop, "users", email="Anna@Example.com")
    err = fail(shop, Conflict, "insert", table="users", record={"email": "anna@example.COM"})
    assert err.details == {"reason": "unique", "field": "email", "table": "users"}
    insert(shop, "users", email=None)
    insert(shop, "users")  # missing values are not indexed: several are allowed
    insert(shop, "users", email=None)
    assert run(shop, "count", table="users") == 4


def test_equality_on_a_casefold_field_ignores_case(shop: Engine) -> None:
    anna = insert(shop, "users", email="Anna@Example.com")
    insert(shop, "users", email="bob@example.com")
    for where in (
        [["email", "eq", "anna@example.COM"]],
        [["email", "in", ["ANNA@EXAMPLE.COM", "nobody@x"]]],
        [["email", "ne", "BOB@example.com"]],
        [["email", "eq", "anna@example.com"], ["version", "eq", 1]],
    ):
        found = run(shop, "find", table="users", where=where)
        assert ids(found["items"]) == [anna["id"]] and found["total"] == 1
        assert run(shop, "count", table="users", where=where) == 1
    assert run(shop, "count", table="users", where=[["email", "contains", "anna"]]) == 0
    assert run(shop, "count", table="orders", where=[["note", "eq", "X"]]) == 0


def test_hidden_fields_are_stripped_everywhere(shop: Engine) -> None:
    user = insert(shop, "users", email="a@x", password_hash="secret")
    assert "password_hash" not in user
    uid = user["id"]
    assert "password_hash" not in run(shop, "get", table="users", id=uid)
    assert run(shop, "get", table="users", id=uid, include_hidden=True)["password_hash"] == "secret"
    assert "password_hash" not in run(shop, "get_many", table="users", ids=[uid])[0]
    assert run(shop, "get_many", table="users", ids=[uid], include_hidden=True)[0]["password_hash"]
    assert "password_hash" not in run(shop, "find", table="users")["items"][0]
    assert run(shop, "find", table="users", include_hidden=True)["items"][0]["password_hash"]
    assert "password_hash" not in run(shop, "scan", table="users")["items"][0]
    assert "password_hash" not in run(shop, "patch", table="users", id=uid, changes={"n": 1})
    assert "password_hash" not in run(
        shop, "replace", table="users", id=uid, record={"email": "a@x", "password_hash": "s2"}
    )
    insert(shop, "orders", user_id=uid)
    pair = run(shop, "join", left="users", right="orders", left_field="id", right_field="user_id")
    assert "password_hash" not in pair["items"][0][0]
    # and they cannot be used as an oracle
    for command, args in [
        ("find", {"where": [["password_hash", "eq", "s2"]]}),
        ("find", {"sort": [["password_hash", "asc"]]}),
        ("count", {"where": [["password_hash", "gt", "a"]]}),
        ("aggregate", {"group_by": ["password_hash"]}),
        ("aggregate", {"metrics": [{"op": "max", "field": "password_hash", "as": "m"}]}),
    ]:
        err = fail(shop, BadRequest, command, table="users", **args)
        assert err.details["field"] == "password_hash"
    fail(
        shop,
        BadRequest,
        "join",
        left="users",
        right="orders",
        left_field="password_hash",
        right_field="user_id",
    )
    found = run(
        shop, "find", table="users", where=[["password_hash", "eq", "s2"]], include_hidden=True
    )
    assert found["total"] == 1


# -- get / get_many -----------------------------------------------------------------------------


def test_get_errors(shop: Engine) -> None:
    err = fail(shop, NotFound, "get", table="users", id="nope")
    assert err.details == {"table": "users", "id": "nope"}
    err = fail(shop, NotFound, "get", table="ghosts", id="x")
    assert err.details == {"table": "ghosts"}
    fail(shop, BadRequest, "get", table="users", id=5)
    fail(shop, BadRequest, "get", table="users")
    fail(shop, BadRequest, "get", table="bad name", id="x")


@pytest.mark.parametrize("command", ["get", "patch", "replace", "delete"])
def test_a_missing_ids_error_quotes_at_most_an_ids_length_of_it(shop: Engine, command: str):
    """QA: a 1 MB id was quoted whole, in the message and the details: a 2 MB reply."""
    args = {"changes": {}} if command == "patch" else {"record": {}} if command == "replace" else {}
    err = fail(shop, NotFound, command, table="users", id="x" * 1_000_000, **args)
    assert err.details == {"table": "users", "id": "x" * MAX_ID_LENGTH + "..."}
    assert len(err.message) < 2 * MAX_ID_LENGTH
    user = insert(shop, "users")
    fail(shop, BadRequest, "get", table="users", id=user["id"], include_hidden="yes")
    insert(shop, "plain", id="p")
    fail(shop, BadRequest, "get", table="plain", id="p", include_hidden=1)


def test_get_many(engine: Engine) -> None:
    a, b = insert(engine, "t", n=1), insert(engine, "t", n=2)
    got = run(engine, "get_many", table="t", ids=[b["id"], "nope", a["id"], b["id"]])
    assert got == [b, None, a, b]
    assert run(engine, "get_many", table="t", ids=[]) == []
    fail(engine, BadRequest, "get_many", table="t", ids=[1])
    fail(engine, BadRequest, "get_many", table="t", ids="x")
    fail(engine, LimitExceeded, "get_many", table="t", ids=["x"] * 51)
    fail(engine, NotFound, "get_many", table="zz", ids=[])


# -- replace / patch ----------------------------------------------------------------------------


def test_replace(engine: Engine, clock: FakeClock) -> None:
    old = insert(engine, "t", a=1, b=2)
    clock.advance(5)
    new = run(
        engine, "replace", table="t", id=old["id"], record={"a": 3, "id": "other", "version": 7}
    )
    assert new == {
        "id": old["id"],
        "a": 3,
        "created_at": old["created_at"],
        "updated_at": "2023-11-14T22:13:25.250000Z",
        "version": 2,
    }
    assert old["a"] == 1 and old["version"] == 1  # earlier results are never mutated
    again = run(engine, "replace", table="t", id=old["id"], record={}, expected_version=2)
    assert again["version"] == 3
    err = fail(
        engine, VersionMismatch, "replace", table="t", id=old["id"], record={}, expected_version=2
    )
    assert err.details["current"] == 3
    err = fail(engine, NotFound, "replace", table="t", id="nope", record={})
    assert err.details == {"table": "t", "id": "nope"}
    fail(engine, NotFound, "replace", table="zz", id="nope", record={})
    fail(engine, BadRequest, "replace", table="t", id=old["id"], record=[1])
    fail(engine, BadRequest, "replace", table="t", id=old["id"], record={}, expected_version="3")
    fail(engine, BadRequest, "replace", table="t", id=old["id"], record={"x": float("nan")})


def test_replace_checks_unique_and_foreign_keys(shop: Engine) -> None:
    a = insert(shop, "users", email="a@x")
    b = insert(shop, "users", email="b@x")
    run(shop, "replace", table="users", id=a["id"], record={"email": "A@X"})  # itself: fine
    err = fail(shop, Conflict, "replace", table="users", id=a["id"], record={"email": "B@x"})
    assert err.details["reason"] == "unique"
    order = insert(shop, "orders", user_id=a["id"])
    run(shop, "replace", table="orders", id=order["id"], record={"user_id": b["id"]})
    err = fail(
        shop, Conflict, "replace", table="orders", id=order["id"], record={"user_id": "ghost"}
    )
    assert err.details["reason"] == "foreign_key"
    assert run(shop, "get", table="orders", id=order["id"])["user_id"] == b["id"]
    assert data_changes(shop)[-1][2]["user_id"] == b["id"]


# RFC 7386 appendix A, plus store-owned fields being ignored
MERGE_CASES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({"a": "foo"}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ({"a": {"id": 1}}, {"a": {"id": None}}, {"a": {}}),
]


@pytest.mark.parametrize(("original", "changes", "expected"), MERGE_CASES)
def test_patch_is_an_rfc7386_merge(
    engine: Engine, original: Any, changes: Any, expected: Any
) -> None:
    record = insert(engine, "t", **original)
    patched = run(engine, "patch", table="t", id=record["id"], changes=changes)
    meta = {k: patched.pop(k) for k in ("id", "created_at", "updated_at", "version")}
    assert patched == expected
    assert meta["id"] == record["id"] and meta["version"] == 2
    assert meta["created_at"] == record["created_at"] < meta["updated_at"]
    assert {k: v for k, v in record.items() if k in original} == original  # untouched


NO_OP_PATCHES = [
    {},
    {"a": 1, "b": {"c": "x"}},  # the values it has
    {"b": {}, "gone": None},  # an empty nested merge, removing a missing key
    {"id": None, "version": None, "created_at": "x"},  # store-owned: ignored
]


@pytest.mark.parametrize("changes", NO_OP_PATCHES)
def test_a_patch_that_changes_nothing_keeps_the_record(
    engine: Engine, clock: FakeClock, changes: dict[str, Any]
) -> None:
    """It wrote version + 1 with a new updated_at: caches and If-Match tags went stale."""
    record = insert(engine, "t", a=1, b={"c": "x"})
    engine.drain_changes()
    audited = engine.audit.seq
    clock.advance(5)
    rid = record["id"]
    assert run(engine, "patch", table="t", id=rid, changes=changes) == record
    assert run(engine, "patch", table="t", id=rid, changes=changes, expected_version=1) == record
    assert engine.drain_changes() == [] and engine.audit.seq == audited  # no journal, no audit
    err = fail(engine, VersionMismatch, "patch", table="t", id=rid, changes={}, expected_version=2)
    assert err.details["current"] == 1
    fail(engine, NotFound, "patch", table="t", id="nope", changes=changes)
    assert run(engine, "get", table="t", id=rid) == record


@pytest.mark.parametrize(
    ("stored", "written"),
    [(1, 1.0), (1, True), (0.0, -0.0), (Decimal("1.0"), Decimal("1.00")), (1, Decimal(1))],
)
def test_a_value_equal_but_stored_differently_is_a_change(
    engine: Engine, stored: Any, written: Any
) -> None:
    """``1 == 1.0 == True``, yet each reads back differently: such a write is kept (the
    ``!=`` update_where used to skip a row took it for no change)."""
    record = insert(engine, "t", a=stored, n={"a": stored})
    for changes in ({"a": written}, {"n": {"a": written}}):
        patched = run(engine, "patch", table="t", id=record["id"], changes=changes)
        assert repr(patched["a"] if "a" in changes else patched["n"]["a"]) == repr(written)
        record = run(
            engine, "patch", table="t", id=record["id"], changes={"a": stored, "n": {"a": stored}}
        )
    assert record["version"] == 5
    run(engine, "update_where", table="t", changes={"a": written})
    assert repr(run(engine, "get", table="t", id=record["id"])["a"]) == repr(written)


def test_a_replace_that_changes_nothing_keeps_the_record(engine: Engine, clock: FakeClock) -> None:
    record = insert(engine, "t", a=1, b={"c": [1, "x"]})
    engine.drain_changes()
    clock.advance(5)
    rid = record["id"]
    same = {"b": {"c": [1, "x"]}, "a": 1, "version": 9}  # key order and store-owned fields
    assert run(engine, "replace", table="t", id=rid, record=same, expected_version=1) == record
    assert engine.drain_changes() == []
    fail(engine, VersionMismatch, "replace", table="t", id=rid, record=same, expected_version=2)
    fail(engine, NotFound, "replace", table="t", id="nope", record=same)
    changed = run(engine, "replace", table="t", id=rid, record={"a": 1, "b": {"c": [1.0, "x"]}})
    assert changed["version"] == 2
    assert run(engine, "audit_list", table="t")["items"][0]["fields"] == ["b"]


def test_a_no_op_write_in_a_batch_keeps_the_record(shop: Engine) -> None:
    """The batch runs the same patch and replace; its other writes still happen."""
    user = insert(shop, "users", email="a@x", password_hash="h")
    shop.drain_changes()
    results = run(
        shop,
        "batch",
        ops=[
            {"op": "patch", "table": "users", "id": user["id"], "changes": {"email": "a@x"}},
            {
                "op": "replace",
                "table": "users",
                "id": user["id"],
                "record": {"email": "a@x", "password_hash": "h"},
                "expected_version": 1,
            },
            {"op": "insert", "table": "orders", "record": {"user_id": {"$ref": "0.id"}}},
        ],
    )["results"]
    assert results[0] == results[1] == user  # without the hidden field, as a write answers
    assert results[2]["user_id"] == user["id"]
    assert [c[:2] for c in data_changes(shop)] == [("put", "orders")]


def test_patch_errors(shop: Engine) -> None:
    user = insert(shop, "users", email="a@x", profile={"name": "A"})
    insert(shop, "users", email="b@x")
    uid = user["id"]
    err = fail(
        shop, VersionMismatch, "patch", table="users", id=uid, changes={}, expected_version=5
    )
    assert err.details == {"current": 1, "table": "users", "id": uid}
    err = fail(shop, Conflict, "patch", table="users", id=uid, changes={"email": "B@X"})
    assert err.details["reason"] == "unique"
    order = insert(shop, "orders", user_id=uid)
    err = fail(
        shop, Conflict, "patch", table="orders", id=order["id"], changes={"user_id": "ghost"}
    )
    assert err.details["reason"] == "foreign_key"
    fail(shop, BadRequest, "patch", table="users", id=uid, changes="x")
    fail(shop, BadRequest, "patch", table="users", id=uid, changes={"a": {1: 2}})
    fail(shop, NotFound, "patch", table="users", id="nope", changes={})
    assert run(shop, "get", table="users", id=uid)["version"] == 1
    patched = run(
        shop, "patch", table="users", id=uid, changes={"profile": {"age": 3}}, expected_version=1
    )
    assert patched["profile"] == {"name": "A", "age": 3}
    assert user["profile"] == {"name": "A"}


# -- delete -----------------------------------------------------------------------------------


def test_delete(engine: Engine) -> None:
    record = insert(engine, "t")
    fail(engine, VersionMismatch, "delete", table="t", id=record["id"], expected_version=2)
    assert run(engine, "delete", table="t", id=record["id"], expected_version=1) == {
        "id": record["id"],
        "cascaded": 0,
    }
    err = fail(engine, NotFound, "delete", table="t", id=record["id"])
    assert err.details == {"table": "t", "id": record["id"]}
    fail(engine, BadRequest, "delete", table="t", id=record["id"], cascade="yes")
    assert run(engine, "count", table="t") == 0


def test_delete_with_dependants(shop: Engine) -> None:
    shop.execute(
        "create_table",
        {"table": "items", "foreign_keys": [{"field": "order_id", "table": "orders"}]},
    )
    user = insert(shop, "users", email="a@x")
    other = insert(shop, "users", email="b@x")
    orders = [insert(shop, "orders", user_id=user["id"]) for _ in range(2)]
    kept = insert(shop, "orders", user_id=other["id"])
    items = [insert(shop, "items", order_id=o["id"]) for o in (*orders, kept)]
    shop.drain_changes()
    err = fail(shop, Conflict, "delete", table="users", id=user["id"])
    assert err.details["reason"] == "dependants" and err.details["field"] == "user_id"
    assert err.details["dependant_table"] == "orders"
    err = fail(shop, Conflict, "delete", table="orders", id=orders[0]["id"])
    assert err.details["dependant_table"] == "items"
    assert shop.drain_changes() == []
    result = run(shop, "delete", table="users", id=user["id"], cascade=True)
    assert result == {"id": user["id"], "cascaded": 4}
    assert ids(run(shop, "find", table="orders")["items"]) == [kept["id"]]
    assert ids(run(shop, "find", table="items")["items"]) == [items[2]["id"]]
    changes = data_changes(shop)
    assert changes[-1] == ("delete", "users", user["id"])
    deleted = [c[1:] for c in changes]
    for item, order in zip(items[:2], orders, strict=True):  # children before their parents
        assert deleted.index(("items", item["id"])) < deleted.index(("orders", order["id"]))


def test_delete_a_self_referencing_row(engine: Engine) -> None:
    run(engine, "create_table", table="nodes", foreign_keys=[{"field": "parent", "table": "nodes"}])
    insert(engine, "nodes", id="root", parent="root")
    insert(engine, "nodes", id="leaf", parent="root")
    fail(engine, Conflict, "delete", table="nodes", id="root")
    assert run(engine, "delete", table="nodes", id="leaf") == {"id": "leaf", "cascaded": 0}
    assert run(engine, "delete", table="nodes", id="root") == {"id": "root", "cascaded": 0}


# -- find / count -------------------------------------------------------------------------------


@pytest.fixture
def people(engine: Engine) -> list[dict[str, Any]]:
    run(engine, "create_table", table="people", indexes=[{"field": "team"}])
    rows = [
        {"name": "ann", "age": 31, "team": "red", "tags": ["a", "b"], "addr": {"city": "Oslo"}},
        {
            "name": "bob",
            "age": Decimal("25.5"),
            "team": "blue",
            "tags": [],
            "addr": {"city": "Rome"},
        },
        {"name": "cid", "age": None, "team": "red", "tags": ["b"]},
        {"name": "dan", "age": 40.0, "team": "green", "addr": {"city": "oslo"}},
        {"name": "eve", "age": "n/a", "team": "red", "tags": ["c"], "addr": "none"},
        {"name": "fay", "age": True, "team": "blue"},
    ]
    return [insert(engine, "people", **r) for r in rows]


def names(result: dict[str, Any]) -> list[str]:
    return [r["name"] for r in result["items"]]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ([["team", "eq", "red"]], ["ann", "cid", "eve"]),
        ([["team", "in", ["blue", "green"]]], ["bob", "dan", "fay"]),
        ([["team", "eq", "red"], ["age", "gt", 30]], ["ann"]),
        ([["age", "gte", Decimal("25.5")]], ["ann", "bob", "dan"]),
        ([["age", "lt", 30]], ["bob"]),
        ([["age", "lte", 40]], ["ann", "bob", "dan"]),
        ([["age", "eq", 40]], ["dan"]),
        ([["age", "eq", None]], ["cid"]),
        ([["age", "ne", None]], ["ann", "bob", "dan", "eve", "fay"]),
        ([["age", "eq", True]], ["fay"]),
        ([["age", "eq", 1]], []),
        ([["age", "gt", "a"]], ["eve"]),
        ([["tags", "contains", "b"]], ["ann", "cid"]),
        ([["name", "contains", "a"]], ["ann", "dan", "fay"]),
        ([["addr.city", "eq", "Oslo"]], ["ann"]),
        ([["addr.city", "in", ["Oslo", "oslo"]]], ["ann", "dan"]),
        ([["addr.city", "eq", None]], ["cid", "eve", "fay"]),
        ([["id", "eq", "nope"]], []),
        ([["team", "eq", "purple"]], []),
        ([["team", "in", []]], []),
        ([], ["ann", "bob", "cid", "dan", "eve", "fay"]),
    ],
)
def test_find_where(
    engine: Engine, people: list[dict[str, Any]], where: Any, expected: list[str]
) -> None:
    result = run(engine, "find", table="people", where=where)
    assert names(result) == expected
    assert result["total"] == len(expected)
    assert run(engine, "count", table="people", where=where) == len(expected)


def test_find_by_id(engine: Engine, people: list[dict[str, Any]]) -> None:
    wanted = [people[3]["id"], people[1]["id"]]
    found = run(engine, "find", table="people", where=[["id", "in", wanted]])
    assert names(found) == ["bob", "dan"]
    # None is never an id, nor an indexed value (found by the stateful test)
    assert run(engine, "find", table="people", where=[["id", "eq", None]])["total"] == 0
    found = run(engine, "find", table="people", where=[["id", "in", [None, wanted[0]]]])
    assert names(found) == ["dan"]
    found = run(engine, "find", table="people", where=[["team", "in", [None, "green"]]])
    assert names(found) == ["dan"]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ([["age", "asc"]], ["cid", "fay", "bob", "ann", "dan", "eve"]),
        ([["age", "desc"]], ["eve", "dan", "ann", "bob", "fay", "cid"]),
        ([["team", "asc"], ["name", "desc"]], ["fay", "bob", "dan", "eve", "cid", "ann"]),
        ([["team", "desc"], ["age", "asc"]], ["cid", "ann", "eve", "dan", "fay", "bob"]),
        ([["addr.city", "asc"]], ["cid", "eve", "fay", "ann", "bob", "dan"]),
        ([["created_at", "desc"]], ["fay", "eve", "dan", "cid", "bob", "ann"]),
        ([["created_at", "asc"]], ["ann", "bob", "cid", "dan", "eve", "fay"]),
        ([["tags", "asc"]], ["dan", "fay", "bob", "ann", "cid", "eve"]),
    ],
)
def test_find_sort(
    engine: Engine, people: list[dict[str, Any]], sort: Any, expected: list[str]
) -> None:
    assert names(run(engine, "find", table="people", sort=sort)) == expected
    paged = run(engine, "find", table="people", sort=sort, offset=2, limit=3)
    assert names(paged) == expected[2:5] and paged["total"] == 6


def test_find_pages(engine: Engine, people: list[dict[str, Any]]) -> None:
    every = [p["name"] for p in people]
    for offset in range(8):
        for limit in (1, 2, 5):
            result = run(engine, "find", table="people", offset=offset, limit=limit)
            assert names(result) == every[offset : offset + limit] and result["total"] == 6
            desc = run(
                engine,
                "find",
                table="people",
                offset=offset,
                limit=limit,
                sort=[["created_at", "desc"]],
            )
            assert names(desc) == every[::-1][offset : offset + limit]
            red = run(
                engine,
                "find",
                table="people",
                where=[["team", "eq", "red"]],
                offset=offset,
                limit=limit,
            )
            assert (
                names(red) == ["ann", "cid", "eve"][offset : offset + limit] and red["total"] == 3
            )
            red_desc = run(
                engine,
                "find",
                table="people",
                where=[["team", "eq", "red"]],
                offset=offset,
                limit=limit,
                sort=[["created_at", "desc"]],
            )
            assert names(red_desc) == ["eve", "cid", "ann"][offset : offset + limit]


def test_find_through_an_index_keeps_creation_order_after_updates(
    engine: Engine, people: list[dict[str, Any]]
) -> None:
    run(
        engine, "patch", table="people", id=people[1]["id"], changes={"team": "red"}
    )  # bob joins red
    run(engine, "patch", table="people", id=people[0]["id"], changes={"team": "blue"})
    run(engine, "patch", table="people", id=people[0]["id"], changes={"team": "red"})
    expected = ["ann", "bob", "cid", "eve"]
    assert names(run(engine, "find", table="people", where=[["team", "eq", "red"]])) == expected
    filtered = run(
        engine, "find", table="people", where=[["team", "in", ["red"]], ["name", "ne", "x"]]
    )
    assert names(filtered) == expected


def test_find_argument_errors(engine: Engine, people: list[dict[str, Any]]) -> None:
    fail(engine, LimitExceeded, "find", table="people", limit=51)
    run(engine, "find", table="people", limit=50)
    for bad in [
        {"limit": 0},
        {"limit": "5"},
        {"limit": True},
        {"offset": -1},
        {"offset": 1.5},
        {"where": [["age", "between", 1]]},
        {"where": {"age": 1}},
        {"sort": [["age", "up"]]},
        {"include_hidden": "no"},
    ]:
        fail(engine, BadRequest, "find", table="people", **bad)
    err = fail(engine, LimitExceeded, "find", table="people", where=[["age", "in", list(range(6))]])
    assert err.details["max"] == 5
    fail(engine, NotFound, "find", table="ghosts")
    fail(engine, NotFound, "count", table="ghosts")
    fail(engine, BadRequest, "count", table="people", where="x")


def test_find_large_pages_and_heap_selection(engine: Engine) -> None:
    for n in range(300):
        insert(engine, "nums", n=(n * 37) % 300, parity=n % 2)
    result = run(engine, "find", table="nums", sort=[["n", "desc"]], offset=10, limit=5)
    assert [r["n"] for r in result["items"]] == [289, 288, 287, 286, 285]
    result = run(
        engine, "find", table="nums", where=[["parity", "eq", 0]], sort=[["n", "asc"]], limit=3
    )
    assert result["total"] == 150 and all(r["n"] % 2 == 0 for r in result["items"])
    assert [r["n"] for r in result["items"]] == sorted(r["n"] for r in result["items"])


# -- join -------------------------------------------------------------------------------------


def test_join_orders_pairs_by_left_then_right_creation(shop: Engine) -> None:
    u1 = insert(shop, "users", email="1@x", name="u1")
    u2 = insert(shop, "users", email="2@x", name="u2")
    insert(shop, "users", email="3@x", name="lonely")
    o = [
        insert(shop, "orders", user_id=uid, n=n)
        for n, uid in enumerate([u2["id"], u1["id"], u2["id"], None])
    ]
    result = run(shop, "join", left="users", right="orders", left_field="id", right_field="user_id")
    pairs = [(a["name"], b["n"]) for a, b in result["items"]]
    assert pairs == [("u1", 1), ("u2", 0), ("u2", 2)] and result["total"] == 3
    # the other direction probes users by primary key
    back = run(shop, "join", left="orders", right="users", left_field="user_id", right_field="id")
    assert [(a["n"], b["name"]) for a, b in back["items"]] == [(0, "u2"), (1, "u1"), (2, "u2")]
    for offset in range(4):
        for limit in (1, 2):
            page = run(
                shop,
                "join",
                left="users",
                right="orders",
                left_field="id",
                right_field="user_id",
                offset=offset,
                limit=limit,
            )
            assert [(a["name"], b["n"]) for a, b in page["items"]] == pairs[offset : offset + limit]
            assert page["total"] == 3
    filtered = run(
        shop,
        "join",
        left="users",
        right="orders",
        left_field="id",
        right_field="user_id",
        where=[["name", "eq", "u2"]],
    )
    assert [b["id"] for _, b in filtered["items"]] == [o[0]["id"], o[2]["id"]]


def test_join_without_an_index_matches_the_indexed_join(engine: Engine) -> None:
    for n, colour in enumerate(["red", "blue", "red", None, 1, True]):
        insert(engine, "a", colour=colour, n=n)
        insert(engine, "b", shade=colour, m=n)
    insert(engine, "b", shade=1.0, m=9)
    plain = run(engine, "join", left="a", right="b", left_field="colour", right_field="shade")
    run(engine, "create_index", table="b", field="shade")
    indexed = run(engine, "join", left="a", right="b", left_field="colour", right_field="shade")
    assert plain == indexed
    assert [(x["n"], y["m"]) for x, y in plain["items"]] == [
        (0, 0),
        (0, 2),
        (1, 1),
        (2, 0),
        (2, 2),
        (4, 4),
        (4, 9),
        (5, 5),
    ]
    run(engine, "create_table", table="c", indexes=[{"field": "shade", "unique": True}])
    insert(engine, "c", shade="red")
    unique = run(engine, "join", left="a", right="c", left_field="colour", right_field="shade")
    assert [x["n"] for x, _ in unique["items"]] == [0, 2]


def test_join_errors(shop: Engine) -> None:
    base = {"left": "users", "right": "orders", "left_field": "id", "right_field": "user_id"}
    fail(shop, NotFound, "join", **{**base, "left": "ghosts"})
    fail(shop, NotFound, "join", **{**base, "right": "ghosts"})
    fail(shop, BadRequest, "join", **{**base, "left_field": ""})
    fail(shop, BadRequest, "join", **{**base, "right_field": 3})
    fail(shop, LimitExceeded, "join", **base, limit=51)
    fail(shop, BadRequest, "join", **base, where=[["x", "nope", 1]])


# -- aggregate --------------------------------------------------------------------------------


@pytest.fixture
def sales(engine: Engine) -> Engine:
    rows = [
        ("eu", Decimal("10.10"), 2, "a"),
        ("us", Decimal("5.00"), 1, "b"),
        ("eu", Decimal("0.20"), 3, None),
        ("eu", "n/a", None, "c"),
        ("asia", 1.5, 4, "d"),
        ("asia", Decimal("2.5"), 6, "e"),
    ]
    for region, amount, qty, code in rows:
        insert(engine, "sales", region=region, amount=amount, qty=qty, code=code, geo={"r": region})
    return engine


def test_aggregate_groups_and_metrics(sales: Engine) -> None:
    metrics = [
        {"op": "count", "as": "n"},
        {"op": "count", "field": "qty", "as": "with_qty"},
        {"op": "sum", "field": "amount", "as": "total"},
        {"op": "avg", "field": "amount", "as": "mean"},
        {"op": "sum", "field": "qty", "as": "qty"},
        {"op": "avg", "field": "qty", "as": "avg_qty"},
        {"op": "min", "field": "code", "as": "first"},
        {"op": "max", "field": "amount", "as": "top"},
    ]
    result = run(sales, "aggregate", table="sales", group_by=["region"], metrics=metrics)
    assert result["total"] == 3
    eu, us, asia = result["items"]
    assert eu == {
        "region": "eu",
        "n": 3,
        "with_qty": 2,
        "total": Decimal("10.30"),
        "mean": Decimal("5.15"),
        "qty": 5,
        "avg_qty": 2.5,
        "first": "a",
        "top": "n/a",
    }
    assert type(eu["total"]) is Decimal and type(eu["mean"]) is Decimal and type(eu["qty"]) is int
    assert us["total"] == Decimal("5.00") and us["avg_qty"] == 1.0
    # a float and a Decimal: the sum stays a Decimal, exact
    assert asia["total"] == Decimal("4.0") and type(asia["total"]) is Decimal
    assert asia["mean"] == Decimal("2") and asia["top"] == Decimal("2.5")


def test_aggregate_decimal_average_is_a_decimal_division(engine: Engine) -> None:
    for amount in ("1", "1", "2"):
        insert(engine, "t", amount=Decimal(amount))
    result = run(
        engine, "aggregate", table="t", metrics=[{"op": "avg", "field": "amount", "as": "a"}]
    )
    assert result["items"] == [{"a": Decimal("1.333333333333333333333333333")}]


def test_aggregate_without_groups_and_on_no_rows(sales: Engine) -> None:
    metrics = [
        {"op": "count", "as": "n"},
        {"op": "sum", "field": "qty", "as": "s"},
        {"op": "avg", "field": "qty", "as": "a"},
        {"op": "max", "field": "qty", "as": "m"},
    ]
    whole = run(sales, "aggregate", table="sales", metrics=metrics)
    assert whole == {"items": [{"n": 6, "s": 16, "a": 3.2, "m": 6}], "total": 1}
    none = run(sales, "aggregate", table="sales", where=[["region", "eq", "mars"]], metrics=metrics)
    assert none == {"items": [{"n": 0, "s": 0, "a": None, "m": None}], "total": 1}
    grouped = run(
        sales,
        "aggregate",
        table="sales",
        where=[["region", "eq", "mars"]],
        group_by=["region"],
        metrics=metrics,
    )
    assert grouped == {"items": [], "total": 0}


def test_aggregate_sort_and_pages(sales: Engine) -> None:
    args = {
        "table": "sales",
        "group_by": ["geo.r"],
        "metrics": [{"op": "sum", "field": "qty", "as": "q"}],
    }
    result = run(sales, "aggregate", **args, sort=[["q", "desc"]])
    assert [(g["geo.r"], g["q"]) for g in result["items"]] == [("asia", 10), ("eu", 5), ("us", 1)]
    result = run(sales, "aggregate", **args, sort=[["geo.r", "asc"]], offset=1, limit=1)
    assert result == {"items": [{"geo.r": "eu", "q": 5}], "total": 3}
    assert run(sales, "aggregate", **args, offset=2)["items"] == [{"geo.r": "asia", "q": 10}]


def test_aggregate_groups_equal_numbers_together(engine: Engine) -> None:
    for value in (1, 1.0, Decimal("1.00"), True, "1", None):
        insert(engine, "t", v=value)
    result = run(
        engine, "aggregate", table="t", group_by=["v"], metrics=[{"op": "count", "as": "n"}]
    )
    assert [(g["v"], g["n"]) for g in result["items"]] == [(1, 3), (True, 1), ("1", 1), (None, 1)]


@pytest.mark.parametrize(
    "args",
    [
        {"metrics": [{"op": "median", "field": "qty", "as": "m"}]},
        {"metrics": [{"op": "sum", "as": "m"}]},
        {"metrics": [{"op": "sum", "field": "qty"}]},
        {"metrics": [{"op": "sum", "field": "qty", "as": "m"}, {"op": "count", "as": "m"}]},
        {"metrics": [{"op": "count", "as": "region"}], "group_by": ["region"]},
        {"metrics": [{"op": "count", "as": "n", "extra": 1}]},
        {"metrics": "count"},
        {"group_by": "region"},
        {"group_by": ["region", "region"]},
        {"group_by": [""]},
        {"group_by": ["region"], "sort": [["qty", "asc"]]},
    ],
)
def test_aggregate_argument_errors(sales: Engine, args: dict[str, Any]) -> None:
    fail(sales, BadRequest, "aggregate", table="sales", **args)


# -- batch ------------------------------------------------------------------------------------


def snapshot(engine: Engine) -> Any:
    """Everything observable about the tables, including object identity and index order."""
    out = {}
    for name, table in engine._catalog.tables.items():
        out[name] = (
            [(rid, id(r), dict(r)) for rid, r in table.rows.items()],
            {f: dict(i.owners) for f, i in table.uniques.items()},
            {f: {k: list(i.ids(k)) for k in i.all_keys()} for f, i in table.hashes.items()},
            table.spec(),
        )
    return out


def test_batch_applies_every_operation(shop: Engine) -> None:
    user = insert(shop, "users", email="a@x")
    shop.drain_changes()
    result = run(
        shop,
        "batch",
        ops=[
            {"op": "insert", "table": "orders", "record": {"id": "o1", "user_id": user["id"]}},
            {"op": "patch", "table": "orders", "id": "o1", "changes": {"paid": True}},
            {
                "op": "replace",
                "table": "users",
                "id": user["id"],
                "record": {"email": "b@x"},
                "expected_version": 1,
            },
            {"op": "insert", "table": "fresh", "record": {"id": "f"}},
            {"op": "delete", "table": "fresh", "id": "f"},
        ],
    )
    results = result["results"]
    assert (
        results[0]["version"] == 1 and results[1]["paid"] is True and results[2]["email"] == "b@x"
    )
    assert results[4] == {"id": "f", "cascaded": 0}
    assert run(shop, "get", table="orders", id="o1")["version"] == 2
    kinds = [(c[0], c[1]) for c in data_changes(shop)]
    assert kinds == [
        ("put", "orders"),
        ("put", "orders"),
        ("put", "users"),
        ("table", "fresh"),
        ("put", "fresh"),
        ("delete", "fresh"),
    ]
    assert run(shop, "batch", ops=[]) == {"results": []}


@pytest.mark.parametrize(
    ("bad_op", "exc", "reason"),
    [
        ({"op": "insert", "table": "users", "record": {"email": "A@X"}}, Conflict, "unique"),
        (
            {"op": "insert", "table": "orders", "record": {"user_id": "ghost"}},
            Conflict,
            "foreign_key",
        ),
        ({"op": "delete", "table": "users", "id": "u0"}, Conflict, "dependants"),
        (
            {"op": "patch", "table": "users", "id": "u3", "changes": {}, "expected_version": 9},
            VersionMismatch,
            None,
        ),
        ({"op": "replace", "table": "users", "id": "nope", "record": {}}, NotFound, None),
        ({"op": "upsert", "table": "users"}, BadRequest, None),
        ({"table": "users"}, BadRequest, None),
        ("insert", BadRequest, None),
        ({"op": "get", "table": "users", "id": "u0"}, BadRequest, None),
        ({"op": "insert", "table": "users", "record": {"x": float("nan")}}, BadRequest, None),
    ],
)
def test_failed_batch_restores_everything_exactly(
    shop: Engine, bad_op: Any, exc: type[StoreError], reason: str | None
) -> None:
    shop.execute("create_table", {"table": "orders", "indexes": [{"field": "status"}]})
    for n in range(4):
        insert(shop, "users", id=f"u{n}", email=f"{n}@x")
    for n in range(6):
        insert(shop, "orders", id=f"o{n}", user_id=f"u{n % 2}", status="new" if n % 3 else "paid")
    shop.drain_changes()
    before = snapshot(shop)
    ops = [
        {"op": "delete", "table": "orders", "id": "o1"},
        {
            "op": "patch",
            "table": "orders",
            "id": "o4",
            "changes": {"status": "paid", "user_id": "u3"},
        },
        {"op": "insert", "table": "users", "record": {"id": "u9", "email": "a@x"}},
        {"op": "delete", "table": "users", "id": "u1", "cascade": True},
        {
            "op": "replace",
            "table": "orders",
            "id": "o0",
            "record": {"user_id": "u9", "status": "new"},
        },
        {"op": "insert", "table": "brand_new", "record": {"n": 1}},
        {"op": "delete", "table": "users", "id": "u2"},
        {"op": "insert", "table": "users", "record": {"id": "u2", "email": "2@X"}},
        bad_op,
    ]
    err = fail(shop, exc, "batch", ops=ops)
    assert err.details["index"] == len(ops) - 1
    assert err.details["op"] == (bad_op.get("op") if isinstance(bad_op, dict) else None)
    if reason:
        assert err.details["reason"] == reason
    assert snapshot(shop) == before
    assert shop.drain_changes() == []
    assert "brand_new" not in run(shop, "list_tables")
    # the state is fully usable afterwards
    assert names_of(run(shop, "find", table="orders", where=[["status", "eq", "new"]])) == [
        "o1",
        "o2",
        "o4",
        "o5",
    ]


def names_of(result: dict[str, Any]) -> list[str]:
    return [r["id"] for r in result["items"]]


def test_batch_limits(engine: Engine) -> None:
    ops = [{"op": "insert", "table": "t", "record": {}}] * 11
    err = fail(engine, LimitExceeded, "batch", ops=ops)
    assert err.details["max"] == 10
    fail(engine, BadRequest, "batch", ops="x")
    fail(engine, BadRequest, "batch")
    assert len(run(engine, "batch", ops=ops[:10])["results"]) == 10


def test_batch_without_refs_stores_ref_shaped_maps_as_they_are(engine: Engine) -> None:
    ref_shaped = [{"$ref": "0.id"}, {"$ref": "nothing"}, [{"$ref": "9.x"}]]
    ops = [
        {"op": "insert", "table": "t", "record": {"id": f"r{n}", "m": value}}
        for n, value in enumerate(ref_shaped)
    ]
    ops.append({"op": "patch", "table": "t", "id": "r0", "changes": {"p": {"$ref": "1.m"}}})
    results = run(engine, "batch", ops=ops, refs=False)["results"]
    assert [result["m"] for result in results[:3]] == ref_shaped
    assert run(engine, "get", table="t", id="r0")["p"] == {"$ref": "1.m"}
    # The default resolves them: the first is r0's id, the second names nothing.
    ops = [{"op": "insert", "table": "u", "record": {"id": "a"}}]
    ops.append({"op": "insert", "table": "u", "record": {"m": {"$ref": "0.id"}}})
    assert run(engine, "batch", ops=ops, refs=True)["results"][1]["m"] == "a"
    ops = [{"op": "insert", "table": "u", "record": {"m": {"$ref": "nothing"}}}]
    assert fail(engine, BadRequest, "batch", ops=ops).details["index"] == 0
    assert fail(engine, BadRequest, "batch", ops=ops, refs="no").details == {"arg": "refs"}


def test_failed_first_op_in_a_batch(engine: Engine) -> None:
    err = fail(engine, NotFound, "batch", ops=[{"op": "delete", "table": "t", "id": "x"}])
    assert err.details == {"table": "t", "index": 0, "op": "delete"}


# -- scan -------------------------------------------------------------------------------------


def test_scan_reads_a_snapshot_of_ids(engine: Engine) -> None:
    made = [insert(engine, "t", n=n)["id"] for n in range(7)]
    first = run(engine, "scan", table="t", limit=3)
    assert ids(first["items"]) == made[:3] and isinstance(first["cursor"], str)
    run(engine, "delete", table="t", id=made[3])
    run(engine, "patch", table="t", id=made[4], changes={"n": 40})
    insert(engine, "t", n=99)  # added after the scan opened: not included
    second = run(engine, "scan", cursor=first["cursor"], limit=2)
    assert [r["n"] for r in second["items"]] == [40, 5]  # the deleted row is skipped
    assert second["cursor"] == first["cursor"]
    last = run(engine, "scan", cursor=first["cursor"], limit=3)
    assert [r["n"] for r in last["items"]] == [6] and last["cursor"] is None
    fail(engine, NotFound, "scan", cursor=first["cursor"])  # freed at the end
    whole = run(engine, "scan", table="t", limit=50)
    assert whole["cursor"] is None and len(whole["items"]) == 7


def test_scan_cursors_expire_and_are_capped(engine: Engine, clock: FakeClock) -> None:
    for n in range(10):
        insert(engine, "t", n=n)
    cursor = run(engine, "scan", table="t", limit=1)["cursor"]
    clock.advance(59)
    assert run(engine, "scan", cursor=cursor, limit=1)["cursor"] == cursor  # use renews it
    clock.advance(59)
    assert run(engine, "scan", cursor=cursor, limit=1)["cursor"] == cursor
    other = run(engine, "scan", table="t", limit=1)["cursor"]
    clock.advance(60.5)
    err = fail(engine, NotFound, "scan", cursor=other)
    assert err.details == {"cursor": other}
    fail(engine, NotFound, "scan", cursor=cursor)
    assert run(engine, "stats")["cursors"] == 0
    engine._scans._max_open = 2
    cursors = [run(engine, "scan", table="t", limit=1)["cursor"] for _ in range(2)]
    fail(engine, StoreBusy, "scan", table="t", limit=1)  # refused: no cursor in use is evicted
    assert run(engine, "scan", cursor=cursors[0], limit=1)["items"]


def test_scan_where_keeps_only_matches_and_bounds_each_read(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(engine, "create_table", table="t", indexes=[{"field": "g"}])
    made = [insert(engine, "t", g=n % 3, n=n) for n in range(30)]
    # Indexed eq at the root: the snapshot is the index's ids, the rest is tested per read.
    where = {"and": [["g", "eq", 1], {"or": [["n", "lt", 10], ["n", "gte", 25]]}]}
    seen, cursor, reads = [], None, 0
    page = run(engine, "scan", table="t", limit=2, where=where)
    while True:
        reads += 1
        seen += page["items"]
        if page["cursor"] is None:
            break
        page = run(engine, "scan", cursor=page["cursor"], limit=2)
    expected = [r for r in made if r["g"] == 1 and (r["n"] < 10 or r["n"] >= 25)]
    assert seen == expected and reads == 3
    # Unindexed: every row is a candidate; a read examining few ids may return none at all,
    # and only cursor None ends the scan.
    monkeypatch.setattr(scans, "MAX_FILTERED_PROBES", 4)
    page = run(engine, "scan", table="t", limit=5, where=[["n", "gte", 28]])
    empties, seen = 0, []
    while True:
        empties += not page["items"]
        seen += page["items"]
        if page["cursor"] is None:
            break
        page = run(engine, "scan", cursor=page["cursor"], limit=5)
    assert [r["n"] for r in seen] == [28, 29] and empties >= 5
    err = fail(engine, BadRequest, "scan", table="t", where=[["n", "near", 1]])
    assert err.details.get("path") is not None
    cursor = run(engine, "scan", table="t", limit=1)["cursor"]
    fail(engine, BadRequest, "scan", cursor=cursor, where=[["n", "eq", 1]])


def test_scan_errors(engine: Engine) -> None:
    insert(engine, "t")
    fail(engine, NotFound, "scan", table="ghosts")
    fail(engine, BadRequest, "scan", table="t", cursor="abc")
    fail(engine, BadRequest, "scan", cursor=5)
    fail(engine, NotFound, "scan", cursor="abc")
    fail(engine, LimitExceeded, "scan", table="t", limit=51)
    fail(engine, BadRequest, "scan")


# -- kv ---------------------------------------------------------------------------------------


def test_kv_set_get_delete(engine: Engine) -> None:
    value = {"roles": ["admin"], "n": Decimal("1.5")}
    assert run(engine, "kv_set", key="k", value=value) is True
    value["roles"].append("x")  # stored as a copy
    assert run(engine, "kv_get", key="k") == {"roles": ["admin"], "n": Decimal("1.5")}
    assert run(engine, "kv_set", key="k", value=2, nx=True) is False
    assert run(engine, "kv_get", key="k") != 2
    assert run(engine, "kv_set", key="k", value=None) is True
    assert run(engine, "kv_get", key="k") is None
    assert run(engine, "kv_delete", key="k") is True
    assert run(engine, "kv_delete", key="k") is False
    assert run(engine, "kv_get", key="missing") is None
    assert engine.drain_changes() == [
        ("kv_set", "k", {"roles": ["admin"], "n": Decimal("1.5")}, None),
        ("kv_set", "k", None, None),
        ("kv_delete", "k"),
    ]


def test_kv_ttl(engine: Engine, clock: FakeClock) -> None:
    run(engine, "kv_set", key="a", value=1, ttl=10)
    run(engine, "kv_set", key="b", value=2, ttl=0.5)
    assert engine.drain_changes()[0] == ("kv_set", "a", 1, T0 + 10)
    clock.advance(0.5)
    assert run(engine, "kv_get", key="b") is None  # expired exactly at its deadline
    assert run(engine, "kv_set", key="b", value=3, nx=True) is True
    clock.advance(9.49)
    assert run(engine, "kv_get", key="a") == 1
    clock.advance(0.02)
    assert run(engine, "kv_get", key="a") is None
    assert run(engine, "kv_delete", key="a") is False
    run(engine, "kv_set", key="c", value=1, ttl=1)
    for n in range(5):
        run(engine, "kv_set", key=f"x{n}", value=n, ttl=1)
    assert run(engine, "stats")["kv_keys"] == 7  # b (no ttl now), c, x0..x4
    clock.advance(2)
    run(engine, "kv_get", key="other")  # any kv call sweeps expired keys
    assert run(engine, "stats")["kv_keys"] == 1


def test_kv_set_gt_keeps_the_highest_value(engine: Engine, clock: FakeClock) -> None:
    """A high-water mark several writers announce: a lower value never replaces a higher."""
    assert run(engine, "kv_set", key="h", value=100, ttl=10, gt=True) is True  # absent
    assert run(engine, "kv_set", key="h", value=90, ttl=50, gt=True) is False
    assert run(engine, "kv_set", key="h", value=100, gt=True) is False  # not greater
    assert run(engine, "kv_get", key="h") == 100
    assert run(engine, "kv_set", key="h", value=Decimal("100.5"), ttl=20, gt=True) is True
    assert run(engine, "kv_get", key="h") == Decimal("100.5")
    clock.advance(21)  # expired: any value is stored again
    assert run(engine, "kv_set", key="h", value=1, gt=True) is True
    run(engine, "kv_set", key="s", value="text")
    assert run(engine, "kv_set", key="s", value=5, gt=True) is True  # not a number: replaced
    changes = engine.drain_changes()
    assert [c[2] for c in changes if c[1] == "h"] == [100, Decimal("100.5"), 1]


@pytest.mark.parametrize(
    "args",
    [
        {"key": "k"},
        {"value": 1},
        {"key": "k", "value": "text", "gt": True},
        {"key": "k", "value": True, "gt": True},
        {"key": "k", "value": 1, "gt": "yes"},
        {"key": "", "value": 1},
        {"key": 5, "value": 1},
        {"key": "k" * 1025, "value": 1},
        {"key": "k", "value": float("nan")},
        {"key": "k", "value": 1, "ttl": 0},
        {"key": "k", "value": 1, "ttl": -1},
        {"key": "k", "value": 1, "ttl": True},
        {"key": "k", "value": 1, "ttl": "5"},
        {"key": "k", "value": 1, "ttl": float("inf")},
        {"key": "k", "value": 1, "ttl": float("nan")},
        {"key": "k", "value": 1, "nx": 1},
    ],
)
def test_kv_set_argument_errors(engine: Engine, args: dict[str, Any]) -> None:
    fail(engine, BadRequest, "kv_set", **args)
    assert engine.drain_changes() == []


# -- rate_hit ---------------------------------------------------------------------------------


def test_rate_hit_fixed_window(engine: Engine, clock: FakeClock) -> None:
    seen = [run(engine, "rate_hit", key="ip", limit=3, window=60) for _ in range(5)]
    assert [(s["allowed"], s["remaining"]) for s in seen] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    assert {s["reset"] for s in seen} == {T0 + 60}
    clock.advance(30)
    assert run(engine, "rate_hit", key="other", limit=1, window=60)["reset"] == T0 + 90
    clock.advance(29.75)
    assert run(engine, "rate_hit", key="ip", limit=3, window=60)["allowed"] is False
    clock.advance(0.25)  # the window ends: a new one opens at this hit
    fresh = run(engine, "rate_hit", key="ip", limit=3, window=60)
    assert fresh == {"allowed": True, "remaining": 2, "reset": T0 + 120}
    assert engine.drain_changes() == []  # counters are not journaled


@pytest.mark.parametrize(
    "args",
    [
        {"key": "k", "limit": 0, "window": 1},
        {"key": "k", "limit": True, "window": 1},
        {"key": "k", "limit": 1.5, "window": 1},
        {"key": "k", "limit": 1, "window": 0},
        {"key": "k", "limit": 1},
        {"limit": 1, "window": 1},
        {"key": "k", "limit": 1, "window": 1, "peek": "k"},
        {"key": "k", "limit": 1, "window": 1, "peek": [1]},
    ],
)
def test_rate_hit_argument_errors(engine: Engine, args: dict[str, Any]) -> None:
    fail(engine, BadRequest, "rate_hit", **args)
    # A refused call does not count: the next hit still has the whole limit.
    assert run(engine, "rate_hit", key="k", limit=1, window=1)["allowed"] is True


def test_rate_hit_peeks_at_keys_in_the_same_command(engine: Engine, clock: FakeClock) -> None:
    run(engine, "kv_set", key="revoked:s1", value=1.5)
    run(engine, "kv_set", key="short", value="x", ttl=10)
    clock.advance(11)  # "short" has expired: peeked as absent, like kv_get_many
    hit = run(engine, "rate_hit", key="u", limit=2, window=60, peek=["revoked:s1", "short", "no"])
    assert hit == {"allowed": True, "remaining": 1, "reset": T0 + 71, "peek": [1.5, None, None]}
    run(engine, "rate_hit", key="u", limit=2, window=60)  # the last hit allowed
    refused = run(engine, "rate_hit", key="u", limit=2, window=60, peek=["revoked:s1"])
    assert (refused["allowed"], refused["peek"]) == (False, [1.5])  # read either way
    plain = run(engine, "rate_hit", key="v", limit=2, window=60)
    assert "peek" not in plain


def test_rate_hit_refunds_one_hit_of_another_key_first(engine: Engine, clock: FakeClock) -> None:
    run(engine, "rate_hit", key="user", limit=3, window=60)
    run(engine, "rate_hit", key="user", limit=3, window=60)
    hit = run(engine, "rate_hit", key="ip", limit=3, window=60, refund="user")
    assert hit["remaining"] == 2  # the ip's own hit counts
    assert run(engine, "rate_hit", key="user", limit=3, window=60)["remaining"] == 1  # 2-1+1
    run(engine, "rate_hit", key="ip", limit=3, window=60, refund="nobody")  # nothing to refund
    clock.advance(61)  # a refund never reaches into a closed window or below zero
    run(engine, "rate_hit", key="ip", limit=3, window=60, refund="user")
    assert run(engine, "rate_hit", key="user", limit=3, window=60)["remaining"] == 2
    fail(engine, BadRequest, "rate_hit", key="k", limit=1, window=1, refund=5)


def test_the_writes_refused_at_the_memory_limit_are_the_ones_that_add_data() -> None:
    assert Engine.GROWING_COMMANDS < Engine.WRITE_COMMANDS
    assert {"insert", "patch", "replace", "batch", "create_table"} <= Engine.GROWING_COMMANDS
    # Deletes make room; sessions and revocations must keep working at the limit.
    for allowed in ("delete", "delete_where", "drop_index", "kv_set", "kv_delete"):
        assert allowed not in Engine.GROWING_COMMANDS


# -- stats ------------------------------------------------------------------------------------


def test_stats(shop: Engine, clock: FakeClock) -> None:
    insert(shop, "users", email="a@x")
    fail(shop, NotFound, "get", table="users", id="x")
    clock.advance(12.5)
    stats = shop.stats()
    assert stats["tables"]["users"]["rows"] == 1 and stats["tables"]["orders"]["rows"] == 0
    assert stats["tables"]["users"]["indexes"] == [
        {"field": "email", "unique": True, "casefold": True}
    ]
    assert (
        stats["ops"]["insert"] == 1
        and stats["ops"]["get"] == 1
        and stats["ops"]["create_table"] == 2
    )
    assert stats["uptime_s"] == 12.5
    assert isinstance(stats["memory_bytes"], int) and stats["memory_bytes"] > 1_000_000
    assert run(shop, "stats")["ops"]["stats"] == 1
    fail(shop, BadRequest, "stats", verbose=True)


# -- journal: drain_changes / apply_change ------------------------------------------------------


def test_replaying_the_journal_rebuilds_the_same_state(engine: Engine, clock: FakeClock) -> None:
    engine.execute(
        "create_table",
        {
            "table": "users",
            "indexes": [{"field": "email", "unique": True, "casefold": True}],
            "hidden": ["password_hash"],
        },
    )
    engine.execute(
        "create_table",
        {"table": "orders", "foreign_keys": [{"field": "user_id", "table": "users"}]},
    )
    engine.execute(
        "create_table",
        {"table": "items", "foreign_keys": [{"field": "order_id", "table": "orders"}]},
    )
    users = [insert(engine, "users", email=f"{n}@x", password_hash="h") for n in range(3)]
    orders = [insert(engine, "orders", user_id=users[n % 3]["id"], n=n) for n in range(6)]
    insert(engine, "items", order_id=orders[0]["id"])
    run(engine, "patch", table="orders", id=orders[0]["id"], changes={"user_id": users[2]["id"]})
    run(engine, "delete", table="users", id=users[1]["id"], cascade=True)
    run(
        engine,
        "batch",
        ops=[
            {"op": "insert", "table": "logs", "record": {"m": 1}},
            {"op": "replace", "table": "users", "id": users[0]["id"], "record": {"email": "z@x"}},
        ],
    )
    run(engine, "create_index", table="orders", field="n")
    run(engine, "kv_set", key="k", value=[1], ttl=100)
    run(engine, "kv_set", key="gone", value=1, ttl=1)
    run(engine, "kv_set", key="d", value=1)
    run(engine, "kv_delete", key="d")
    journal = engine.drain_changes()
    clock.advance(5)
    replica = Engine(clock=clock)
    for change in journal:
        replica.apply_change(change)
    assert _same(replica, engine)
    assert replica.execute("kv_get", {"key": "k"}) == [1]
    assert replica.execute("kv_get", {"key": "gone"}) is None
    assert replica.execute("kv_get", {"key": "d"}) is None
    # the replica keeps working: constraints and timestamps continue after the replayed ones
    fail(replica, Conflict, "insert", table="users", record={"email": "Z@X"})
    fail(replica, Conflict, "delete", table="users", id=users[2]["id"])
    clock.advance(-3600)
    latest = max(r["updated_at"] for t in replica._catalog.tables.values() for r in t.rows.values())
    assert insert(replica, "users", email="new@x")["created_at"] > latest


def _same(a: Engine, b: Engine) -> bool:
    """Same tables, rows (values and order), index contents and declarations."""
    sa, sb = snapshot(a), snapshot(b)
    return {k: ([(r[0], r[2]) for r in v[0]], *v[1:]) for k, v in sa.items()} == {
        k: ([(r[0], r[2]) for r in v[0]], *v[1:]) for k, v in sb.items()
    }


def test_failed_commands_leave_no_changes(shop: Engine) -> None:
    user = insert(shop, "users", email="a@x")
    shop.drain_changes()
    for command, args in [
        ("insert", {"table": "users", "record": {"email": "A@x"}}),
        ("patch", {"table": "users", "id": user["id"], "changes": {}, "expected_version": 3}),
        ("delete", {"table": "users", "id": "nope"}),
        ("create_table", {"table": "users", "indexes": [{"field": "email"}]}),
        ("insert", {"table": "t", "record": {"x": b"no"}}),
    ]:
        with pytest.raises(StoreError):
            shop.execute(command, args)
    assert shop.drain_changes() == []
    assert shop.drain_changes() == []


def test_journal_can_be_switched_off(clock: FakeClock) -> None:
    engine = Engine(clock=clock, journal=False)
    insert(engine, "t")
    run(engine, "kv_set", key="k", value=1)
    assert engine.drain_changes() == []
    assert engine.stats()["journal"] == "off"


def test_an_undrained_journal_stops_instead_of_growing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "MAX_PENDING_CHANGES", 5)
    for _ in range(7):
        insert(engine, "t")
    assert engine.stats()["journal"] == "overflowed"
    assert engine.stats()["pending_changes"] == 0
    with pytest.raises(InternalError):
        engine.drain_changes()
    assert run(engine, "count", table="t") == 7


def test_apply_change_refuses_unknown_entries(engine: Engine) -> None:
    with pytest.raises(InternalError):
        engine.apply_change(("truncate", "t"))


# -- no input ever escapes as anything but a StoreError -----------------------------------------

# word lists kept compact on purpose (a list literal would take one line per word)
WIRE_WORDS = "users orders id email eq in asc desc insert user_id".split()  # noqa: SIM905
MAP_KEYS = "table id record changes where sort limit offset op field ops key value ttl cursor as"
ARG_NAMES = (
    "table id ids record changes where sort offset limit include_hidden expected_version cascade "
    "ops left right left_field right_field group_by metrics cursor key keys value ttl nx window "
    "indexes foreign_keys hidden field unique casefold"
)
wire = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=True)
    | st.text(max_size=3)
    | st.sampled_from(WIRE_WORDS)
    | st.decimals(allow_nan=True)
    | st.binary(max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(MAP_KEYS.split()), inner, max_size=4)
    ),
    max_leaves=8,
)
arg_names = st.sampled_from(ARG_NAMES.split())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(Engine.COMMANDS)), st.dictionaries(arg_names, wire, max_size=5))
def test_random_arguments_only_ever_raise_store_errors(command: str, args: dict[str, Any]) -> None:
    engine = Engine(clock=FakeClock())
    engine.execute(
        "create_table", {"table": "users", "indexes": [{"field": "email", "unique": True}]}
    )
    engine.execute("insert", {"table": "users", "record": {"id": "id", "email": "e"}})
    if "table" not in args and command not in ("batch", "join"):
        args = {**args, "table": "users"}
    with contextlib.suppress(StoreError):
        engine.execute(command, args)
    assert engine.execute("count", {"table": "users"}) >= 0


def test_kv_get_many_returns_values_in_key_order_and_none_for_missing():
    from storeserver.engine import Engine

    now = [1000.0]
    engine = Engine(clock=lambda: now[0])
    engine.execute("kv_set", {"key": "a", "value": 1})
    engine.execute("kv_set", {"key": "b", "value": {"x": 2}, "ttl": 5})
    assert engine.execute("kv_get_many", {"keys": ["b", "zz", "a"]}) == [{"x": 2}, None, 1]
    now[0] += 6  # b expired
    assert engine.execute("kv_get_many", {"keys": ["a", "b"]}) == [1, None]


def test_kv_get_many_rejects_bad_arguments():
    import pytest

    from storeserver.engine import Engine
    from storeserver.errors import BadRequest, LimitExceeded

    engine = Engine()
    for bad in ({"keys": "a"}, {"keys": [1]}, {}):
        with pytest.raises(BadRequest):
            engine.execute("kv_get_many", bad)
    # As get_many's ids (QA: a BAD_REQUEST saying "at most max_in keys", no number, no max).
    over = ["a"] * 1001
    hit = {"key": "k", "limit": 1, "window": 1}
    for command, args, arg in (
        ("kv_get_many", {"keys": over}, "keys"),
        ("rate_hit", {**hit, "peek": over}, "peek"),
    ):
        with pytest.raises(LimitExceeded) as info:
            engine.execute(command, args)
        assert "at most 1000 keys" in info.value.message
        assert info.value.details == {"arg": arg, "max": 1000}


def test_iter_state_replays_into_an_equal_engine():
    from decimal import Decimal

    from storeserver.engine import Engine

    source = Engine()
    source.execute(
        "create_table",
        {"table": "u", "indexes": [{"field": "e", "unique": True}], "hidden": ["secret"]},
    )
    source.execute("create_table", {"table": "o", "foreign_keys": [{"field": "uid", "table": "u"}]})
    user = source.execute("insert", {"table": "u", "record": {"e": "x", "secret": "s"}})
    source.execute("insert", {"table": "o", "record": {"uid": user["id"], "p": Decimal("1.10")}})
    source.execute("kv_set", {"key": "k", "value": [1, 2]})
    copy = Engine()
    for change in source.iter_state():
        copy.apply_change(change)
    for table in ("u", "o"):
        args = {"table": table, "include_hidden": True}
        assert copy.execute("find", args) == source.execute("find", args)
    assert copy.execute("kv_get", {"key": "k"}) == [1, 2]
    assert copy.stats()["tables"] == source.stats()["tables"]


def test_entries_after_a_restart_with_the_clock_behind_come_after_the_replayed_ones() -> None:
    """QA: a delete's audit entry is newer than every record left; restored on a host whose
    clock is 5 s behind it, the next write was stamped before it, and ``since`` (which stops at
    the first older entry) lost the delete."""
    clock = FakeClock(T0)
    first = Engine(clock=clock)
    run(first, "insert", table="t", record={"id": "a"})
    clock.now += 10
    run(first, "delete", table="t", id="a")
    second = Engine(clock=FakeClock(T0 + 5))
    for change in first.iter_state():
        second.apply_change(change)
    run(second, "insert", table="t", record={"id": "b"})
    stamps = [entry["at"] for entry in run(second, "audit_list")["items"]]
    assert len(stamps) == 3 and len(set(stamps)) == 3
    (deleted_at,) = [e["at"] for e in run(first, "audit_list")["items"] if e["op"] == "delete"]
    since = run(second, "audit_list", since=deleted_at)["items"]
    assert [(entry["op"], entry["record_id"]) for entry in since] == [
        ("insert", "b"),
        ("delete", "a"),
    ]


def test_replayed_records_share_strings_like_live_ones():
    """A store loaded from its log must not be bigger than the one that wrote it."""
    from storeserver.engine import Engine
    from storeserver.protocol import pack_value, unpack_value

    live = Engine()
    live.execute("create_table", {"table": "u"})
    live.execute("create_table", {"table": "o", "foreign_keys": [{"field": "uid", "table": "u"}]})
    user = live.execute("insert", {"table": "u", "record": {"name": "ann"}})
    live.execute("insert", {"table": "o", "record": {"uid": user["id"], "status": "new"}})
    live.execute("insert", {"table": "o", "record": {"uid": user["id"], "status": "new"}})
    loaded = Engine()
    for change in live.iter_state():  # through msgpack, as the log and snapshot files are
        loaded.apply_change(tuple(unpack_value(pack_value(list(change)))))
    u = loaded.execute("get", {"table": "u", "id": user["id"]})
    first, second = loaded.execute("find", {"table": "o"})["items"]
    assert first["uid"] is u["id"]  # the foreign key shares the user's id string
    assert first["status"] is second["status"]  # short values interned
    assert first["updated_at"] is first["created_at"]
    assert loaded.execute("find", {"table": "o"}) == live.execute("find", {"table": "o"})


def test_scan_with_an_indexed_where_skips_rows_that_stopped_matching() -> None:
    """A scan reads rows calls after it opened: the index-served part of its filter is tested
    again on each row, so a row that stopped matching is skipped, as without the index."""

    def scan_after_close(indexed: bool) -> list[tuple[str, str]]:
        engine = Engine(journal=False)
        indexes = [{"field": "status"}] if indexed else []
        engine.execute("create_table", {"table": "t", "indexes": indexes})
        for i in range(5):
            engine.execute("insert", {"table": "t", "record": {"id": f"r{i}", "status": "open"}})
        page = engine.execute(
            "scan", {"table": "t", "where": [["status", "eq", "open"]], "limit": 2}
        )
        engine.execute("patch", {"table": "t", "id": "r3", "changes": {"status": "closed"}})
        rest = engine.execute("scan", {"cursor": page["cursor"], "limit": 10})
        return [(r["id"], r["status"]) for r in rest["items"]]

    assert scan_after_close(indexed=False) == [("r2", "open"), ("r4", "open")]
    assert scan_after_close(indexed=True) == [("r2", "open"), ("r4", "open")]


def test_keys_and_windows_ending_together_are_swept_a_bounded_number_per_call(
    engine: Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of keys (logins) or rate windows (new clients) ends at one instant; one call
    removes at most SWEEP_MAX of them (200k at once held the store ~0.3 s), and the ended
    ones left are never seen meanwhile."""
    monkeypatch.setattr("storeserver.keyvalue.SWEEP_MAX", 3)
    monkeypatch.setattr("storeserver.ratelimit.SWEEP_MAX", 3)
    for n in range(10):
        run(engine, "kv_set", key=f"k{n}", value=n, ttl=5)
        run(engine, "rate_hit", key=f"ip{n}", limit=1, window=5)
    clock.advance(5)
    run(engine, "kv_set", key="new", value=1)  # sweeps 3 of the 10 ended keys
    run(engine, "rate_hit", key="other", limit=1, window=5)  # and 3 of the 10 windows
    stats = run(engine, "stats")
    assert (stats["kv_keys"], stats["rate_keys"]) == (1 + 7, 1 + 7)
    assert [run(engine, "kv_get", key=f"k{n}") for n in range(10)] == [None] * 10
    hit = run(engine, "rate_hit", key="ip9", limit=1, window=5)  # a new window, not the old
    assert hit["allowed"] is True and hit["reset"] == clock.now + 5
    for _ in range(5):
        run(engine, "kv_set", key="new", value=1)
        run(engine, "rate_hit", key="other", limit=10, window=5)
    stats = run(engine, "stats")
    assert (stats["kv_keys"], stats["rate_keys"]) == (1, 2)


# -- versions of a record created again under a deleted id ------------------------------------


def test_an_id_created_again_starts_above_every_deleted_version(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "a", "n": 0})
    for n in (1, 2):
        run(engine, "patch", table="t", id="a", changes={"n": n})
    run(engine, "delete", table="t", id="a")
    again = run(engine, "insert", table="t", record={"id": "a", "n": 9})
    # version 3 was the deleted record's: no ETag (W/"3") or If-Match of it fits the new one
    assert again["version"] == 4
    fail(engine, VersionMismatch, "patch", table="t", id="a", changes={}, expected_version=3)
    assert insert(engine, "t")["version"] == 1  # a generated id is new: it starts at 1
    # an upsert that creates, and a batch insert, take the same floor
    upserted = run(engine, "insert", table="t", record={"id": "b"}, upsert=True)
    assert upserted["version"] == 4
    batch = run(engine, "batch", ops=[{"op": "insert", "table": "t", "record": {"id": "c"}}])
    assert batch["results"][0]["version"] == 4


def test_a_failed_batch_leaves_the_version_floor_as_it_was(engine: Engine) -> None:
    run(engine, "insert", table="t", record={"id": "a"})
    run(engine, "patch", table="t", id="a", changes={"n": 1})
    ops = [
        {"op": "delete", "table": "t", "id": "a"},
        {"op": "delete", "table": "t", "id": "missing"},
    ]
    fail(engine, NotFound, "batch", ops=ops)
    assert run(engine, "insert", table="t", record={"id": "b"})["version"] == 1


def test_the_version_floor_survives_a_snapshot_and_a_replay(
    engine: Engine, clock: FakeClock
) -> None:
    run(engine, "insert", table="t", record={"id": "a"})
    run(engine, "patch", table="t", id="a", changes={"n": 1})
    run(engine, "delete", table="t", id="a")
    journal = engine.drain_changes()
    for entries in (list(engine.iter_state()), journal):
        replica = Engine(clock=clock)
        for change in entries:
            replica.apply_change(change)
        assert run(replica, "insert", table="t", record={"id": "a"})["version"] == 3
    # a later spec entry without the floor (an index created after the snapshot) keeps it
    replica = Engine(clock=clock)
    for change in [*engine.iter_state(), ("table", "t", {"indexes": [{"field": "n"}]})]:
        replica.apply_change(change)
    assert run(replica, "insert", table="t", record={"id": "a"})["version"] == 3
    # the floor is the store's own: a client cannot declare it
    fail(engine, BadRequest, "create_table", table="u", version_floor=7)


# -- keep: rows a table must keep (users: the last admin) -------------------------------------


@pytest.fixture
def staff(engine: Engine) -> Engine:
    engine.execute(
        "create_table",
        {"table": "people", "keep": [{"field": "role", "value": "admin", "at_least": 1}]},
    )
    engine.execute(
        "create_table",
        {"table": "notes", "foreign_keys": [{"field": "person", "table": "people"}]},
    )
    run(engine, "insert", table="people", record={"id": "a", "role": "admin"})
    run(engine, "insert", table="people", record={"id": "b", "role": "admin"})
    run(engine, "insert", table="people", record={"id": "u", "role": "user"})
    run(engine, "insert", table="notes", record={"person": "a"})
    return engine


def test_keep_refuses_the_write_that_removes_the_last_admin(staff: Engine) -> None:
    run(staff, "patch", table="people", id="b", changes={"role": "user"})  # one admin left
    refused = fail(staff, Conflict, "patch", table="people", id="a", changes={"role": "user"})
    assert refused.details == {"reason": "keep", "table": "people", "field": "role", "id": "a"}
    fail(staff, Conflict, "replace", table="people", id="a", record={"role": None})
    fail(staff, Conflict, "delete", table="people", id="a", cascade=True)
    # refused before anything was removed: the cascade's dependants are still there
    assert run(staff, "count", table="notes") == 1
    by_filter = {"table": "people", "where": [["role", "eq", "admin"]], "changes": {"role": "x"}}
    fail(staff, Conflict, "update_where", **by_filter)
    fail(staff, Conflict, "delete_where", table="people", where=[["id", "eq", "a"]], cascade=True)
    assert run(staff, "get", table="people", id="a")["role"] == "admin"
    assert run(staff, "count", table="notes") == 1
    # other changes to the last admin, and to everyone else, go on
    run(staff, "patch", table="people", id="a", changes={"name": "Ada"})
    run(staff, "delete", table="people", id="u")


def test_a_cascade_refused_by_a_dependants_keep_removes_nothing(engine: Engine) -> None:
    """Review: the second admin among the dependants was refused after the first was gone,
    and the first stayed deleted (and unjournaled, so back after a crash)."""
    run(engine, "insert", table="teams", record={"id": "t1"})
    keep = [{"field": "role", "value": "admin", "at_least": 1}]
    foreign = [{"field": "team", "table": "teams"}]
    run(engine, "create_table", table="members", foreign_keys=foreign, keep=keep)
    for n in (1, 2):
        run(
            engine, "insert", table="members", record={"id": f"m{n}", "team": "t1", "role": "admin"}
        )
    engine.drain_changes()
    fail(engine, Conflict, "delete", table="teams", id="t1", cascade=True)
    assert run(engine, "count", table="members") == 2
    assert run(engine, "count", table="teams") == 1
    assert [c for c in engine.drain_changes() if c[0] == "delete"] == []
    run(engine, "delete", table="members", id="m1")  # the indexes are whole again
    assert run(engine, "find", table="members", where=[["team", "eq", "t1"]])["total"] == 1


@pytest.mark.parametrize("indexed", [False, True])
def test_keep_counts_rows_equal_as_eq_has_it_with_or_without_an_index(
    engine: Engine, indexed: bool
) -> None:
    """QA: the rule compared with Python's ==, where true == 1: patching the last active=true
    row to 1 went through, and deleting the last n=1 row went through beside an n=true row
    without an index on n, and was refused with one."""
    spec = {"indexes": [{"field": "n"}]} if indexed else {}
    keep = [
        {"field": "n", "value": 1, "at_least": 1},
        {"field": "on", "value": True, "at_least": 1},
    ]
    run(engine, "create_table", table="t", keep=keep, **spec)
    run(engine, "insert", table="t", record={"id": "a", "n": 1, "on": True})
    run(engine, "insert", table="t", record={"id": "b", "n": True, "on": 1})
    fail(engine, Conflict, "patch", table="t", id="a", changes={"on": 1})
    fail(engine, Conflict, "delete", table="t", id="a")
    run(engine, "insert", table="t", record={"id": "c", "n": 1.0, "on": True})  # 1.0 eq 1
    run(engine, "patch", table="t", id="a", changes={"n": True, "on": False})
    assert run(engine, "count", table="t", where=[["n", "eq", 1]]) == 1
    # A rule on n = true is another rule, declared beside the one on n = 1 (review: dropped).
    again = [{"field": "n", "value": True, "at_least": 1}]
    assert run(engine, "create_table", table="t", keep=again) == {"created": False}
    run(engine, "delete", table="t", id="b")  # a still holds n = true
    fail(engine, Conflict, "delete", table="t", id="a")  # the last one


def test_keep_counts_the_batch_as_it_goes(staff: Engine) -> None:
    """Promote first, then demote: allowed; demoting both admins in one batch: refused whole."""
    demote_both = [
        {"op": "patch", "table": "people", "id": i, "changes": {"role": "user"}} for i in "ab"
    ]
    fail(staff, Conflict, "batch", ops=demote_both)
    assert [run(staff, "get", table="people", id=i)["role"] for i in "ab"] == ["admin"] * 2
    handover = [
        {"op": "patch", "table": "people", "id": "u", "changes": {"role": "admin"}},
        *demote_both,
    ]
    run(staff, "batch", ops=handover)
    assert run(staff, "get", table="people", id="u")["role"] == "admin"


def test_keep_is_declared_validated_and_kept_in_snapshots(staff: Engine, clock: FakeClock) -> None:
    keep = [{"field": "role", "value": "admin", "at_least": 1}]
    assert run(staff, "create_table", table="people", keep=keep) == {"created": False}
    assert staff._catalog.tables["people"].spec()["keep"] == keep
    for bad in (
        [{"field": "role", "value": "admin"}],
        [{"field": "role", "value": ["admin"], "at_least": 1}],
        [{"field": "role", "value": "admin", "at_least": 0}],
        [{"field": "id", "value": "x", "at_least": 1}],
        "role",
    ):
        fail(staff, BadRequest, "create_table", table="t2", keep=bad)
    replica = Engine(clock=clock)
    for change in staff.iter_state():
        replica.apply_change(change)
    run(replica, "patch", table="people", id="b", changes={"role": "user"})
    fail(replica, Conflict, "delete", table="people", id="a")


def test_replayed_audit_entries_share_strings_like_live_ones(engine: Engine, clock: FakeClock):
    """Decoded as they come, each entry's strings were new objects: 100,000 entries took
    ~68 MB more after a restart than before it."""
    run(engine, "insert", table="t", record={"id": "r1", "colour": "red"})
    run(engine, "patch", table="t", id="r1", changes={"colour": "blue"})
    journal = engine.drain_changes()
    for source in (list(engine.iter_state()), journal):  # a snapshot, a log
        replica = Engine(clock=clock)
        for change in source:  # through msgpack, as from the files: new string objects
            replica.apply_change(tuple(unpack_value(pack_value(list(change)))))
        entries = list(replica.audit.entries)
        assert [e[6] for e in entries] == ["insert", "patch"]
        table = replica._catalog.tables["t"]
        stored = table.rows["r1"]
        assert all(e[7] is stored["id"] and e[5] is table.name for e in entries)
        assert entries[-1][1] is stored["updated_at"]
        assert entries[0][9] == ("id", "colour") and entries[0][9][1] is sys.intern("colour")


def test_audit_entries_share_their_callers_names_and_the_records_id(
    engine: Engine, clock: FakeClock
):
    """Soak QA: ~650 bytes an entry, each holding its own copy of the caller's user id and
    role (strings decoded per request), of the patched record's id and of its field names."""

    def actor() -> dict[str, str]:  # new string objects each time, as decoded per request
        return {"user_id": "".join(["u-", "42"]), "role": "".join(["ad", "min"])}

    for n in range(3):
        record = {"id": f"r{n}", "colour": "red", "size": n}
        engine.execute("insert", {"table": "t", "record": record}, actor=actor())
    engine.execute("patch", {"table": "t", "id": "".join(["r", "1"]), "changes": {"size": 9}})
    entries = list(engine.audit.entries)
    inserts = [e for e in entries if e[6] == "insert"]
    assert len({id(e[2]) for e in inserts}) == 1 and inserts[0][2] == "u-42"
    assert len({id(e[3]) for e in inserts}) == 1 and inserts[0][3] == "admin"
    assert len({id(e[9]) for e in inserts}) == 1  # one tuple of names for the three
    patched = entries[-1]
    assert patched[6] == "patch" and patched[7] is engine._catalog.tables["t"].rows["r1"]["id"]

    replica = Engine(clock=clock)
    for change in engine.iter_state():  # through msgpack, as from a snapshot
        replica.apply_change(tuple(unpack_value(pack_value(list(change)))))
    again = [e for e in replica.audit.entries if e[6] == "insert"]
    assert len({id(e[2]) for e in again}) == 1 and len({id(e[9]) for e in again}) == 1


def test_audit_name_sets_are_shared_after_the_first_thousand_too(clock: FakeClock) -> None:
    """Review: the first SHARED_NAME_SETS sets were kept for good and later ones never
    shared (nor the first ones' strings let go)."""
    log = AuditLog(clock)
    for n in range(SHARED_NAME_SETS + 5):
        log.add("t", "patch", "r", (f"field{n}",), 1)
    log.add("t", "patch", "r", ["late", "set"], 1)  # a new tuple made of each
    log.add("t", "patch", "r", ["late", "set"], 1)
    log.commit(None)
    *_, first, second = log.entries
    assert first[9] is second[9]
    assert len(log._name_sets) <= SHARED_NAME_SETS
