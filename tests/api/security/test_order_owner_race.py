"""An order given to someone else while its owner writes or reads it (in-process, against an
engine), made deterministic: the admin's move lands between the owner check and the write.

``authorize_order`` reads the order to check its owner; the write used to follow without any
tie to that read, so a user's PATCH or DELETE that raced an admin moving the order to another
user changed or deleted that other user's order (QA: 10 of 120 PATCHes). The write is now
made at the version the check read: a change in between makes the store refuse it, and the
order is read again to decide the answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from api.auth import sessions
from api.auth.tokens import TokenService
from api.main import create_app
from api.services.versions import WRITE_ATTEMPTS
from api.settings import Settings
from tests.support.auth import bearer, register
from tests.support.engine import EngineStore, run
from tests.support.factories import assert_error, create_order
from tests.support.inprocess import in_process

SECRET = "unit-test-signing-key-0123456789-ABCDEFGH"
API = "/api/v1"


class Shop:
    """An engine with an admin, Alice and Bob, an order of Alice's, and tokens for each."""

    def __init__(self) -> None:
        self.store = EngineStore()
        self.service = TokenService(SECRET, 600, 3600)
        self.admin = self.add_user("admin@example.com", "admin")
        self.alice = self.add_user("alice@example.com", "user")
        self.bob = self.add_user("bob@example.com", "user")
        record = {"user_id": self.alice, "product_name": "p", "quantity": 1, "total_price": "1"}
        self.order = str(run(self.store.engine, "insert", table="orders", record=record)["id"])
        self.url = f"{API}/orders/{self.order}"

    def add_user(self, email: str, role: str) -> str:
        record = {"email": email, "full_name": email, "role": role, "password_hash": "x"}
        return str(run(self.store.engine, "insert", table="users", record=record)["id"])

    def headers(self, user_id: str, **extra: str) -> dict[str, str]:
        role = "admin" if user_id == self.admin else "user"
        pair = self.service.issue_pair(user_id, role, f"s-{user_id}", issued_at=time.time() - 1)
        return {**bearer(pair.access_token), **extra}

    def stored(self) -> dict[str, Any] | None:
        found: list[dict[str, Any] | None] = run(
            self.store.engine, "get_many", table="orders", ids=[self.order]
        )
        return found[0]

    def give_to(self, user_id: str, **changes: Any) -> None:
        """An admin's write, straight into the store (it goes around the API's checks)."""
        changes = {"user_id": user_id, **changes}
        run(self.store.engine, "patch", table="orders", id=self.order, changes=changes)

    def before_nth(self, command: str, n: int, action: Callable[[], None]) -> None:
        """Run ``action`` just before the ``n``-th ``command`` the API sends (from 1)."""
        seen = {"count": 0}

        def hook() -> None:
            seen["count"] += 1
            if seen["count"] == n:
                action()

        self.store.before[command] = hook


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Shop:
    monkeypatch.setattr(sessions, "_announced", 0.0)
    return Shop()


@pytest.fixture
async def http(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings())
    app.state.store, app.state.tokens = shop.store, shop.service  # as the lifespan would
    async with in_process(app) as client:
        yield client


async def not_yours(http: httpx.AsyncClient, shop: Shop, response: httpx.Response) -> None:
    """``response`` is exactly the 404 Alice gets for an order that is not hers."""
    error = assert_error(response, 404, "NOT_FOUND")
    assert "etag" not in response.headers
    plain = await http.patch(shop.url, json={"quantity": 9}, headers=shop.headers(shop.alice))
    assert assert_error(plain, 404, "NOT_FOUND") == error


PRECONDITIONS = [
    pytest.param({}, id="no-precondition"),
    pytest.param({"If-Match": 'W/"1"'}, id="if-match"),
    pytest.param({"If-None-Match": 'W/"999"'}, id="if-none-match"),
]


