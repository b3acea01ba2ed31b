"""List queries: page, sort, filters and date bounds → the store's ``find`` arguments.

Pure functions, no I/O. Typed resources (users, orders) declare their fields and types: an
unknown field or operator is a 400 naming it, a value that is not of the field's type a 422.
Generic tables accept any well-formed field name and read values as JSON scalars when they
parse (``30`` → 30, ``true``, ``null``; an integer past signed 64 bits → a float), else as
strings; ``contains`` and ``startswith`` always take a string, ``exists`` takes ``true`` or
``false``, and a range operator no ``null`` (a 422, as in a query body).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import orjson

from api.errors import bad_query, invalid_value, query_limit

FieldType = Literal["str", "uuid", "int", "decimal", "timestamp"]
Fields = Mapping[str, FieldType]

OPERATORS = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "exists"}
)
RANGE_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})
RESERVED = frozenset({"page", "per_page", "sort", "created_after", "created_before"})
# The lists that embed (``GET /orders?expand=user``) also take ``expand``. Elsewhere it is a
# field name like any other: a filter on a generic table, an unknown field on a typed one
# (``GET /data/orders?expand=user`` embeds nothing, so it must not pass in silence).
EXPANDABLE = RESERVED | {"expand"}
# The flags of the routes that select rows by the list's filters: ``all`` (a write by filter
# with no filter), ``cascade`` (a delete's), ``async`` (a job). Bare, they are never a filter,
# on any route: a count or a list must preview the very rows a write with the same query string
# changes (``?all=1`` counted one row, then wrote every row). ``all__eq=1`` filters on a field
# named ``all``, on every route.
FLAGS = frozenset({"all", "cascade", "async"})
MAX_IN_VALUES = 100
MAX_SORT_FIELDS = 4
MAX_FILTERS = 20
# Every record has these, whatever its table.
BASE_FIELDS: dict[str, FieldType] = {
    "id": "str",
    "created_at": "timestamp",
    "updated_at": "timestamp",
    "version": "int",
}
# A field name: up to 8 dotted levels of 64 characters. Every length cap on a field name or a
# sort text derives from these, so no place refuses a name another one takes.
MAX_NAME_LENGTH = 64
MAX_FIELD_LEVELS = 8
NAME_PART = rf"[A-Za-z_][A-Za-z0-9_]{{0,{MAX_NAME_LENGTH - 1}}}"
GENERIC_FIELD = re.compile(rf"{NAME_PART}(?:\.{NAME_PART}){{0,{MAX_FIELD_LEVELS - 1}}}")
MAX_FIELD_LENGTH = MAX_FIELD_LEVELS * (MAX_NAME_LENGTH + 1) - 1  # the dots between levels
# The longest ``sort`` text ``parse_sort`` takes without padding: every field at its longest,
# descending, with the commas between them.
MAX_SORT_LENGTH = MAX_SORT_FIELDS * (MAX_FIELD_LENGTH + len(":desc,")) - 1
# Digits after any leading zeros: more than 19 of them is past 64 bits, whatever they are
# (so a 10 KB value is refused without converting it).
_INT = re.compile(r"[+-]?0*([0-9]{1,19})|[+-]?0*[0-9]{20,}")
_INT64 = range(-(2**63), 2**63)
OUTSIDE_INT64 = "integer outside the 64-bit range (-9223372036854775808 to 9223372036854775807)"
OUT_OF_RANGE = "out of range: in UTC it must fall within the years 0001 to 9999"


@dataclass(frozen=True)
class Page:
    """A page of a list: ``page`` from 1, ``per_page`` 1 to 100."""

    page: int = 1
    per_page: int = 20

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


@dataclass(frozen=True)
class ListQuery:
    """A parsed list request: the page plus the store's ``where`` and ``sort``."""

    page: Page = field(default_factory=Page)
    where: list[list[Any]] = field(default_factory=list)
    sort: list[list[str]] = field(default_factory=list)

    def find_args(self, table: str) -> dict[str, Any]:
        """Arguments of the store's ``find`` command."""
        args: dict[str, Any] = {
            "table": table,
            "offset": self.page.offset,
            "limit": self.page.per_page,
        }
        if self.where:
            args["where"] = self.where
        if self.sort:
            args["sort"] = self.sort
        return args

    def with_condition(self, condition: list[Any]) -> ListQuery:
        return ListQuery(self.page, [condition, *self.where], self.sort)


