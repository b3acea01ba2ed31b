"""Generic tables. ``users`` and ``orders`` are routed to their own services, so a write through
``/data/users`` is validated and hashed exactly like one through ``/users``."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.errors import ApiError
from api.filters import (
    Loc,
    and_where,
    check_group_field,
    check_metric,
    parse_body_sort,
    parse_filter_tree,
    parse_projection,
    text_problem,
    tree_error,
)
from api.queries import Fields, FieldType, ListQuery, Page
from api.schemas.orders import OrderCreate, OrderUpdate
from api.schemas.query import AggregateBody, QueryBody
from api.schemas.users import UserCreate, UserUpdate
from api.services import orders, users
from api.services.batches import check_refs, run_batch
from api.services.versions import expected_version, with_version
from api.store import Store
from storeserver import records as store_records

Record = dict[str, Any]
IfMatch = frozenset[int] | None
M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 32
# Client-chosen ids must be usable as one URL path segment.
RECORD_ID = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
# /data/{table}/schema, /indexes and /count are the table's own: a record with such an id
# could never be read (GET answers the sub-resource), so none is created. The store refuses
# them too, for the ids it resolves from a batch's $ref.
RESERVED_IDS = store_records.RESERVED_IDS
_INT64 = range(-(2**63), 2**63)
DATA: Loc = ("body", "data")


@dataclass(frozen=True)
class TypedTable:
    """How a typed resource plugs into the generic routes, bulk writes and transactions.

    ``new_record``, ``replace_changes`` and ``update_changes`` validate a body (errors located
    under the given location) and give what the store keeps (passwords hashed).
    """

    fields: Fields
    to_public: Callable[[Record], Record]
    create: Callable[[Store, Record], Awaitable[Record]]
    replace: Callable[[Store, str, Record, IfMatch], Awaitable[Record]]
    update: Callable[[Store, str, Record, IfMatch], Awaitable[Record]]
    new_record: Callable[[Record, Loc], Coroutine[Any, Any, Record]]
    replace_changes: Callable[[Record, Loc], Awaitable[Record]]
    update_changes: Callable[[Record, Loc], Awaitable[Record]]


def validate_body(model: type[M], data: Record, loc: Loc = DATA) -> M:
    """Validate ``data`` as ``model``; errors are located under ``loc`` (``body.data``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": (*loc, *error["loc"])} for error in errors]
        ) from None


async def _order_record(data: Record, loc: Loc) -> Record:
    payload = validate_body(OrderCreate, data, loc)  # /data and /transactions: admins only
    return orders.new_record(payload, payload.order_date)


async def _order_changes(data: Record, loc: Loc) -> Record:
    return orders.changes_of(validate_body(OrderCreate, data, loc))


async def _order_update(data: Record, loc: Loc) -> Record:
    return orders.changes_of(validate_body(OrderUpdate, data, loc))


async def _replace_user(store: Store, user_id: str, data: Record, if_match: IfMatch) -> Record:
    users.refuse_own_password_change(user_id, (*DATA, "password"))  # a replace sets one
    return await users.replace_user(store, user_id, validate_body(UserCreate, data), if_match)


async def _update_user(store: Store, user_id: str, data: Record, if_match: IfMatch) -> Record:
    if "password" in data:
        users.refuse_own_password_change(user_id, (*DATA, "password"))
    return await users.update_user(store, user_id, validate_body(UserUpdate, data), if_match)


TYPED: dict[str, TypedTable] = {
    users.TABLE: TypedTable(
        fields=users.FIELDS,
        to_public=users.to_public,
        create=lambda s, d: users.create_user(s, validate_body(UserCreate, d)),
        replace=_replace_user,
        update=_update_user,
        new_record=lambda d, loc: users.new_record(validate_body(UserCreate, d, loc)),
        replace_changes=lambda d, loc: users.replace_changes(validate_body(UserCreate, d, loc)),
        update_changes=lambda d, loc: users.update_changes(validate_body(UserUpdate, d, loc)),
    ),
    orders.TABLE: TypedTable(
        fields=orders.FIELDS,
        to_public=orders.to_public,
        create=lambda s, d: orders.create_order(
            s, validate_body(OrderCreate, d), dated_by_admin=True
        ),
        replace=lambda s, i, d, m: orders.replace_order(s, i, validate_body(OrderCreate, d), m),
        update=lambda s, i, d, m: orders.update_order(s, i, validate_body(OrderUpdate, d), m),
        new_record=_order_record,
        replace_changes=_order_changes,
        update_changes=_order_update,
    ),
}


def fields_of(table: str) -> Fields | None:
    """Declared fields of a typed table; ``None`` for a generic one."""
    typed = TYPED.get(table)
    return typed.fields if typed else None


def to_public(table: str, record: Record) -> Record:
    typed = TYPED.get(table)
    return typed.to_public(record) if typed else record


async def create_record(store: Store, table: str, data: Record) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.create(store, data)
    check_generic(data)
    return await store.call("insert", {"table": table, "record": data})


