"""The CSV cell encoding (api.services.csvio) and row reading (csv_rows), without a server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ApiError
from api.services.csv_export import CsvEncoder, columns_for
from api.services.csv_import_batches import write_chunk
from api.services.csv_import_report import ImportReport
from api.services.csv_rows import MAX_COLUMNS, RowError, read_rows, reader_for
from api.services.csvio import (
    ABSENT,
    INJECTION_START,
    CellError,
    decode_cell,
    decode_name,
    encode_cell,
    encode_name,
)
from storeserver.errors import Conflict, NotFound
from tests.support.engine import EngineStore

# (value, cell text): encoded as, and decoded from.
CASES: list[tuple[Any, str]] = [
    (ABSENT, ""),
    (None, "null"),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-12, "-12"),
    (2**63 - 1, "9223372036854775807"),
    (Decimal("12.50"), "12.50"),
    (Decimal("-0.01"), "-0.01"),
    (Decimal("100"), "100."),
    (Decimal("0.0000001"), "0.0000001"),
    (1.5, "1.5e0"),
    (-2e-07, "-2e-07"),
    (1e16, "1e+16"),
    ("", '""'),
    ("hello, world", "hello, world"),
    ("12", '"12"'),
    ("007", "007"),
    ("1.50", '"1.50"'),
    ("1e5", '"1e5"'),
    ("null", '"null"'),
    ("true", '"true"'),
    ("[1]", '"[1]"'),
    ('"quoted"', '"\\"quoted\\""'),
    ("'quoted'", "'quoted'"),
    ("=SUM(A1:A9)", "'=SUM(A1:A9)"),
    ("+1", "'+1"),
    ("-12", "'-12"),
    ("-", "'-"),
    ("@cmd", "'@cmd"),
    ("\tx", "'\tx"),
    ("\rx", "'\rx"),
    ("'=x", '"\'=x"'),
    ("line\nbreak", "line\nbreak"),
    ("ünïcødé ✓ 🎉", "ünïcødé ✓ 🎉"),
    ([1, "a", None], '[1,"a",null]'),
    ({"a": {"b": [Decimal("1.25"), 2.5]}}, '{"a":{"b":[1.25,2.5e0]}}'),
    (math.inf, "1e999"),  # a float past the range: what Python's json reads as infinity
    (-math.inf, "-1e999"),
    ([math.inf, -math.inf], "[1e999,-1e999]"),
    ([], "[]"),
    ({}, "{}"),
]


@pytest.mark.parametrize(("value", "text"), CASES)
def test_encode(value: Any, text: str) -> None:
    assert encode_cell(value) == text


@pytest.mark.parametrize(("value", "text"), CASES)
def test_decode(value: Any, text: str) -> None:
    assert same(decode_cell(text), value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3.", Decimal("3")),
        ("1E5", 100000.0),
        ("'plain", "'plain"),  # a quote not before = + - @ TAB CR is kept
        ("-", "-"),  # hand-written: not a number, so a string
        (" 12", " 12"),
        ("12abc", "12abc"),
        ("0012", "0012"),
        ("-0", 0),
    ],
)
def test_decode_hand_written(text: str, value: Any) -> None:
    assert same(decode_cell(text), value)


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated',
        '"a" "b"',
        "[1,",
        "{bad}",
        '"1"x',
        "99999999999999999999",
    ],
)
def test_bad_cells(text: str) -> None:
    with pytest.raises(CellError):
        decode_cell(text)


HUGE = "9" * 5000  # past the 4300 digits int() converts at all


@pytest.mark.parametrize("text", [HUGE, f"-{HUGE}", "-9223372036854775809"])
def test_integers_past_64_bits_are_cell_errors_whatever_their_length(text: str) -> None:
    with pytest.raises(CellError, match="integer outside the 64-bit range"):
        decode_cell(text)


@pytest.mark.parametrize(
    "text", [f"[{HUGE}]", f'{{"x":[1,-{HUGE}]}}', "[-9223372036854775809]", "[9223372036854775808]"]
)
def test_integers_past_64_bits_inside_json_are_left_to_the_record_checks(text: str) -> None:
    """Refused by ``check_generic``, which names their path; never converted past 19 digits."""
    decoded = json.dumps(decode_cell(text))
    assert HUGE[:20] not in decoded
    assert "922337203685477580" in decoded


def test_64_bit_integer_bounds_read_back() -> None:
    assert decode_cell("-9223372036854775808") == -(2**63)
    assert decode_cell("[9223372036854775807]") == [2**63 - 1]


class Opaque:
    def __str__(self) -> str:
        return "opaque"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.nan, "nan"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "'-Infinity"),
        (Opaque(), "opaque"),
        (b"x", "b'x'"),
        ([math.nan, Decimal("Infinity"), Opaque()], '["nan","Infinity","opaque"]'),
        ({"a": (1, Opaque())}, '{"a":[1,"opaque"]}'),
    ],
)
def test_values_without_a_cell_form_are_written_as_their_text(value: Any, text: str) -> None:
    """Never an exception mid-export (the store refuses NaN; its protocol has no such types)."""
    assert encode_cell(value) == text


def test_json_cells_allow_surrounding_whitespace_inside() -> None:
    assert decode_cell('"a" ') == "a"
    assert encode_cell('"a" ') == '"\\"a\\" "'


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (True is not 1, 1.0 is not Decimal 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b) or a is b


@given(values)
def test_every_value_survives_a_csv_round_trip(value: Any) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([encode_cell(value), "end"])
    cell = next(csv.reader(io.StringIO(buffer.getvalue(), newline="")))[0]
    assert same(decode_cell(cell), value)


@given(st.text(min_size=1))
def test_no_string_cell_starts_like_a_formula(text: str) -> None:
    cell = encode_cell(text)
    assert cell[0] not in INJECTION_START
    assert decode_cell(cell) == text


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2))
def test_top_level_decimals_keep_their_digits(value: Decimal) -> None:
    assert str(decode_cell(encode_cell(value))) == str(value)


def test_negative_numbers_are_not_escaped() -> None:
    assert encode_cell(-5) == "-5"
    assert encode_cell(Decimal("-5.25")) == "-5.25"
    assert encode_cell(-0.5) == "-0.5e0"


def test_generic_columns_and_extra() -> None:
    first = [{"id": "a", "x": 1, "created_at": "t", "version": 1}, {"id": "b", "y": 2}]
    columns, extra = columns_for("things", first)
    assert columns == ("id", "x", "y", "created_at", "updated_at", "version")
    assert extra
    encoder = CsvEncoder("things", columns, extra)
    text = (encoder.header() + encoder.rows([{"id": "c", "x": "1", "z": [1]}])).decode()
    assert text == 'id,x,y,created_at,updated_at,version,_extra\r\nc,"""1""",,,,,"{""z"":[1]}"\r\n'
    reader = reader_for("things", next(csv.reader(io.StringIO(text))))
    row = list(csv.reader(io.StringIO(text)))[1]
    assert reader.read(row, 1) == ({"id": "c", "x": "1", "z": [1]}, [])


def test_row_errors_name_row_and_field() -> None:
    reader = reader_for("things", ["id", "n", "_extra"])
    record, errors = reader.read(["bad id!", "[1,", "[]"], 7)
    assert record is None
    assert [(e.row, e.field) for e in errors] == [(7, "n"), (7, "_extra")]
    record, errors = reader.read(["bad id!", "1", ""], 8)
    assert [(e.row, e.field) for e in errors] == [(8, "id")]
    record, errors = reader.read(["a"], 9)
    assert errors[0].message == "expected 3 cells, found 1"


@pytest.mark.parametrize("header", [["_extra", "a"], ["a", "_extra"], ["_extra", "id", "a"]])
def test_a_field_in_extra_and_in_a_column_is_a_row_error_whatever_the_order(
    header: list[str],
) -> None:
    """QA: with _extra first, its value was silently replaced by the column's."""
    reader = reader_for("things", header)
    cells = {"_extra": '{"a": 1, "id": "from-extra"}', "a": "2", "id": "from-column"}
    record, errors = reader.read([cells[name] for name in header], 3)
    assert record is None
    assert [(e.row, e.field, e.message) for e in errors] == [
        (3, "_extra", f"field {name!r} is also a column") for name in ("a", "id") if name in header
    ]
    # An empty cell is still a column: the field is not taken from _extra either.
    record, errors = reader.read(["" if name == "a" else cells[name] for name in header], 4)
    assert record is None and errors[0].message == "field 'a' is also a column"