def build_list_query(
    params: Iterable[tuple[str, str]],
    page: Page,
    sort: str | None,
    created_after: str | None,
    created_before: str | None,
    fields: Fields | None,
    reserved: frozenset[str] = RESERVED,
) -> ListQuery:
    """Parse the query string; ``fields`` is ``None`` for a generic table, ``reserved`` the
    parameters that are not filters."""
    params = list(params)
    for key, value in params:
        if key in FLAGS and key not in reserved:
            raise bad_query(
                key,
                f"'{key}' is not a filter: it is a flag of the writes by filter and the export,"
                f" which this route does not take; to filter on a field named {key}, write"
                f" '{key}__eq={value[:40]}'",
            )
    where = [parse_filter(key, value, fields) for key, value in params if key not in reserved]
    if len(where) > MAX_FILTERS:
        raise query_limit("query", f"at most {MAX_FILTERS} filters are allowed")
    # FastAPI hands over only the last of a repeated parameter; repeated filters are ANDed, so
    # every bound counts, and the tightest of each kind is the AND of them all.
    afters = _bounds(params, "created_after", created_after, "gt")
    if afters:
        where.append(["created_at", "gt", max(afters)])
    befores = _bounds(params, "created_before", created_before, "lt")
    if befores:
        where.append(["created_at", "lt", min(befores)])
    return ListQuery(page, where, parse_sort(sort, fields))


def _bounds(params: list[tuple[str, str]], name: str, value: str | None, op: str) -> list[str]:
    """Every ``name`` in the query string (``value`` alone when the caller parsed none), in
    the store's format; store times compare as strings in time order."""
    texts = [text for key, text in params if key == name] or ([] if value is None else [value])
    return [parse_timestamp(text, name, op) for text in texts]


def parse_filter(key: str, raw: str, fields: Fields | None) -> list[Any]:
    """``field=value`` or ``field__op=value`` → ``[field, op, value]``."""
    name, op = key, "eq"
    if "__" in key:
        name, op = key.rsplit("__", 1)
        if op not in OPERATORS:
            raise bad_query(key, f"unknown operator '{op}' in '{key}'")
    ftype = _field_type(name, fields, key)
    if op in ("contains", "startswith"):
        if ftype not in (None, "str"):
            raise bad_query(key, f"operator '{op}' does not apply to field '{name}'")
        return [name, op, raw]
    if op == "exists":
        if raw not in ("true", "false"):
            raise invalid_value(f"query.{key}", "expected true or false")
        return [name, op, raw == "true"]
    if raw == "null" and op in ("eq", "ne") and ftype not in (None, "str"):
        # An optional typed field (users.age): as a query body's null, missing or null. Only
        # where "null" cannot be a value of the field (a string field reads it as text).
        return [name, op, None]
    if op in RANGE_OPERATORS and _is_null(raw, ftype):
        # Refused as a query body refuses it: one condition, one answer (it was a 200
        # matching nothing here, a 422 there).
        raise invalid_value(f"query.{key}", range_operand(op))
    if op == "in":
        values = raw.split(",")
        if len(values) > MAX_IN_VALUES:
            raise query_limit(key, f"'in' takes at most {MAX_IN_VALUES} values")
        # A null among them matches as eq=null does, as a body's ``in: [null, ...]`` does (a
        # generic field's value is read as JSON already: ``null`` is None).
        typed = ftype is not None
        return [
            name,
            op,
            [None if typed and _is_null(v, ftype) else _coerce(v, ftype, key, op) for v in values],
        ]
    return [name, op, _coerce(raw, ftype, key, op)]


def range_operand(op: str) -> str:
    """Why a range operator's operand is refused: null (or a list or map, in a body) has no
    place in the order it compares by."""
    return f"'{op}' takes a number, string or boolean"


def _is_null(raw: str, ftype: FieldType | None) -> bool:
    """Whether a query-string value stands for null: JSON's ``null`` on a generic field (as
    ``parse_scalar`` reads it); ``null`` on a typed field that cannot hold that text (a
    string field reads it as text)."""
    if ftype is None:
        return parse_scalar(raw) is None
    return raw == "null" and ftype != "str"


def parse_sort(text: str | None, fields: Fields | None) -> list[list[str]]:
    """``field:asc,other:desc`` → ``[["field", "asc"], ["other", "desc"]]``."""
    if not text:
        return []
    items = text.split(",")
    if len(items) > MAX_SORT_FIELDS:
        raise bad_query("sort", f"sort takes at most {MAX_SORT_FIELDS} fields")
    sort = []
    for item in items:
        name, _, direction = item.strip().partition(":")
        direction = direction or "asc"
        if direction not in ("asc", "desc"):
            raise bad_query("sort", f"sort direction must be asc or desc, not '{direction}'")
        _field_type(name, fields, "sort")
        sort.append([name, direction])
    return sort


