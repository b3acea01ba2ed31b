"""A generic table's ``id`` cell is read as text: ids that look like numbers, booleans or null
are kept as written, and every id survives export → import."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from api.services.csv_rows import reader_for
from tests.support.factories import token
from tests.support.stack import Stack
from tests.support.storedirect import store_call

# Each one an id POST /data accepts, and each one a cell that would read as another type.
LOOKALIKE_IDS = ["123", "0", "007", "1e2", "1E5", "1.50", "3.", "true", "false", "null", "-5"]


def import_csv(client: httpx.Client, table: str, text: str, atomic: str = "false") -> Any:
    response = client.post(
        "/api/v1/batch/import",
        params={"table": table, "atomic": atomic},
        content=text.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def stored(stack: Stack, table: str) -> dict[str, dict[str, Any]]:
    """The table's records by id, without the store-managed fields (tables of a few rows)."""
    page = store_call(stack, "find", {"table": table, "limit": 1000})
    managed = ("created_at", "updated_at", "version")
    return {
        record["id"]: {k: v for k, v in record.items() if k not in managed}
        for record in page["items"]
    }


@pytest.mark.parametrize("cell", LOOKALIKE_IDS)
def test_a_bare_id_cell_is_its_text(cell: str) -> None:
    record, errors = reader_for("t", ["id", "v"]).read([cell, "1"], 1)
    assert (record, errors) == ({"id": cell, "v": 1}, [])


@pytest.mark.parametrize(
    ("cell", "expected"),
    [('"123"', "123"), ('"null"', "null"), ("'-x", "-x"), ("'@x", "@x")],
)
def test_an_exported_id_cell_reads_back_as_its_id(cell: str, expected: str) -> None:
    """The export JSON-quotes or escapes ids that would read as something else; neither ``"``
    nor a leading ``'`` can be in an id, so those cells are never an id's own text."""
    record, errors = reader_for("t", ["id"]).read([cell], 1)
    assert (record, errors) == ({"id": expected}, [])


@pytest.mark.integration
@pytest.mark.parametrize("atomic", ["false", "true"])
def test_ids_that_look_like_other_types_are_kept(
    client: httpx.Client, stack: Stack, atomic: str
) -> None:
    table = f"csv_ids_{token()}"
    text = "id,v\n" + "".join(f"{cell},{n}\n" for n, cell in enumerate(LOOKALIKE_IDS))
    text += ",generated\n"  # an empty id cell: the store generates one
    report = import_csv(client, table, text, atomic)
    assert (report["imported"], report["failed"], report["errors"]) == (12, 0, [])
    records = stored(stack, table)
    generated = [rid for rid, record in records.items() if record["v"] == "generated"]
    assert len(generated) == 1 and generated[0] not in LOOKALIKE_IDS
    del records[generated[0]]
    assert records == {cell: {"id": cell, "v": n} for n, cell in enumerate(LOOKALIKE_IDS)}
    for cell in LOOKALIKE_IDS:
        read = client.get(f"/api/v1/data/{table}/{cell}")
        assert read.status_code == 200 and read.json()["data"]["id"] == cell, read.text


@pytest.mark.integration
def test_an_id_cell_that_is_no_id_is_a_row_error(client: httpx.Client) -> None:
    """A JSON-quoted cell holding ``"quoted"`` (quotes included) names an id POST /data refuses
    too: a row error on ``id``, never a generated id in its place."""
    table = f"csv_ids_{token()}"
    text = 'id,v\n"""\\""quoted\\""""",1\nok,2\n'
    assert rows_of(text)[1][0] == '"\\"quoted\\""'
    report = import_csv(client, table, text)
    assert (report["imported"], report["failed"]) == (1, 1)
    assert [(e["row"], e["field"]) for e in report["errors"]] == [(1, "id")]
    assert "A-Z a-z 0-9" in report["errors"][0]["message"]


@pytest.mark.integration
def test_a_null_id_in_extra_gets_an_id_as_post_data_gives(client: httpx.Client) -> None:
    """QA: ``{"id": null}`` in the _extra cell passed the row's checks, then was sent to the
    store's id lookup, which refused the whole chunk: the import stopped with a 400 there."""
    table = f"csv_ids_{token()}"
    assert client.post(f"/api/v1/data/{table}", json={"data": {"n": 0}}).status_code == 201
    text = 'n,_extra\n1,\n2,"{""id"": null}"\n3,\n'
    report = import_csv(client, table, text)
    assert (report["rows"], report["imported"], report["failed"]) == (3, 3, 0), report
    listed = client.get(f"/api/v1/data/{table}", params={"sort": "n"}).json()["data"]
    assert [row["n"] for row in listed] == [0, 1, 2, 3]
    assert all(isinstance(row["id"], str) and row["id"] for row in listed)


@pytest.mark.integration
@pytest.mark.parametrize("atomic", ["false", "true"])
def test_every_id_round_trips_through_export_and_import(
    client: httpx.Client, stack: Stack, atomic: str
) -> None:
    table = f"csv_ids_{token()}"
    ids = [*LOOKALIKE_IDS, "@at", "-dash", "plain", "a.b~c:d_e"]
    records = [{"id": rid, "n": n} for n, rid in enumerate(ids)]
    created = client.post(f"/api/v1/data/{table}", json={"data": records})
    assert created.status_code == 201, created.text
    exported = client.get(f"/api/v1/batch/{table}/export")
    assert exported.status_code == 200, exported.text
    text = exported.text
    cells = {row[0] for row in rows_of(text)[1:]}
    assert {'"123"', '"1e2"', '"true"', '"null"', "'@at", "'-dash", "plain"} <= cells
    copy = f"{table}_copy"
    report = import_csv(client, copy, text, atomic)
    assert (report["imported"], report["errors"]) == (len(ids), [])
    assert stored(stack, copy) == stored(stack, table) == {r["id"]: r for r in records}