async def upsert_record(store: Store, table: str, data: Record) -> Record:
    """Insert, or merge into the record with the same ``id`` (``updated_at`` after
    ``created_at`` means merged)."""
    refuse_typed_upsert(table)
    check_generic(data)
    return await store.call("insert", {"table": table, "record": data, "upsert": True})


async def create_records(
    store: Store, table: str, items: list[Record], upsert: bool
) -> list[Record]:
    """Many records in one atomic store batch; with ``upsert``, existing ids are merged into."""
    typed = TYPED.get(table)
    if upsert:
        refuse_typed_upsert(table)
    if typed:
        users.check_hash_budget(len(items) if table == users.TABLE else 0)
        builds: list[Coroutine[Any, Any, Record]] = []
        try:
            for index, item in enumerate(items):
                builds.append(typed.new_record(item, (*DATA, index)))  # validates at once
        except Exception:
            for build in builds:  # a record before the invalid one: its hashing never runs
                build.close()
            raise
        stored = list(await asyncio.gather(*builds))
    else:
        for index, item in enumerate(items):
            check_generic(item, (*DATA, index), allow_refs=True)
            check_refs(item, index, (*DATA, index))  # record i may use an earlier one's values
        stored = items
    extra = {"upsert": True} if upsert else {}
    ops = [{"op": "insert", "table": table, "record": record, **extra} for record in stored]
    results = await run_batch(store, ops, "record")
    return [to_public(table, record) for record in results]


def refuse_typed_upsert(table: str) -> None:
    if table in TYPED:
        raise ApiError(
            400,
            "BAD_REQUEST",
            f"upsert is for generic tables; {table} ids are assigned by the service",
            [{"field": "query.upsert", "message": f"not supported on {table}"}],
        )


async def read_record(store: Store, table: str, record_id: str) -> Record:
    return to_public(table, await store.call("get", {"table": table, "id": record_id}))


async def list_records(store: Store, table: str, query: ListQuery) -> tuple[list[Record], int]:
    found = await store.call("find", query.find_args(table))
    return [to_public(table, record) for record in found["items"]], int(found["total"])


async def count_records(store: Store, table: str, query: ListQuery) -> int:
    args: dict[str, Any] = {"table": table}
    if query.where:
        args["where"] = query.where
    return int(await store.call("count", args))


@dataclass(frozen=True)
class TreeQuery:
    """A parsed query body: the store's ``where`` tree, sort, page and projection."""

    page: Page
    where: Any = None
    sort: list[list[str]] | None = None
    fields: list[str] | None = None

    @classmethod
    def parse(cls, body: QueryBody, fields: Fields | None, scoped: bool = False) -> TreeQuery:
        """``scoped``: a condition will be added (``with_condition``), so the tree keeps one
        level and two nodes free for it."""
        return cls(
            Page(body.page, body.per_page),
            parse_filter_tree(body.filter, fields, reserve=int(scoped)),
            parse_body_sort(body.sort, fields),
            parse_projection(body.fields, fields),
        )

    def with_condition(self, condition: list[Any]) -> TreeQuery:
        return TreeQuery(self.page, and_where(condition, self.where), self.sort, self.fields)

    @property
    def shape(self) -> str:
        """The projection, for the page's ETag (``list_etag``)."""
        return "" if self.fields is None else "fields=" + ",".join(self.fields)

    def find_args(self, table: str, also: tuple[str, ...] = ()) -> dict[str, Any]:
        """``also``: fields read with a projection though not asked for (what an embed joins
        on), dropped again by ``project``."""
        args: dict[str, Any] = {
            "table": table,
            "offset": self.page.offset,
            "limit": self.page.per_page,
        }
        if self.where is not None:
            args["where"] = self.where
        if self.sort:
            args["sort"] = self.sort
        if self.fields is not None:
            # The version too, for the list's ETag; dropped again unless asked for. The store
            # takes one name more than a body may hold (MAX_PROJECTION) for it.
            args["fields"] = list(dict.fromkeys([*self.fields, "version", *also]))
        return args


async def query_records(
    store: Store, table: str, query: TreeQuery, also: tuple[str, ...] = ()
) -> tuple[list[Record], list[Record], int]:
    """One page: the records (projected) and those with their versions (for the ETag) and the
    ``also`` fields (``TreeQuery.find_args``)."""
    found = await store.call("find", query.find_args(table, also))
    full = [to_public(table, record) for record in found["items"]]
    return project(full, query.fields), full, int(found["total"])


async def aggregate_records(
    store: Store, table: str, body: AggregateBody, scope: list[Any] | None = None
) -> tuple[list[Record], int]:
    """One page of groups: the group fields then the metrics, sorted as asked.

    ``scope``: a condition every aggregated record must also meet (a user's own orders).
    """
    args = aggregate_args(table, body, fields_of(table), scope)
    found = await store.call("aggregate", args)
    return list(found["items"]), int(found["total"])


