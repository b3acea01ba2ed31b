"""Writes by filter past the store's own ceiling (STORE_MAX_BULK_ROWS) below the API's
(MAX_ROWS_PER_FILTER_WRITE): with ``?async=true`` too, the refusal comes at once (400), as
README promises, not as a 202 and a job bound to fail (QA). The store announces its ceiling
in its handshake (``max_bulk_rows``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import login_admin
from tests.support.factories import assert_error, token
from tests.support.stack import running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin_client() -> Iterator[httpx.Client]:
    with (
        running_stack(workers=1, extra_env={"STORE_MAX_BULK_ROWS": "10"}) as stack,
        httpx.Client(base_url=stack.base_url, timeout=30) as http,
    ):
        http.headers.update(login_admin(http).headers)
        yield http


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("run_async", [None, "true", "false"])
def test_more_matches_than_the_stores_ceiling_are_refused_at_once(
    admin_client: httpx.Client, method: str, run_async: str | None
) -> None:
    url = f"/api/v1/data/t_{token()}"
    admin_client.post(url, json={"data": [{"n": n} for n in range(20)]}).raise_for_status()
    params = {"n__lt": "15", **({"async": run_async} if run_async else {})}
    body = {"data": {"x": 1}} if method == "PATCH" else None
    answer = admin_client.request(method, url, params=params, json=body)
    error = assert_error(answer, 400, "TOO_MANY_ROWS")
    assert error["details"][0]["max"] == 10
    assert admin_client.get(f"{url}/count", params={"x": "1"}).json()["data"]["count"] == 0
    assert admin_client.get(f"{url}/count").json()["data"]["count"] == 20
    within = admin_client.request(method, url, params={**params, "n__lt": "5"}, json=body)
    assert within.status_code in (200, 202), within.text
