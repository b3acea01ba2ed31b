"""The list filters of the routes that select a table's records as ``GET /data/{table}`` does
(count, update and delete by filter, CSV export), sent as the served document describes them.

A client generated from the document sends an object parameter of style ``form``, exploded,
as one query parameter per key. Each test builds its query string that way from the
``filters`` parameter the running stack documents, and checks the filter was applied.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from tests.support.factories import token

pytestmark = pytest.mark.integration
API = "/api/v1"
ROWS = [{"color": c, "n": i} for i, c in enumerate("rrgbr")]  # red: n 0, 1, 4


def as_documented(
    spec: dict[str, Any], method: str, path: str, filters: dict[str, str]
) -> httpx.QueryParams:
    """``filters`` serialized as the operation's ``filters`` parameter says: form style,
    exploded (each key its own query parameter), its values strings."""
    parameters = spec["paths"][API + path][method]["parameters"]
    (declared,) = [p for p in parameters if p["name"] == "filters"]
    assert (declared["in"], declared["style"], declared["explode"]) == ("query", "form", True)
    assert declared["schema"] == {"type": "object", "additionalProperties": {"type": "string"}}
    return httpx.QueryParams(list(filters.items()))


@pytest.fixture
def table(client: httpx.Client) -> str:
    name = f"oaf_{token()}"
    created = client.post(f"{API}/data/{name}", json={"data": ROWS})
    assert created.status_code == 201, created.text
    return name


def colors(client: httpx.Client, table: str) -> list[tuple[str, int, Any]]:
    listed = client.get(f"{API}/data/{table}", params={"sort": "n:asc"})
    assert listed.status_code == 200, listed.text
    return [(r["color"], r["n"], r.get("seen")) for r in listed.json()["data"]]


def test_count_applies_the_documented_filters(
    client: httpx.Client, spec: dict[str, Any], table: str
) -> None:
    params = as_documented(spec, "get", "/data/{table}/count", {"color": "r", "n__gte": "1"})
    answer = client.get(f"{API}/data/{table}/count", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "success", "data": {"count": 2}}


def test_update_by_filter_applies_the_documented_filters(
    client: httpx.Client, spec: dict[str, Any], table: str
) -> None:
    params = as_documented(spec, "patch", "/data/{table}", {"color": "r", "n__lt": "4"})
    answer = client.patch(f"{API}/data/{table}", params=params, json={"data": {"seen": True}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "success", "data": {"matched": 2, "updated": 2}}
    assert colors(client, table) == [
        ("r", 0, True),
        ("r", 1, True),
        ("g", 2, None),
        ("b", 3, None),
        ("r", 4, None),
    ]


def test_delete_by_filter_applies_the_documented_filters(
    client: httpx.Client, spec: dict[str, Any], table: str
) -> None:
    params = as_documented(spec, "delete", "/data/{table}", {"color__in": "g,b"})
    answer = client.delete(f"{API}/data/{table}", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "success", "data": {"deleted": 2, "cascaded": 0}}
    assert colors(client, table) == [("r", 0, None), ("r", 1, None), ("r", 4, None)]


def test_export_applies_the_documented_filters_and_date_bounds(
    client: httpx.Client, spec: dict[str, Any], table: str
) -> None:
    export = spec["paths"][f"{API}/batch/{{table}}/export"]["get"]
    assert {"created_after", "created_before"} <= {p["name"] for p in export["parameters"]}
    params = as_documented(spec, "get", "/batch/{table}/export", {"color": "r", "n__ne": "1"})
    answer = client.get(f"{API}/batch/{table}/export", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [(row["color"], row["n"]) for row in rows] == [("r", "0"), ("r", "4")]
    bounded = params.add("created_before", "2000-01-01")
    none = client.get(f"{API}/batch/{table}/export", params=bounded)
    assert none.status_code == 200, none.text
    assert list(csv.DictReader(io.StringIO(none.text))) == []
