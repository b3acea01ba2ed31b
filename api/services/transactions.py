"""``POST /transaction``: operations on several tables, applied by one store ``batch``.

Each operation is checked and turned into the store's form first (users and orders through
their models: validation, password hashing, order dates), then the store applies them all or
none. ``{"$ref": "<i>.<path>"}`` values are resolved by the store from earlier results; on the
typed tables only ``orders.user_id`` may be one (validated with a placeholder id, then checked
by the store's foreign key like any other). Users whose password or role changes, or who are
deleted, lose their sessions, as through ``/users``: their marks go in the same batch, so the
store applies them with the operations or not at all (a stall or a worker crash in between
cannot leave old tokens working); such an operation names its user by id, not by a
reference (the mark's key is made here, before the store resolves anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.auth.sessions import write_ending_sessions
from api.errors import ApiError
from api.filters import Loc
from api.schemas.transactions import TransactionBody, TransactionOp, ref_index
from api.schemas.users import UserUpdate
from api.services import record_values, typed_tables, users
from api.services.batches import REF_FORM, check_refs, failed_operation, invalid_at
from api.services.versions import with_version
from api.store import Store
from storeserver.errors import StoreError

# Fields of a typed table that may hold a reference: the table whose record's id it must
# name (``{"$ref": "<i>.id"}`` of an operation on that table, so it resolves to an id the
# store's foreign key checks, never to a null it would let through), and the placeholder the
# field validates as meanwhile.
REF_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "orders": {"user_id": ("users", "00000000-0000-4000-8000-000000000000")}
}
_NEEDS_ID = frozenset({"replace", "patch", "delete"})


@dataclass(frozen=True)
class Prepared:
    """An operation in the store's form; ``ends_sessions``: the user's sessions end on commit."""

    op: dict[str, Any]
    ends_sessions: bool = False


async def run_transaction(store: Store, body: TransactionBody) -> list[dict[str, Any]]:
    """Apply every operation or none; the results in order, in their public shape."""
    operations = body.operations
    users.check_hash_budget(sum(_hashes_password(item) for item in operations))
    prepared = [
        await prepare(store, index, item, operations) for index, item in enumerate(operations)
    ]
    ops = [p.op for p in prepared]
    ended = [str(p.op["id"]) for p in prepared if p.ends_sessions]
    try:
        results = (await write_ending_sessions(store, ops, ended, refs=True))["results"]
    except StoreError as exc:
        raise failed_operation(exc, ops, "operation", [item.op for item in operations]) from None
    return [
        result if item.op == "delete" else typed_tables.to_public(item.table, result)
        for item, result in zip(operations, results, strict=True)
    ]


async def prepare(
    store: Store, index: int, item: TransactionOp, operations: list[TransactionOp]
) -> Prepared:
    """Check one operation and give its store form (422 located at the operation)."""
    loc: Loc = ("body", "operations", index)
    _check_shape(item, index, loc)
    data = item.data or {}
    typed = typed_tables.TYPED.get(item.table)
    table, kind = item.table, item.op
    args: dict[str, Any] = {"op": kind, "table": table}
    if kind in _NEEDS_ID:
        args["id"] = item.id
    ends = False
    if typed is None:
        if kind in ("replace", "patch"):
            data = record_values.path_names_it(data)  # the op's id names it, as a path does
        if kind != "delete":
            record_values.check_generic(data, (*loc, "data"), allow_refs=True)
        check_refs(data, index, (*loc, "data"))
        if kind == "insert":
            args["record"] = data
            if item.upsert:
                args["upsert"] = True
        elif kind == "replace":
            args["record"] = data
        elif kind == "patch":
            args["changes"] = data
    elif kind == "insert":
        plain, refs = _split_refs(table, data, operations[:index], (*loc, "data"))
        args["record"] = {**await typed.new_record(plain, (*loc, "data")), **refs}
    elif kind in ("replace", "patch"):
        # The stored email is what this op's email is compared with, unless an op before it
        # sends one for the same user: then it may be the transaction's, not the store's.
        as_stored = table == users.TABLE and not _sends_email(item.id, operations[:index])
        if table == users.TABLE:
            if isinstance(item.id, dict) and (kind == "replace" or _SESSION_FIELDS & data.keys()):
                raise _ends_sessions_by_ref(loc)  # before the sign-in checks, which refuse it too
            data = await _check_own_sign_in(store, item, data, loc, as_stored)
        plain, refs = _split_refs(table, data, operations[:index], (*loc, "data"))
        if as_stored and kind == "replace":  # the stored email sent again: kept
            built = await typed_tables.user_replace_changes(store, item.id, plain, (*loc, "data"))
        else:
            build = typed.replace_changes if kind == "replace" else typed.update_changes
            built = await build(plain, (*loc, "data"))
        changes = {**built, **refs}
        args = {**args, "op": "patch", "changes": changes}
        ends = table == users.TABLE and (kind == "replace" or users.ends_sessions(changes))
    else:
        ends = table == users.TABLE
    if ends and isinstance(item.id, dict):
        raise _ends_sessions_by_ref(loc)
    if kind == "delete" and item.cascade:
        args["cascade"] = True
    return Prepared(with_version(args, item.expected_version), ends)


_SESSION_FIELDS = frozenset({"password", "role"})
"""A users patch sending either ends the user's sessions (any role sent: it is not read)."""


