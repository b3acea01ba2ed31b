"""Generic tables. ``users`` and ``orders`` are routed to their own services, so a write through
``/data/users`` is validated and hashed exactly like one through ``/users``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.queries import Fields, ListQuery
from api.schemas.orders import OrderCreate, OrderUpdate
from api.schemas.users import UserCreate, UserUpdate
from api.services import orders, users
from api.services.versions import expected_version, with_version
from api.store import Store

Record = dict[str, Any]
IfMatch = frozenset[int] | None
M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 32
# Client-chosen ids must be usable as one URL path segment.
RECORD_ID = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class TypedTable:
    """How a typed resource plugs into the generic routes."""

    fields: Fields
    to_public: Callable[[Record], Record]
    create: Callable[[Store, Record], Awaitable[Record]]
    replace: Callable[[Store, str, Record, IfMatch], Awaitable[Record]]
    update: Callable[[Store, str, Record, IfMatch], Awaitable[Record]]


def validate_body(model: type[M], data: Record) -> M:
    """Validate ``data`` as ``model``; errors are located under ``body.data`` like FastAPI's."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", "data", *error["loc"])} for error in errors]
        ) from None


TYPED: dict[str, TypedTable] = {
    users.TABLE: TypedTable(
        fields=users.FIELDS,
        to_public=users.to_public,
        create=lambda s, d: users.create_user(s, validate_body(UserCreate, d)),
        replace=lambda s, i, d, m: users.replace_user(s, i, validate_body(UserCreate, d), m),
        update=lambda s, i, d, m: users.update_user(s, i, validate_body(UserUpdate, d), m),
    ),
    orders.TABLE: TypedTable(
        fields=orders.FIELDS,
        to_public=orders.to_public,
        create=lambda s, d: orders.create_order(s, validate_body(OrderCreate, d)),
        replace=lambda s, i, d, m: orders.replace_order(s, i, validate_body(OrderCreate, d), m),
        update=lambda s, i, d, m: orders.update_order(s, i, validate_body(OrderUpdate, d), m),
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
    _check_generic(data)
    return await store.call("insert", {"table": table, "record": data})


async def read_record(store: Store, table: str, record_id: str) -> Record:
    return to_public(table, await store.call("get", {"table": table, "id": record_id}))


async def list_records(store: Store, table: str, query: ListQuery) -> tuple[list[Record], int]:
    found = await store.call("find", query.find_args(table))
    return [to_public(table, record) for record in found["items"]], int(found["total"])


async def replace_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.replace(store, record_id, data, if_match)
    _check_generic(data)
    version = await expected_version(store, table, record_id, if_match)
    args: dict[str, object] = {"table": table, "id": record_id, "record": data}
    return await store.call("replace", with_version(args, version))


async def update_record(
    store: Store, table: str, record_id: str, data: Record, if_match: IfMatch
) -> Record:
    typed = TYPED.get(table)
    if typed:
        return await typed.update(store, record_id, data, if_match)
    _check_generic(data)
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


def _check_generic(data: Record) -> None:
    """What JSON allows but the store cannot hold: 422 instead of a failure in the codec."""
    problems: list[dict[str, Any]] = []
    record_id = data.get("id")
    if record_id is not None and not (
        isinstance(record_id, str)
        and RECORD_ID.fullmatch(record_id)
        and record_id not in (".", "..")
    ):
        message = "id must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ : @ - (not . or ..)"
        problems.append(_problem(("id",), message))
    _walk(data, ("body", "data"), 0, problems)
    if problems:
        raise RequestValidationError(problems)


def _walk(value: Any, loc: tuple[Any, ...], depth: int, problems: list[dict[str, Any]]) -> None:
    if depth > MAX_DEPTH:
        problems.append(_problem(loc, f"nesting deeper than {MAX_DEPTH} levels"))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and value not in _INT64:
        problems.append(_problem(loc, "integer outside the 64-bit range"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(item, (*loc, key), depth + 1, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*loc, index), depth + 1, problems)


def _problem(loc: tuple[Any, ...], message: str) -> dict[str, Any]:
    if loc[:2] != ("body", "data"):
        loc = ("body", "data", *loc)
    return {"loc": loc, "msg": message, "type": "value_error"}
