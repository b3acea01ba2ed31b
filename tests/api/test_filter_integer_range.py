"""Query-string integers past the store's signed 64 bits (README, "Filters on decimals"): on a
generic table they are read as floats, the unsigned range (2**63 to 2**64 - 1) included, on
every route that takes list filters; on a typed int field they are a 422 saying so."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from api.queries import OUTSIDE_INT64
from tests.support.factories import assert_error, create_record, token

pytestmark = pytest.mark.integration

TWO_63 = "9223372036854775808"
TWO_64_LESS_1 = "18446744073709551615"  # float(2**64 - 1) is 2.0**64


@pytest.fixture
def table(client: httpx.Client) -> str:
    name = f"t_{token()}"
    create_record(client, name, id="small", v=1)
    create_record(client, name, id="int64", v=2**63 - 1)
    create_record(client, name, id="float", v=2.0**64)
    return name


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [record["id"] for record in response.json()["data"]]


def test_lists_and_counts_read_them_as_floats(client: httpx.Client, table: str) -> None:
    url = f"/api/v1/data/{table}"
    assert ids(client.get(url, params={"v": TWO_64_LESS_1})) == ["float"]
    assert ids(client.get(url, params={"v": TWO_63})) == []
    assert ids(client.get(url, params={"v__lt": TWO_63})) == ["small", "int64"]
    assert ids(client.get(url, params={"v__gte": TWO_63})) == ["float"]
    assert ids(client.get(url, params={"v__in": f"1,{TWO_63}"})) == ["small"]
    count = client.get(f"{url}/count", params={"v": TWO_64_LESS_1})
    assert count.status_code == 200, count.text
    assert count.json()["data"]["count"] == 1


def test_exports_and_writes_by_filter_read_them_as_floats(client: httpx.Client, table: str) -> None:
    url = f"/api/v1/data/{table}"
    export = client.get(
        f"/api/v1/batch/{table}/export", params={"v": TWO_64_LESS_1, "async": "false"}
    )
    assert export.status_code == 200, export.text
    assert [row["id"] for row in csv.DictReader(io.StringIO(export.text))] == ["float"]
    patched = client.patch(url, params={"v__gte": TWO_63}, json={"data": {"hit": True}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"] == {"matched": 1, "updated": 1}
    deleted = client.delete(url, params={"v": TWO_64_LESS_1})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"]["deleted"] == 1
    assert ids(client.get(url)) == ["small", "int64"]


@pytest.mark.parametrize(
    ("path", "key"),
    [("/api/v1/users", "age"), ("/api/v1/orders", "quantity__gte"), ("/api/v1/orders", "version")],
)
@pytest.mark.parametrize("value", [TWO_63, TWO_64_LESS_1, "-9223372036854775809", "1" * 30])
def test_a_typed_int_field_says_the_integer_is_out_of_range(
    client: httpx.Client, path: str, key: str, value: str
) -> None:
    error = assert_error(client.get(path, params={key: value}), 422, "VALIDATION_ERROR")
    assert error["details"] == [{"field": f"query.{key}", "message": OUTSIDE_INT64}]