def test_orders_rows_validate_through_the_model() -> None:
    reader = reader_for("orders", ["id", "user_id", "product_name", "quantity", "total_price"])
    user = "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1"
    record, errors = reader.read(["o-1", user, "123", "2", "19.99"], 1)
    assert errors == []
    assert record is not None
    assert record["product_name"] == "123"  # a text column: digits stay a string
    assert record["total_price"] == Decimal("19.99")
    record, errors = reader.read(["o-2", "nope", "", "-1", "0.001"], 2)
    assert {e.field for e in errors} == {"user_id", "product_name", "quantity", "total_price"}


ORDER_HEADER = ["user_id", "product_name", "quantity", "total_price"]
SOME_USER = "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1"


@pytest.mark.parametrize(
    ("table", "header", "cells", "field"),
    [
        ("things", ["id", "x"], ["r1", HUGE], "x"),
        ("things", ["id", "x"], ["r1", f"[{HUGE}]"], "x.0"),
        ("things", ["id", "x"], ["r1", f'{{"a":[1,{{"b":-{HUGE}}}]}}'], "x.a.1.b"),
        ("things", ["id", "_extra"], ["r1", f'{{"x":{HUGE}}}'], "x"),
        ("orders", ORDER_HEADER, [SOME_USER, "W", HUGE, "1.00"], "quantity"),
    ],
)
def test_a_huge_integer_is_a_row_error(
    table: str, header: list[str], cells: list[str], field: str
) -> None:
    record, errors = reader_for(table, header).read(cells, 1)
    assert record is None
    assert [(e.row, e.field, e.message) for e in errors] == [
        (1, field, "integer outside the 64-bit range")
    ]