@pytest.mark.parametrize("conditions", PRECONDITIONS)
async def test_a_patch_of_an_order_given_away_after_the_check_is_404_and_writes_nothing(
    shop: Shop, http: httpx.AsyncClient, conditions: dict[str, str]
) -> None:
    # The owner check (a get) sees Alice's order; the admin gives it to Bob before the write.
    shop.before_nth("patch", 1, lambda: shop.give_to(shop.bob))
    headers = shop.headers(shop.alice, **conditions)
    response = await http.patch(shop.url, json={"quantity": 7}, headers=headers)
    await not_yours(http, shop, response)
    order = shop.stored()
    assert order is not None and order["user_id"] == shop.bob and order["quantity"] == 1
    assert order["version"] == 2  # the admin's write only


@pytest.mark.parametrize("conditions", PRECONDITIONS)
async def test_a_delete_of_an_order_given_away_after_the_check_is_404_and_deletes_nothing(
    shop: Shop, http: httpx.AsyncClient, conditions: dict[str, str]
) -> None:
    shop.before_nth("delete", 1, lambda: shop.give_to(shop.bob))
    response = await http.delete(shop.url, headers=shop.headers(shop.alice, **conditions))
    await not_yours(http, shop, response)
    order = shop.stored()
    assert order is not None and order["user_id"] == shop.bob