def _ends_sessions_by_ref(loc: Loc) -> ApiError:
    message = "a users operation that ends the user's sessions (a new password or role, a"
    return invalid_at((*loc, "id"), f"{message} delete) names the user by id, not by a $ref")


def _sends_email(user_id: object, earlier: list[TransactionOp]) -> bool:
    """Whether an op in ``earlier`` writes an email for the user ``user_id``."""
    return any(
        other.table == users.TABLE
        and other.op in ("replace", "patch")
        and other.id == user_id
        and "email" in (other.data or {})
        for other in earlier
    )


async def _check_own_sign_in(
    store: Store, item: TransactionOp, data: dict[str, Any], loc: Loc, as_stored: bool
) -> dict[str, Any]:
    """A users replace or patch's data, checked as ``PATCH /users/{id}`` checks it: the
    caller's own password or email changes only there, with current_password (422 here). The
    user's email sent again as stored is no change (``users.sends_stored_email``): left out of
    a patch (a replace leaves it out of its changes), and it needs no password; unless
    ``as_stored`` is false (an earlier op sends an email for the user): a change then."""
    if item.op == "patch" and as_stored:
        kept = await users.without_stored_email(store, item.id, data)
        if "email" in kept and users.is_caller(item.id):
            # Your own new address: one that is no address is refused as such, first.
            typed_tables.validate_body(UserUpdate, {"email": data["email"]}, (*loc, "data"))
        data = kept
    for field in users.SIGN_IN_FIELDS:
        if item.op == "replace" or field in data:
            users.refuse_own_password_change(item.id, (*loc, "data", field))
    return data


def _check_shape(item: TransactionOp, index: int, loc: Loc) -> None:
    kind = item.op
    if kind in _NEEDS_ID and item.id is None:
        raise invalid_at((*loc, "id"), f"'{kind}' needs an id")
    if kind == "insert" and item.id is not None:
        raise invalid_at((*loc, "id"), "an insert takes its id inside data")
    if kind != "delete" and item.data is None:
        raise invalid_at((*loc, "data"), f"'{kind}' needs data")
    if kind == "delete" and item.data is not None:
        raise invalid_at((*loc, "data"), "a delete takes no data")
    if kind == "insert" and item.expected_version is not None:
        raise invalid_at((*loc, "expected_version"), "an insert has no version to expect")
    if kind != "delete" and item.cascade:
        raise invalid_at((*loc, "cascade"), "only a delete cascades")
    if item.upsert and (kind != "insert" or item.table in typed_tables.TYPED):
        message = "upsert is for inserts into generic tables"
        raise invalid_at((*loc, "upsert"), message)
    if isinstance(item.id, dict):
        target = ref_index(item.id)
        if target is None or target >= index:
            raise invalid_at((*loc, "id"), REF_FORM)


def _split_refs(
    table: str, data: dict[str, Any], earlier: list[TransactionOp], loc: Loc
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Typed data without its references (placeholders instead), and the references."""
    allowed = REF_FIELDS.get(table, {})
    plain, refs = dict(data), {}
    for key, value in data.items():
        if record_values.is_ref(value):
            if key not in allowed:
                raise invalid_at((*loc, key), f"a reference is not allowed in {table}.{key}")
            check_refs(value, len(earlier), (*loc, key))
            target, placeholder = allowed[key]
            index = ref_index(value)  # an earlier operation's: check_refs made sure
            if index is None or value["$ref"] != f"{index}.id" or earlier[index].table != target:
                message = f"{table}.{key} may only reference the id of a {target} record"
                raise invalid_at((*loc, key, "$ref"), f'{message}: {{"$ref": "<i>.id"}}')
            plain[key], refs[key] = placeholder, value
    return plain, refs


def _hashes_password(item: TransactionOp) -> bool:
    if item.table != users.TABLE or item.op == "delete":
        return False
    return item.op in ("insert", "replace") or "password" in (item.data or {})
