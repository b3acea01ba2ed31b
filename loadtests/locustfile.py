"""Locust scenarios for the service (locust core only): ``make load`` runs them headless.

    locust -f loadtests/locustfile.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000

Three weighted user classes, each with its own data (emails and tags carry a run id and a
per-process counter, so runs and users never collide):

- ``Shopper`` (weight 10): registers once, logs in, creates orders, lists its own orders with
  pagination and a sort, reads single orders and revalidates them with ``If-None-Match``
  (expects 304), updates some with ``If-Match`` and deletes some (then expects 404).
- ``TokenRefresher`` (weight 2): registers, logs in, rotates its refresh token, checks the new
  access token on ``/users/me``; now and then replays a spent refresh token and expects 401 and
  the whole session revoked, then logs in again.
- ``Reporter`` (weight 1): the administrator (``ADMIN_EMAIL`` / ``ADMIN_PASSWORD``): generic
  tables (create, read, patch, filtered and sorted lists), joins (its own tables, and
  users/orders), aggregates (``POST /data/{table}/aggregate``, only when the target's OpenAPI
  document has it) and dumps of a small table. The Reporters of one process share one admin
  session (so one ``RATE_LIMIT`` budget on the target).

With 3 users or more, every class gets at least one user (``fixed_count`` for the two small
classes, in the weights' proportion; locust's weights alone give the first Reporter to the 6th
user). Every simulated user renews its access token before it expires (``expires_in`` of the
token answer): it rotates its refresh token, or logs in again if that fails; those requests are
counted under their own names (``[renew]``), not the scenario's. The accounts' password is
random per run; the accounts, their orders and the ``lt_*`` records stay on the target
(emails ``shop<run id>x...@example.com`` and ``refresh<run id>x...``, tags ``t<run id>x...``;
the run id is logged at the start and written in the verdict).

Every response body is checked (``catch_response``): a 200 with the wrong data is a failure.
Requests are named by route template (``/orders/{id}``), so the statistics group by route;
failure messages keep the status and the error code but not the request id or the seconds of
a ``Retry-After``, so identical failures group too. Response times are kept in whole
milliseconds, rounded up (locust's default rounds to 2 significant digits past 100 ms: 104 ms
would count as 100 and pass a 100 ms gate).

Thresholds (PRD §3.2), checked by a ``quitting`` listener that sets the exit code: failure
ratio > 1 %, p95 > 100 ms on any single-record route, p95 > 500 ms on any join route, and a
gated route group (``ROUTE_GROUPS``) that made no request at all (its thresholds were not
checked: e.g. no Reporter without admin credentials). Settings (environment): ``LOAD_WAIT``
think time "min,max" seconds (default "0.5,2"), ``LOAD_MAX_FAIL_RATIO`` (0.01),
``LOAD_SINGLE_P95_MS`` (100), ``LOAD_JOIN_P95_MS`` (500), ``LOAD_LATENCY_GATES=0`` to check
only the failure ratio (the test suite's smoke run), ``LOAD_ALLOW_UNMEASURED=1`` to pass with
route groups that never ran (they are still listed), ``LOAD_VERDICT_FILE`` to write the
verdict and the rate limits observed as JSON, ``LOAD_MAX_RECORDS`` to keep each user's data
bounded (soak runs: memory should stay flat).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import re
import secrets
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any

import locust.stats
from gevent.lock import Semaphore
from locust import FastHttpUser, between, events, task
from locust.exception import StopUser

API = "/api/v1"
RUN_ID = os.environ.get("LOAD_RUN_ID") or secrets.token_hex(3)
# Random per run: the accounts a run leaves on a deployment must not share a known password.
PASSWORD = secrets.token_urlsafe(18)
ADMIN_EMAIL = os.environ.get("ADMIN_EMAIL", "")
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "")
_wait = [float(x) for x in os.environ.get("LOAD_WAIT", "0.5,2").split(",")]
WAIT_MIN, WAIT_MAX = _wait[0], _wait[-1]

MAX_FAIL_RATIO = float(os.environ.get("LOAD_MAX_FAIL_RATIO", "0.01"))
SINGLE_P95_MS = float(os.environ.get("LOAD_SINGLE_P95_MS", "100"))
JOIN_P95_MS = float(os.environ.get("LOAD_JOIN_P95_MS", "500"))
LATENCY_GATES = os.environ.get("LOAD_LATENCY_GATES", "1") != "0"
ALLOW_UNMEASURED = os.environ.get("LOAD_ALLOW_UNMEASURED", "0") != "0"
# Steady state for soak runs: a user past this many orders (purchases) deletes before creating.
MAX_RECORDS = int(os.environ.get("LOAD_MAX_RECORDS", "0"))
# Renew an access token this long before it expires (halfway through a shorter one).
RENEW_MARGIN_S = 60.0

# Route groups (the ``name=`` of each request) the thresholds apply to, by the scenario that
# makes them: a group without a single request means its thresholds were never checked.
JOINS = {"GET /join/lt_customers/lt_purchases/lt_customer_id", "GET /join/users/orders/user_id"}
ROUTE_GROUPS = {
    "orders and /users/me (Shopper)": {
        "POST /orders",
        "GET /orders/{id}",
        "GET /orders/{id} [If-None-Match]",
        "PATCH /orders/{id}",
        "DELETE /orders/{id}",
        "GET /orders/{id} [deleted]",
        "GET /users/me",
    },
    "generic tables (Reporter)": {
        "POST /data/{table}",
        "GET /data/{table}/{id}",
        "PATCH /data/{table}/{id}",
    },
    "joins (Reporter)": JOINS,
}
SINGLE_RECORD = (
    ROUTE_GROUPS["orders and /users/me (Shopper)"] | ROUTE_GROUPS["generic tables (Reporter)"]
)

CUSTOMERS_PER_ADMIN = 5
PURCHASES_PER_CUSTOMER = 3
CATALOG_PER_ADMIN = 25
PRODUCTS = ["Widget", "Gadget", "Sprocket", "Gizmo", "Doohickey"]


def whole_ms(response_time: float) -> int:
    """Locust's histogram key for a response time: whole ms, rounded up, so a p95 compared with
    an integer threshold is exact (locust's default keeps 2 significant digits: 104 -> 100)."""
    return math.ceil(response_time)


# Locust documents this module-level function as the one to replace for other bucketing.
locust.stats.bucket_response_time = whole_ms

log = logging.getLogger("loadtests")
_serial = itertools.count(1)
FEATURES: dict[str, bool] = {}
OBSERVED: dict[str, Any] = {"rate_limit": set(), "status_429": 0}


def unique(prefix: str) -> str:
    """A string no other simulated user of any run uses."""
    return f"{prefix}{RUN_ID}x{os.getpid()}x{next(_serial)}"


def version_etag(version: int) -> str:
    return f'W/"{version}"'


class BodyError(Exception):
    """The response answered with the expected status but the wrong content."""


# Parts of a failure message that differ between identical failures: locust groups its
# failures table by the exact message.
VOLATILE = (
    (re.compile(r',?\s*"request_id"\s*:\s*"[^"]*"'), ""),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<id>"),
    (re.compile(r"\b\d+(\.\d+)? s\b"), "N s"),  # "retry in 42 s"
)


def stable(message: str) -> str:
    """``message`` without request ids, record ids and retry delays."""
    for pattern, replacement in VOLATILE:
        message = pattern.sub(replacement, message)
    return message


def answer(response: Any) -> str:
    """What a response said, for a failure message: an error envelope's code and message."""
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return (response.text or "")[:200]


def envelope(response: Any, status: int) -> Any:
    """``data`` of a success envelope answered with ``status``, else BodyError."""
    if response.status_code != status:
        raise BodyError(f"status {response.status_code}, expected {status}: {answer(response)}")
    body = response.json()
    if body.get("status") != "success" or "data" not in body:
        raise BodyError(f"not a success envelope: {answer(response)}")
    return body["data"]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise BodyError(message)


def checked(response: Any, check: Any) -> Any:
    """Run ``check(response)`` inside a ``catch_response`` block; a failure marks the request."""
    if not response.status_code:  # a connection error or a timeout: no status to check
        response.failure(f"no HTTP answer: {getattr(response, 'error', None)!r}")
        return None
    try:
        result = check(response)
    except (BodyError, ValueError, KeyError, TypeError, AttributeError) as exc:
        response.failure(stable(f"{type(exc).__name__}: {exc}"))
        return None
    response.success()
    return result if result is not None else True


def token_answer(response: Any) -> dict[str, Any]:
    """The RFC 6749 answer of ``/auth/token`` or ``/auth/refresh``, checked."""
    expect(response.status_code == 200, f"status {response.status_code}: {answer(response)}")
    body: dict[str, Any] = response.json()
    expect(body.get("token_type") == "bearer", f"token_type {body.get('token_type')!r}")
    expires_in = body.get("expires_in")
    expect(isinstance(expires_in, int) and expires_in > 0, f"expires_in {expires_in!r}")
    expect("no-store" in response.headers.get("Cache-Control", ""), "token without no-store")
    expect(bool(body.get("access_token") and body.get("refresh_token")), "a token is missing")
    return body


def renew_after(expires_in: float) -> float:
    """Seconds after its issue to renew an access token: a minute before it expires, or halfway
    through a short one (ACCESS_TOKEN_TTL may be as low as 30 s)."""
    return max(expires_in / 2, expires_in - RENEW_MARGIN_S)


class Tokens:
    """A session's access and refresh tokens, and when to renew them."""

    def __init__(self) -> None:
        self.access = ""
        self.refresh = ""
        self.renew_at = 0.0  # due at once: no token yet

    def update(self, body: dict[str, Any]) -> None:
        """From a checked token answer (``token_answer``)."""
        self.access, self.refresh = str(body["access_token"]), str(body["refresh_token"])
        self.renew_at = time.monotonic() + renew_after(float(body["expires_in"]))

    def due(self) -> bool:
        return time.monotonic() >= self.renew_at

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


# -- shared flows -------------------------------------------------------------------------------


def log_in(client: Any, email: str, password: str, name: str) -> dict[str, Any] | None:
    """The checked answer of ``POST /auth/token`` (OAuth2 password form), or None."""
    form = urllib.parse.urlencode({"username": email, "password": password})
    with client.post(
        f"{API}/auth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        name=name,
        catch_response=True,
    ) as r:
        return checked(r, token_answer) or None


def refresh_tokens(client: Any, refresh_token: str, name: str) -> dict[str, Any] | None:
    """The checked answer of ``POST /auth/refresh`` (a new pair; the old refresh token is spent)."""
    with client.post(
        f"{API}/auth/refresh",
        json={"refresh_token": refresh_token},
        name=name,
        catch_response=True,
    ) as r:
        return checked(r, token_answer) or None


class Account(FastHttpUser):
    """Registration, login and token renewal, for the user classes with their own account."""

    abstract = True
    wait_time = between(WAIT_MIN, WAIT_MAX)

    email = ""
    user_id = ""

    def auth(self) -> dict[str, str]:
        if self.tokens.due():
            self.renew()
        return self.tokens.header()

    def renew(self) -> None:
        """A new access token before this one expires, under request names of its own (the
        scenario's routes keep their figures): rotate the refresh token, else log in again."""
        body = refresh_tokens(self.client, self.tokens.refresh, "POST /auth/refresh [renew]")
        if body:
            self.tokens.update(body)
        else:
            self.login("POST /auth/token [renew]")

    def register(self, prefix: str) -> None:
        self.tokens = Tokens()
        self.email = f"{unique(prefix)}@example.com"
        body = {"email": self.email, "full_name": "Load Tester", "age": 30, "password": PASSWORD}

        def check(r: Any) -> str:
            data = envelope(r, 201)
            expect(data["email"] == self.email, f"registered {data['email']!r}")
            expect("password" not in data and "password_hash" not in data, "password leaked")
            expect(r.headers.get("ETag") == version_etag(1), "no ETag W/1 on creation")
            return str(data["id"])

        with self.client.post(
            f"{API}/users", json=body, name="POST /users [register]", catch_response=True
        ) as r:
            user_id = checked(r, check)
        if not user_id:
            raise StopUser()
        self.user_id = user_id
        self.login()

    def login(self, name: str = "POST /auth/token") -> None:
        body = log_in(self.client, self.email, PASSWORD, name)
        if not body:
            raise StopUser()
        self.tokens.update(body)

    def read_me(self) -> None:
        def check(r: Any) -> None:
            data = envelope(r, 200)
            expect(data["id"] == self.user_id, f"/users/me is {data['id']}, not {self.user_id}")
            expect(data["email"] == self.email, f"/users/me email {data['email']!r}")

        with self.client.get(
            f"{API}/users/me", headers=self.auth(), name="GET /users/me", catch_response=True
        ) as r:
            checked(r, check)


# -- shopper ------------------------------------------------------------------------------------


class Shopper(Account):
    """Orders for oneself: create, list (paginated, sorted), read + revalidate, update, delete."""

    weight = 10

    def on_start(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}  # id -> the fields we sent, and the version
        self.count_known = True  # False once a write's outcome is unknown
        self.register("shop")

    def new_order(self) -> dict[str, Any]:
        quantity = random.randint(1, 9)
        price = Decimal(random.randint(100, 99_999)) / 100
        return {
            "user_id": self.user_id,
            "product_name": f"{random.choice(PRODUCTS)} {random.randint(1, 999)}",
            "quantity": quantity,
            "total_price": str(price),
        }

    def check_order(self, data: dict[str, Any], order_id: str | None = None) -> None:
        want = self.orders[order_id or data["id"]]
        for field in ("user_id", "product_name", "quantity"):
            expect(data[field] == want[field], f"{field} {data[field]!r} != {want[field]!r}")
        expect(
            Decimal(data["total_price"]) == Decimal(want["total_price"]),
            f"total_price {data['total_price']} != {want['total_price']}",
        )
        expect(data["version"] == want["version"], f"version {data['version']}")

    @task(4)
    def create_order(self) -> None:
        if MAX_RECORDS and len(self.orders) >= MAX_RECORDS:
            return self.delete_order()
        order = self.new_order()

        def check(r: Any) -> None:
            data = envelope(r, 201)
            self.orders[data["id"]] = {**order, "version": 1}
            self.check_order(data)
            expect(r.headers.get("Location", "").endswith(data["id"]), "Location header")

        with self.client.post(
            f"{API}/orders",
            json=order,
            headers=self.auth(),
            name="POST /orders",
            catch_response=True,
        ) as r:
            if not checked(r, check) and r.status_code >= 500:
                self.count_known = False

    @task(3)
    def list_orders(self) -> None:
        if not self.orders:
            return self.create_order()
        per_page = 5
        pages = (len(self.orders) + per_page - 1) // per_page
        page = random.randint(1, pages)
        params = f"page={page}&per_page={per_page}&sort=total_price:desc"

        def check(r: Any) -> None:
            body = r.json()
            items = envelope(r, 200)
            meta = body.get("meta", {})
            expect(meta.get("page") == page and meta.get("per_page") == per_page, f"meta {meta}")
            if self.count_known:
                total = len(self.orders)
                expect(meta.get("total") == total, f"total {meta.get('total')} != {total}")
                size = min(per_page, total - (page - 1) * per_page)
                expect(len(items) == size, f"{len(items)} items on page {page}, expected {size}")
            for item in items:
                expect(item["user_id"] == self.user_id, "another user's order in my list")
                if item["id"] in self.orders:
                    self.check_order(item)
            prices = [Decimal(item["total_price"]) for item in items]
            expect(prices == sorted(prices, reverse=True), f"not sorted desc: {prices}")

        with self.client.get(
            f"{API}/orders?{params}",
            headers=self.auth(),
            name="GET /orders [page, sort]",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(6)
    def read_order(self) -> None:
        if not self.orders:
            return self.create_order()
        order_id = random.choice(list(self.orders))
        want = self.orders[order_id]
        url = f"{API}/orders/{order_id}"
        if want.get("seen") and random.random() < 0.7:
            # Revalidate: the client holds the current version.
            headers = {**self.auth(), "If-None-Match": version_etag(want["version"])}

            def check304(r: Any) -> None:
                expect(r.status_code == 304, f"status {r.status_code}, expected 304")
                expect(not r.content, "a 304 with a body")
                expect(r.headers.get("ETag") == version_etag(want["version"]), "304 ETag")

            with self.client.get(
                url, headers=headers, name="GET /orders/{id} [If-None-Match]", catch_response=True
            ) as r:
                checked(r, check304)
            return

        def check(r: Any) -> None:
            self.check_order(envelope(r, 200), order_id)
            expect(r.headers.get("ETag") == version_etag(want["version"]), "ETag != version")
            want["seen"] = True

        with self.client.get(
            url, headers=self.auth(), name="GET /orders/{id}", catch_response=True
        ) as r:
            checked(r, check)

    @task(2)
    def update_order(self) -> None:
        if not self.orders:
            return self.create_order()
        order_id = random.choice(list(self.orders))
        want = self.orders[order_id]
        quantity = want["quantity"] % 9 + 1
        headers = {**self.auth(), "If-Match": version_etag(want["version"])}

        def check(r: Any) -> None:
            data = envelope(r, 200)
            want.update(quantity=quantity, version=want["version"] + 1)
            self.check_order(data)
            expect(r.headers.get("ETag") == version_etag(want["version"]), "ETag after PATCH")

        with self.client.patch(
            f"{API}/orders/{order_id}",
            json={"quantity": quantity},
            headers=headers,
            name="PATCH /orders/{id}",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(1)
    def delete_order(self) -> None:
        if len(self.orders) < 3:
            return self.create_order()
        order_id = random.choice(list(self.orders))

        def check(r: Any) -> None:
            expect(r.status_code == 204, f"status {r.status_code}: {r.text[:200]}")
            expect(not r.content, "a 204 with a body")
            del self.orders[order_id]

        with self.client.delete(
            f"{API}/orders/{order_id}",
            headers=self.auth(),
            name="DELETE /orders/{id}",
            catch_response=True,
        ) as r:
            if not checked(r, check):
                self.count_known = False
                return

        def check_gone(r: Any) -> None:
            expect(r.status_code == 404, f"a deleted order answers {r.status_code}")
            expect(r.json()["status"] == "error", "404 without an error envelope")

        with self.client.get(
            f"{API}/orders/{order_id}",
            headers=self.auth(),
            name="GET /orders/{id} [deleted]",
            catch_response=True,
        ) as r:
            checked(r, check_gone)

    @task(1)
    def me(self) -> None:
        self.read_me()


# -- token refresh ------------------------------------------------------------------------------


class TokenRefresher(Account):
    """Rotates refresh tokens; replaying a spent one must end the session."""

    weight = 2

    def on_start(self) -> None:
        self.spent = ""
        self.register("refresh")

    @task(4)
    def rotate(self) -> None:
        old_access, old_refresh = self.tokens.access, self.tokens.refresh

        def check(r: Any) -> dict[str, Any]:
            body = token_answer(r)
            expect(body["refresh_token"] != old_refresh, "the refresh token was not rotated")
            return body

        with self.client.post(
            f"{API}/auth/refresh",
            json={"refresh_token": old_refresh},
            name="POST /auth/refresh",
            catch_response=True,
        ) as r:
            body = checked(r, check)
        if body:
            self.tokens.update(body)
            self.spent = old_refresh
            if self.tokens.access != old_access:
                self.read_me()

    @task(4)
    def me(self) -> None:
        self.read_me()

    @task(1)
    def replay_spent_token(self) -> None:
        if not self.spent:
            return self.rotate()
        # A token exchanged less than a minute ago whose successor is unused gets that same
        # successor again (a repeated refresh, not reuse): rotate once more, so the replayed
        # token's successor has been used.
        spent = self.spent
        self.rotate()
        if self.spent in ("", spent):
            return  # the rotation failed (reported as such)
        self.spent = spent

        def check_refused(r: Any) -> None:
            expect(r.status_code == 401, f"a spent refresh token answers {r.status_code}")
            expect(r.json()["error"]["code"] == "INVALID_TOKEN", f"error {answer(r)}")

        with self.client.post(
            f"{API}/auth/refresh",
            json={"refresh_token": self.spent},
            name="POST /auth/refresh [replayed]",
            catch_response=True,
        ) as r:
            checked(r, check_refused)
        self.spent = ""

        def check_revoked(r: Any) -> None:
            expect(r.status_code == 401, f"the revoked session's access token: {r.status_code}")

        # The revoked session's token as it is: renewing it first would log in again.
        with self.client.get(
            f"{API}/users/me",
            headers=self.tokens.header(),
            name="GET /users/me [revoked]",
            catch_response=True,
        ) as r:
            checked(r, check_revoked)
        self.login()


# -- administrator / reporting ------------------------------------------------------------------

# One admin session per process, shared by its Reporters (one login, not one per Reporter: the
# target counts logins per username against AUTH_RATE_LIMIT).
_admin_lock = Semaphore()
_admin = Tokens()


class Reporter(FastHttpUser):
    """The administrator: generic tables, joins, aggregates, dumps. One session per process."""

    weight = 1
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        if not (ADMIN_EMAIL and ADMIN_PASSWORD):
            log.error("Reporter needs ADMIN_EMAIL and ADMIN_PASSWORD; stopping this user")
            raise StopUser()
        self.auth()
        self.tag = unique("t")
        self.customers: dict[str, dict[str, Any]] = {}  # id -> record sent
        self.purchases: dict[str, dict[str, Any]] = {}
        self.catalog: list[str] = []
        for _ in range(CUSTOMERS_PER_ADMIN):
            customer = self.create("lt_customers", {"name": unique("c"), "visits": 0})
            if customer is None:
                raise StopUser()
            for _ in range(PURCHASES_PER_CUSTOMER):
                self.add_purchase(customer)
        for n in range(CATALOG_PER_ADMIN):
            item = self.create("lt_catalog", {"sku": f"{self.tag}-{n}", "stock": n})
            if item:
                self.catalog.append(item)

    def on_stop(self) -> None:
        """Keep the dumped table small on a target that outlives the run."""
        # Locust calls on_stop even when on_start stopped early (no admin, a failed login).
        try:
            for record_id in getattr(self, "catalog", []):
                self.client.delete(
                    f"{API}/data/lt_catalog/{record_id}",
                    headers=self.auth(),
                    name="DELETE /data/{table}/{id} [cleanup]",
                )
        except StopUser:  # the admin session could not be renewed
            pass

    def auth(self) -> dict[str, str]:
        if _admin.due():
            self.renew_admin()
        return _admin.header()

    def renew_admin(self) -> None:
        """Log in, or renew the shared session before its access token expires: the first
        Reporter to find it due rotates its refresh token (else logs in again); the others wait
        on the lock and use the result."""
        with _admin_lock:
            if not _admin.due():
                return
            body = None
            if _admin.refresh:
                body = refresh_tokens(
                    self.client, _admin.refresh, "POST /auth/refresh [admin renew]"
                )
            if body is None:
                body = log_in(self.client, ADMIN_EMAIL, ADMIN_PASSWORD, "POST /auth/token [admin]")
            if body is None:
                raise StopUser()
            _admin.update(body)

    def create(self, table: str, fields: dict[str, Any]) -> str | None:
        record = {**fields, "tag": self.tag}

        def check(r: Any) -> str:
            data = envelope(r, 201)
            for key, value in record.items():
                expect(data.get(key) == value, f"{key} {data.get(key)!r} != {value!r}")
            if table == "lt_customers":
                self.customers[data["id"]] = {**record, "version": 1}
            return str(data["id"])

        with self.client.post(
            f"{API}/data/{table}",
            json={"data": record},
            headers=self.auth(),
            name="POST /data/{table}",
            catch_response=True,
        ) as r:
            return checked(r, check)

    def add_purchase(self, customer_id: str) -> None:
        amount = random.randint(1, 500)
        purchase_id = self.create("lt_purchases", {"lt_customer_id": customer_id, "amount": amount})
        if purchase_id:
            self.purchases[purchase_id] = {"lt_customer_id": customer_id, "amount": amount}

    @task(3)
    def read_record(self) -> None:
        customer_id = random.choice(list(self.customers))
        want = self.customers[customer_id]

        def check(r: Any) -> None:
            data = envelope(r, 200)
            for key in ("name", "visits", "tag", "version"):
                expect(data.get(key) == want[key], f"{key} {data.get(key)!r} != {want[key]!r}")

        with self.client.get(
            f"{API}/data/lt_customers/{customer_id}",
            headers=self.auth(),
            name="GET /data/{table}/{id}",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(2)
    def update_record(self) -> None:
        customer_id = random.choice(list(self.customers))
        want = self.customers[customer_id]
        visits = want["visits"] + 1

        def check(r: Any) -> None:
            data = envelope(r, 200)
            want.update(visits=visits, version=want["version"] + 1)
            expect(data.get("visits") == visits, f"visits {data.get('visits')} != {visits}")
            expect(data.get("version") == want["version"], f"version {data.get('version')}")

        with self.client.patch(
            f"{API}/data/lt_customers/{customer_id}",
            json={"data": {"visits": visits}},
            headers=self.auth(),
            name="PATCH /data/{table}/{id}",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(2)
    def new_purchase(self) -> None:
        if MAX_RECORDS and len(self.purchases) >= MAX_RECORDS:
            return self.list_purchases()
        self.add_purchase(random.choice(list(self.customers)))

    @task(2)
    def list_purchases(self) -> None:
        def check(r: Any) -> None:
            items = envelope(r, 200)
            total = r.json()["meta"]["total"]
            expect(total == len(self.purchases), f"total {total} != {len(self.purchases)}")
            expect(len(items) == min(20, total), f"{len(items)} items")
            expect(all(i["tag"] == self.tag for i in items), "another tag in a filtered list")
            amounts = [i["amount"] for i in items]
            expect(amounts == sorted(amounts, reverse=True), f"not sorted desc: {amounts}")

        with self.client.get(
            f"{API}/data/lt_purchases?tag={self.tag}&sort=amount:desc&per_page=20",
            headers=self.auth(),
            name="GET /data/{table} [filter, sort]",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(2)
    def join_own_tables(self) -> None:
        def check(r: Any) -> None:
            rows = envelope(r, 200)
            expect(r.json()["meta"]["total"] == len(self.purchases), "join total")
            for row in rows:
                left, right = row["lt_customers"], row["lt_purchases"]
                expect(left["tag"] == self.tag, "a row of another tag (filter on the left)")
                expect(right["lt_customer_id"] == left["id"], "joined rows do not match")
                want = self.purchases.get(right["id"])
                expect(want is not None and want["amount"] == right["amount"], "purchase data")

        with self.client.get(
            f"{API}/join/lt_customers/lt_purchases/lt_customer_id?tag={self.tag}&per_page=50",
            headers=self.auth(),
            name="GET /join/lt_customers/lt_purchases/lt_customer_id",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(1)
    def join_users_orders(self) -> None:
        def check(r: Any) -> None:
            for row in envelope(r, 200):
                user, order = row["users"], row["orders"]
                expect(order["user_id"] == user["id"], "joined user and order do not match")
                expect("password_hash" not in user and "password" not in user, "hash leaked")

        with self.client.get(
            f"{API}/join/users/orders/user_id?per_page=20",
            headers=self.auth(),
            name="GET /join/users/orders/user_id",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(1)
    def aggregate(self) -> None:
        if not FEATURES.get("aggregate"):
            return self.list_purchases()
        body = {
            "filter": {"field": "tag", "op": "eq", "value": self.tag},
            "group_by": ["lt_customer_id"],
            "metrics": [
                {"op": "sum", "field": "amount", "as": "spent"},
                {"op": "count", "as": "n"},
            ],
            "sort": "spent:desc",
        }
        want: dict[str, list[int]] = {}
        for p in self.purchases.values():
            want.setdefault(p["lt_customer_id"], []).append(p["amount"])

        def check(r: Any) -> None:
            groups = envelope(r, 200)
            got = {g["lt_customer_id"]: (g["spent"], g["n"]) for g in groups}
            expected = {k: (sum(v), len(v)) for k, v in want.items()}
            expect(got == expected, f"aggregate {got} != {expected}")
            spent = [g["spent"] for g in groups]
            expect(spent == sorted(spent, reverse=True), "groups not sorted by spent desc")

        with self.client.post(
            f"{API}/data/lt_purchases/aggregate",
            json=body,
            headers=self.auth(),
            name="POST /data/{table}/aggregate",
            catch_response=True,
        ) as r:
            checked(r, check)

    @task(1)
    def dump_small_table(self) -> None:
        def check(r: Any) -> None:
            expect(r.status_code == 200, f"status {r.status_code}: {r.text[:200]}")
            expect("ndjson" in r.headers.get("Content-Type", ""), "dump content type")
            lines = [json.loads(line) for line in r.text.splitlines() if line]
            mine = {rec["id"] for rec in lines if rec.get("tag") == self.tag}
            expect(mine == set(self.catalog), f"{len(mine)} of my {len(self.catalog)} records")

        with self.client.get(
            f"{API}/dump/lt_catalog",
            headers=self.auth(),
            name="GET /dump/{table}",
            catch_response=True,
        ) as r:
            checked(r, check)


# -- listeners: user mix, features, observed limits, thresholds ----------------------------------


def small_class_counts(users: int) -> dict[str, int]:
    """``fixed_count`` of the classes with a small weight, in the weights' proportion but at
    least one each once there are users for every class: locust's weights alone give the first
    Reporter to the 6th user, and a run without one never measures its route groups."""
    if users < 3:
        return {}
    total = Shopper.weight + TokenRefresher.weight + Reporter.weight
    return {
        cls.__name__: max(1, round(users * cls.weight / total))
        for cls in (TokenRefresher, Reporter)
    }


@events.init.add_listener
def mix_users(environment: Any, **_: Any) -> None:
    users = getattr(environment.parsed_options, "num_users", None) or 0
    counts = small_class_counts(users)
    for cls in (TokenRefresher, Reporter):
        cls.fixed_count = counts.get(cls.__name__, 0)
    if counts:
        log.info("users: %s fixed, the other %d Shoppers", counts, users - sum(counts.values()))


@events.test_start.add_listener
def probe_features(environment: Any, **_: Any) -> None:
    """Which optional routes the target serves (from its OpenAPI document, outside the stats)."""
    log.info(
        "run id %s: accounts shop%sx...@example.com and refresh%sx...@example.com, generic "
        "records tagged t%sx... (they stay on the target)",
        *[RUN_ID] * 4,
    )
    FEATURES["aggregate"] = False
    try:
        with urllib.request.urlopen(f"{environment.host}/openapi.json", timeout=10) as reply:
            paths = json.load(reply).get("paths", {})
        FEATURES["aggregate"] = any(p.endswith("/data/{table}/aggregate") for p in paths)
    except (OSError, ValueError) as exc:
        log.warning("could not read the target's OpenAPI document: %s", exc)
    log.info("optional routes: %s", FEATURES)


@events.request.add_listener
def observe_limits(response: Any = None, **_: Any) -> None:
    if response is None or getattr(response, "headers", None) is None:
        return
    limit = response.headers.get("X-Rate-Limit-Limit")
    if limit and len(OBSERVED["rate_limit"]) < 10:
        OBSERVED["rate_limit"].add(limit)
    if response.status_code == 429:
        OBSERVED["status_429"] += 1


def figures(entry: Any) -> dict[str, Any]:
    """One statistics entry's figures (milliseconds)."""
    out = {
        "method": entry.method,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.total_rps,
        "avg_ms": entry.avg_response_time,
        "max_ms": entry.max_response_time,
    }
    for q in (0.5, 0.95, 0.99):
        value = entry.get_response_time_percentile(q) if entry.num_requests else None
        out[f"p{round(q * 100)}_ms"] = value
    return out


def unmeasured_problems(ran: set[str]) -> list[str]:
    """A route group without a single request: its thresholds were never checked."""
    problems = []
    for group, names in ROUTE_GROUPS.items():
        if names & ran:
            continue
        why = ""
        if "Reporter" in group and not (ADMIN_EMAIL and ADMIN_PASSWORD):
            why = ": no ADMIN_EMAIL/ADMIN_PASSWORD, so no Reporter"
        problems.append(f"{group} never ran, its thresholds were not checked{why}")
    return problems


def verdict(stats: Any) -> dict[str, Any]:
    """The thresholds against the run's statistics: {"passed", "problems", "routes", ...}."""
    problems = []
    total = stats.total
    ratio = total.fail_ratio
    if ratio > MAX_FAIL_RATIO:
        problems.append(f"failure ratio {ratio:.2%} > {MAX_FAIL_RATIO:.2%}")
    if total.num_requests == 0:
        problems.append("no request was made")
    routes = {}
    for entry in stats.entries.values():
        name = entry.name
        kind = "single" if name in SINGLE_RECORD else "join" if name in JOINS else "other"
        limit = {"single": SINGLE_P95_MS, "join": JOIN_P95_MS}.get(kind)
        routes[name] = {"kind": kind, **figures(entry)}
        p95 = routes[name]["p95_ms"]
        if LATENCY_GATES and limit is not None and p95 is not None and p95 > limit:
            problems.append(f"{name}: p95 {p95:.0f} ms > {limit:.0f} ms ({kind})")
    ran = {name for name, r in routes.items() if r["requests"]}
    unmeasured_groups = unmeasured_problems(ran)
    if not ALLOW_UNMEASURED:
        problems += unmeasured_groups
    return {
        "passed": not problems,
        "problems": problems,
        "unmeasured_groups": unmeasured_groups,
        "unmeasured_routes": sorted((SINGLE_RECORD | JOINS) - ran),
        "fail_ratio": ratio,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "latency_gates": LATENCY_GATES,
        "thresholds": {
            "max_fail_ratio": MAX_FAIL_RATIO,
            "single_p95_ms": SINGLE_P95_MS,
            "join_p95_ms": JOIN_P95_MS,
        },
        "routes": routes,
        "total": figures(total),
        "features": dict(FEATURES),
        "rate_limit_observed": sorted(OBSERVED["rate_limit"]),
        "status_429": OBSERVED["status_429"],
        "run_id": RUN_ID,
    }


@events.quitting.add_listener
def check_thresholds(environment: Any, **_: Any) -> None:
    result = verdict(environment.stats)
    for problem in result["problems"]:
        log.error("threshold broken: %s", problem)
    if result["unmeasured_routes"]:
        log.warning("gated routes without a request: %s", ", ".join(result["unmeasured_routes"]))
    if result["passed"]:
        log.info(
            "thresholds met (%d requests, %.2f%% failed)",
            result["requests"],
            result["fail_ratio"] * 100,
        )
        # The verdict is the exit code, not locust's own rule (any failure at all: exit 1):
        # QA, a run with 3 failed requests of 1261 passed its thresholds and exited 1.
        environment.process_exit_code = 0
    else:
        environment.process_exit_code = 1
    path = os.environ.get("LOAD_VERDICT_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
