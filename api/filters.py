"""JSON query bodies → the store's arguments: filter trees, projections, group-by and metrics.

Pure functions, no I/O. A filter node is ``{"and": [nodes]}``, ``{"or": [nodes]}``,
``{"not": node}`` or a condition ``{"field": "age", "op": "gte", "value": 30}``; the store's
form is the same tree with ``[field, op, value]`` leaves. At most ``MAX_DEPTH`` levels and
``MAX_NODES`` nodes (400 ``LIMIT_EXCEEDED``). Every error names the bad part of the tree as a
location (``body.filter.or.1.op``) plus its ``path`` from the filter's root: an unknown field or
operator is a 400 (as in list queries), a malformed node or a value of the wrong type a 422.

Typed tables (users, orders) check fields and convert values to the field's type (decimals
exact, timestamps in the store's format); generic tables take any JSON value, except that
``created_at``/``updated_at`` read ISO timestamps and ``version`` integers, as in list queries.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from api.errors import ApiError
from api.queries import (
    BASE_FIELDS,
    DECIMAL_TEXT,
    FINER_THAN_STORED,
    GENERIC_FIELD,
    MAX_IN_VALUES,
    RANGE_OPERATORS,
    Fields,
    FieldType,
    canonical_uuid,
    finer_than_stored,
    parse_sort,
    parse_timestamp,
    range_operand,
)

MAX_DEPTH = 8
MAX_NODES = 100
MAX_VALUE_DEPTH = 16
MAX_PROJECTION = 50
OPERATORS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "exists"}
)
STRING_OPERATORS = frozenset({"contains", "startswith"})
NUMERIC_TYPES: frozenset[FieldType] = frozenset({"int", "decimal"})
_INT64 = range(-(2**63), 2**63)
Loc = tuple[str | int, ...]


def tree_error(status: int, code: str, loc: Loc, path: Loc, message: str) -> ApiError:
    """An error naming ``loc`` (``body.filter.or.1.op``) and the path inside the filter."""
    field = ".".join(str(part) for part in loc)
    detail = {"field": field, "message": message, "path": list(path)}
    text = "Request validation failed" if code == "VALIDATION_ERROR" else f"{field}: {message}"
    return ApiError(status, code, text, [detail])


class _TreeParser:
    def __init__(self, fields: Fields | None, base: Loc, reserve: int) -> None:
        self.fields = fields
        self.base = base
        self.nodes = 0
        self.max_depth = MAX_DEPTH - reserve
        self.max_nodes = MAX_NODES - 2 * reserve
        self.reserve = reserve

    def fail(self, status: int, path: Loc, message: str) -> ApiError:
        code = "BAD_QUERY" if status == 400 else "VALIDATION_ERROR"
        return tree_error(status, code, (*self.base, *path), path, message)

    def node(self, raw: Any, path: Loc, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.max_nodes or depth > self.max_depth:
            raise tree_error(400, "LIMIT_EXCEEDED", (*self.base, *path), path, self.limit_message())
        if not isinstance(raw, dict):
            raise self.fail(422, path, "a filter node is an object: and, or, not or a condition")
        if len(raw) == 1 and ("and" in raw or "or" in raw):
            key = "and" if "and" in raw else "or"
            children = raw[key]
            if not isinstance(children, list) or not children:
                raise self.fail(422, (*path, key), f"'{key}' takes a non-empty list of nodes")
            return {key: [self.node(c, (*path, key, i), depth + 1) for i, c in enumerate(children)]}
        if len(raw) == 1 and "not" in raw:
            return {"not": self.node(raw["not"], (*path, "not"), depth + 1)}
        if "field" in raw or "op" in raw:
            return self.leaf(raw, path)
        raise self.fail(
            422, path, "expected {and: [...]}, {or: [...]}, {not: {...}} or {field, op, value}"
        )

    def limit_message(self) -> str:
        if self.nodes > self.max_nodes:
            message, taken, limit = f"at most {self.max_nodes} nodes", 2, MAX_NODES
        else:
            message, taken, limit = f"at most {self.max_depth} levels of nesting", 1, MAX_DEPTH
        if not self.reserve:
            return message
        # The store's limits (storeserver.filters) hold for the whole tree, the conditions the
        # API adds included: a caller told only "7" would take the documented 8 for a bug.
        return (
            f"{message}: of the store's {limit}, the condition the API adds (your own"
            f" records only) takes {taken * self.reserve}"
        )

    def leaf(self, raw: dict[str, Any], path: Loc) -> list[Any]:
        extra = sorted(str(key) for key in raw if key not in ("field", "op", "value"))
        if extra:
            raise self.fail(422, (*path, extra[0]), "unexpected key in a condition")
        for key in ("field", "op"):
            if not isinstance(raw.get(key), str):
                raise self.fail(422, (*path, key), f"'{key}' is required and must be a string")
        name, op = raw["field"], raw["op"]
        if op not in OPERATORS:
            shown = op if len(op) <= 32 else op[:32] + "…"
            raise self.fail(400, (*path, "op"), f"unknown operator {shown!r}")
        ftype = self.field_type(name, (*path, "field"))
        if "value" not in raw:
            if op != "exists":
                raise self.fail(422, (*path, "value"), f"operator '{op}' needs a value")
            return [name, op, True]
        return [name, op, self.value(raw["value"], op, name, ftype, (*path, "value"))]

    def field_type(self, name: str, path: Loc) -> FieldType | None:
        if self.fields is None:
            if not GENERIC_FIELD.fullmatch(name):
                raise self.fail(400, path, "invalid field name: dotted names of [A-Za-z0-9_]")
            return BASE_FIELDS.get(name)
        if name not in self.fields:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise self.fail(400, path, f"unknown field {shown!r}")
        return self.fields[name]

    def value(self, value: Any, op: str, name: str, ftype: FieldType | None, path: Loc) -> Any:
        if op == "exists":
            if not isinstance(value, bool):
                raise self.fail(422, path, "'exists' takes true or false")
            return value
        if op == "in":
            if not isinstance(value, list):
                raise self.fail(422, path, "'in' takes a list of values")
            if len(value) > MAX_IN_VALUES:
                # A limit, as the tree's size is (and as the query string's ``in`` answers).
                message = f"'in' takes at most {MAX_IN_VALUES} values"
                raise tree_error(400, "LIMIT_EXCEEDED", (*self.base, *path), path, message)
            return [self.scalar(v, op, ftype, (*path, i)) for i, v in enumerate(value)]
        if op in STRING_OPERATORS:
            if ftype is not None and ftype != "str":
                raise self.fail(400, (*path[:-1], "op"), f"'{op}' does not apply to '{name}'")
            if op == "startswith" and not isinstance(value, str):
                raise self.fail(422, path, "'startswith' takes a string")
        if op in RANGE_OPERATORS and (value is None or isinstance(value, dict | list)):
            raise self.fail(422, path, range_operand(op))
        return self.scalar(value, op, ftype, path)

    def scalar(self, value: Any, op: str, ftype: FieldType | None, path: Loc) -> Any:
        """One value, converted to the field's type (typed fields) or checked as JSON."""
        if value is None and op in ("eq", "ne", "in"):
            return None
        if ftype is None:
            problem = json_value_problem(value, 0)
            if problem:
                raise self.fail(422, path, problem)
            return value
        converted = convert(value, ftype, op)
        if converted is None:
            raise self.fail(422, path, _EXPECTED[ftype])
        if ftype == "timestamp" and finer_than_stored(value, op):
            raise self.fail(422, path, FINER_THAN_STORED)
        if isinstance(converted, str) and (problem := text_problem(converted)):
            raise self.fail(422, path, problem)
        return converted


