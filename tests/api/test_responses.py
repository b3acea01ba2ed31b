"""Conditional reads (``api.responses``): If-None-Match sent as several header lines; the Vary
of answers and of their 304s (``api.compression``)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import CORS_ORIGIN
from tests.support.auth import register
from tests.support.factories import create_order, create_record, token

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


def vary(response: httpx.Response) -> list[str]:
    """The Vary names, every line, in order, as sent (none repeated)."""
    lines = response.headers.get_list("vary")
    names = [item.strip() for line in lines for item in line.split(",")]
    assert len({name.lower() for name in names}) == len(names), names
    return names


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_a_304_carries_the_vary_of_its_200(client: httpx.Client, encoding: str) -> None:
    """RFC 9110 §15.4.5: the 304 had no Vary (or Origin alone) where its 200 said
    Accept-Encoding: Starlette's gzip adds it only to a body it had to consider."""
    table = f"t_{token()}"
    for n in range(30):
        create_record(client, table, n=n, pad="x" * 80)
    url = f"/api/v1/data/{table}?per_page=50"
    headers = {"Accept-Encoding": encoding, "Origin": CORS_ORIGIN}
    full = client.get(url, headers=headers)
    assert full.status_code == 200 and len(full.content) > 1024
    assert vary(full) == ["Accept-Encoding", "Authorization", "Origin"]
    again = client.get(url, headers={**headers, "If-None-Match": full.headers["etag"]})
    assert again.status_code == 304
    assert vary(again) == vary(full)
    # A short body (not worth compressing) says the same: the next page may not be short.
    one = client.get(f"/api/v1/data/{table}?per_page=1", headers=headers)
    assert one.status_code == 200 and len(one.content) < 1024
    assert vary(one) == vary(full)


def test_answers_that_depend_on_the_token_vary_on_authorization(
    anon: httpx.Client, client: httpx.Client
) -> None:
    """/users/me is another user's for another token, and both users' records are at version
    1 (the same ETag): without Vary: Authorization, a cache keyed by URL revalidated one
    user's copy with the other's token and got 304."""
    first, second = register(anon), register(anon)
    create_order(client, first.id)
    on_token = {"Accept-Encoding", "Authorization"}
    for url in ("/api/v1/users/me", "/api/v1/users/me/orders", "/api/v1/orders"):
        mine = anon.get(url, headers=first.headers)
        assert mine.status_code == 200, mine.text
        assert on_token <= set(vary(mine)), url
        other = {**second.headers, "If-None-Match": mine.headers["etag"]}
        theirs = anon.get(url, headers=other)
        assert theirs.status_code in (200, 304)
        assert vary(theirs) == vary(mine), url
        assert on_token <= set(vary(anon.get(url))), url  # the 401
    # An answer that reads no token does not vary on it; nor does one no route gave.
    for url in ("/api/v1/health", "/api/v1/nothing-here"):
        names = vary(anon.get(url))
        assert "Accept-Encoding" in names and "Authorization" not in names, url
