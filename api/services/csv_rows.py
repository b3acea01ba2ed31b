"""CSV rows ↔ records, per table: the body read as rows (``read_rows``), which columns a
table takes and how a row is validated.

A malformed spot (bad quoting, a byte that is not UTF-8, a quote never closed) ends the rows
with a ``RowError`` for the row it is in: past it, where the next row starts is not known.

Generic tables take any columns, ``id`` read as text (``decode_text``); ``orders`` takes its
model's fields and validates each row through ``OrderCreate`` exactly like ``POST /orders``;
``users`` cannot be imported (a CSV export carries no password hash, and passwords must be
hashed one by one through the users service; create users with ``POST /users``). The
store-managed columns ``created_at``, ``updated_at`` and ``version`` are written on export and
ignored on import.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.errors import ApiError, field_path
from api.schemas.orders import OrderCreate
from api.services import orders, record_values, users
from api.services.csvio import ABSENT, CellError, decode_cell, decode_name, decode_text

Record = dict[str, Any]
EXTRA = "_extra"
"""Generic tables: the last column holds, as one JSON map, fields not among the columns."""
STORE_MANAGED = frozenset({"created_at", "updated_at", "version"})
MAX_COLUMNS = 1000
"""Columns of fields a file may have; an export keeps its header within it (``csv_export``)."""
NOT_COUNTED = (*sorted(STORE_MANAGED), EXTRA)
"""Columns an export adds to its fields: not counted in ``MAX_COLUMNS``."""


@dataclass
class RowError:
    row: int
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


def invalid_csv(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "INVALID_CSV", message, [{"field": field, "message": message}])


class NotUtf8(ValueError):
    """The body is not UTF-8 at byte ``offset`` (counted from 0 at the start of the body)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"not valid UTF-8 at byte {offset}")
        self.offset = offset


_NOT_READ = "the rest of the file was not read"
_PIECE_BYTES = 1 << 16


def text_lines(binary: IO[bytes]) -> Iterator[str]:
    """The body's lines as text, ends kept (split at CRLF, LF or CR like ``newline=""``), a
    UTF-8 BOM dropped; a bad byte raises ``NotUtf8`` when the reader reaches its line.

    Not ``io.TextIOWrapper``: it decodes 8 KiB at a time, so one bad byte fails the read of
    every line in its block, the header line included, and the error names the wrong row.
    Lines are split at b"\\n" and b"\\r", bytes never inside a multi-byte UTF-8 sequence.
    """
    offset = 0
    for raw in _raw_lines(binary):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotUtf8(offset + exc.start) from None
        if offset == 0 and text.startswith("\ufeff"):
            text = text[1:]
        offset += len(raw)
        yield text


def _raw_lines(binary: IO[bytes]) -> Iterator[bytes]:
    """The body's lines as bytes, ends kept, read at most ``_PIECE_BYTES`` at a time: a file
    whose lines end with a lone CR (old Mac) streams too, instead of being one line to
    ``readline``. A CR that ends a piece is held: the LF of its CRLF may start the next."""
    held: list[bytes] = []  # the start of a line no piece has ended yet
    while piece := binary.readline(_PIECE_BYTES):
        if not held and piece.endswith(b"\n") and piece.find(b"\r", 0, len(piece) - 2) < 0:
            yield piece  # the usual line: LF or CRLF at its end, no other line end
            continue
        if held and held[-1][-1:] == b"\r":
            if piece[:1] == b"\n":
                held.append(b"\n")
                piece = piece[1:]
            yield b"".join(held)
            held = []
        lines = piece.splitlines(keepends=True)  # at LF, CRLF and CR only, for bytes
        last = lines.pop() if lines else b""
        for line in lines:
            held.append(line)
            yield b"".join(held)
            held = []
        if last[-1:] == b"\n":
            held.append(last)
            yield b"".join(held)
            held = []
        elif last:
            held.append(last)
    if held:
        yield b"".join(held)


Rows = Iterator[tuple[int, list[str] | RowError | None]]
"""(row number, cells); ``None`` for a blank line (skipped, not a row, but a step: a consumer
lets the loop run after so many steps, and 40 MiB of blank lines are 20 million of them)."""