_EXPECTED: dict[FieldType, str] = {
    "str": "expected a string",
    "uuid": "expected a UUID",
    "int": "expected a 64-bit integer",
    "decimal": "expected a decimal number in ASCII digits (a string keeps it exact)",
    "timestamp": "expected an ISO 8601 date or datetime",
}


def convert(value: Any, ftype: FieldType, op: str = "eq") -> Any:
    """``value`` as ``ftype``; ``None`` when it is not one (``op`` rounds a finer-than-µs
    timestamp, as ``parse_timestamp`` says)."""
    if ftype == "str":
        return value if isinstance(value, str) else None
    if ftype == "uuid":
        return canonical_uuid(value) if isinstance(value, str) else None
    if ftype == "int":
        return value if type(value) is int and value in _INT64 else None
    if ftype == "timestamp":
        if not isinstance(value, str):
            return None
        try:
            return parse_timestamp(value, "value", op)
        except ApiError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float | str) or len(str(value)) > 40:
        return None
    text = str(value)  # a float's text is ASCII; inf and nan fail the pattern
    return Decimal(text) if DECIMAL_TEXT.fullmatch(text) else None


# JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 text (the store's wire
# format, or a JSON answer) can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UNICODE = "text must be valid Unicode (a lone surrogate such as \\ud800 is not)"


