"""Table management: schemas, indexes, update/delete by filter, and dropping a table.

``users`` and ``orders`` are typed: their schema is their public model, their built-in indexes
(the unique email, the user_id behind the foreign key) stay, and their rows change only
through their services (``users`` not at all by filter: passwords, emails and sessions need
the users service; ``orders`` with ``OrderUpdate``'s validation). The tables the API declares
(``schema.SCHEMAS``: those two and ``_jobs``) are never dropped.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

from api.errors import ApiError, schema_error_path
from api.queries import ListQuery
from api.schemas.data import DataRecord
from api.schemas.orders import OrderPublic
from api.schemas.users import UserPublic
from api.services import orders, record_values, typed_tables, users
from api.services.schema import SCHEMAS
from api.store import Store
from storeserver.errors import BadRequest, Conflict, LimitExceeded
from storeserver.schemapatterns import SCHEMA_FORMATS, charged_compiles
from storeserver.schemas import check_schema_size, schema_problem, shape

Record = dict[str, Any]
PUBLIC_MODELS: dict[str, type[BaseModel]] = {users.TABLE: UserPublic, orders.TABLE: OrderPublic}
BUILT_IN_INDEXES = {users.TABLE: {"email"}, orders.TABLE: {"user_id"}}
MANAGED_FIELDS = frozenset(DataRecord.model_fields)  # id, created_at, updated_at, version
BUILT_IN_TABLES = frozenset(schema["table"] for schema in SCHEMAS)
MAX_VIOLATION_DETAILS = 100


def is_typed(table: str) -> bool:
    return table in PUBLIC_MODELS


# -- schemas -----------------------------------------------------------------------------------


async def describe_table(store: Store, table: str, sample: int | None) -> Record:
    """Typed tables: the public model's JSON Schema. Generic: the store's ``describe``."""
    args: Record = {"table": table}
    if sample is not None:
        args["sample"] = sample
    model = PUBLIC_MODELS.get(table)
    if model is None:
        try:
            described = await store.call("describe", args)
        except LimitExceeded as exc:
            if "max_frame_bytes" not in exc.details:
                raise
            # The store's words ask for "a smaller page"; this route has none (QA).
            raise ApiError(
                400,
                "LIMIT_EXCEEDED",
                "the description (every field name seen) is too large to send; examine"
                " fewer rows with ?sample=",
                [{"field": "query.sample", "max_frame_bytes": exc.details["max_frame_bytes"]}],
            ) from None
        return {"typed": False, **described}
    info = await store.call("describe", {"table": table, "sample": 1})
    return {
        "table": table,
        "typed": True,
        "rows": info["rows"],
        "indexes": info["indexes"],
        "foreign_keys": info.get("foreign_keys", []),
        "schema": model.model_json_schema(),
    }


# How deep this module walks a schema's values; the store has its own, lower cap on schema
# nesting (storeserver.schemas.MAX_SCHEMA_DEPTH), refused as the same 422.
SCHEMA_VALUE_DEPTH = 100


def check_json_schema(schema: Record) -> None:
    """422 unless ``schema`` is a valid Draft 2020-12 JSON Schema.

    The store checks it again with its own limits (nesting depth, RE2 patterns): its refusal
    is the same 422 (``attach_schema``). Its values follow the records' rules (finite numbers:
    ``{"maximum": 1e999}`` would be stored as null).
    """
    record_values.check_values(schema, ("body", "schema"), SCHEMA_VALUE_DEPTH)
    check_schema_size(shape(schema)[1])  # before the check, whose cost grows with it
    try:
        # Patterns checked by RE2, the engine that runs them (Python's ``re`` refused
        # ``\p{L}``, which RE2 takes: QA), and refused when RE2 cannot compile them.
        # Each distinct pattern charged to the schema's total, as in the store
        # (``SCHEMA_PATTERN_SIZE``): thousands of large ones held this worker for seconds.
        with charged_compiles():
            Draft202012Validator.check_schema(schema, format_checker=SCHEMA_FORMATS)
    except SchemaError as exc:
        raise _bad_schema(exc.path, schema_problem(exc)) from None
    except RecursionError:  # jsonschema recurses per level: ~125 nested levels are enough
        raise _bad_schema([], "nested too deeply") from None
    # References are the store's to check (``schemarefs``): this one took only "#..." and
    # refused those a nested "$id" names, which the store resolves (QA).


def _bad_schema(path: Any, message: str) -> ApiError:
    return ApiError(
        422,
        "VALIDATION_ERROR",
        "The body's schema is not a valid JSON Schema (Draft 2020-12)",
        [{"field": ".".join(str(part) for part in ("body", "schema", *path)), "message": message}],
    )


async def attach_schema(store: Store, table: str, schema: Record | None, force: bool) -> Record:
    """Attach (or with ``None`` remove) a JSON Schema; 409 listing the rows that break it."""
    if is_typed(table):
        raise ApiError(
            400,
            "TYPED_TABLE",
            f"{table} is validated by its own model; a schema cannot be attached",
            [{"field": "table", "message": "users and orders have a fixed schema"}],
        )
    if schema is not None:
        check_json_schema(schema)
    args = {"table": table, "schema": schema, "force": force}
    try:
        result: Record = await store.call("set_schema", args)
    except BadRequest as exc:
        if exc.details.get("arg") != "schema":
            raise
        raise _bad_schema(exc.details.get("path", []), exc.message) from None
    except Conflict as exc:
        if exc.details.get("reason") != "schema_violations":
            raise
        raise ApiError(
            409,
            "SCHEMA_VIOLATIONS",
            f"{exc.details.get('violating', 'some')} existing rows violate the schema; fix them"
            " or send force=true to attach it anyway",
            violation_details(exc.details.get("violations", [])),
        ) from None
    return result


def violation_details(violations: list[Record]) -> list[Record]:
    """One envelope detail per error: the record id, the field path and the message."""
    details: list[Record] = []
    for violation in violations:
        for error in violation.get("errors", []):
            details.append(
                {
                    "id": violation.get("id"),
                    # as a write's 422 names it (QA: "" for a missing required field)
                    "field": ".".join(schema_error_path(error)),
                    "message": error.get("message"),
                }
            )
            if len(details) >= MAX_VIOLATION_DETAILS:
                return details
    return details


# -- indexes -----------------------------------------------------------------------------------


def _bad_index(field: str, message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message, [{"field": field, "message": message}])


async def list_indexes(store: Store, table: str) -> list[Record]:
    indexes: list[Record] = await store.call("list_indexes", {"table": table})
    return indexes


async def create_index(
    store: Store, table: str, field: str, unique: bool, casefold: bool
) -> tuple[Record, bool]:
    """Build the index; answers its spec and whether it is new. 409 over duplicates."""
    # Refused here, naming the body's field: the store's words name its own argument (QA:
    # "indexes: casefold needs unique", details [{"arg": "indexes"}]).
    if casefold and not unique:
        raise _bad_index("body.casefold", "a casefold index must be unique (unique: true)")
    if field == "id":
        raise _bad_index("body.field", "id is always indexed")
    if is_typed(table):
        _check_typed_index(table, field, unique)
    args = {"table": table, "field": field, "unique": unique, "casefold": casefold}
    try:
        result = await store.call("create_index", args)
    except Conflict as exc:
        if exc.details.get("reason") != "duplicate":
            raise
        examples = exc.details.get("examples", [])
        raise ApiError(
            409,
            "DUPLICATE_VALUES",
            f"field {field!r} holds duplicate values; a unique index cannot be built",
            [
                {"field": field, "value": example.get("value"), "ids": example.get("ids", [])}
                for example in examples
            ],
        ) from None
    spec = {"field": field, "unique": unique, "casefold": casefold}
    return spec, bool(result.get("created"))


async def drop_index(store: Store, table: str, field: str) -> None:
    """Drop the index on ``field``; 404 if there is none, 400 for a built-in one."""
    if field in BUILT_IN_INDEXES.get(table, ()):
        raise ApiError(
            400,
            "BUILT_IN_INDEX",
            f"the index on {table}.{field} is built in and cannot be dropped",
            [{"field": field, "message": "built-in index"}],
        )
    result = await store.call("drop_index", {"table": table, "field": field})
    if not result.get("dropped"):
        raise ApiError(
            404,
            "NOT_FOUND",
            f"no index on {table}.{field}",
            [{"field": field, "message": "no such index"}],
        )


def _check_typed_index(table: str, field: str, unique: bool) -> None:
    fields = typed_tables.fields_of(table) or {}
    problem = None
    if field in BUILT_IN_INDEXES[table]:
        problem = "is built in"
    elif field not in fields:
        problem = "is not a field of this table"
    elif unique:
        problem = "cannot be unique: the service owns this table's constraints"
    if problem:
        raise ApiError(
            400,
            "BAD_INDEX",
            f"an index on {table}.{field} {problem}",
            [{"field": field, "message": problem}],
        )


# -- dropping a table --------------------------------------------------------------------------


async def drop_table(store: Store, table: str, force: bool) -> None:
    """Drop a generic table with its indexes and schema (and, with ``force``, its rows); 409
    when something still relies on it (see the store's refusals)."""
    if table in BUILT_IN_TABLES:
        raise _built_in_table(table)
    try:
        await store.call("drop_table", {"table": table, "force": force})
    except Conflict as exc:
        raise _drop_refused(table, exc) from None


def _built_in_table(table: str) -> ApiError:
    return ApiError(
        409,
        "BUILT_IN_TABLE",
        f"{table} is built in (the service relies on it) and cannot be dropped",
        [{"field": "table", "message": "built-in table"}],
    )


def _drop_refused(table: str, exc: Conflict) -> ApiError:
    details = exc.details
    reason = details.get("reason")
    if reason == "referenced":
        referencing = [r for r in details.get("referenced_by", []) if isinstance(r, dict)]
        named = ", ".join(f"{r.get('table')}.{r.get('field')}" for r in referencing)
        return ApiError(
            409,
            "TABLE_REFERENCED",
            f"{table} is referenced by the foreign key {named}: drop that table first",
            [
                {"table": r.get("table"), "field": r.get("field"), "message": f"references {table}"}
                for r in referencing
            ],
        )
    if reason == "not_empty":
        rows = details.get("rows")
        return ApiError(
            409,
            "TABLE_NOT_EMPTY",
            f"{table} holds {rows} row(s): send force=true to drop them with it",
            [{"field": "force", "rows": rows, "message": "the table is not empty"}],
        )
    if reason == "busy":
        commands = ", ".join(str(c) for c in details.get("commands", []))
        return ApiError(
            409,
            "TABLE_BUSY",
            f"a long write ({commands}) is running on {table}: retry once it has ended",
            [{"field": "table", "message": "a long write is running on it"}],
        )
    if reason in ("internal", "keep_rows"):
        return _built_in_table(table)
    raise exc


# -- writes by filter --------------------------------------------------------------------------


async def update_where(
    store: Store, table: str, query: ListQuery, changes: Record, max_rows: int
) -> Record:
    """Merge ``changes`` (``changes_for``'s) into every matching row, atomically; counts of
    matched and updated."""
    args: Record = {"table": table, "where": query.where, "changes": changes, "max_rows": max_rows}
    result: Record = await _capped(store, "update_where", args)
    return {"matched": result["matched"], "updated": result["updated"]}


async def delete_where(
    store: Store, table: str, query: ListQuery, cascade: bool, max_rows: int
) -> Record:
    """Delete every matching row, atomically; 409 if one has dependants (unless cascade)."""
    refuse_users(table)
    args: Record = {"table": table, "where": query.where, "cascade": cascade, "max_rows": max_rows}
    result: Record = await _capped(store, "delete_where", args)
    return {"deleted": result["deleted"], "cascaded": result.get("cascaded", 0)}


async def changes_for(table: str, data: Record) -> Record:
    """The changes an update by filter sends, or its 400/422: checked before the route decides
    on a job (QA: a refusal that needs no data was a 202, then a failed job)."""
    refuse_users(table)
    if not data:
        raise _invalid_data(None, "at least one field to change is required")
    typed = typed_tables.TYPED.get(table)
    if typed is not None:  # orders: OrderUpdate's validation, as PATCH /orders/{id}
        return await typed.update_changes(data, record_values.DATA)
    managed = sorted(MANAGED_FIELDS & data.keys())
    if managed:
        raise _invalid_data(managed[0], "managed by the store; cannot be set by filter")
    record_values.check_generic(data)  # what JSON allows but the store cannot hold: 422
    return data


def refuse_users(table: str) -> None:
    if table == users.TABLE:
        raise ApiError(
            400,
            "TYPED_TABLE",
            "users cannot be changed by filter (passwords, emails and sessions need the users"
            " service): change them one by one with PATCH/DELETE /users/{id}",
            [{"field": "table", "message": "not allowed for users"}],
        )


def _invalid_data(field: str | None, message: str) -> ApiError:
    """422 naming ``body.data.<field>`` (``body.data`` itself when ``field`` is None)."""
    path = "body.data" if field is None else f"body.data.{field}"
    return ApiError(
        422, "VALIDATION_ERROR", "Request validation failed", [{"field": path, "message": message}]
    )


async def _capped(store: Store, command: str, args: Record) -> Record:
    """The cap on rows per call → 400 naming how many matched and the limit."""
    try:
        return await _within_ceiling(store, command, args)
    except LimitExceeded as exc:
        if "matched" not in exc.details:
            raise
        matched, most = exc.details["matched"], exc.details.get("max")
        # The store stops counting once the cap is surely passed: then ``matched`` is a floor.
        counted = f"at least {matched}" if exc.details.get("at_least") else str(matched)
        raise ApiError(
            400,
            "TOO_MANY_ROWS",
            f"{counted} rows match, more than the {most} allowed per call; narrow the filter"
            " (nothing was changed)",
            [
                {
                    "field": "query",
                    "matched": matched,
                    "at_least": bool(exc.details.get("at_least")),
                    "max": most,
                    "message": "too many rows",
                }
            ],
        ) from None


async def _within_ceiling(store: Store, command: str, args: Record) -> Record:
    """The cap is the lower of MAX_ROWS_PER_FILTER_WRITE and the store's ceiling
    (STORE_MAX_BULK_ROWS): a store that refuses our ``max_rows`` is asked again with its own."""
    try:
        result: Record = await store.call(command, args)
        return result
    except LimitExceeded as exc:
        ceiling = exc.details.get("max")
        if (
            "matched" in exc.details
            or exc.details.get("arg") != "max_rows"
            or not isinstance(ceiling, int)
            or ceiling >= args["max_rows"]
        ):
            raise
    retried: Record = await store.call(command, {**args, "max_rows": ceiling})
    return retried