def test_an_exported_infinity_is_written_and_refused_on_import() -> None:
    """An infinity stored before the API refused them exports as 1e999 (the export goes on);
    importing it is a row error, as POST /data refuses it."""
    encoder = CsvEncoder("things", ("id", "x"), True)
    text = (
        encoder.header() + encoder.rows([{"id": "a", "x": -math.inf, "y": [math.inf]}])
    ).decode()
    header, row = rows_of(text)
    assert row == ["a", "-1e999", '{"y":[1e999]}']
    record, errors = reader_for("things", header).read(row, 1)
    assert record is None
    assert [(e.field, e.message) for e in errors] == [
        ("x", "numbers must be finite"),
        ("y.0", "numbers must be finite"),
    ]
    record, errors = reader_for("orders", ORDER_HEADER).read([SOME_USER, "W", "1", "1e999"], 2)
    assert record is None and [e.field for e in errors] == ["total_price"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_json_constant_is_refused_at_its_path(constant: str) -> None:
    """As POST /data names ``body.data.m.x`` (QA: the import said only ``m``)."""
    cell = f'{{"x":{constant},"y":[1,{{"z":{constant}}}]}}'
    record, errors = reader_for("things", ["id", "m"]).read(["a", cell], 1)
    assert record is None
    assert [(e.field, e.message) for e in errors] == [
        ("m.x", "numbers must be finite"),
        ("m.y.1.z", "numbers must be finite"),
    ]


def test_a_field_that_cannot_name_a_column_goes_in_extra() -> None:
    record = {"id": "a", "": 1, "n": 2}
    columns, extra = columns_for("things", [record])
    assert columns == ("id", "n", "created_at", "updated_at", "version") and extra
    encoder = CsvEncoder("things", columns, extra)
    header, row = rows_of((encoder.header() + encoder.rows([record])).decode())
    assert reader_for("things", header).read(row, 1) == (record, [])


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    ("table", "header", "code"),
    [
        ("things", [], "INVALID_CSV"),
        ("things", ["a", "a"], "INVALID_CSV"),
        ("things", ["a", ""], "INVALID_CSV"),
        ("orders", ["user_id", "product_name", "quantity", "total_price", "x"], "INVALID_CSV"),
        ("orders", ["user_id", "product_name", "quantity"], "INVALID_CSV"),
        ("users", ["email"], "IMPORT_NOT_SUPPORTED"),
    ],
)
def test_bad_headers(table: str, header: list[str], code: str) -> None:
    with pytest.raises(ApiError) as caught:
        reader_for(table, header)
    assert caught.value.status_code == 400
    assert caught.value.code == code