def aggregate_args(
    table: str, body: AggregateBody, fields: Fields | None, scope: list[Any] | None = None
) -> dict[str, Any]:
    """The store's ``aggregate`` arguments for a body, every name checked (400/422)."""
    group_by = [
        check_group_field(name, fields, ("body", "group_by", i))
        for i, name in enumerate(body.group_by)
    ]
    names: dict[str, FieldType] = {}
    for index, name in enumerate(group_by):
        if name in names:
            raise tree_error(422, "VALIDATION_ERROR", ("body", "group_by", index), (), "repeated")
        names[name] = "str"
    metrics = []
    for index, metric in enumerate(body.metrics):
        loc: Loc = ("body", "metrics", index)
        check_metric(metric.op, metric.field, fields, loc)
        if metric.name in names:
            message = f"'{metric.name}' is already a group field or metric name"
            raise tree_error(422, "VALIDATION_ERROR", (*loc, "as"), (), message)
        names[metric.name] = "str"
        spec = {"op": metric.op, "as": metric.name}
        metrics.append(spec if metric.field is None else {**spec, "field": metric.field})
    args: dict[str, Any] = {
        "table": table,
        "group_by": group_by,
        "metrics": metrics,
        "offset": (body.page - 1) * body.per_page,
        "limit": body.per_page,
    }
    where = parse_filter_tree(body.filter, fields, reserve=0 if scope is None else 1)
    if scope is not None:
        where = and_where(scope, where)
    if where is not None:
        args["where"] = where
    sort = parse_body_sort(body.sort, names)
    if sort:
        args["sort"] = sort
    return args


def project(items: list[Record], fields: list[str] | None) -> list[Record]:
    """``id`` plus ``fields`` of each item (fields missing from a record are left out)."""
    if fields is None:
        return items
    # The store has already cut nested paths (``meta.c``) down; keep their top-level maps.
    names = list(dict.fromkeys(["id", *(name.split(".", 1)[0] for name in fields)]))
    return [{name: item[name] for name in names if name in item} for item in items]


async def replace_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.replace(store, record_id, data, if_match)
    check_generic(data)
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "record": data}
    return await store.call("replace", with_version(args, version))


async def update_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.update(store, record_id, data, if_match)
    check_generic(data)
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "changes": data}
    return await store.call("patch", with_version(args, version))


async def delete_record(
    store: Store, table: str, record_id: str, if_match: IfMatch, cascade: bool
) -> None:
    if table == users.TABLE:
        await users.delete_user(store, record_id, if_match, cascade)  # ends their sessions
        return
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "cascade": cascade}
    await store.call("delete", with_version(args, version))


def check_generic(data: Record, loc: Loc = DATA, allow_refs: bool = False) -> None:
    """What JSON allows but the store cannot hold or give back (huge ints, non-finite numbers,
    deep nesting): 422 instead of a failure in the codec, an export or a JSON answer.

    Every write of free-form values (records, bulk, upserts, transactions, writes by filter,
    CSV rows) passes here; filter values have the same rules (``filters.json_value_problem``).
    """
    problems: list[dict[str, Any]] = []
    record_id = data.get("id")
    valid_id = (
        isinstance(record_id, str)
        and RECORD_ID.fullmatch(record_id)
        and record_id not in (".", "..")
    )
    if record_id is not None and not valid_id and not (allow_refs and is_ref(record_id)):
        message = "id must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ : @ - (not . or ..)"
        problems.append(_problem((*loc, "id"), message))
    elif isinstance(record_id, str) and record_id in RESERVED_IDS:
        message = f"id {record_id!r} is reserved: /data/{{table}}/{record_id} is the table's"
        problems.append(_problem((*loc, "id"), message))
    _walk(data, loc, 0, MAX_DEPTH, problems)
    if problems:
        raise RequestValidationError(problems)


def check_values(value: Any, loc: Loc, max_depth: int) -> None:
    """``check_generic``'s value rules (64-bit integers, finite numbers, at most ``max_depth``
    levels) for a body that is not a record, such as a JSON Schema."""
    problems: list[dict[str, Any]] = []
    _walk(value, loc, 0, max_depth, problems)
    if problems:
        raise RequestValidationError(problems)


def is_ref(value: Any) -> bool:
    """A transaction reference: ``{"$ref": "<earlier op index>.<dotted path>"}``."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("$ref"), str)


def _walk(
    value: Any, loc: tuple[Any, ...], depth: int, max_depth: int, problems: list[dict[str, Any]]
) -> None:
    if depth > max_depth:
        problems.append(_problem(loc, f"nesting deeper than {max_depth} levels"))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and value not in _INT64:
        problems.append(_problem(loc, "integer outside the 64-bit range"))
    elif isinstance(value, float) and not math.isfinite(value):
        # Python's json reads 1e999, Infinity and NaN; JSON answers cannot carry them back.
        problems.append(_problem(loc, "numbers must be finite"))
    elif isinstance(value, str):
        if problem := text_problem(value):
            problems.append(_problem(loc, problem))
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := text_problem(key):
                problems.append(_problem((*loc, key), problem))
            _walk(item, (*loc, key), depth + 1, max_depth, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*loc, index), depth + 1, max_depth, problems)


def _problem(loc: tuple[Any, ...], message: str) -> dict[str, Any]:
    return {"loc": loc, "msg": message, "type": "value_error"}