def parse_timestamp(text: str, name: str, op: str = "eq") -> str:
    """An ISO date or datetime → the store's fixed-width UTC string (naive means UTC).

    The store keeps microseconds. A bound with finer digits (Go and PostgreSQL send
    nanoseconds) is rounded the way that keeps the comparison exact for microsecond values:
    up for ``lt`` and ``gte`` (``x < 10.0000005`` is ``x < 10.000001``), down otherwise.
    """
    if text[-1:] == "z":  # RFC 3339 allows a lowercase Z (and t, which Python takes)
        text = text[:-1] + "Z"
    try:
        if not (text.isascii() and text.isprintable()):
            # fromisoformat stops at a NUL after a Z: "…Z\0junk" was read as "…Z" (QA)
            raise ValueError(text)
        # datetime's parser, not date's, for dates too: Python 3.11's date.fromisoformat reads
        # any 10 characters that begin with 8 digits as YYYYMMDD and drops the other two
        # ("1704110400", seconds since 1970, was the date 1704-11-04; QA).
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        message = (
            "expected an ISO 8601 date or date-time as RFC 3339 writes it, e.g. 2024-01-31 or"
            " 2024-01-31T12:00:00Z (no leap second 60, no 24:00, no ordinal date)"
        )
        if _PLUS_DECODED.search(text):  # ``+01:00`` sent unencoded reads back as " 01:00"
            message += "; a '+' in a query string is a space: send an offset's '+' as %2B"
        raise invalid_value(f"query.{name}", message) from None
    try:
        if op in ROUND_UP_OPERATORS and _SUB_MICROSECOND.search(text):
            moment += timedelta(microseconds=1)
        return store_time(moment)
    except OverflowError:  # a valid text whose offset moves it past year 1 or 9999
        raise invalid_value(f"query.{name}", OUT_OF_RANGE) from None


_PLUS_DECODED = re.compile(r"\d \d\d(:?\d\d)?$")
# Python keeps the first six digits of a fraction; a non-zero digit after them is lost.
_SUB_MICROSECOND = re.compile(r"[.,]\d{6}\d*[1-9]")
ROUND_UP_OPERATORS = frozenset({"lt", "gte"})
EQUALITY_OPERATORS = frozenset({"eq", "ne", "in"})
FINER_THAN_STORED = (
    "timestamps are stored to the microsecond; a value with non-zero digits past the sixth"
    " decimal equals none of them (drop those digits, or use a range: gte/lt)"
)


def finer_than_stored(text: str, op: str) -> bool:
    """Whether ``text`` compared with ``op`` is an equality no stored timestamp can meet.

    Rounding it (as the range operators do, exactly) would match a different instant.
    """
    return op in EQUALITY_OPERATORS and _SUB_MICROSECOND.search(text) is not None


# The notation orders' writes accept (``api.schemas.orders``): ASCII digits only, where
# ``Decimal()`` also takes "1_000" and other scripts' digits. Unlike a price, a bound may be
# zero or negative (``total_price__gt=0``). An exponent of at most 6 digits: ``Decimal()``
# raises on 1e9999999999999999999 (a 500 here), and no stored decimal is that far out.
DECIMAL_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,6})?\s*", re.ASCII)


def store_time(moment: datetime) -> str:
    """An aware datetime → the store's fixed-width UTC string (``0999-06-01T00:00:00.000000Z``).

    Raises ``OverflowError`` when the moment in UTC is before year 1 or after year 9999.
    """
    # Not strftime("%Y"): glibc does not zero-pad years before 1000 ("999-06-01..."), and the
    # store orders and compares timestamps as strings, so every one must have the same width.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_scalar(text: str) -> Any:
    """A generic filter value: a JSON scalar when it parses as one, else the string itself."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        # orjson reads integers up to 2**64 - 1 as ints; past them, and below -2**63, floats.
        # The store holds signed 64-bit integers, so the rest of that range is a float too.
        return float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return text


def _field_type(name: str, fields: Fields | None, key: str) -> FieldType | None:
    if fields is None:
        if not GENERIC_FIELD.fullmatch(name):
            raise bad_query(key, f"invalid field name in '{key}'")
        return BASE_FIELDS.get(name)
    if name not in fields:
        raise bad_query(key, f"unknown field '{name}'")
    return fields[name]


def canonical_uuid(text: str) -> str | None:
    """``text`` as the UUID fields of a typed table hold it (lower case, with hyphens), as their
    writes store it (``OrderCreate.user_id``: ``A0B1...`` is stored ``a0b1...``); ``None``
    if it is no UUID. A filter on such a field compares the stored form."""
    if len(text) > 45:  # urn:uuid: and braces included
        return None
    try:
        return str(UUID(text))
    except ValueError:
        return None


def _coerce(raw: str, ftype: FieldType | None, key: str, op: str) -> Any:
    if ftype is None:
        return parse_scalar(raw)
    if ftype == "str":
        return raw
    if ftype == "uuid":
        canonical = canonical_uuid(raw)
        if canonical is None:
            raise invalid_value(f"query.{key}", "expected a UUID")
        return canonical
    if ftype == "timestamp":
        stamp = parse_timestamp(raw, key, op)
        if finer_than_stored(raw, op):
            raise invalid_value(f"query.{key}", FINER_THAN_STORED)
        return stamp
    if ftype == "int":
        match = _INT.fullmatch(raw)
        if match is None:
            raise invalid_value(f"query.{key}", "expected an integer")
        digits = match.group(1)
        value = None if digits is None else int(digits) * (-1 if raw[0] == "-" else 1)
        if value is None or value not in _INT64:
            raise invalid_value(f"query.{key}", OUTSIDE_INT64)
        return value
    if len(raw) > 40 or not DECIMAL_TEXT.fullmatch(raw):
        raise invalid_value(f"query.{key}", "expected a decimal number in ASCII digits, e.g. 19.99")
    return Decimal(raw)