class RefusingStore:
    """Refuses any batch holding a record with ``bad``, like the store: at that op's index."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.batches = 0
        self.written: list[str] = []

    async def call(self, command: str, args: dict[str, Any]) -> Any:
        if command == "get_many":
            if not self.existing:
                raise NotFound("no table", {})
            return [{"id": i} if i in self.existing else None for i in args["ids"]]
        self.batches += 1
        for index, op in enumerate(args["ops"]):
            if op["record"].get("bad"):
                raise Conflict(
                    "foreign key", {"reason": "foreign_key", "field": "u", "index": index}
                )
        self.written += [op["record"]["id"] for op in args["ops"]]
        return {"results": []}


@pytest.mark.parametrize("existing", [set(), {"r3", "r499"}])
def test_refused_rows_cost_one_extra_batch_each(existing: set[str]) -> None:
    chunk = [(n + 1, {"id": f"r{n}", "bad": n % 50 == 49}) for n in range(500)]
    store = RefusingStore(existing)
    report = ImportReport("t", atomic=False)
    asyncio.run(write_chunk(store, "t", chunk, report))  # type: ignore[arg-type]
    bad = {f"r{n}" for n in range(500) if n % 50 == 49}
    assert store.written == [f"r{n}" for n in range(500) if f"r{n}" not in bad | existing]
    assert report.imported == len(store.written)
    assert report.failed == len(bad | existing)
    assert store.batches <= 1 + 2 * len(bad)
    assert {e["field"] for e in report.errors} == ({"u", "id"} if existing else {"u"})


# -- header names: the formula guard, reversed on import ------------------------------------

NAMES = ["=cmd|' /C calc'!A0", "@sum", "+x", "-x", "\tx", "\rx", "'=x", "''@x", "'x", "a=b", "'"]


@pytest.mark.parametrize("name", NAMES)
def test_header_names_are_escaped_and_read_back(name: str) -> None:
    encoded = encode_name(name)
    assert encoded[0] not in INJECTION_START
    assert decode_name(encoded) == name


@given(st.text(min_size=1))
def test_every_header_name_is_safe_and_survives(name: str) -> None:
    assert encode_name(name)[0] not in INJECTION_START
    assert decode_name(encode_name(name)) == name


def test_export_header_is_escaped_and_import_reverses_it() -> None:
    record = {"id": "a", "=cmd|' /C calc'!A0": 1, "@sum": "x", "'=x": 2, "plain": 3}
    columns, extra = columns_for("things", [record])
    encoder = CsvEncoder("things", columns, extra)
    body = encoder.header() + encoder.rows([record])
    header_cells = rows_of(body.decode())[0]
    assert header_cells[:5] == ["id", "'=cmd|' /C calc'!A0", "'@sum", "''=x", "plain"]
    header, rows = read_rows(io.BytesIO(body))
    assert header[:5] == ["id", "=cmd|' /C calc'!A0", "@sum", "'=x", "plain"]
    (number, row), *_ = list(rows)
    assert isinstance(row, list)
    assert reader_for("things", header).read(row, number) == (record, [])


# -- bytes → lines: a bad byte is blamed on its own row -------------------------------------


def read_all(body: bytes) -> tuple[list[str], list[tuple[int, Any]]]:
    """The header and the rows (blank lines, which come as ``None`` steps, left out)."""
    header, rows = read_rows(io.BytesIO(body))
    return header, [(number, row) for number, row in rows if row is not None]


def test_a_blank_line_is_a_step_but_not_a_row() -> None:
    header, rows = read_rows(io.BytesIO(b"a\r\n1\r\n\r\n\n2\r\n"))
    assert header == ["a"]
    assert list(rows) == [(1, ["1"]), (1, None), (1, None), (2, ["2"])]


def test_a_bad_byte_on_a_data_row_names_that_row_not_the_header() -> None:
    body = b"id,name\r\nr1,caf\xe9\r\nr2,ok\r\n"
    header, rows = read_all(body)
    assert header == ["id", "name"]
    [(number, error)] = rows
    assert number == 1 and isinstance(error, RowError)
    assert (error.row, error.field) == (1, None)
    bad = body.index(b"\xe9")
    assert f"row 1 is not UTF-8 (byte {bad} of the file)" in error.message


def test_rows_before_a_bad_byte_far_into_the_file_are_read() -> None:
    """Past one 8 KiB decoding block: every good row before the bad one comes through."""
    good = b"".join(b"r%d,%s\n" % (n, b"x" * 50) for n in range(1, 501))
    body = b"\xef\xbb\xbfid,name\n" + good + b"bad,\xff\n" + b"late,y\n"
    header, rows = read_all(body)
    assert header == ["id", "name"]  # the BOM is not part of the first name
    assert [number for number, row in rows] == list(range(1, 502))
    assert all(isinstance(row, list) for _, row in rows[:500])
    error = rows[500][1]
    assert isinstance(error, RowError) and error.row == 501
    bad = body.index(b"\xff")
    assert f"byte {bad} of the file" in error.message


def test_a_bad_byte_in_the_header_is_a_header_error() -> None:
    with pytest.raises(ApiError) as caught:
        read_rows(io.BytesIO(b"id,n\xffame\r\nr1,x\r\n"))
    assert caught.value.status_code == 400
    assert "header line" in caught.value.message and "byte 4" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"a,b\r\n1,2\r\n3,4\r\n",
        b"a,b\n1,2\n3,4",
        b"a,b\r1,2\r3,4\r",  # lone CRs end lines, as with newline=""
        b'a,b\r\n1,"two\r\nlines"\r\n3,4\r\n',
        b'a,b\n1,"two\rlines"\n3,4\n',
    ],
)
def test_line_ends_read_as_before(body: bytes) -> None:
    expected = list(csv.reader(io.StringIO(body.decode(), newline="")))
    header, rows = read_all(body)
    assert [header, *[row for _, row in rows]] == expected


def test_malformed_csv_names_its_own_line() -> None:
    _, rows = read_all(b'a,b\n1,2\n"x"y,3\n')
    error = rows[-1][1]
    assert isinstance(error, RowError) and error.row == 2
    assert error.message.startswith("malformed CSV near line 3 ")


def test_cr_only_lines_stream_and_a_bad_byte_is_blamed_on_its_row() -> None:
    """Lines ended by lone CRs (old Mac files) are read one by one, as LF and CRLF lines are:
    a bad byte on row 8 stops the rows there, not at the header."""
    lines = [b"a,b", *(b"%d,ok" % n for n in range(1, 8)), b"8,caf\xe9", b"9,ok", b"10,ok"]
    body = b"\r".join(lines) + b"\r"
    header, rows = read_all(body)
    assert header == ["a", "b"]
    assert [row for _, row in rows[:7]] == [[str(n), "ok"] for n in range(1, 8)]
    [(number, error)] = rows[7:]
    assert number == 8 and isinstance(error, RowError)
    bad = body.index(b"\xe9")
    assert f"row 8 is not UTF-8 (byte {bad} of the file)" in error.message


def test_a_cr_only_file_is_not_read_whole_for_its_first_row() -> None:
    body = b"a,b\r" + b"".join(b"%d,%s\r" % (n, b"x" * 100) for n in range(20_000))
    binary = io.BytesIO(body)
    header, rows = read_rows(binary)
    assert (header, next(rows)) == (["a", "b"], (1, ["0", "x" * 100]))
    assert binary.tell() < len(body) // 10


@pytest.mark.parametrize(
    "body",
    [
        b"a,b\r" + b"1," + b"x" * 70_000 + b"\r\n2,y\r3,z\n",  # a CRLF split between reads
        b"a,b\r\n1,2\r",  # a CR last
        b"a,b\r\r\n\n1,2",  # blank lines of each kind
    ],
)
def test_line_ends_split_across_reads_read_as_before(body: bytes) -> None:
    expected = list(csv.reader(io.StringIO(body.decode(), newline="")))
    header, rows = read_all(body)
    assert [header, *[row for _, row in rows]] == [row for row in expected if row]


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        ("x" * 1_500_000, "x" * 1_500_000),
        ("[" + ",".join(["1.0e0"] * 250_000) + "]", '"[' + ",".join(["1.0e0"] * 250_000) + ']"'),
        ("two\nlines" * 150_000, '"' + "two\nlines" * 150_000 + '"'),
    ],
    ids=["bare", "quoted", "quoted-over-many-lines"],
)
def test_a_cell_longer_than_1_mib_is_read_and_so_are_the_rows_after_it(
    cell: str, text: str
) -> None:
    """The export writes such cells (a record's late fields in one _extra map, a long list of
    floats): the body limit bounds them, not a smaller limit of the reader's."""
    header, rows = read_all(f"id,v\r\nbig,{text}\r\nnext,1\r\n".encode())
    assert header == ["id", "v"]
    assert rows == [(1, ["big", cell]), (2, ["next", "1"])]


