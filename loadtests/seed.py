"""``make seed``: load a realistic sample dataset into a running service, over HTTP only.

    python -m loadtests.seed --base-url http://localhost:8000 --users 100 --orders 1000

What it loads (deterministic for a given ``--seed``):

- ``products`` (generic table): ``sku``, ``name``, ``category``, ``price`` (a number),
  ``stock``, ``released_on`` (dates spread over the two years before 2025-01-01, a fixed
  day so that every seeding gives the same data);
- ``users``: varied names and ages 18-85; the first is ``demo@example.com``; every seeded user's
  password is ``demo password`` (the README's quick start logs in with it);
- ``orders``: a product, a quantity (1-5, mostly 1) and ``total_price`` = price x quantity as an
  exact decimal string, spread unevenly over the users (some have many, a few none), and an
  ``order_date`` spread over the 365 days before today (an admin may date an order in the
  past; the service refuses a future date).

It logs in as the administrator (``ADMIN_EMAIL``/``ADMIN_PASSWORD``, which ``make run`` sets
in development) and writes with the admin's bulk insert (``POST /api/v1/data/{table}`` with
``{"data": [...]}``) in chunks sent concurrently (about 15 requests for the default size, far
under ``RATE_LIMIT``). Most of the time is the workers bcrypt-hashing the users' passwords
(about 0.25 CPU seconds each at cost 12, at most 20 per request: ``MAX_HASHES_PER_REQUEST``),
so users are the expensive part of a large dataset; orders and products are cheap. Against a
service without bulk insert it falls back to one record per request and then paces itself by
the rate limit (429 → ``Retry-After``), which at the default 100/minute takes minutes.

Idempotent: a marker record ``seed_runs/sample-data`` is written first (``loading``) and
completed at the end. A second run finds it and does nothing (exit 0); a marker left at
``loading`` (another run still loading, or one interrupted) makes it refuse (exit 2), saying
to wait for a run in progress, or to reset the data after an interrupted one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

API = "/api/v1"
MARKER_TABLE = "seed_runs"
MARKER_ID = "sample-data"
DEMO_EMAIL = "demo@example.com"
PASSWORD = "demo password"
USER_CHUNK = 20  # the API's MAX_HASHES_PER_REQUEST (passwords hashed per request)
RECORD_CHUNK = 250

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Margaret",
    "Linus",
    "Barbara",
    "Dennis",
    "Frances",
    "Ken",
    "Radia",
    "Edsger",
    "Hedy",
    "Tim",
    "Katherine",
    "Guido",
    "Sophie",
    "Yukihiro",
    "Jean",
    "Donald",
    "Shafi",
    "Niklaus",
    "Anita",
    "Bjarne",
    "Lynn",
    "Satoshi",
    "Mary",
    "John",
    "Ida",
    "Amara",
    "Kwame",
    "Priya",
    "Wei",
    "Mateo",
    "Olga",
    "Kenji",
    "Fatima",
    "Lars",
    "Ingrid",
    "Diego",
    "Aisha",
    "Nikolai",
    "Chloe",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Hamilton",
    "Torvalds",
    "Liskov",
    "Ritchie",
    "Allen",
    "Thompson",
    "Perlman",
    "Dijkstra",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Rossum",
    "Wilson",
    "Matsumoto",
    "Bartik",
    "Knuth",
    "Goldwasser",
    "Wirth",
    "Borg",
    "Stroustrup",
    "Conway",
    "Nakamoto",
    "Shelley",
    "McCarthy",
    "Okafor",
    "Mensah",
    "Sharma",
    "Zhang",
    "Garcia",
    "Petrova",
    "Tanaka",
    "Haddad",
    "Nilsson",
    "Larsen",
    "Fernandez",
    "Bello",
    "Ivanov",
    "Dubois",
]
CATEGORIES = {
    "books": ("Handbook", "Field Guide", "Cookbook", "Atlas", "Anthology", "Primer"),
    "electronics": ("Headphones", "Keyboard", "Monitor", "Webcam", "Charger", "Speaker"),
    "garden": ("Trowel", "Hose", "Planter", "Seed Kit", "Pruner", "Lantern"),
    "kitchen": ("Kettle", "Skillet", "Knife Set", "Grinder", "Teapot", "Scale"),
    "toys": ("Puzzle", "Kite", "Robot Kit", "Board Game", "Yo-yo", "Blocks"),
}
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Pro", "Travel", "Vintage", "Smart")


@dataclass
class Dataset:
    products: list[dict[str, Any]]
    users: list[dict[str, Any]]
    # Orders name their user by index into ``users`` (ids are known only once they exist).
    orders: list[tuple[int, dict[str, Any]]]


def build_dataset(
    users: int, orders: int, products: int, seed: int, until: date | None = None
) -> Dataset:
    """The sample data, the same for the same arguments; orders are dated in the 365 days
    before ``until`` (default: today, UTC)."""
    rng = random.Random(seed)
    until = until or datetime.now(UTC).date()
    dates_end = datetime(until.year, until.month, until.day, tzinfo=UTC)
    when = random.Random(f"{seed}-order-dates")  # apart: the other data as before
    today = date(2025, 1, 1)
    catalog = []
    for i in range(products):
        category = rng.choice(sorted(CATEGORIES))
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(CATEGORIES[category])}"
        catalog.append(
            {
                "sku": f"{category[:3].upper()}-{i + 1:04}",
                "name": name,
                "category": category,
                "price": float(Decimal(rng.randrange(299, 19999)) / 100),
                "stock": rng.randrange(0, 500),
                "released_on": (today - timedelta(days=rng.randrange(0, 730))).isoformat(),
            }
        )
    people: list[dict[str, Any]] = [
        {"email": DEMO_EMAIL, "full_name": "Demo User", "age": 34, "password": PASSWORD}
    ]
    for i in range(1, users):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        person: dict[str, Any] = {
            "email": f"{first}.{last}.{i}@example.com".lower(),
            "full_name": f"{first} {last}",
            "password": PASSWORD,
        }
        if rng.random() < 0.95:  # a few users leave their age out
            person["age"] = min(85, max(18, int(rng.gauss(40, 14))))
        people.append(person)
    placed: list[tuple[int, dict[str, Any]]] = []
    weights = [rng.paretovariate(1.5) for _ in people]  # a few busy customers, a long tail
    for _ in range(orders):
        owner = 0 if rng.random() < 0.01 else rng.choices(range(len(people)), weights)[0]
        product = rng.choice(catalog) if catalog else {"name": "Widget", "price": 9.99}
        quantity = rng.choices((1, 2, 3, 4, 5), (60, 20, 10, 6, 4))[0]
        unit = Decimal(str(product["price"])).quantize(Decimal("0.01"))
        order = {
            "product_name": product["name"],
            "quantity": quantity,
            "total_price": str(unit * quantity),
            "order_date": (dates_end - timedelta(seconds=when.randrange(1, 365 * 86400)))
            .isoformat()
            .replace("+00:00", "Z"),
        }
        placed.append((owner, order))
    return Dataset(catalog, people, placed)


class SeedError(Exception):
    pass


@dataclass
class Seeder:
    http: httpx.AsyncClient
    concurrency: int
    quiet: bool = False
    bulk: bool | None = None  # None: not known yet
    _gate: asyncio.Semaphore = field(init=False)
    _warned_rate_limit: bool = False

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.concurrency)

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; waits out 429s (``Retry-After``) and retries 503s a few times."""
        for attempt in range(1000):
            async with self._gate:
                response = await self.http.request(method, url, **kwargs)
            if response.status_code == 429:
                wait = float(response.headers.get("retry-after", "1"))
                if not self._warned_rate_limit:
                    self._warned_rate_limit = True
                    self.say(f"rate limited: pausing {wait:g}s at a time (RATE_LIMIT)")
                await asyncio.sleep(wait)
                continue
            if response.status_code in (502, 503) and attempt < 10:
                await asyncio.sleep(1)
                continue
            return response
        raise SeedError(f"{method} {url}: still rate limited")

    async def login(self, email: str, password: str) -> None:
        form = {"username": email, "password": password}
        response = await self.request("POST", f"{API}/auth/token", data=form)
        if response.status_code != 200:
            raise SeedError(
                f"admin login as {email!r} failed ({response.status_code}): check ADMIN_EMAIL"
                " and ADMIN_PASSWORD (make run sets them in development)"
            )
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    async def marker(self) -> dict[str, Any] | None:
        response = await self.request("GET", f"{API}/data/{MARKER_TABLE}/{MARKER_ID}")
        if response.status_code == 404:
            return None
        check(response, 200)
        data: dict[str, Any] = response.json()["data"]
        return data

    async def insert_many(self, table: str, records: Sequence[dict[str, Any]]) -> list[str]:
        """Insert ``records`` (bulk in concurrent chunks when the service has it); their ids."""
        if not records:
            return []
        size = USER_CHUNK if table == "users" else RECORD_CHUNK
        chunks = [list(records[i : i + size]) for i in range(0, len(records), size)]
        if self.bulk is None:
            first = await self._bulk(table, chunks[0])
            self.bulk = first is not None
            if first is None:
                self.say("bulk insert not available: one record per request (slower)")
            done = first if first is not None else await self._singles(table, chunks[0])
            chunks = chunks[1:]
        else:
            done = []
        if self.bulk:
            parts = await asyncio.gather(*(self._bulk(table, chunk) for chunk in chunks))
            rest = [record_id for part in parts for record_id in part or []]
        else:
            rest = await self._singles(table, [r for chunk in chunks for r in chunk])
        return done + rest

    async def _bulk(self, table: str, chunk: list[dict[str, Any]]) -> list[str] | None:
        response = await self.request("POST", f"{API}/data/{table}", json={"data": chunk})
        if self.bulk is None and response.status_code in (400, 422):
            return None  # a service whose /data/{table} takes one record only
        check(response, 200, 201)
        stored = response.json()["data"]
        if not isinstance(stored, list) or len(stored) != len(chunk):
            raise SeedError(f"bulk insert into {table} answered {str(stored)[:200]}")
        return [str(record["id"]) for record in stored]

    async def _singles(self, table: str, records: list[dict[str, Any]]) -> list[str]:
        async def one(record: dict[str, Any]) -> str:
            response = await self.request("POST", f"{API}/data/{table}", json={"data": record})
            check(response, 201)
            return str(response.json()["data"]["id"])

        return list(await asyncio.gather(*(one(record) for record in records)))


