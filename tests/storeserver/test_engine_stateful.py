"""Random command sequences against a trivially correct model (plain dicts, lists, cmp sorts).

Two tables: ``users`` (unique case-insensitive ``email``, hidden ``secret``) and ``orders``
(foreign key ``user_id`` -> users, hash index on ``status``). After every step the engine's
rows, versions, order and indexes must equal the model's.
"""

from __future__ import annotations

import copy
import functools
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from storeserver.engine import Engine
from storeserver.errors import StoreError
from storeserver.query import index_key
from tests.storeserver.reference import ref_cmp, ref_eq
from tests.storeserver.reference_filters import ref_leaf, ref_read

Row = dict[str, Any]

# -- the reference semantics, written from docs/STORE.md --------------------------------------


def ref_match(row: Row, field: str, op: str, arg: Any, casefold: bool = False) -> bool:
    if casefold and op in ("eq", "ne", "in"):  # users.email: equality ignores case

        def fold(v: Any) -> Any:
            return v.casefold() if isinstance(v, str) else v

        x = ref_read(row, field)
        args = arg if op == "in" else [arg]
        hit = any(ref_eq(fold(x), fold(a)) for a in args)
        return not hit if op == "ne" else hit
    return ref_leaf(row, field, op, arg)


class ModelError(Exception):
    def __init__(self, code: str, reason: str | None = None) -> None:
        super().__init__(code)
        self.code, self.reason = code, reason


HIDDEN = {"users": {"secret"}, "orders": set()}
META = ("id", "created_at", "updated_at", "version")


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def stored_form(value: Any) -> Any:
    """What a value reads back as: types count (1, 1.0, True), map key order does not."""
    if isinstance(value, dict):
        return sorted((k, stored_form(v)) for k, v in value.items())
    if isinstance(value, list):
        return [stored_form(v) for v in value]
    return type(value).__name__, repr(value)


def same_fields(old: Row, new: Row) -> bool:
    """A write of ``new``'s client fields over ``old`` changes nothing: no new version."""
    client = {k: v for k, v in old.items() if k not in META}
    return stored_form(client) == stored_form({k: v for k, v in new.items() if k not in META})