async def test_a_write_is_made_at_the_version_the_owner_check_read(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    """No extra read on the way: the check's get, then the write carrying its version."""
    response = await http.patch(shop.url, json={"quantity": 3}, headers=shop.headers(shop.alice))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["quantity"] == 3
    assert [command for command, _ in shop.store.calls if command in ("get", "patch")] == [
        "get",
        "patch",
    ]
    assert shop.store.sent("patch")[0]["expected_version"] == 1


async def test_an_order_given_away_and_back_is_written_at_its_new_version(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    """Still Alice's when the refused write reads it again: without a precondition of her
    own, the write is made again at the version now, and lands on her order."""

    def away_and_back() -> None:
        shop.give_to(shop.bob)
        shop.give_to(shop.alice, product_name="renamed")

    shop.before_nth("patch", 1, away_and_back)
    response = await http.patch(shop.url, json={"quantity": 5}, headers=shop.headers(shop.alice))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["user_id"] == shop.alice and data["quantity"] == 5
    assert data["product_name"] == "renamed" and data["version"] == 4
    assert [args["expected_version"] for args in shop.store.sent("patch")] == [1, 3]


async def test_with_if_match_an_order_changed_since_is_412_even_if_still_hers(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    """Her If-Match named the version the check read; the order moved on, so it is the
    usual stale If-Match: 412, nothing written, not written again."""
    shop.before_nth("patch", 1, lambda: shop.give_to(shop.alice, product_name="renamed"))
    headers = shop.headers(shop.alice, **{"If-Match": 'W/"1"'})
    response = await http.patch(shop.url, json={"quantity": 5}, headers=headers)
    assert_error(response, 412, "PRECONDITION_FAILED")
    order = shop.stored()
    assert order is not None and order["quantity"] == 1 and order["version"] == 2
    assert len(shop.store.sent("patch")) == 1


@pytest.mark.parametrize(
    ("conditions", "etag"),
    [({"If-Match": 'W/"2"'}, None), ({"If-None-Match": 'W/"1"'}, 'W/"1"')],
)
async def test_preconditions_are_decided_on_the_version_the_owner_check_read(
    shop: Shop, http: httpx.AsyncClient, conditions: dict[str, str], etag: str | None
) -> None:
    response = await http.patch(
        shop.url, json={"quantity": 5}, headers=shop.headers(shop.alice, **conditions)
    )
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert response.headers.get("etag") == etag
    assert shop.store.sent("patch") == []
    assert len(shop.store.sent("get")) == 1  # the owner check's read, and no other


async def test_a_write_refused_at_every_try_is_503_and_never_lands_on_another_user(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    """Changed (still hers) before every try: bounded, then 503 with Retry-After."""
    tries = iter(range(100))
    shop.store.before["patch"] = lambda: shop.give_to(shop.alice, product_name=str(next(tries)))
    response = await http.patch(shop.url, json={"quantity": 5}, headers=shop.headers(shop.alice))
    error = assert_error(response, 503, "CHANGED_WHILE_WRITTEN")
    assert "retry" in error["message"]
    assert response.headers["retry-after"] == "1"
    assert len(shop.store.sent("patch")) == WRITE_ATTEMPTS
    order = shop.stored()
    assert order is not None and order["quantity"] == 1


async def test_a_read_after_the_order_was_given_away_is_404(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    # The check is the first get; the route's own read is the second.
    shop.before_nth("get", 2, lambda: shop.give_to(shop.bob))
    response = await http.get(shop.url, headers=shop.headers(shop.alice))
    await not_yours(http, shop, response)


async def test_a_read_with_its_user_after_the_order_was_given_away_is_404(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    shop.before_nth("get", 2, lambda: shop.give_to(shop.bob))
    response = await http.get(f"{shop.url}?expand=user", headers=shop.headers(shop.alice))
    await not_yours(http, shop, response)


async def test_an_order_s_user_is_never_the_user_it_was_given_to_after_the_check(
    shop: Shop, http: httpx.AsyncClient
) -> None:
    shop.before_nth("get", 2, lambda: shop.give_to(shop.bob))
    response = await http.get(f"{shop.url}/user", headers=shop.headers(shop.alice))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["id"] == shop.alice  # hers when checked; never Bob


async def test_an_admin_writes_as_before(shop: Shop, http: httpx.AsyncClient) -> None:
    """No ownership to hold: one unconditional write, whoever the order belongs to."""
    shop.before_nth("patch", 1, lambda: shop.give_to(shop.bob))
    response = await http.patch(shop.url, json={"quantity": 4}, headers=shop.headers(shop.admin))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["user_id"] == shop.bob
    assert [command for command, _ in shop.store.calls if command in ("get", "patch")] == ["patch"]
    assert "expected_version" not in shop.store.sent("patch")[0]


@pytest.mark.integration
def test_owners_write_their_orders_and_only_theirs(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """The normal path against the real stack: reads, writes with and without preconditions,
    deletion; another user's order is 404 however asked."""
    alice, bob = register(anon), register(anon)
    order = create_order(client, alice.id)
    url = f"{API}/orders/{order['id']}"
    assert anon.get(url, headers=alice.headers).status_code == 200
    assert anon.get(f"{url}/user", headers=alice.headers).json()["data"]["id"] == alice.id
    patched = anon.patch(url, json={"quantity": 2}, headers=alice.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"]["quantity"] == 2 and patched.headers["etag"] == 'W/"2"'
    stale = anon.patch(url, json={"quantity": 3}, headers={**alice.headers, "If-Match": 'W/"1"'})
    assert_error(stale, 412, "PRECONDITION_FAILED")
    same = anon.patch(url, json={"quantity": 3}, headers={**alice.headers, "If-None-Match": "*"})
    assert_error(same, 412, "PRECONDITION_FAILED")
    fresh = {**alice.headers, "If-Match": 'W/"2"', "If-None-Match": 'W/"1"'}
    written = anon.patch(url, json={"quantity": 3}, headers=fresh)
    assert written.status_code == 200, written.text
    assert written.json()["data"]["quantity"] == 3
    for response in (
        anon.get(url, headers=bob.headers),
        anon.get(f"{url}/user", headers=bob.headers),
        anon.patch(url, json={"quantity": 9}, headers=bob.headers),
        anon.delete(url, headers={**bob.headers, "If-Match": 'W/"3"'}),
    ):
        assert_error(response, 404, "NOT_FOUND")
    assert anon.delete(url, headers={**alice.headers, "If-Match": 'W/"3"'}).status_code == 204
    assert_error(anon.get(url, headers=alice.headers), 404, "NOT_FOUND")
