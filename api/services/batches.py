"""Atomic store batches for bulk writes and transactions.

The store applies a batch all or nothing. When an operation fails, the store rolls back and
says which one (``details.index``); here that becomes an error naming the operation (its index,
op and table) with the status of the underlying failure: 404, 409, 412, 422 (a store schema),
400 (a bad reference).
"""

from __future__ import annotations

from typing import Any

from api.errors import (
    CONFLICT_CODES,
    LAST_ADMIN_MESSAGE,
    SAFE_DETAIL_KEYS,
    STORE_STATUS,
    ApiError,
    schema_error_details,
)
from api.filters import Loc
from api.schemas.transactions import ref_index
from api.store import Store
from storeserver.errors import Conflict, StoreError, ValidationFailed

# A transaction's delete takes its own ``cascade`` field (the routes: ?cascade=true).
_DEPENDANTS_HINT = ' (delete them first, or give this delete "cascade": true to delete them too)'


async def run_batch(
    store: Store,
    ops: list[dict[str, Any]],
    label: str = "operation",
    names: list[str] | None = None,
    refs: bool = True,
) -> list[Any]:
    """The results of ``ops``, applied atomically. In errors, ``label`` and the index name the
    op, and ``names`` the client's op names (a typed replace is stored as a patch).

    ``label`` is ``operation`` (a transaction: body.operations.<i>.data) or ``record`` (a bulk
    insert: body.data.<i>), which also places a schema violation's fields. ``refs``: whether the
    store resolves ``{"$ref": "<i>.<path>"}`` values; without, every value is written as sent.
    """
    results, _ = await run_batch_noting_unchanged(store, ops, label, names, refs)
    return results


async def run_batch_noting_unchanged(
    store: Store,
    ops: list[dict[str, Any]],
    label: str = "operation",
    names: list[str] | None = None,
    refs: bool = True,
) -> tuple[list[Any], frozenset[int]]:
    """``run_batch``'s results, and the indexes of the ops that changed nothing (a patch,
    replace or upsert of values stored already: its result is the record as it was)."""
    try:
        reply = await store.call("batch", {"ops": ops, "refs": refs})
    except StoreError as exc:
        raise failed_operation(exc, ops, label, names) from None
    return reply["results"], frozenset(reply.get("unchanged", ()))


def failed_operation(
    exc: StoreError, ops: list[dict[str, Any]], label: str, names: list[str] | None = None
) -> Exception:
    """The client's error for a batch that failed at one operation (others pass through)."""
    index = exc.details.get("index")
    if type(index) is not int or not 0 <= index < len(ops):
        return exc
    found = next((found for cls, found in STORE_STATUS.items() if isinstance(exc, cls)), None)
    if found is None or found[0] >= 500:
        return exc  # store unavailable, timeout, memory limit: the usual handler
    status, code = found
    detail: dict[str, Any] = {
        key: exc.details[key] for key in SAFE_DETAIL_KEYS if key in exc.details
    }
    reason = exc.message
    if isinstance(exc, Conflict):
        code = CONFLICT_CODES.get(str(detail.get("reason")), code)
        # As the single-record routes say them (QA: a transaction gave the store's wording,
        # with no hint of the way out).
        if code == "LAST_ADMIN":
            reason = LAST_ADMIN_MESSAGE
        elif code == "HAS_DEPENDANTS":
            reason += _DEPENDANTS_HINT
    name, table = names[index] if names else ops[index]["op"], ops[index]["table"]
    message = f"{label} {index} ({name} on {table}) failed: {reason}"
    if isinstance(exc, ValidationFailed):
        loc: tuple[str, ...] = ("body", "data", str(index))
        if label == "operation":
            loc = ("body", "operations", str(index), "data")
        # Each names the operation too, as every other failure's detail does (QA: a schema's
        # 422 had only the field path, and details[0].index was missing).
        named = {"index": index, "op": name, "table": table}
        return ApiError(
            status, code, message, [{**d, **named} for d in schema_error_details(exc, loc)]
        )
    detail = {**detail, "index": index, "op": name}
    detail.setdefault("table", table)
    return ApiError(status, code, message, [detail])


REF_FORM = 'a reference is {"$ref": "<earlier operation index>.<field path>"}'


def check_refs(value: Any, index: int, loc: Loc) -> None:
    """Every reference inside ``value`` names an earlier operation."""
    if isinstance(value, dict) and len(value) == 1 and "$ref" in value:
        target = ref_index(value)
        if target is None or target >= index:
            raise invalid_at((*loc, "$ref"), REF_FORM)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_refs(item, index, (*loc, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            check_refs(item, index, (*loc, position))


def invalid_at(loc: Loc, message: str) -> ApiError:
    """422 naming ``loc`` (``body.operations.3.data.user_id``)."""
    field = ".".join(str(part) for part in loc)
    return ApiError(
        422, "VALIDATION_ERROR", "Request validation failed", [{"field": field, "message": message}]
    )