class Model:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Row]] = {"users": {}, "orders": {}}
        # The highest version deleted per table, and the ids deleted (drawn again as new ids).
        self.floors = {"users": 0, "orders": 0}
        self.gone: dict[str, list[str]] = {"users": [], "orders": []}

    def _check(self, table: str, row: Row) -> None:
        if table == "orders":
            uid = row.get("user_id")
            if uid is not None and uid not in self.tables["users"]:
                raise ModelError("CONFLICT", "foreign_key")
        else:
            email = row.get("email")
            if email is not None:
                for other in self.tables["users"].values():
                    e = other.get("email")
                    if (
                        other["id"] != row["id"]
                        and isinstance(e, str)
                        and e.casefold() == email.casefold()
                    ):
                        raise ModelError("CONFLICT", "unique")

    def _current(self, table: str, rid: str, expected: int | None) -> Row:
        row = self.tables[table].get(rid)
        if row is None:
            raise ModelError("NOT_FOUND")
        if expected is not None and expected != row["version"]:
            raise ModelError("VERSION_MISMATCH")
        return row

    def insert(
        self, table: str, fields: Row, rid: str, created_at: str, chosen: bool = True
    ) -> Row:
        if rid in self.tables[table]:
            raise ModelError("CONFLICT", "duplicate_id")
        version = self.floors[table] + 1 if chosen else 1
        row = {"id": rid, **copy.deepcopy(fields), "version": version, "created_at": created_at}
        self._check(table, row)
        self.tables[table][rid] = row
        return row

    def replace(self, table: str, rid: str, fields: Row, expected: int | None) -> Row:
        old = self._current(table, rid, expected)
        if same_fields(old, fields):
            return old
        row = {
            "id": rid,
            **copy.deepcopy(fields),
            "version": old["version"] + 1,
            "created_at": old["created_at"],
        }
        self._check(table, row)
        self.tables[table][rid] = row
        return row

    def patch(self, table: str, rid: str, changes: Row, expected: int | None) -> Row:
        old = self._current(table, rid, expected)
        client = {k: v for k, v in old.items() if k not in META}
        merged = merge(client, changes)
        if same_fields(old, merged):
            return old
        row = {
            "id": rid,
            **merged,
            "version": old["version"] + 1,
            "created_at": old["created_at"],
        }
        self._check(table, row)
        self.tables[table][rid] = row
        return row

    def delete(self, table: str, rid: str, expected: int | None, cascade: bool) -> int:
        self._current(table, rid, expected)
        dependants = []
        if table == "users":
            dependants = [o for o, r in self.tables["orders"].items() if r.get("user_id") == rid]
        if dependants and not cascade:
            raise ModelError("CONFLICT", "dependants")
        for o in dependants:
            self._forget("orders", o)
        self._forget(table, rid)
        return len(dependants)

    def _forget(self, table: str, rid: str) -> None:
        row = self.tables[table].pop(rid)
        self.floors[table] = max(self.floors[table], row["version"])
        self.gone[table].append(rid)

    def find(
        self,
        table: str,
        where: list[Any],
        sort: list[Any],
        offset: int,
        limit: int,
        include_hidden: bool,
    ) -> tuple[list[Row], int]:
        fields = [c[0] for c in where] + [s[0] for s in sort]
        if not include_hidden and any(f.split(".")[0] in HIDDEN[table] for f in fields):
            raise ModelError("BAD_REQUEST")
        rows = [
            r
            for r in self.tables[table].values()
            if all(ref_match(r, *c, casefold=(table, c[0]) == ("users", "email")) for c in where)
        ]

        def cmp(a: Row, b: Row) -> int:
            for field, direction in sort:
                c = ref_cmp(ref_read(a, field), ref_read(b, field))
                if c:
                    return -c if direction == "desc" else c
            return 0

        rows = sorted(rows, key=functools.cmp_to_key(cmp))
        page = rows[offset : offset + limit]
        if not include_hidden:
            page = [{k: v for k, v in r.items() if k not in HIDDEN[table]} for r in page]
        return page, len(rows)