def test_the_header_of_a_sparse_or_wide_table_stays_within_what_the_import_takes() -> None:
    """400 records of 4 fields of their own: 1,601 names; the columns are the first 1,000
    (id included), the other fields go in _extra, and the file imports back."""
    first = [{"id": f"w{n}", **{f"{c}{n}": n for c in "abcd"}} for n in range(400)]
    columns, extra = columns_for("things", first)
    assert len(columns) == MAX_COLUMNS + 3 and columns[:3] == ("id", "a0", "b0") and extra
    encoder = CsvEncoder("things", columns, extra)
    header, *rows = rows_of((encoder.header() + encoder.rows(first)).decode())
    reader = reader_for("things", header)
    assert [reader.read(row, n) for n, row in enumerate(rows, 1)] == [(r, []) for r in first]


def test_the_import_counts_only_the_columns_of_fields() -> None:
    fields = ["id", *(f"f{n}" for n in range(MAX_COLUMNS - 1))]
    reader_for("things", [*fields, "created_at", "updated_at", "version", "_extra"])
    with pytest.raises(ApiError) as caught:
        reader_for("things", [*fields, "one_more", "_extra"])
    assert caught.value.status_code == 400
    assert caught.value.message == (
        "at most 1000 columns besides created_at, updated_at, version, _extra"
    )