def read_rows(binary: IO[bytes]) -> tuple[list[str], Rows]:
    """The header and an iterator of (row number, cells); a malformed spot ends it with an
    error (row 1 is the first line after the header; a blank line is not a row: it comes as
    ``None`` with the number of the row before it)."""
    # No cell limit below the body's own (IMPORT_MAX_BYTES): the reader's default (128 KiB) would
    # refuse cells the export writes (a record's late fields in one _extra map, a long list) and
    # stop the import there. (The limit is the csv module's: one for the whole process.)
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(text_lines(binary), strict=True)
    try:
        header = next(reader, None)
    except (csv.Error, NotUtf8) as exc:
        raise invalid_csv(f"cannot read the header line: {exc}") from None
    if header is None:
        raise invalid_csv("the file is empty: the first line must name the columns")

    def rows() -> Rows:
        number = 0
        while True:
            try:
                row = next(reader, None)
            except NotUtf8 as exc:
                message = (
                    f"row {number + 1} is not UTF-8 (byte {exc.offset} of the file); {_NOT_READ}"
                )
                yield number + 1, RowError(number + 1, None, message)
                return
            except csv.Error as exc:  # line_num already counts the line it failed on
                message = f"malformed CSV near line {reader.line_num} ({exc}); {_NOT_READ}"
                yield number + 1, RowError(number + 1, None, message)
                return
            if row is None:
                return
            if row:
                number += 1
                yield number, row
            else:
                yield number, None

    # Names are written escaped against formula injection, as cells are (csvio.encode_name).
    return [decode_name(name) for name in header], rows()


@dataclass(frozen=True)
class RowReader:
    """Turns the rows of one CSV file (after its header) into records for one table."""

    table: str
    header: tuple[str, ...]
    decoders: tuple[Callable[[str], Any], ...]
    validate: Callable[[Record], Record]
    # A set, for _extra's keys: a scan of 1000 names per key held the loop 228 ms on one row.
    columns: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", frozenset(self.header) - {EXTRA})

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
                _merge_extra(data, value, number, errors, self.columns)
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


def check_importable(table: str) -> None:
    """400 ``IMPORT_NOT_SUPPORTED`` for a table no CSV may fill; known before the body is read,
    so an import route refuses at once, not in a job that then fails."""
    if table == users.TABLE:
        raise ApiError(
            400,
            "IMPORT_NOT_SUPPORTED",
            "users cannot be imported from CSV: passwords must be hashed one by one; create users"
            " with POST /api/v1/users",
        )


def reader_for(table: str, header: Sequence[str]) -> RowReader:
    """Check the header for ``table`` (400 naming the column) and build its row reader."""
    names = tuple(header)
    if not names or names == ("",):
        raise invalid_csv("the first line must name the columns")
    if sum(name not in NOT_COUNTED for name in names) > MAX_COLUMNS:
        raise invalid_csv(f"at most {MAX_COLUMNS} columns besides {', '.join(NOT_COUNTED)}")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise invalid_csv("a column has no name in the header line")
        if name in seen:
            raise invalid_csv(f"column {name!r} appears twice", name)
        seen.add(name)
    check_importable(table)
    if table == orders.TABLE:
        return _orders_reader(names)
    # An id is text (as orders' text columns): a bare 1e2, true or null is that id, not a
    # number, a boolean or no id. The export JSON-quotes or escapes the ids that would read as
    # something else ("123", '-x), and neither " nor a leading ' can be in an id.
    decoders = tuple(decode_text if name == "id" else decode_cell for name in names)
    return RowReader(table, names, decoders, _validate_generic)


def _merge_extra(
    data: Record, value: Any, number: int, errors: list[RowError], columns: frozenset[str]
) -> None:
    # Checked against the header, not the cells read so far: with _extra first, its value
    # was silently replaced by the column's (QA), where last it was this row error. A field
    # named "_extra" travels in the _extra cell (its name is that cell's: not in ``columns``).
    if type(value) is not dict:
        errors.append(RowError(number, EXTRA, "must be a JSON map of the other fields"))
        return
    for key, item in value.items():
        if key in data or key in columns:
            errors.append(RowError(number, EXTRA, f"field {key!r} is also a column"))
        else:
            data[key] = item


def _validate_generic(data: Record) -> Record:
    try:
        record_values.check_generic(data, ())  # the rules of POST /data/{table}
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
        decode_text if orders.FIELDS.get(name) in ("str", "timestamp", "uuid") else decode_cell
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
            record_values.check_generic({"id": record_id}, ())
        except RequestValidationError as exc:
            problems += [_problem(error) for error in exc.errors()]
    try:  # order_date too: with a time zone, not in the future, as an admin's POST /orders
        payload = OrderCreate.model_validate(data)
    except ValidationError as exc:
        problems += [
            (field_path(e["loc"]) or None, e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
    else:
        record.update(orders.new_record(payload, payload.order_date))  # kept, else now
    if problems:
        raise RowInvalid(problems)
    return record