def check(response: httpx.Response, *expected: int) -> None:
    if response.status_code not in expected:
        raise SeedError(
            f"{response.request.method} {response.request.url.path}:"
            f" {response.status_code} {response.text[:300]}"
        )


async def seed(
    base_url: str,
    admin_email: str,
    admin_password: str,
    dataset: Dataset,
    concurrency: int = 8,
    quiet: bool = False,
) -> dict[str, Any]:
    """Load ``dataset`` unless already loaded; returns the marker record."""
    timeout = httpx.Timeout(120.0, connect=10.0)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        seeder = Seeder(http, concurrency, quiet)
        await seeder.login(admin_email, admin_password)
        found = await seeder.marker()
        if found is not None:
            if found.get("state") != "complete":
                raise SeedError(
                    f"another seed run is loading, or an earlier one did not finish (marker"
                    f" {MARKER_TABLE}/{MARKER_ID} is {found.get('state')!r}, started"
                    f" {found.get('started_at')}): if another is running, wait for it and run"
                    " this again (it will find the data seeded); only if none is, reset the"
                    " data (stop the service, remove its data directory) and seed again"
                )
            seeder.say(
                f"already seeded on {found.get('finished_at')}: {found.get('users')} users,"
                f" {found.get('orders')} orders, {found.get('products')} products; nothing to do"
            )
            return found
        started = time.monotonic()
        marker = {"id": MARKER_ID, "state": "loading", "started_at": time.time()}
        check(
            await seeder.request("POST", f"{API}/data/{MARKER_TABLE}", json={"data": marker}), 201
        )

        await seeder.insert_many("products", dataset.products)
        seeder.say(f"products: {len(dataset.products)}")
        user_ids = await seeder.insert_many("users", dataset.users)
        seeder.say(f"users: {len(user_ids)}")
        orders = [{**order, "user_id": user_ids[owner]} for owner, order in dataset.orders]
        await seeder.insert_many("orders", orders)
        seeder.say(f"orders: {len(orders)}")

        done = {
            "state": "complete",
            "users": len(user_ids),
            "orders": len(orders),
            "products": len(dataset.products),
            "seconds": round(time.monotonic() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        url = f"{API}/data/{MARKER_TABLE}/{MARKER_ID}"
        response = await seeder.request("PATCH", url, json={"data": done})
        check(response, 200)
        seeder.say(f"seeded in {done['seconds']}s; log in as {DEMO_EMAIL} / '{PASSWORD}'")
        result: dict[str, Any] = response.json()["data"]
        return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://localhost:8000")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--products", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42, help="random seed (same data each time)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.users < 1 or args.orders < 0 or args.products < 1:
        parser.error("--users and --products must be at least 1, --orders at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    email, password = os.environ.get("ADMIN_EMAIL"), os.environ.get("ADMIN_PASSWORD")
    if not email or not password:
        print("seed: set ADMIN_EMAIL and ADMIN_PASSWORD (the service's administrator)")
        return 2
    dataset = build_dataset(args.users, args.orders, args.products, args.seed)
    try:
        asyncio.run(
            seed(args.base_url, email, password, dataset, args.concurrency, quiet=args.quiet)
        )
    except SeedError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"seed: cannot reach {args.base_url} ({exc!r}); is `make run` up?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
