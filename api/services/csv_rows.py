"""CSV rows ↔ records, per table: which columns a table takes and how a row is validated.

Generic tables take any columns; ``orders`` takes its model's fields and validates each row
through ``OrderCreate`` exactly like ``POST /orders``; ``users`` cannot be imported (a CSV
export carries no password hash, and passwords must be hashed one by one through the users
service; create users with ``POST /users``). The store-managed columns ``created_at``,
``updated_at`` and ``version`` are written on export and ignored on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.errors import ApiError, field_path
from api.queries import parse_timestamp, store_time
from api.schemas.orders import OrderCreate
from api.services import orders, records, users
from api.services.csvio import ABSENT, CellError, decode_cell, decode_text

Record = dict[str, Any]
EXTRA = "_extra"
"""Generic tables: the last column holds, as one JSON map, fields not among the columns."""
STORE_MANAGED = frozenset({"created_at", "updated_at", "version"})
MAX_COLUMNS = 1000


@dataclass
class RowError:
    row: int
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


def invalid_csv(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "INVALID_CSV", message, [{"field": field, "message": message}])


@dataclass(frozen=True)
class RowReader:
    """Turns the rows of one CSV file (after its header) into records for one table."""

    table: str
    header: tuple[str, ...]
    decoders: tuple[Callable[[str], Any], ...]
    validate: Callable[[Record], Record]

    def read(self, row: Sequence[str], number: int) -> tuple[Record | None, list[RowError]]:
        if len(row) != len(self.header):
            message = f"expected {len(self.header)} cells, found {len(row)}"
            return None, [RowError(number, None, message)]
        data: Record = {}
        errors: list[RowError] = []
        for name, decode, text in zip(self.header, self.decoders, row, strict=True):
            if name in STORE_MANAGED:
                continue
            try:
                value = decode(text)
            except CellError as exc:
                errors.append(RowError(number, name, str(exc)))
                continue
            if value is ABSENT:
                continue
            if name == EXTRA:
                _merge_extra(data, value, number, errors)
            else:
                data[name] = value
        if errors:
            return None, errors
        try:
            return self.validate(data), []
        except RowInvalid as exc:
            return None, [RowError(number, field, message) for field, message in exc.problems]


class RowInvalid(Exception):
    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def reader_for(table: str, header: Sequence[str]) -> RowReader:
    """Check the header for ``table`` (400 naming the column) and build its row reader."""
    names = tuple(header)
    if not names or names == ("",):
        raise invalid_csv("the first line must name the columns")
    if len(names) > MAX_COLUMNS:
        raise invalid_csv(f"at most {MAX_COLUMNS} columns")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise invalid_csv("a column has no name in the header line")
        if name in seen:
            raise invalid_csv(f"column {name!r} appears twice", name)
        seen.add(name)
    if table == users.TABLE:
        raise ApiError(
            400,
            "IMPORT_NOT_SUPPORTED",
            "users cannot be imported from CSV: passwords must be hashed one by one; create users"
            " with POST /api/v1/users",
        )
    if table == orders.TABLE:
        return _orders_reader(names)
    decoders = tuple(decode_cell for _ in names)
    return RowReader(table, names, decoders, _validate_generic)


def _merge_extra(data: Record, value: Any, number: int, errors: list[RowError]) -> None:
    if type(value) is not dict:
        errors.append(RowError(number, EXTRA, "must be a JSON map of the other fields"))
        return
    for key, item in value.items():
        if key in data:
            errors.append(RowError(number, EXTRA, f"field {key!r} is also a column"))
        else:
            data[key] = item


def _validate_generic(data: Record) -> Record:
    if "id" in data and type(data["id"]) is int:
        data["id"] = str(data["id"])  # a hand-written numeric id column
    try:
        records.check_generic(data, ())  # the rules of POST /data/{table}
    except RequestValidationError as exc:
        raise RowInvalid([_problem(error) for error in exc.errors()]) from None
    return data


def _problem(error: Any) -> tuple[str | None, str]:
    field = field_path(error.get("loc", ())) or None
    return field, str(error.get("msg", "invalid value"))


_ORDER_REQUIRED = ("user_id", "product_name", "quantity", "total_price")
_ORDER_COLUMNS = frozenset({"id", *_ORDER_REQUIRED, "order_date", *STORE_MANAGED})


def _orders_reader(names: tuple[str, ...]) -> RowReader:
    for name in names:
        if name not in _ORDER_COLUMNS:
            raise invalid_csv(f"unknown column {name!r} for orders", name)
    for name in _ORDER_REQUIRED:
        if name not in names:
            raise invalid_csv(f"orders need a {name!r} column", name)
    decoders = tuple(
        decode_text if orders.FIELDS.get(name) in ("str", "timestamp") else decode_cell
        for name in names
    )
    return RowReader(orders.TABLE, names, decoders, _validate_order)


def _validate_order(data: Record) -> Record:
    problems: list[tuple[str | None, str]] = []
    record: Record = {}
    record_id = data.pop("id", None)
    if record_id is not None:
        record["id"] = record_id
        try:
            records.check_generic({"id": record_id}, ())
        except RequestValidationError as exc:
            problems += [_problem(error) for error in exc.errors()]
    order_date = data.pop("order_date", None)
    try:
        payload = OrderCreate.model_validate(data)
    except ValidationError as exc:
        problems += [
            (field_path(e["loc"]) or None, e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
    else:
        record.update(orders.new_record(payload))
    if order_date is not None:  # kept (new_record dates the order now)
        try:
            stamp = parse_timestamp(str(order_date), "order_date")
        except ApiError as exc:  # unreadable, or out of range once in UTC
            problems.append(("order_date", exc.details[0]["message"]))
        else:
            # As OrderCreate: not in the future (stamps are fixed-width, so text order works).
            if stamp > store_time(datetime.now(UTC)):
                problems.append(("order_date", "may not be in the future"))
            record["order_date"] = stamp
    if problems:
        raise RowInvalid(problems)
    return record