def test_rows_too_many_values_together_are_split_not_blamed() -> None:
    """The store's batch limit on values counts the rows together (``records.one_budget``):
    the row it stopped at is not at fault, so the chunk is halved and every row lands."""
    store = EngineStore()
    chunk = [(n, {"id": f"r{n}", "v": [0] * 200_000}) for n in range(1, 5)]  # 800,000 values
    report = ImportReport("t", atomic=False)
    asyncio.run(write_chunk(store, "t", chunk, report))  # type: ignore[arg-type]
    assert (report.imported, report.failed, report.errors) == (4, 0, [])
    batches = [args for command, args in store.calls if command == "batch"]
    assert [len(args["ops"]) for args in batches] == [4, 2, 2]


def test_the_report_keeps_the_errors_of_the_first_rows_in_row_order() -> None:
    """QA: the next chunk's invalid rows are reported while the store writes the one before,
    so errors arrive out of row order; the list kept later rows' and omitted earlier ones."""
    report = ImportReport("t", atomic=False)
    report.add([RowError(row, "a", f"bad {row}") for row in range(200, 300)])  # read ahead
    report.add([RowError(7, "id", "taken"), RowError(7, "u", "duplicate")])  # then the store
    report.add([RowError(250, "b", "late")])
    assert len(report.errors) == 100 and report.errors_omitted == 3
    assert [e["row"] for e in report.errors] == [7, 7, *sorted([*range(200, 297), 250])]
    assert [e["field"] for e in report.errors[:2]] == ["id", "u"]
    late = [e["field"] for e in report.errors if e["row"] == 250]
    assert late == ["a", "b"]  # a row's own errors in the order given
