"""Across workers: one store decides, whichever worker a request lands on.

Each test drives keep-alive connections pinned to distinct gunicorn workers (see
tests/support/workers.py) and checks, from the X-Worker-PID header of the responses
themselves, that at least two worker processes served the requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.auth import Account
from tests.support.factories import order_payload, token, user_payload
from tests.support.stack import Stack
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration


@pytest.fixture
async def pinned(stack: Stack, admin: Account) -> AsyncIterator[dict[str, list[httpx.AsyncClient]]]:
    clients = await pinned_clients(stack.base_url, workers=2, per_worker=5, headers=admin.headers)
    yield clients
    await close_all(clients)


def spread(pinned: dict[str, list[httpx.AsyncClient]]) -> list[httpx.AsyncClient]:
    """Interleave the workers' clients: worker A, worker B, worker A, ..."""
    columns = list(pinned.values())
    return [client for row in zip(*columns, strict=False) for client in row]


async def test_fifty_same_email_creations_one_wins(
    pinned: dict[str, list[httpx.AsyncClient]],
) -> None:
    clients = spread(pinned)
    payload = user_payload()
    responses = await asyncio.gather(
        *(
            clients[n % len(clients)].post(
                "/api/v1/users", json={**payload, "email": _case(payload["email"], n)}
            )
            for n in range(50)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 49
    assert all(
        r.json()["error"]["code"] == "ALREADY_EXISTS" for r in responses if r.status_code == 409
    )
    assert len({r.headers["x-worker-pid"] for r in responses}) >= 2


async def test_two_hundred_concurrent_orders_are_all_listed(
    pinned: dict[str, list[httpx.AsyncClient]],
) -> None:
    clients = spread(pinned)
    created = await clients[0].post("/api/v1/users", json=user_payload())
    user_id = created.json()["data"]["id"]
    responses = await asyncio.gather(
        *(
            clients[n % len(clients)].post(
                "/api/v1/orders", json=order_payload(user_id, product_name=f"item {n}")
            )
            for n in range(200)
        )
    )
    assert [r.status_code for r in responses] == [201] * 200
    assert len({r.headers["x-worker-pid"] for r in responses}) >= 2
    created_ids = {r.json()["data"]["id"] for r in responses}

    listed: list[str] = []
    for page in (1, 2):
        response = await clients[page].get(
            f"/api/v1/users/{user_id}/orders", params={"page": page, "per_page": 100}
        )
        body = response.json()
        assert body["meta"]["total"] == 200
        listed += [order["id"] for order in body["data"]]
    assert len(listed) == 200 and set(listed) == created_ids
    total = (await clients[3].get("/api/v1/orders", params={"user_id": user_id})).json()
    assert total["meta"]["total"] == 200


async def test_racing_if_match_exactly_one_wins(
    pinned: dict[str, list[httpx.AsyncClient]],
) -> None:
    (pid_a, on_a), (pid_b, on_b) = list(pinned.items())[:2]
    table = f"race_{token()}"
    created = await on_a[0].post(f"/api/v1/data/{table}", json={"data": {"n": 0}})
    url = f"/api/v1/data/{table}/{created.json()['data']['id']}"
    etag = created.headers["etag"]
    for round_ in range(10):
        first, second = await asyncio.gather(
            on_a[0].patch(url, json={"data": {"n": round_, "by": "a"}}, headers={"If-Match": etag}),
            on_b[0].patch(url, json={"data": {"n": round_, "by": "b"}}, headers={"If-Match": etag}),
        )
        assert {first.headers["x-worker-pid"], second.headers["x-worker-pid"]} == {pid_a, pid_b}
        assert sorted([first.status_code, second.status_code]) == [200, 412]
        winner = first if first.status_code == 200 else second
        etag = winner.headers["etag"]
    final = (await on_a[0].get(url)).json()["data"]
    assert final["version"] == 11


def _case(email: str, n: int) -> str:
    """Vary the case so the store's case-insensitive index is what rejects the copies."""
    return email.upper() if n % 2 else email
