"""Reads whose answer has no ETag (counts, aggregates, dumps, exports, index and schema
descriptions, the audit, stats and jobs): an If-Match naming tags names nothing current, so
the read is 412 (RFC 9110 §13.1.1); ``*`` holds. QA: all answered 200, telling the client its
condition held."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.factories import assert_error, create_record, token
from tests.support.openapi import assert_documented

pytestmark = pytest.mark.integration


@pytest.fixture
def reads(client: httpx.Client) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path as the document writes it, URL, request kwargs) of every untagged read."""
    table = f"ut_{token()}"
    create_record(client, table, n=1)
    assert client.post(f"/api/v1/data/{table}/indexes", json={"field": "n"}).status_code < 300
    job = client.get(f"/api/v1/dump/{table}", params={"async": "true"})
    assert job.status_code == 202, job.text
    job_id = job.json()["data"]["id"]
    group = {"json": {"metrics": [{"op": "count", "as": "n"}]}}
    plain = {"params": {"async": "false"}}
    return [
        ("GET", "/data/{table}/count", f"/api/v1/data/{table}/count", {}),
        ("POST", "/data/{table}/aggregate", f"/api/v1/data/{table}/aggregate", group),
        ("POST", "/orders/aggregate", "/api/v1/orders/aggregate", group),
        ("GET", "/dump/{table}", f"/api/v1/dump/{table}", plain),
        ("GET", "/batch/{table}/export", f"/api/v1/batch/{table}/export", plain),
        ("GET", "/data/{table}/indexes", f"/api/v1/data/{table}/indexes", {}),
        ("GET", "/data/{table}/indexes/{field}", f"/api/v1/data/{table}/indexes/n", {}),
        ("GET", "/data/{table}/schema", f"/api/v1/data/{table}/schema", {}),
        ("GET", "/admin/audit", "/api/v1/admin/audit", {}),
        ("GET", "/admin/stats", "/api/v1/admin/stats", {}),
        ("GET", "/jobs", "/api/v1/jobs", {}),
        ("GET", "/jobs/{job_id}", f"/api/v1/jobs/{job_id}", {}),
    ]


def test_an_if_match_naming_a_tag_is_412_and_star_holds(
    client: httpx.Client, spec: dict[str, Any], reads: list[tuple[str, str, str, dict[str, Any]]]
) -> None:
    for method, path, url, kwargs in reads:
        stale = client.request(method, url, headers={"If-Match": 'W/"1"'}, **kwargs)
        assert_error(stale, 412, "PRECONDITION_FAILED")
        assert_documented(spec, stale, method, path)
        fine = client.request(method, url, headers={"If-Match": "*"}, **kwargs)
        assert fine.status_code == 200, (path, fine.text)
        assert "etag" not in fine.headers, path  # untagged indeed: no tag could name it


def test_a_caller_without_a_token_hears_401_before_any_precondition(anon: httpx.Client) -> None:
    response = anon.get("/api/v1/admin/stats", headers={"If-Match": 'W/"1"'})
    assert_error(response, 401)


@pytest.mark.parametrize("url", ["/api/v1/data/users/count", "/api/v1/batch/users/export"])
def test_the_412_comes_before_a_bad_filter_s_422(client: httpx.Client, url: str) -> None:
    """As the README says ("before its 404 or 422"; services QA: count and the CSV export
    parsed their filters first)."""
    params = {"age": "abc"}  # not an integer: a 422
    assert_error(client.get(url, params=params), 422, "VALIDATION_ERROR")
    stale = client.get(url, params=params, headers={"If-Match": 'W/"1"'})
    assert_error(stale, 412, "PRECONDITION_FAILED")
