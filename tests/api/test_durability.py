"""The API over a persistent store: snapshots for backups, and riding out a killed store.

One gunicorn stack whose store keeps its data in a directory (STORE_DATA_DIR, fsync always).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storeserver.probe import wait_for_socket
from tests.support.auth import Account, login_admin, register
from tests.support.stack import Stack, running_stack, wait_until_ready, worker_pids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def durable_stack() -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="memdb-data-"))
    env = {"STORE_FSYNC": "always", "STORE_DATA_DIR": str(data_dir)}
    with running_stack(workers=2, extra_env=env) as stack:
        yield stack
    shutil.rmtree(data_dir, ignore_errors=True)


def data_dir_of(stack: Stack) -> Path:
    return Path(stack.env["STORE_DATA_DIR"])


def restart_store(stack: Stack) -> None:
    """Start a new store process on the same socket and data directory."""
    stack.spawn("store", [sys.executable, "-m", "storeserver"])
    wait_for_socket(stack.socket_path, proc=stack.processes["store"])


@pytest.fixture(scope="module")
def admin_client(durable_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=durable_stack.base_url, timeout=10.0) as http:
        admin: Account = login_admin(http)
        http.headers.update(admin.headers)
        yield http


def test_admin_snapshot_reports_path_and_size(admin_client: httpx.Client, durable_stack: Stack):
    register(admin_client, email="snap@example.com")
    response = admin_client.post("/api/v1/admin/snapshot")
    assert response.status_code == 200, response.text
    info = response.json()["data"]
    path = Path(info["path"])
    assert path.parent == data_dir_of(durable_stack)
    assert info["bytes"] == path.stat().st_size > 0
    assert response.headers["Cache-Control"] == "no-store"


def test_snapshot_is_admin_only(admin_client: httpx.Client, durable_stack: Stack):
    user = register(admin_client, email="notadmin@example.com")
    with httpx.Client(base_url=durable_stack.base_url, timeout=10.0) as http:
        anonymous = http.post("/api/v1/admin/snapshot")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"]
        forbidden = http.post("/api/v1/admin/snapshot", headers=user.headers)
        assert forbidden.status_code == 403
        assert forbidden.json()["status"] == "error"


def test_killed_store_gives_fast_503_then_recovers_with_its_data(
    admin_client: httpx.Client, durable_stack: Stack
):
    user = register(admin_client, email="survivor@example.com")
    order = admin_client.post(
        "/api/v1/orders",
        json={"user_id": user.id, "product_name": "Lamp", "quantity": 1, "total_price": "19.90"},
    )
    assert order.status_code == 201, order.text
    pids_before = worker_pids(durable_stack)

    store = durable_stack.processes["store"]
    store.send_signal(signal.SIGKILL)
    store.wait(10)

    started = time.monotonic()
    down = admin_client.get(f"/api/v1/orders/{order.json()['data']['id']}")
    elapsed = time.monotonic() - started
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "STORE_UNAVAILABLE"
    assert down.headers["Retry-After"]
    assert elapsed < 3.0  # "within about a second"; generous for a loaded machine
    ready = httpx.get(durable_stack.url("/api/v1/ready"), timeout=5)
    assert ready.status_code == 503
    assert httpx.get(durable_stack.url("/api/v1/health"), timeout=5).status_code == 200

    restart_store(durable_stack)
    wait_until_ready(durable_stack, 20.0)
    again = admin_client.get(f"/api/v1/orders/{order.json()['data']['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["data"]["total_price"] == "19.90"
    assert admin_client.get(f"/api/v1/users/{user.id}").status_code == 200
    # The same API processes served before and after: no restart of the API tier.
    assert worker_pids(durable_stack) == pids_before


def test_store_back_empty_gets_tables_and_admin_before_any_request():
    """Without persistence a restarted store is empty; the workers' on_connect steps declare
    the tables (unique email) and the ADMIN_EMAIL account again before serving anything."""
    with running_stack(workers=1) as stack, httpx.Client(base_url=stack.base_url) as http:
        login_admin(http)
        stack.restart_store()
        wait_for_socket(stack.socket_path, proc=stack.processes["store"])
        wait_until_ready(stack, 20.0)
        admin = login_admin(http)  # the account exists again
        http.headers.update(admin.headers)
        register(http, email="Again@Example.com")
        duplicate = http.post(
            "/api/v1/users",
            json={"email": "again@example.com", "full_name": "X", "password": "password123"},
        )
        assert duplicate.status_code == 409  # the unique index came back with the table
