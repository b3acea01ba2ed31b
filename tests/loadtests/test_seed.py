"""``make seed`` on a fresh stack, then the README's quick-start commands exactly as written.

The stack runs with the default rate limits (100/minute, 10 logins/minute) and `make run`'s
development administrator, so what passes here is what a newcomer gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest

from loadtests.seed import DEMO_EMAIL, build_dataset
from tests.support.stack import ROOT, Stack, running_stack

pytestmark = pytest.mark.integration

ADMIN = {"ADMIN_EMAIL": "admin@example.com", "ADMIN_PASSWORD": "dev-only-admin-password"}
README_BASE = "http://localhost:8000"


def run_seed(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "loadtests.seed", "--base-url", stack.base_url, *args]
    env = {**os.environ, **ADMIN}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def readme_commands() -> str:
    """The shell block between the quick-start markers of README.md."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = re.search(
        r"<!-- quickstart:begin -->\n```bash\n(.*?)```\n<!-- quickstart:end -->", text, re.S
    )
    assert block, "README.md has no quick-start block between the markers"
    return block.group(1)


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[Stack, subprocess.CompletedProcess[str]]]:
    env = {**ADMIN, "RATE_LIMIT": "100/minute", "AUTH_RATE_LIMIT": "10/minute"}
    with running_stack(workers=2, extra_env=env) as stack:
        yield stack, run_seed(stack)


@contextmanager
def admin_client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        form = {"username": ADMIN["ADMIN_EMAIL"], "password": ADMIN["ADMIN_PASSWORD"]}
        token = http.post("/api/v1/auth/token", data=form).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield http


def totals(http: httpx.Client) -> dict[str, int]:
    counts = {}
    for table in ("users", "orders", "products"):
        response = http.get(f"/api/v1/data/{table}", params={"per_page": 1})
        assert response.status_code == 200, response.text
        counts[table] = response.json()["meta"]["total"]
    return counts


def test_seed_loads_the_default_dataset(seeded: tuple[Stack, Any]):
    stack, first = seeded
    assert first.returncode == 0, first.stdout + first.stderr + stack.logs()
    assert "seeded in" in first.stdout
    # 100 users besides the administrator, 1,000 orders, 60 products.
    with admin_client(stack) as http:
        assert totals(http) == {"users": 101, "orders": 1000, "products": 60}


def test_readme_quick_start_commands_work_as_written(seeded: tuple[Stack, Any]):
    stack, first = seeded
    assert first.returncode == 0, first.stderr
    script = readme_commands()
    assert README_BASE in script
    script = script.replace(README_BASE, stack.base_url)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    me, orders, revenue = (json.loads(line) for line in done.stdout.splitlines() if line.strip())

    data = build_dataset(100, 1000, 60, 42)
    assert me["status"] == "success" and me["data"]["email"] == DEMO_EMAIL

    mine = [order for owner, order in data.orders if owner == 0]
    assert orders["meta"]["total"] == len(mine) >= 3
    prices = [Decimal(order["total_price"]) for order in orders["data"]]
    assert prices == sorted((Decimal(o["total_price"]) for o in mine), reverse=True)[:3]
    assert {order["user_id"] for order in orders["data"]} == {me["data"]["id"]}

    expected: dict[str, Decimal] = defaultdict(Decimal)
    for _, order in data.orders:
        expected[order["product_name"]] += Decimal(order["total_price"])
    top = sorted(expected.values(), reverse=True)[:3]
    assert [Decimal(group["revenue"]) for group in revenue["data"]] == top
    for group in revenue["data"]:
        assert Decimal(group["revenue"]) == expected[group["product_name"]]  # exact decimals


def test_second_seed_loads_nothing_and_an_interrupted_one_is_refused(
    seeded: tuple[Stack, Any],
):
    stack, first = seeded
    assert first.returncode == 0, first.stderr
    with admin_client(stack) as http:
        before = totals(http)
        again = run_seed(stack)
        assert again.returncode == 0, again.stderr
        assert "already seeded" in again.stdout
        assert totals(http) == before

        marker = "/api/v1/data/seed_runs/sample-data"
        assert http.patch(marker, json={"data": {"state": "loading"}}).status_code == 200
        try:
            refused = run_seed(stack)
            assert refused.returncode == 2
            assert "did not finish" in refused.stderr
            assert totals(http) == before
        finally:
            http.patch(marker, json={"data": {"state": "complete"}})


def test_dataset_is_deterministic_and_exact():
    one, two = build_dataset(20, 200, 10, 7), build_dataset(20, 200, 10, 7)
    assert one == two
    assert len({user["email"] for user in one.users}) == 20
    ages = [user["age"] for user in one.users if "age" in user]
    assert min(ages) >= 18 and max(ages) <= 85 and len(set(ages)) > 5
    for _, order in one.orders:
        price = Decimal(order["total_price"])
        assert price == price.quantize(Decimal("0.01")) and order["quantity"] >= 1