def text_problem(text: str) -> str | None:
    return NOT_UNICODE if _SURROGATE.search(text) else None


def json_value_problem(value: Any, depth: int) -> str | None:
    """What the store could not hold in a JSON value (huge ints, NaN, lone surrogates, deep
    nesting)."""
    if depth > MAX_VALUE_DEPTH:
        return f"value nested deeper than {MAX_VALUE_DEPTH} levels"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if value in _INT64 else "integer outside the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, dict):
        for key in value:
            if problem := text_problem(key):
                return problem
        items = value.values()
    else:
        items = value
    for item in items:
        problem = json_value_problem(item, depth + 1)
        if problem:
            return problem
    return None


def parse_filter_tree(
    raw: Any, fields: Fields | None, base: Loc = ("body", "filter"), reserve: int = 0
) -> Any:
    """The store's ``where`` tree for a JSON filter; ``None`` when there is no filter.

    ``reserve``: levels kept free for conditions the API adds (``and_where``), each taking
    one level and two nodes, so the combined tree is still within the store's limits.
    """
    if raw is None:
        return None
    tree = _TreeParser(fields, base, reserve).node(raw, (), 1)
    # A lone condition goes in a list: the store reads a top-level list as an AND of nodes.
    return [tree] if isinstance(tree, list) else tree


def and_where(condition: list[Any], tree: Any) -> Any:
    """``condition AND tree``; the store reads an indexed ``condition`` from its index."""
    if tree is None:
        return [condition]
    if isinstance(tree, list):
        return [condition, *tree]
    return {"and": [condition, tree]}


def parse_body_sort(text: str | None, fields: Fields | None) -> list[list[str]]:
    """``field:asc,other:desc`` from a body; errors name ``body.sort``."""
    try:
        return parse_sort(text, fields)
    except ApiError as exc:
        raise _relocated(exc, "body.sort") from None


def parse_projection(names: list[str] | None, fields: Fields | None) -> list[str] | None:
    """The ``fields`` of a query: checked names, without duplicates (``id`` is always sent)."""
    if names is None:
        return None
    out: list[str] = []
    for index, name in enumerate(names):
        path = ("body", "fields", index)
        valid = name in fields if fields is not None else bool(GENERIC_FIELD.fullmatch(name))
        if not valid:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise tree_error(400, "BAD_QUERY", path, (index,), f"unknown field {shown!r}")
        if name not in out:
            out.append(name)
    return out


def check_group_field(name: str, fields: Fields | None, loc: Loc) -> str:
    valid = name in fields if fields is not None else bool(GENERIC_FIELD.fullmatch(name))
    if not valid:
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise tree_error(400, "BAD_QUERY", loc, (), f"unknown field {shown!r}")
    return name


def check_metric(op: str, field: str | None, fields: Fields | None, loc: Loc) -> None:
    """``sum``/``avg`` need a numeric field on typed tables; every op but count needs a field."""
    if field is None:
        if op != "count":
            raise tree_error(422, "VALIDATION_ERROR", (*loc, "field"), (), f"'{op}' needs a field")
        return
    check_group_field(field, fields, (*loc, "field"))
    if fields is not None and op in ("sum", "avg") and fields[field] not in NUMERIC_TYPES:
        raise tree_error(
            400, "BAD_QUERY", (*loc, "field"), (), f"'{op}' needs a numeric field, not '{field}'"
        )


def _relocated(exc: ApiError, field: str) -> ApiError:
    details = [{**detail, "field": field} for detail in exc.details]
    return ApiError(exc.status_code, exc.code, exc.message, details)
