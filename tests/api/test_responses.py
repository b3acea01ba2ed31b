"""Conditional reads (``api.responses``): If-None-Match sent as several header lines."""

from __future__ import annotations

import httpx
import pytest

from tests.support.factories import create_record, token

pytestmark = pytest.mark.integration


def test_if_none_match_on_two_lines_is_one_list(client: httpx.Client) -> None:
    """RFC 9110 §5.3: repeated lines of a list header are one comma-separated list; only the
    first line was read, so a hit on the second line was sent the whole body again."""
    table = f"t_{token()}"
    record = create_record(client, table, n=1)
    url = f"/api/v1/data/{table}/{record['id']}"
    etag = client.get(url).headers["etag"]
    two_lines = [("If-None-Match", 'W/"99"'), ("If-None-Match", etag)]
    assert client.get(url, headers=two_lines).status_code == 304
    page = client.get(f"/api/v1/data/{table}")
    lines = [("If-None-Match", 'W/"other"'), ("If-None-Match", page.headers["etag"])]
    assert client.get(f"/api/v1/data/{table}", headers=lines).status_code == 304
    misses = [("If-None-Match", 'W/"98"'), ("If-None-Match", 'W/"99"')]
    assert client.get(url, headers=misses).status_code == 200
