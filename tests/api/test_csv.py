"""CSV import and export through the real stack: POST /batch/import, GET /batch/{t}/export."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from api.services.csv_export import CHUNK_ROWS
from storeserver.client import StoreClient
from tests.support.auth import register
from tests.support.factories import (
    assert_error,
    create_order,
    create_user,
    order_payload,
    token,
)
from tests.support.logs import json_lines
from tests.support.stack import Stack
from tests.support.storedirect import bulk_insert, store_call

pytestmark = pytest.mark.integration
IMPORT = "/api/v1/batch/import"
MANAGED = ("created_at", "updated_at", "version")
ODD_STRINGS = [
    "ünïcødé ✓ 🎉 日本語",
    "comma, inside",
    'quote " inside',
    '"fully quoted"',
    "line\nbreak and\r\ncrlf",
    "",
    " leading and trailing ",
    "12",
    "-12",
    "007",
    "1.50",
    "1e5",
    "null",
    "true",
    '=HYPERLINK("http://x")',
    "+SUM(A1)",
    "@cmd",
    "\ttab first",
    "'apostrophe",
    "'=escaped already",
    "[not json",
    "{}",
]


def export(client: httpx.Client, table: str, **params: str) -> str:
    response = client.get(f"/api/v1/batch/{table}/export", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return response.text


def import_csv(client: httpx.Client, table: str, text: str, **params: str) -> httpx.Response:
    return client.post(
        IMPORT,
        params={"table": table, **params},
        content=text.encode(),
        headers={"Content-Type": "text/csv"},
    )


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def stored(stack: Stack, table: str) -> dict[str, dict[str, Any]]:
    """Every record of a table by id, without the store-managed fields."""
    records: dict[str, dict[str, Any]] = {}
    page = store_call(stack, "scan", {"table": table, "limit": 1000})
    while True:
        for record in page["items"]:
            records[record["id"]] = {k: v for k, v in record.items() if k not in MANAGED}
        if not page["cursor"]:
            return records
        page = store_call(stack, "scan", {"cursor": page["cursor"], "limit": 1000})


def odd_record(n: int, rng: random.Random) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"r-{n}",
        "text": rng.choice(ODD_STRINGS),
        "price": Decimal(rng.randrange(-(10**6), 10**6)) / 100,
        "qty": rng.randrange(-1000, 1000),
        "ratio": rng.random() * 10 ** rng.randrange(-5, 5),
        "flag": rng.choice([True, False, None]),
        "meta": {"tags": [rng.choice(ODD_STRINGS), n], "amount": Decimal("0.10")},
    }
    if n % 3 == 0:
        del record["flag"]  # absent, not null
    if n % 7 == 0:
        record["late_field"] = rng.choice(ODD_STRINGS)  # not in the first chunk: goes to _extra
    return record


def test_round_trip_of_10000_odd_rows(client: httpx.Client, stack: Stack) -> None:
    rng = random.Random(7)
    source, copy = f"csv_src_{token()}", f"csv_copy_{token()}"
    records = [odd_record(n, rng) for n in range(10_000)]
    for record in records[:CHUNK_ROWS]:  # the first chunk fixes the columns
        record.pop("late_field", None)
    bulk_insert(stack, source, records)
    text = export(client, source)
    rows = rows_of(text)
    # id, the fields in order of first appearance (record 0 has no flag), managed, _extra
    assert rows[0] == ["id", "text", "price", "qty", "ratio", "meta", "flag", *MANAGED, "_extra"]
    assert len(rows) == 10_001
    for row in rows[1:]:  # no cell can start a formula; negative numbers stay numbers
        for cell in row:
            assert not cell or cell[0] not in "=+@\t\r"
            assert not cell.startswith("-") or cell[1:2].isdigit()

    response = client.post(IMPORT, files={"file": (f"{copy}.csv", text.encode(), "text/csv")})
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert report == {
        "table": copy,
        "atomic": False,
        "rows": 10_000,
        "imported": 10_000,
        "failed": 0,
        "errors": [],
        "errors_omitted": 0,
    }
    expected = {r["id"]: r for r in records}
    assert stored(stack, copy) == expected  # same ids, values and types
    again = stored(stack, copy)["r-1"]
    assert type(again["price"]) is Decimal and type(again["ratio"]) is float
    assert [row[:7] for row in rows_of(export(client, copy))] == [row[:7] for row in rows]


def test_orders_round_trip_keeps_ids_dates_and_exact_prices(
    client: httpx.Client, stack: Stack
) -> None:
    user = create_user(client)
    made = [create_order(client, user["id"], total_price=f"{n}.05") for n in range(1, 4)]
    text = export(client, "orders", user_id=user["id"])
    rows = rows_of(text)
    assert rows[0] == ["id", "user_id", "product_name", "quantity", "total_price", "order_date",
                       *MANAGED]  # fmt: skip
    assert [row[4] for row in rows[1:]] == ["1.05", "2.05", "3.05"]
    for order in made:
        assert client.delete(f"/api/v1/orders/{order['id']}").status_code == 204
    response = import_csv(client, "orders", text)
    assert response.json()["data"]["imported"] == 3, response.text
    for order in made:
        again = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
        assert {k: again[k] for k in again if k not in MANAGED} == {
            k: order[k] for k in order if k not in MANAGED
        }


def test_bad_rows_are_reported_and_good_rows_imported(client: httpx.Client) -> None:
    table = f"csv_bad_{token()}"
    text = (
        "id,n,data\n"
        "a,1,{}\n"
        "b,2,[1\n"  # row 2: bad JSON
        "c,3\n"  # row 3: too few cells
        "bad id!,4,\n"  # row 4: invalid id
        "e,99999999999999999999,\n"  # row 5: integer too large
        "a,6,\n"  # row 6: duplicate id (refused by the store)
        "\n"  # blank lines are skipped
        'g,7,"{""k"": 1.5}"\n'
    )
    response = import_csv(client, table, text)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "private, no-cache"  # a data answer (QA)
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (7, 2, 5)
    problems = {(e["row"], e["field"]) for e in report["errors"]}
    assert problems == {(2, "data"), (3, None), (4, "id"), (5, "n"), (6, "id")}
    listed = client.get(f"/api/v1/data/{table}", params={"sort": "n:asc"}).json()["data"]
    assert [(r["id"], r["n"]) for r in listed] == [("a", 1), ("g", 7)]
    assert listed[1]["data"] == {"k": "1.5"}  # exact decimal (JSON responses carry it as text)


def test_order_rows_are_validated_like_the_orders_api(client: httpx.Client) -> None:
    user = create_user(client)
    missing = "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1"
    text = (
        "user_id,product_name,quantity,total_price\n"
        f"{user['id']},Widget,2,19.99\n"
        f"{user['id']},Widget,0,19.99\n"  # quantity must be > 0
        f"{user['id']},Widget,1,1.999\n"  # at most 2 decimal places
        f"{missing},Widget,1,5.00\n"  # no such user: the store's foreign key
    )
    report = import_csv(client, "orders", text).json()["data"]
    assert (report["imported"], report["failed"]) == (1, 3)
    assert {(e["row"], e["field"]) for e in report["errors"]} == {
        (2, "quantity"),
        (3, "total_price"),
        (4, "user_id"),
    }


def test_an_orders_user_id_is_read_as_post_orders_reads_it(client: httpx.Client) -> None:
    """QA: the import decoded user_id as a typed cell: a braced UUID (201 through POST
    /orders) was "invalid JSON", and 32 decimal digits (a UUID in hex) an integer out of
    range, where POST /orders reads both as UUIDs."""
    user = create_user(client)
    digits = "12345678123456781234567812345678"  # a UUID no user has
    text = (
        "user_id,product_name,quantity,total_price\n"
        f"{{{user['id']}}},Braced,1,1.00\n"
        f"{user['id'].replace('-', '').upper()},Bare,1,1.00\n"
        f"{digits},Digits,1,1.00\n"
    )
    report = import_csv(client, "orders", text).json()["data"]
    assert (report["imported"], report["failed"]) == (2, 1), report
    (error,) = report["errors"]
    assert (error["row"], error["field"]) == (3, "user_id")
    assert "64-bit" not in error["message"]
    orders = client.get(f"/api/v1/users/{user['id']}/orders").json()["data"]
    assert sorted(o["product_name"] for o in orders) == ["Bare", "Braced"]
    assert {o["user_id"] for o in orders} == {user["id"]}


def test_error_list_is_bounded(client: httpx.Client) -> None:
    text = "id,n\n" + "".join(f"x{n},[\n" for n in range(250))
    report = import_csv(client, f"csv_many_{token()}", text).json()["data"]
    assert report["failed"] == 250
    assert len(report["errors"]) == 100
    assert report["errors_omitted"] == 150


def test_atomic_import_is_all_or_nothing(client: httpx.Client) -> None:
    table = f"csv_atomic_{token()}"
    bad = "id,n\na,1\nb,[\nc,3\n"
    error = assert_error(import_csv(client, table, bad, atomic="true"), 422, "VALIDATION_ERROR")
    assert error["details"] == [{"row": 2, "field": "n", "message": error["details"][0]["message"]}]
    assert_error(client.get(f"/api/v1/data/{table}"), 404)  # nothing written, not even the table

    good = "id,n\na,1\nb,2\n"
    assert import_csv(client, table, good, atomic="true").json()["data"]["imported"] == 2
    clash = "id,n\nz,1\nb,2\n"  # b exists: the store refuses row 2, and z is rolled back
    error = assert_error(import_csv(client, table, clash, atomic="true"), 409, "ALREADY_EXISTS")
    assert error["details"][0]["row"] == 2
    assert_error(client.get(f"/api/v1/data/{table}/z"), 404)

    too_many = "n\n" + "1\n" * 1001
    error = assert_error(import_csv(client, table, too_many, atomic="true"), 400)
    assert error["code"] == "LIMIT_EXCEEDED"


HUGE = "9" * 5000  # past the 4300 digits int() converts at all


@pytest.mark.parametrize("atomic", ["false", "true"])
def test_a_huge_integer_is_a_row_error(client: httpx.Client, atomic: str) -> None:
    table = f"csv_huge_{token()}"
    text = f'id,n,_extra\na,1,\nb,{HUGE},\nc,2,"{{""x"":[{HUGE}]}}"\n'
    response = import_csv(client, table, text, atomic=atomic)
    expected = [(2, "n"), (3, "x.0")]  # inside _extra: the field and its path
    if atomic == "true":
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert [(d["row"], d["field"]) for d in error["details"]] == expected
        return
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["imported"], report["failed"]) == (1, 2)
    assert [(e["row"], e["field"]) for e in report["errors"]] == expected


@pytest.mark.parametrize("atomic", ["false", "true"])
def test_ref_shaped_maps_and_unnamable_fields_round_trip(
    client: httpx.Client, stack: Stack, atomic: str
) -> None:
    """A stored map like {"$ref": "0.id"} is data: the import writes it as is (its store
    batches resolve no references); a field named "" travels in _extra."""
    table = f"csv_refs_{token()}"
    records: list[dict[str, Any]] = [
        {"id": "a", "n": 1},
        {"id": "b", "m": {"$ref": "0.id"}},
        {"id": "c", "m": {"$ref": "x"}, "": 1},
        {"id": "d", "m": [{"$ref": "1.m"}], "_extra": {"$ref": "0.n"}},
    ]
    created = client.post(f"/api/v1/data/{table}", json={"data": records})  # no refs=true
    assert created.status_code == 201, created.text
    text = export(client, table)
    assert rows_of(text)[0] == ["id", "n", "m", *MANAGED, "_extra"]
    copy = f"{table}_copy"
    response = import_csv(client, copy, text, atomic=atomic)
    assert response.json()["data"]["imported"] == 4, response.text
    assert stored(stack, copy) == {record["id"]: record for record in records}


def test_an_infinity_in_a_csv_is_refused_on_import(client: httpx.Client) -> None:
    """The store refuses non-finite numbers; older data may hold them and its export writes
    them as 1e999 (tests/api/test_csv_export_legacy_values.py): importing them is a row error."""
    table = f"csv_inf_{token()}"
    text = "id,x\na,1\nb,1e999\nc,[-1e999]\n"
    report = import_csv(client, table, text).json()["data"]
    assert (report["imported"], report["failed"]) == (1, 2)
    assert [(e["row"], e["field"], e["message"]) for e in report["errors"]] == [
        (2, "x", "numbers must be finite"),
        (3, "x.0", "numbers must be finite"),
    ]


def test_import_larger_than_the_limit_is_413(client: httpx.Client, stack: Stack) -> None:
    limit = 64 * 1024 * 1024  # IMPORT_MAX_BYTES' default
    # Declared: refused before any byte of the body is read.
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        request = (
            f"POST {IMPORT}?table=big HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {client.headers['Authorization']}\r\n"
            f"Content-Type: text/csv\r\nContent-Length: {limit + 1}\r\n\r\nn\n1\n"
        )
        sock.sendall(request.encode())
        # The head and the body may arrive in separate segments: read until the body is in.
        head = ""
        while "PAYLOAD_TOO_LARGE" not in head and (chunk := sock.recv(65536)):
            head += chunk.decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert '"code":"PAYLOAD_TOO_LARGE"' in head

    # Chunked, no Content-Length: cut off once the bytes received pass the limit.
    def body() -> Iterator[bytes]:
        yield b"n\n"
        line = b"1234567\n" * (1 << 17)  # 1 MiB
        for _ in range(limit // len(line) + 1):
            yield line

    response = client.post(
        IMPORT, params={"table": f"csv_big_{token()}"}, content=body(),
        headers={"Content-Type": "text/csv"}, timeout=60,
    )  # fmt: skip
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    # A JSON body keeps the ordinary 1 MiB limit.
    huge = client.post("/api/v1/data/x", json={"data": {"pad": "x" * 1_100_000}})
    assert_error(huge, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("params", "content_type", "body", "status", "code"),
    [
        ({}, "text/csv", "a\n1\n", 400, "BAD_QUERY"),
        ({"table": "Bad-Name"}, "text/csv", "a\n1\n", 400, "INVALID_TABLE_NAME"),
        ({"table": "users"}, "text/csv", "email\nx@example.com\n", 400, "IMPORT_NOT_SUPPORTED"),
        # QA: was 202 and a job that failed with it
        (
            {"table": "users", "async": "true"},
            "text/csv",
            "email\nx\n",
            400,
            "IMPORT_NOT_SUPPORTED",
        ),
        ({"table": "t"}, "text/csv", "", 400, "INVALID_CSV"),
        ({"table": "t"}, "text/csv", "a,a\n1,2\n", 400, "INVALID_CSV"),
        ({"table": "t"}, "text/csv", "\xff\xfe", 400, "INVALID_CSV"),
        ({"table": "orders"}, "text/csv", "x\n1\n", 400, "INVALID_CSV"),
        ({"table": "t"}, "application/json", '{"a": 1}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ({"table": "t", "atomic": "maybe"}, "text/csv", "a\n1\n", 422, "VALIDATION_ERROR"),
    ],
)
def test_import_errors(
    client: httpx.Client,
    params: dict[str, str],
    content_type: str,
    body: str,
    status: int,
    code: str,
) -> None:
    content = body.encode("latin-1") if body.startswith("\xff") else body.encode()
    response = client.post(IMPORT, params=params, content=content,
                           headers={"Content-Type": content_type})  # fmt: skip
    assert_error(response, status, code)


def test_multipart_errors(client: httpx.Client) -> None:
    no_file = client.post(IMPORT, files={"note": (None, b"text")})
    assert_error(no_file, 400, "INVALID_CSV")
    badly_named = client.post(IMPORT, files={"file": ("My File.csv", b"a\n1\n", "text/csv")})
    assert_error(badly_named, 400, "INVALID_TABLE_NAME")
    table = f"csv_named_{token()}"  # ?table= wins over the file's name
    named = client.post(IMPORT, params={"table": table}, files={"file": ("x.csv", b"a\n1\n")})
    assert named.json()["data"]["table"] == table


def test_malformed_multipart_is_a_400_envelope(client: httpx.Client) -> None:
    """Two file parts, a missing boundary and broken multipart data."""
    two = client.post(
        IMPORT, files=[("file", ("a.csv", b"id\r\nx\r\n")), ("more", ("b.csv", b"id\r\n"))]
    )
    assert_error(two, 400)
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=xyz"):
        response = client.post(IMPORT, content=b"garbage", headers={"content-type": content_type})
        assert_error(response, 400)


def test_malformed_multipart_writes_no_warning_line(anon: httpx.Client, stack: Stack) -> None:
    """QA: the multipart parser's own logger wrote a warning for each malformed part, so
    any client could write warning lines at will (to the token endpoint, unauthenticated)."""
    log = stack.workdir / "api.log"
    start = log.stat().st_size
    body = b'--X\r\nContent-Disposition: form-data; name="username"\r\n[bad\r\n\r\nx\r\n--X--\r\n'
    form = {"Content-Type": "multipart/form-data; boundary=X"}
    assert_error(anon.post("/api/v1/auth/token", content=body, headers=form), 400)
    time.sleep(0.3)  # a worker's lines are written as its request ends
    lines = json_lines(log, start)  # the stack logs warnings and up
    assert not [line for line in lines if "multipart" in str(line.get("logger", ""))]


def test_access_control(anon: httpx.Client, stack: Stack) -> None:
    assert_error(anon.get("/api/v1/batch/orders/export"), 401, "NOT_AUTHENTICATED")
    assert_error(anon.post(IMPORT, params={"table": "t"}, content=b"a\n1\n",
                           headers={"Content-Type": "text/csv"}), 401)  # fmt: skip
    with httpx.Client(base_url=stack.base_url) as http:
        user = register(http)
        http.headers.update(user.headers)
        assert_error(http.get("/api/v1/batch/orders/export"), 403, "FORBIDDEN")
        response = http.post(IMPORT, params={"table": "orders"}, content=b"a\n1\n",
                             headers={"Content-Type": "text/csv"})  # fmt: skip
        assert_error(response, 403, "FORBIDDEN")


def test_export_filters_and_errors(client: httpx.Client, stack: Stack) -> None:
    table = f"csv_f_{token()}"
    bulk_insert(stack, table, [{"n": n, "kind": "ab"[n % 2]} for n in range(1200)])
    rows = rows_of(export(client, table, kind="b", n__gte="1000"))
    assert [int(row[1]) for row in rows[1:]] == list(range(1001, 1200, 2))
    assert export(client, table, n__gt="5000").splitlines() == [
        "id,n,kind,created_at,updated_at,version,_extra"
    ]
    assert_error(client.get(f"/api/v1/batch/csv_missing_{token()}/export"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/v1/batch/{table}/export?sort=n:asc"), 400, "BAD_QUERY")
    assert_error(client.get(f"/api/v1/batch/{table}/export?page=2"), 400, "BAD_QUERY")
    assert_error(client.get(f"/api/v1/batch/{table}/export?n__zz=1"), 400, "BAD_QUERY")
    assert_error(client.get("/api/v1/batch/orders/export?nope=1"), 400, "BAD_QUERY")
    assert_error(client.get("/api/v1/batch/orders/export?quantity=x"), 422, "VALIDATION_ERROR")
    assert_error(client.get("/api/v1/batch/Bad-Name/export"), 400, "INVALID_TABLE_NAME")


def test_filtered_export_goes_on_through_reads_that_matched_nothing(
    client: httpx.Client, stack: Stack
) -> None:
    """The store examines a bounded number of rows per filtered read (5,000): matches that only
    start past them come back after empty reads, and the export still ends with all of them."""
    table = f"csv_late_{token()}"
    bulk_insert(stack, table, [{"n": n} for n in range(12_000)])
    rows = rows_of(export(client, table, n__gte="11990"))
    assert rows[0][:2] == ["id", "n"] and [int(row[1]) for row in rows[1:]] == list(
        range(11_990, 12_000)
    )


def test_users_export_has_no_password_hashes(client: httpx.Client) -> None:
    user = create_user(client)
    text = export(client, "users", email=user["email"].upper())  # email filters ignore case
    rows = rows_of(text)
    assert len(rows) == 2 and rows[1][0] == user["id"]
    assert "password" not in text and "$2b$" not in text


async def _fill(socket_path: str, table: str, count: int) -> None:
    store = StoreClient(f"unix:{socket_path}", timeout=30.0)
    await store.connect()
    try:
        record = {"name": 'item, "quoted"', "price": Decimal("12.34"), "n": 0}
        batches = [
            {"ops": [{"op": "insert", "table": table, "record": {**record, "n": n}}
                     for n in range(start, min(start + 1000, count))]}
            for start in range(0, count, 1000)
        ]  # fmt: skip
        for start in range(0, len(batches), 8):  # 8 batches in flight
            await asyncio.gather(*(store.call("batch", b) for b in batches[start : start + 8]))
    finally:
        await store.close()


def test_a_large_export_streams_while_others_are_served(
    client: httpx.Client, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = 60_000
    table = f"csv_huge_{token()}"
    # Many export pages (the throughput itself is make bench-data's, over 1M rows).
    asyncio.run(_fill(str(stack.socket_path), table, rows))
    one = store_call(stack, "find", {"table": table, "limit": 1})["items"][0]
    counted = {"rows": 0, "bytes": 0}
    done = threading.Event()

    def read_export() -> None:
        try:
            headers = {**client.headers, "Accept-Encoding": "identity"}
            # async=false: stream it now (past JOB_ASYNC_ROWS the default is a background job)
            url = f"{stack.base_url}/api/v1/batch/{table}/export?async=false"
            with httpx.stream("GET", url, headers=headers, timeout=60) as response:
                assert response.status_code == 200
                assert "content-length" not in response.headers
                for line in response.iter_lines():
                    counted["rows"] += 1
                    counted["bytes"] += len(line) + 2
        finally:
            done.set()

    reader = threading.Thread(target=read_export)
    started = time.perf_counter()
    reader.start()
    latencies: list[float] = []
    while not done.is_set():
        begin = time.perf_counter()
        response = client.get(f"/api/v1/data/{table}/{one['id']}")
        latencies.append(time.perf_counter() - begin)
        assert response.status_code == 200
        time.sleep(0.005)
    reader.join()
    elapsed = time.perf_counter() - started
    assert counted["rows"] == rows + 1  # the header and every record
    assert len(latencies) >= 5
    ms = sorted(x * 1000 for x in latencies)
    with capsys.disabled():
        print(
            f"\n[csv export] {rows} rows, {counted['bytes'] / 1e6:.1f} MB in {elapsed:.2f} s"
            f" ({rows / elapsed:,.0f} rows/s); {len(ms)} concurrent GETs: p50"
            f" {statistics.median(ms):.1f} ms, p95 {ms[int(len(ms) * 0.95) - 1]:.1f} ms,"
            f" max {ms[-1]:.1f} ms"
        )


def test_header_names_are_escaped_against_formulas_and_round_trip(
    client: httpx.Client, stack: Stack
) -> None:
    source, copy = f"csv_hdr_{token()}", f"csv_hdr_copy_{token()}"
    record = {"id": "h1", "=cmd|' /C calc'!A0": 1, "@sum": "x", "'=x": 2}
    bulk_insert(stack, source, [record])
    text = export(client, source)
    header = rows_of(text)[0]
    assert header[:4] == ["id", "'=cmd|' /C calc'!A0", "'@sum", "''=x"]
    assert all(name[0] not in "=+-@\t\r" for name in header)
    response = import_csv(client, copy, text)
    assert response.json()["data"]["imported"] == 1, response.text
    assert stored(stack, copy) == {"h1": record}


@pytest.mark.parametrize("atomic", ["false", "true"])
def test_a_bad_byte_on_a_data_row_is_blamed_on_that_row(client: httpx.Client, atomic: str) -> None:
    user = create_user(client)
    header = b"user_id,product_name,quantity,total_price\r\n"
    body = header + user["id"].encode() + b",Caf\xe9,1,9.99\r\n"
    response = client.post(
        IMPORT,
        params={"table": "orders", "atomic": atomic},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    if atomic == "true":
        details = assert_error(response, 422)["details"]
    else:
        assert response.status_code == 200, response.text
        details = response.json()["data"]["errors"]
    assert [(d["row"], d["field"]) for d in details] == [(1, None)]
    bad = body.index(b"\xe9")
    assert f"row 1 is not UTF-8 (byte {bad} of the file)" in details[0]["message"]
    assert "header" not in response.text


def test_orders_dated_before_year_1000_round_trip(client: httpx.Client) -> None:
    user = create_user(client)
    order = create_order(client, user["id"], order_date="0999-06-01T00:00:00Z")
    assert order["order_date"] == "0999-06-01T00:00:00.000000Z"
    text = export(client, "orders", user_id=user["id"])
    assert client.delete(f"/api/v1/orders/{order['id']}").status_code == 204
    response = import_csv(client, "orders", text)
    assert response.json()["data"]["imported"] == 1, response.text
    again = client.get(f"/api/v1/orders/{order['id']}").json()["data"]
    assert again["order_date"] == "0999-06-01T00:00:00.000000Z"


def test_an_order_date_is_checked_as_post_orders_checks_it(client: httpx.Client) -> None:
    """With a time zone, not in the future, within years 1-9999 once in UTC: per-row errors
    naming it, in the words POST /orders answers for the same value."""
    user = create_user(client)
    refused = [
        "2999-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "2020-01-01",  # a date alone has no time zone either
        "2024-01-01T00:00:00",
    ]
    text = "user_id,product_name,quantity,total_price,order_date\r\n" + "".join(
        f"{user['id']},p{n},1,1.00,{date}\r\n"
        for n, date in enumerate([*refused, "2024-01-01T02:00:00+02:00"], start=1)
    )
    response = import_csv(client, "orders", text)
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["imported"], report["failed"]) == (1, 4)
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (n, "order_date") for n in range(1, 5)
    ]
    for date, error in zip(refused, report["errors"], strict=True):
        answer = client.post("/api/v1/orders", json=order_payload(user["id"], order_date=date))
        [detail] = assert_error(answer, 422, "VALIDATION_ERROR")["details"]
        assert error["message"] == detail["message"], date
    assert "future" in report["errors"][0]["message"]
    assert "out of range" in report["errors"][1]["message"]
    assert "timezone" in report["errors"][3]["message"]
    [order] = client.get(f"/api/v1/users/{user['id']}/orders").json()["data"]
    assert order["order_date"] == "2024-01-01T00:00:00.000000Z"


def test_a_malformed_line_is_a_failed_row_and_the_report_says_where_reading_stopped(
    client: httpx.Client,
) -> None:
    table = f"csv_stop_{token()}"
    response = import_csv(client, table, 'a,b\n1,2\n3,"x"y\n5,6\n7,8\n')
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (2, 1, 1)
    assert report["stopped_at_row"] == 2
    assert [(e["row"], e["field"]) for e in report["errors"]] == [(2, None)]
    assert "the rest of the file was not read" in report["errors"][0]["message"]


def test_a_record_whose_cells_pass_1_mib_round_trips_and_so_do_the_rows_after_it(
    client: httpx.Client, stack: Stack
) -> None:
    """A long list of floats (3 bytes each in JSON, 6 characters in a cell) and late fields
    that land in one _extra cell, both past 1 MiB: every row imports back."""
    table = f"csv_big_{token()}"
    records: list[dict[str, Any]] = [{"id": f"s{n:04}", "a": n} for n in range(CHUNK_ROWS)]
    records[5]["v"] = [1.0] * 250_000
    records.append({"id": "late", "a": 0, "note1": "x" * 600_000, "note2": "y" * 600_000})
    records += [{"id": f"t{n}", "a": n} for n in range(5)]
    bulk_insert(stack, table, records)
    text = export(client, table)
    default_limit = csv.field_size_limit(1 << 24)  # this test's own reading of the file
    try:
        rows = rows_of(text)
    finally:
        csv.field_size_limit(default_limit)
    assert rows[0] == ["id", "a", "v", *MANAGED, "_extra"]
    assert len(rows[6][2]) > 1 << 20 and len(rows[CHUNK_ROWS + 1][-1]) > 1 << 20
    copy = f"{table}_copy"
    response = import_csv(client, copy, text)
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["rows"], report["imported"], report["failed"]) == (1006, 1006, 0)
    assert stored(stack, copy) == {r["id"]: r for r in records}


@pytest.mark.parametrize(
    "records",
    [
        [{"id": f"w{n}", f"a{n}": n, f"b{n}": "x", f"c{n}": True} for n in range(400)],
        [{"id": "one", **{f"f{n}": n for n in range(996)}}],
        [{"id": "two", **{f"f{n}": n for n in range(1200)}}],
    ],
    ids=["sparse", "996-fields", "1200-fields"],
)
def test_sparse_and_wide_tables_round_trip(
    client: httpx.Client, stack: Stack, records: list[dict[str, Any]]
) -> None:
    """The header keeps at most 1000 columns of fields (the rest go in _extra), and the import
    does not count the store-managed columns and _extra among them."""
    table = f"csv_wide_{token()}"
    bulk_insert(stack, table, records)
    text = export(client, table)
    header = rows_of(text)[0]
    assert len(header) <= 1000 + len(MANAGED) + 1 and header[-1] == "_extra"
    copy = f"{table}_copy"
    response = import_csv(client, copy, text)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["imported"] == len(records)
    assert stored(stack, copy) == {r["id"]: r for r in records}