# -- strategies -------------------------------------------------------------------------------

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.0, 2.0]),
    st.sampled_from([Decimal("0.5"), Decimal("2"), Decimal("-1.25")]),
    st.sampled_from(["", "a", "B", "ab", "new"]),
)
emails = st.sampled_from([None, "a@x", "A@X", "b@x", "B@x", "c@x", "d@x", "e@x", "f@x", None])
statuses = st.sampled_from(["new", "paid", "void", None, 1])
tags = st.lists(st.sampled_from(["a", "b", 1, Decimal("1")]), max_size=3)
user_fields = st.fixed_dictionaries(
    {"email": emails}, optional={"age": scalar, "secret": st.sampled_from(["s1", "s2", "x"])}
)
FIELDS = {
    "users": ["email", "age", "secret", "id", "created_at"],
    "orders": ["status", "amount", "tags", "meta.p", "meta", "user_id", "id"],
}
OPS = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains"]


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_700_000_000.0
        self.engine = Engine(clock=lambda: self.now, max_limit=20, max_in=4)
        self.engine.execute(
            "create_table",
            {
                "table": "users",
                "indexes": [{"field": "email", "unique": True, "casefold": True}],
                "hidden": ["secret"],
            },
        )
        self.engine.execute(
            "create_table",
            {
                "table": "orders",
                "indexes": [{"field": "status"}],
                "foreign_keys": [{"field": "user_id", "table": "users"}],
            },
        )
        self.engine.drain_changes()
        self.model = Model()
        self.counter = 0

    # -- helpers --------------------------------------------------------------------------

    def order_fields(self, data: st.DataObject) -> Row:
        known = list(self.model.tables["users"])
        return data.draw(
            st.fixed_dictionaries(
                {"user_id": st.sampled_from([*known, *known, "ghost", None])},
                optional={
                    "status": statuses,
                    "amount": scalar,
                    "tags": tags,
                    "meta": st.fixed_dictionaries({}, optional={"p": scalar, "q": scalar}),
                },
            )
        )

    def fields(self, data: st.DataObject, table: str) -> Row:
        return data.draw(user_fields) if table == "users" else self.order_fields(data)

    def new_id(self, data: st.DataObject, table: str) -> str:
        """Mostly a fresh id, sometimes one in use (a duplicate) or one deleted before."""
        self.counter += 1
        fresh = f"{table[0]}{self.counter}"
        used = [*self.model.tables[table], *self.model.gone[table][-3:]]
        return data.draw(st.sampled_from([fresh, fresh, fresh, *used]))

    def target(self, data: st.DataObject, table: str) -> str:
        known = list(self.model.tables[table])
        return data.draw(st.sampled_from([*known, *known, *known, "missing"]))

    def version(self, data: st.DataObject, table: str, rid: str) -> int | None:
        row = self.model.tables[table].get(rid)
        current = row["version"] if row else 1
        return data.draw(st.sampled_from([None, None, None, current, current, current + 1]))

    def changes(self, data: st.DataObject, table: str) -> Row:
        if table == "users":
            return data.draw(
                st.fixed_dictionaries(
                    {},
                    optional={"email": emails, "age": scalar, "secret": st.none() | st.just("s3")},
                )
            )
        known = list(self.model.tables["users"])
        return data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "user_id": st.sampled_from([*known, *known, "ghost", None]),
                    "status": statuses,
                    "meta": st.none()
                    | st.fixed_dictionaries({}, optional={"p": scalar, "q": st.none()}),
                    "tags": tags,
                    "version": st.just(99),
                },
            )
        )

    def expect(self, model_call: Any, engine_call: Any) -> Any:
        """Run both; they must succeed together or fail with the same code and reason."""
        try:
            expected = model_call()
        except ModelError as exc:
            try:
                engine_call()
            except StoreError as err:
                assert err.code == exc.code, (err, exc.code)
                if exc.reason:
                    assert err.details.get("reason") == exc.reason
                return None
            raise AssertionError(f"engine succeeded, model raised {exc.code}") from None
        return expected, engine_call()

    @staticmethod
    def public(row: Row) -> Row:
        return {k: v for k, v in row.items() if k != "updated_at"}

    # -- rules ----------------------------------------------------------------------------

    @rule(data=st.data(), table=st.sampled_from(["users", "orders"]), explicit_id=st.booleans())
    def insert(self, data: st.DataObject, table: str, explicit_id: bool) -> None:
        self.now += data.draw(st.sampled_from([0, 0.5]))  # a still clock must not break order
        fields = self.fields(data, table)
        record = dict(fields)
        rid = "generated"
        if explicit_id:
            rid = record["id"] = self.new_id(data, table)
        try:
            copy.deepcopy(self.model).insert(table, fields, rid, "probe")
            refusal = None
        except ModelError as exc:
            refusal = exc
        try:
            stored = self.engine.execute("insert", {"table": table, "record": record})
        except StoreError as err:
            assert refusal is not None, f"engine refused an insert the model accepts: {err!r}"
            assert err.code == refusal.code and err.details.get("reason") == refusal.reason
            return
        assert refusal is None, f"engine accepted an insert the model refuses: {refusal.code}"
        assert not explicit_id or stored["id"] == rid
        row = self.model.insert(table, fields, stored["id"], stored["created_at"], explicit_id)
        self.check_result(table, stored, row)

    def check_result(self, table: str, got: Row, row: Row) -> None:
        assert self.public(got) == {k: v for k, v in row.items() if k not in HIDDEN[table]}

    @rule(data=st.data(), table=st.sampled_from(["users", "orders"]))
    def replace(self, data: st.DataObject, table: str) -> None:
        self.now += 0.25
        rid = self.target(data, table)
        fields = self.fields(data, table)
        expected = self.version(data, table, rid)
        args = {
            "table": table,
            "id": rid,
            "record": {**fields, "version": 7},
            "expected_version": expected,
        }
        both = self.expect(
            lambda: self.model.replace(table, rid, fields, expected),
            lambda: self.engine.execute("replace", args),
        )
        if both:
            self.check_result(table, both[1], both[0])

    @rule(data=st.data(), table=st.sampled_from(["users", "orders"]))
    def patch(self, data: st.DataObject, table: str) -> None:
        rid = self.target(data, table)
        changes = self.changes(data, table)
        expected = self.version(data, table, rid)
        args = {"table": table, "id": rid, "changes": changes, "expected_version": expected}
        both = self.expect(
            lambda: self.model.patch(table, rid, changes, expected),
            lambda: self.engine.execute("patch", args),
        )
        if both:
            self.check_result(table, both[1], both[0])

    @rule(data=st.data(), table=st.sampled_from(["users", "orders"]), cascade=st.booleans())
    def delete(self, data: st.DataObject, table: str, cascade: bool) -> None:
        rid = self.target(data, table)
        expected = self.version(data, table, rid)
        args = {"table": table, "id": rid, "expected_version": expected, "cascade": cascade}
        both = self.expect(
            lambda: self.model.delete(table, rid, expected, cascade),
            lambda: self.engine.execute("delete", args),
        )
        if both:
            assert both[1] == {"id": rid, "cascaded": both[0]}

    @rule(data=st.data(), table=st.sampled_from(["users", "orders"]))
    def get(self, data: st.DataObject, table: str) -> None:
        rid = self.target(data, table)
        row = self.model.tables[table].get(rid)
        try:
            got = self.engine.execute("get", {"table": table, "id": rid})
        except StoreError as err:
            assert row is None and err.code == "NOT_FOUND"
            return
        assert row is not None
        assert self.public(got) == {k: v for k, v in row.items() if k not in HIDDEN[table]}

    @rule(
        data=st.data(),
        table=st.sampled_from(["users", "orders"]),
        offset=st.integers(0, 6),
        limit=st.integers(1, 6),
        include_hidden=st.booleans(),
    )
    def find(
        self, data: st.DataObject, table: str, offset: int, limit: int, include_hidden: bool
    ) -> None:
        fields = st.sampled_from(FIELDS[table])
        condition = st.tuples(fields, st.sampled_from(OPS), scalar | tags).map(
            lambda c: [c[0], c[1], c[2] if c[1] != "in" else [c[2], "new"]]
        )
        where = data.draw(st.lists(condition, max_size=2))
        sort = data.draw(
            st.lists(st.tuples(fields, st.sampled_from(["asc", "desc"])).map(list), max_size=2)
        )
        args = {
            "table": table,
            "where": where,
            "sort": sort,
            "offset": offset,
            "limit": limit,
            "include_hidden": include_hidden,
        }
        both = self.expect(
            lambda: self.model.find(table, where, sort, offset, limit, include_hidden),
            lambda: self.engine.execute("find", args),
        )
        if both:
            (rows, total), got = both
            assert got["total"] == total
            assert [self.public(r) for r in got["items"]] == rows
            if not any(f.split(".")[0] in HIDDEN[table] for f, *_ in where):
                assert self.engine.execute("count", {"table": table, "where": where}) == total

    @rule(data=st.data(), size=st.integers(1, 4))
    def batch(self, data: st.DataObject, size: int) -> None:
        self.now += 0.25
        probe = copy.deepcopy(self.model)
        ops, steps = [], []
        for _ in range(size):
            table = data.draw(st.sampled_from(["users", "orders"]))
            kinds = (
                ["insert", "replace", "patch", "delete"]
                if probe.tables[table]
                else ["insert"] * 3 + ["delete"]
            )
            kind_ = data.draw(st.sampled_from(kinds))
            if kind_ == "insert":
                fields = self.fields(data, table)
                rid = self.new_id(data, table)
                ops.append({"op": "insert", "table": table, "record": {**fields, "id": rid}})
                steps.append(functools.partial(probe.insert, table, fields, rid, "in-batch"))
            elif kind_ == "delete":
                rid, cascade = self.target(data, table), data.draw(st.booleans())
                ops.append({"op": "delete", "table": table, "id": rid, "cascade": cascade})
                steps.append(functools.partial(probe.delete, table, rid, None, cascade))
            else:
                rid = self.target(data, table)
                expected = self.version(data, table, rid)
                body = self.fields(data, table) if kind_ == "replace" else self.changes(data, table)
                key = "record" if kind_ == "replace" else "changes"
                ops.append(
                    {
                        "op": kind_,
                        "table": table,
                        "id": rid,
                        key: body,
                        "expected_version": expected,
                    }
                )
                steps.append(functools.partial(getattr(probe, kind_), table, rid, body, expected))
        failed_at = None
        for index, step in enumerate(steps):
            try:
                step()
            except ModelError as exc:
                failed_at = (index, exc)
                break
        before = self.engine_rows()
        self.engine.drain_changes()
        try:
            result = self.engine.execute("batch", {"ops": ops})
        except StoreError as err:
            assert failed_at is not None, f"engine refused a batch the model accepts: {err!r}"
            index, exc = failed_at
            assert (
                err.code == exc.code
                and err.details["index"] == index
                and err.details["op"] == ops[index]["op"]
            )
            assert self.engine_rows() == before
            assert self.engine.drain_changes() == []
            return
        assert failed_at is None, f"engine accepted a batch the model refuses at {failed_at}"
        assert len(result["results"]) == size
        self.engine.drain_changes()
        self.replay(ops)

    def replay(self, ops: list[Row]) -> None:
        """Apply a successful batch to the model with the engine's timestamps."""
        for op in ops:
            table = op["table"]
            if op["op"] == "insert":
                rid = op["record"]["id"]
                fields = {k: v for k, v in op["record"].items() if k != "id"}
                stamp = (
                    self.engine._catalog.tables[table].rows.get(rid, {}).get("created_at", "gone")
                )
                self.model.insert(table, fields, rid, stamp)
            elif op["op"] == "delete":
                self.model.delete(table, op["id"], None, op["cascade"])
            else:
                body = op["record"] if op["op"] == "replace" else op["changes"]
                getattr(self.model, op["op"])(table, op["id"], body, op["expected_version"])

    # -- invariants -----------------------------------------------------------------------

    def engine_rows(self) -> dict[str, list[Row]]:
        return {
            name: [dict(r) for r in table.rows.values()]
            for name, table in self.engine._catalog.tables.items()
        }

    @invariant()
    def same_rows_in_the_same_order(self) -> None:
        rows = self.engine_rows()
        assert set(rows) == {"users", "orders"}
        for name, model_rows in self.model.tables.items():
            assert [self.public(r) for r in rows[name]] == list(model_rows.values())
            stamps = [r["created_at"] for r in rows[name]]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
            assert all(r["updated_at"] >= r["created_at"] for r in rows[name])

    @invariant()
    def indexes_match_the_rows(self) -> None:
        for table in self.engine._catalog.tables.values():
            for field, index in table.hashes.items():
                expected: dict[Any, list[str]] = {}
                for rid, row in table.rows.items():
                    if row.get(field) is not None:
                        expected.setdefault(index_key(row[field]), []).append(rid)
                assert {k: list(index.ids(k)) for k in index.all_keys()} == expected
            for unique in table.uniques.values():
                owners = {}
                for rid, row in table.rows.items():
                    key = unique.key_of(row)
                    if key is not None:
                        owners[key] = rid
                assert unique.owners == owners

    def teardown(self) -> None:
        self.engine.drain_changes()


def test_engine_agrees_with_the_model() -> None:
    # run as a plain function test (not the TestCase attribute) so no unittest/asyncio
    # fixture machinery gets involved
    run_state_machine_as_test(
        EngineMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
