"""A CSV import of decimals past the store's bounds (100 digits; at most 10,000 after the
point): a row error naming the bound, the other rows imported, in either mode."""

from __future__ import annotations

import httpx
import pytest

from tests.support.factories import token

IMPORT = "/api/v1/batch/import"
LONG = "1." + "2" * 100  # 101 digits
TINY = "0." + "0" * 10_000 + "1"  # the 10,001st place


def import_csv(client: httpx.Client, table: str, text: str, atomic: str) -> httpx.Response:
    return client.post(
        IMPORT,
        params={"table": table, "atomic": atomic},
        content=text.encode(),
        headers={"Content-Type": "text/csv"},
    )


def test_decimals_past_the_bounds_are_row_errors(client: httpx.Client) -> None:
    table = f"csv_dec_{token()}"
    text = f"id,x\na,{'9' * 100}.\nb,{LONG}\nc,[{TINY}]\nd,12.50\n"
    report = import_csv(client, table, text, "false").json()["data"]
    assert (report["imported"], report["failed"]) == (2, 2), report
    assert [(e["row"], e["message"]) for e in report["errors"]] == [
        (2, "a Decimal has at most 100 digits"),
        (3, "a Decimal has at most 10000 digits after its point"),
    ]
    kept = client.get(f"/api/v1/data/{table}/d").json()["data"]
    assert kept["x"] == "12.50"


@pytest.mark.parametrize("value", [LONG, TINY])
def test_an_atomic_import_with_one_is_refused_whole(client: httpx.Client, value: str) -> None:
    table = f"csv_dec_{token()}"
    response = import_csv(client, table, f"id,x\na,1.5\nb,{value}\n", "true")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BAD_REQUEST" and "a Decimal has at most" in error["message"]
    assert error["details"][0]["row"] == 2
    assert client.get(f"/api/v1/data/{table}/a").status_code == 404
