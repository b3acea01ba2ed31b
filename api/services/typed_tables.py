"""The typed tables (``users``, ``orders``) as the generic record code sees them.

``TYPED`` maps each typed table to its service's functions (``TypedTable``), so a write
through ``/data/users`` is validated and hashed exactly like one through ``/users``; bulk
writes and transactions use the same entries. Separate from ``api.services.records`` because
the record CRUD, the queries (``api.services.record_queries``), transactions and dumps all
look tables up here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.filters import Loc
from api.queries import Fields
from api.schemas.orders import OrderCreate, OrderUpdate
from api.schemas.users import UserCreate, UserUpdate
from api.services import orders, users
from api.services.record_values import DATA, Record
from api.store import Store

IfMatch = frozenset[int] | None
M = TypeVar("M", bound=BaseModel)
# Stands in for a users replace's email when that is the stored one (``users.sends_stored_email``):
# the other fields are validated beside it, and it is never written.
EMAIL_STAND_IN = "stored@example.com"


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


def validate_body(model: type[M], data: object, loc: Loc = DATA) -> M:
    """Validate ``data`` as ``model``; errors are located under ``loc`` (``body.data``).
    As FastAPI validates a body (``from_attributes``: the same error for one that is no
    object), so a route may validate its own body with it."""
    try:
        return model.model_validate(data, from_attributes=True)
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
    changes = await user_replace_changes(store, user_id, data, DATA)
    return await users.replace_user(store, user_id, changes, if_match)


async def _update_user(store: Store, user_id: str, data: Record, if_match: IfMatch) -> Record:
    data = await users.without_stored_email(store, user_id, data)  # sent again: no change
    payload = validate_body(UserUpdate, data)
    for field in users.SIGN_IN_FIELDS:  # your own only with current_password
        if field in data:
            users.refuse_own_password_change(user_id, (*DATA, field))
    return await users.update_user(store, user_id, payload, if_match, DATA)


async def user_replace_changes(store: Store, user_id: object, data: Record, loc: Loc) -> Record:
    """A users replace's changes (``users.replace_changes``), without its email if that is the
    stored one (``users.sends_stored_email``: no change, not checked again)."""
    if not await users.sends_stored_email(store, user_id, data):
        return await users.replace_changes(validate_body(UserCreate, data, loc), loc)
    payload = validate_body(UserCreate, {**data, "email": EMAIL_STAND_IN}, loc)
    changes = await users.replace_changes(payload, loc)
    del changes["email"]
    return changes


TYPED: dict[str, TypedTable] = {
    users.TABLE: TypedTable(
        fields=users.FIELDS,
        to_public=users.to_public,
        create=lambda s, d: users.create_user(s, validate_body(UserCreate, d), DATA),
        replace=_replace_user,
        update=_update_user,
        new_record=lambda d, loc: users.new_record(validate_body(UserCreate, d, loc), loc),
        replace_changes=lambda d, loc: users.replace_changes(
            validate_body(UserCreate, d, loc), loc
        ),
        update_changes=lambda d, loc: users.update_changes(validate_body(UserUpdate, d, loc), loc),
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
