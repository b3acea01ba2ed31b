"""GET /metrics: HTTP metrics summed over every worker, and the store's gauges at scrape time.

In-process tests use the default registry and a scripted store; the integration tests run
gunicorn with 2 workers in multiprocess mode and pin keep-alive connections to each worker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api import metrics
from api.deps import get_store
from api.docs import ASSETS_URL
from api.main import create_app
from api.settings import Settings
from storeserver.errors import StoreUnavailable
from tests.support.auth import login_admin
from tests.support.inprocess import in_process
from tests.support.metrics import has_sample, value
from tests.support.stack import Stack, running_stack
from tests.support.workers import close_all, pinned_clients

STATS: dict[str, Any] = {
    "tables": {"users": {"rows": 3, "indexes": []}, "orders": {"rows": 5, "indexes": []}},
    "rss_bytes": 50_000_000,
    "max_memory": 400_000_000,
    "clients": 2,
    "commands": {"get": {"count": 7, "seconds": 0.002}, "insert": {"count": 3, "seconds": 0.01}},
    "uptime_s": 12.5,
    "cursors": 3,
    "persistence": {"enabled": True, "log_bytes": 4096, "last_snapshot_age_s": 30.0, "error": None},
}


class ScriptedStore:
    def __init__(self, stats: Any = None, error: Exception | None = None, delay: float = 0.0):
        self.stats, self.error, self.delay = stats, error, delay
        self.calls = 0

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.stats if command == "stats" else {"pong": True, "ready": True, "version": "t"}


def app_with(store: ScriptedStore) -> FastAPI:
    app = create_app(Settings())
    app.dependency_overrides[get_store] = lambda: store
    return app


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedStore]]:
    store = ScriptedStore(STATS)
    async with in_process(app_with(store)) as client:
        yield client, store


async def test_store_gauges_are_read_once_per_scrape(
    http: tuple[httpx.AsyncClient, ScriptedStore],
) -> None:
    client, store = http
    response = await client.get("/metrics")
    assert response.status_code == 200 and store.calls == 1
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    assert value(text, "memdb_store_up") == 1
    assert value(text, "memdb_store_tables") == 2
    assert value(text, "memdb_store_table_rows", table="orders") == 5
    assert value(text, "memdb_store_memory_rss_bytes") == 50_000_000
    assert value(text, "memdb_store_memory_limit_bytes") == 400_000_000
    assert value(text, "memdb_store_clients") == 2
    assert value(text, "memdb_store_scan_cursors") == 3  # soak QA: the cap had no gauge
    assert value(text, "memdb_store_commands_total", command="get") == 7
    assert value(text, "memdb_store_command_seconds_total", command="insert") == 0.01
    assert value(text, "memdb_store_log_bytes") == 4096
    assert value(text, "memdb_store_last_snapshot_age_seconds") == 30
    assert value(text, "memdb_store_persistence_failed") == 0


@pytest.mark.parametrize(
    "sent", [None, "Bearer wrong-token", "Basic c2NyYXBlcg==", "Bearer", "scrape-token-for-tests"]
)
async def test_with_a_metrics_token_a_scrape_without_it_is_refused_before_any_work(
    sent: str | None,
) -> None:
    """QA: the series name every table (admin-only ones too) with its rows, to anyone; and a
    scrape costs a store call. METRICS_TOKEN closes it: 401 in the envelope, no store call."""
    store = ScriptedStore(STATS)
    app = create_app(Settings(metrics_token=" scrape-token-for-tests\n"))  # as read from a file
    app.dependency_overrides[get_store] = lambda: store
    headers = {} if sent is None else {"Authorization": sent}
    async with in_process(app) as client:
        refused = await client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and store.calls == 0
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "memdb_store" not in refused.text
        allowed = await client.get(
            "/metrics", headers={"Authorization": "bearer  scrape-token-for-tests"}
        )
        assert allowed.status_code == 200 and store.calls == 1
        assert value(allowed.text, "memdb_store_table_rows", table="orders") == 5


def test_a_blank_metrics_token_is_unset_not_an_empty_token() -> None:
    """QA: "   " let `Authorization: Bearer` with no token scrape."""
    assert Settings(metrics_token="   ").metrics_token is None
    token = Settings(metrics_token=" t0ken-for-scrapes\n").metrics_token
    assert token is not None and token.get_secret_value() == "t0ken-for-scrapes"


async def test_requests_are_counted_by_route_template_and_status(
    http: tuple[httpx.AsyncClient, ScriptedStore],
) -> None:
    client, _ = http
    route = {"handler": "/api/v1/users/{user_id}", "method": "GET"}
    before = (await client.get("/metrics")).text
    await client.get("/api/v1/health")
    await client.get("/api/v1/users/nobody")  # 401 without a token
    await client.get("/no/such/path")
    after = (await client.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("http_requests_total", handler="/api/v1/health", status="200") == 1
    assert delta("http_requests_total", **route, status="401") == 1
    assert delta("http_request_duration_seconds_count", **route, status="401") == 1
    assert delta("http_requests_total", handler="none", status="404") == 1
    assert delta("http_requests_total") == 3  # the scrapes themselves are not counted
    assert not any(path.startswith("/metrics") for path in create_app().openapi()["paths"])


async def test_requests_answered_before_routing_keep_their_route_template(
    http: tuple[httpx.AsyncClient, ScriptedStore],
) -> None:
    """415 comes from a middleware before any route runs, 405 from a path-only match: both are
    still counted under the template the path belongs to, not under "none"."""
    client, _ = http
    before = (await client.get("/metrics")).text
    wrong_type = await client.post(
        "/api/v1/users", content=b"<x/>", headers={"Content-Type": "application/xml"}
    )
    wrong_method = await client.delete("/api/v1/health")
    after = (await client.get("/metrics")).text
    assert (wrong_type.status_code, wrong_method.status_code) == (415, 405)

    def delta(**labels: str) -> float:
        return value(after, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert delta(handler="/api/v1/users", method="POST", status="415") == 1
    assert delta(handler="/api/v1/health", method="DELETE", status="405") == 1
    assert delta(handler="none") == 0


async def test_the_docs_assets_count_under_their_mount_not_none(
    http: tuple[httpx.AsyncClient, ScriptedStore],
) -> None:
    """QA: the mount extends the scope's root_path before serving, after which the request
    no longer matched it: assets served 200 (and POSTs answered 405) counted under "none",
    which deploy/README.md keeps for unknown paths and parser refusals."""
    client, _ = http
    before = (await client.get("/metrics")).text
    served = await client.get(f"{ASSETS_URL}/swagger-ui.css")
    refused = await client.post(f"{ASSETS_URL}/swagger-ui.css")
    after = (await client.get("/metrics")).text
    assert (served.status_code, refused.status_code) == (200, 405)

    def delta(**labels: str) -> float:
        return value(after, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert delta(handler=ASSETS_URL, method="GET", status="200") == 1
    assert delta(handler=ASSETS_URL, method="POST", status="405") == 1
    assert delta(handler="none") == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_in_progress_gauge_counts_requests_being_served(method: str) -> None:
    """QA: a HEAD, which the app serves as the GET it asks about, was in progress as a GET."""
    entered, gate = asyncio.Event(), asyncio.Event()

    class GatedStore(ScriptedStore):
        async def call(
            self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
        ) -> Any:
            if command == "ping":
                entered.set()
                await gate.wait()
            return await super().call(command, args)

    store = GatedStore(STATS)
    async with in_process(app_with(store)) as client:
        slow = asyncio.create_task(client.request(method, "/api/v1/ready"))
        await asyncio.wait_for(entered.wait(), 5)
        during = (await client.get("/metrics")).text
        gate.set()
        assert (await slow).status_code == 200
        after = (await client.get("/metrics")).text
    labels = {"handler": "/api/v1/ready", "method": method}
    assert value(during, "http_requests_inprogress", **labels) == 1
    assert value(after, "http_requests_inprogress", **labels) == 0
    other = "GET" if method == "HEAD" else "HEAD"
    assert value(during, "http_requests_inprogress", handler="/api/v1/ready", method=other) == 0


@pytest.mark.parametrize(
    "store", [ScriptedStore(delay=30.0), ScriptedStore(error=StoreUnavailable("down"))]
)
async def test_a_dead_store_sets_up_to_zero_without_hanging_the_scrape(
    store: ScriptedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "STORE_STATS_TIMEOUT", 0.2)
    async with in_process(app_with(store)) as client:
        # A request counted first: alone in its process, the test had no sample to find.
        assert (await client.get("/api/v1/health")).status_code == 200
        started = time.monotonic()
        response = await client.get("/metrics")
    assert response.status_code == 200 and time.monotonic() - started < 2
    assert value(response.text, "memdb_store_up") == 0
    assert not has_sample(response.text, "memdb_store_table_rows")
    assert has_sample(response.text, "http_requests_total")


# --- gunicorn, 2 workers, multiprocess mode ---------------------------------------------------


@pytest.fixture(scope="module")
def metrics_stack() -> Iterator[Stack]:
    with running_stack(workers=2) as running:
        yield running


@pytest.mark.integration
async def test_counter_sums_requests_over_workers(metrics_stack: Stack) -> None:
    """N requests over 2 pinned workers: a scrape served by either worker says N."""
    by_pid = await pinned_clients(metrics_stack.base_url, workers=2, per_worker=1)
    try:
        clients = {pid: group[0] for pid, group in by_pid.items()}
        health = {"handler": "/api/v1/health", "method": "GET", "status": "200"}

        async def scrape(pid: str) -> str:
            response = await clients[pid].get("/metrics")
            assert response.headers["x-worker-pid"] == pid
            return response.text

        before = value(await scrape(next(iter(clients))), "http_requests_total", **health)
        n = 50
        served: dict[str, int] = {}
        for i in range(n):
            response = await list(clients.values())[i % 2].get("/api/v1/health")
            assert response.status_code == 200
            pid = response.headers["x-worker-pid"]
            served[pid] = served.get(pid, 0) + 1
        assert len(served) >= 2, served
        for pid in clients:
            # A worker counts a request just after sending its response, so the last count may
            # land a moment after the client has it: wait for it, but never accept more than n.
            deadline = asyncio.get_running_loop().time() + 5.0
            while True:
                after = value(await scrape(pid), "http_requests_total", **health)
                assert after - before <= n, f"scrape by {pid} counted extra; served: {served}"
                if after - before == n or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert after - before == n, f"scrape served by {pid}; requests served: {served}"
    finally:
        await close_all(by_pid)


@pytest.mark.integration
def test_requests_the_parser_refuses_are_counted(metrics_stack: Stack) -> None:
    """ops QA: a 501 (a method the parser does not know) was in the access log but not in
    http_requests_total, where the 5xx-rate alert looks."""
    refused = {"handler": "none", "method": "OTHER", "status": "501"}

    def counted() -> float:
        return value(
            httpx.get(metrics_stack.url("/metrics"), timeout=10.0).text,
            "http_requests_total",
            **refused,
        )

    before = counted()
    with socket.create_connection(("127.0.0.1", metrics_stack.port), timeout=10) as raw:
        raw.sendall(b"FOO1 /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 501 ")
    deadline = time.monotonic() + 5.0
    while counted() == before and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker counts it as it answers; a scrape may be served first
    assert counted() == before + 1


@pytest.mark.integration
def test_a_head_a_route_answers_404_counts_under_that_route(metrics_stack: Stack) -> None:
    """QA: HEAD is served as a GET on a copy of the request, where the router notes the route;
    a HEAD of a missing user counted under handler="none", as an unknown path does."""
    with httpx.Client(base_url=metrics_stack.base_url, timeout=10.0) as client:
        headers = login_admin(client).headers
        route = {"handler": "/api/v1/users/{user_id}", "method": "HEAD", "status": "404"}
        unknown = {"handler": "none", "method": "HEAD", "status": "404"}

        def counted() -> tuple[float, float]:
            text = client.get("/metrics").text
            return value(text, "http_requests_total", **route), value(
                text, "http_requests_total", **unknown
            )

        before = counted()
        missing = client.head(f"/api/v1/users/{uuid.uuid4()}", headers=headers)
        assert missing.status_code == 404
        assert client.head("/no/such/path").status_code == 404
        expected = (before[0] + 1, before[1] + 1)
        deadline = time.monotonic() + 5.0
        while counted() != expected and time.monotonic() < deadline:
            time.sleep(0.05)  # a worker counts a request as it answers: a scrape may come first
        assert counted() == expected


@pytest.mark.integration
def test_methods_outside_the_standard_ones_count_under_other(metrics_stack: Stack) -> None:
    """QA: each WebDAV or extension method (405 to anyone) sent to a route made new series
    of its own, kept until the worker ended: 27 methods over every route took /metrics from
    56 samples to 15,180."""
    route = {"handler": "/api/v1/health", "status": "405"}

    def scrape() -> str:
        return httpx.get(metrics_stack.url("/metrics"), timeout=10.0).text

    before = value(scrape(), "http_requests_total", method="OTHER", **route)
    methods = ["PROPFIND", "MKCOL", "PURGE", "M-SEARCH", "QUERY", "TRACE"]
    with httpx.Client(base_url=metrics_stack.base_url, timeout=10.0) as client:
        for method in methods:
            assert client.request(method, "/api/v1/health").status_code == 405
    deadline = time.monotonic() + 5.0
    while True:  # the worker counts each as it answers; a scrape may be served first
        text = scrape()
        after = value(text, "http_requests_total", method="OTHER", **route)
        if after - before >= len(methods) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after - before == len(methods)
    assert not any(f'method="{method}"' in text for method in methods)  # in progress too


@pytest.mark.integration
def test_store_gauges_on_the_stack(metrics_stack: Stack) -> None:
    text = httpx.get(metrics_stack.url("/metrics"), timeout=10.0).text
    assert value(text, "memdb_store_up") == 1
    assert value(text, "memdb_store_table_rows", table="users") >= 1  # the ensured admin
    assert value(text, "memdb_store_clients") >= 2  # one per worker
    assert has_sample(text, "memdb_store_scan_cursors")  # the store's stats say "cursors"
    assert value(text, "memdb_store_commands_total", command="ping") >= 1


@pytest.mark.integration
def test_the_format_follows_accept_and_says_so_in_vary(metrics_stack: Stack) -> None:
    """Text, or OpenMetrics when asked for: a cache in between must key on Accept."""
    url = metrics_stack.url("/metrics")
    text = httpx.get(url, timeout=10.0)
    openmetrics = httpx.get(
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=10.0
    )
    assert text.headers["content-type"].startswith("text/plain")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    for response in (text, openmetrics):
        vary = {v.strip().lower() for v in response.headers["vary"].split(",")}
        assert "accept" in vary, response.headers


@pytest.mark.integration
@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/openmetrics-text; version=abc", "text/plain"),
        ("text/plain; version=1.x", "text/plain"),
        ("application/openmetrics-text;version=1..0", "text/plain"),
        ("application/openmetrics-text;q=0, text/plain;q=1", "text/plain"),
        ("application/openmetrics-text;q=0.1, text/plain;version=0.0.4;q=1", "text/plain"),
        ("application/openmetrics-text;q=nan", "text/plain"),
        (
            "text/plain;q=0.2, application/openmetrics-text;version=1.0.0;q=0.9",
            "application/openmetrics-text",
        ),
    ],
)
def test_a_malformed_or_refused_accept_gets_the_format_it_prefers(
    metrics_stack: Stack, accept: str, media_type: str
) -> None:
    """QA: a version that is not digits was a 500 with a traceback in the log, for anyone;
    q=0 and lower preferences were not honoured."""
    response = httpx.get(metrics_stack.url("/metrics"), headers={"Accept": accept}, timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (prometheus)")
def test_promtool_accepts_the_output(metrics_stack: Stack) -> None:
    with httpx.Client(base_url=metrics_stack.base_url, timeout=10.0) as client:
        client.get("/no/such/path")
        client.get("/api/v1/users/nobody")
        text = client.get("/metrics").text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


@pytest.mark.integration
def test_dead_worker_keeps_its_counts_and_drops_its_live_gauges(metrics_stack: Stack) -> None:
    """gunicorn's child_exit calls mark_process_dead: the in-progress files of the dead pid go."""
    directory = metrics_stack.workdir / "prometheus"
    with httpx.Client(base_url=metrics_stack.base_url, timeout=10.0) as client:
        pid = client.get("/api/v1/health").headers["x-worker-pid"]
        before = value(client.get("/metrics").text, "http_requests_total")
        assert (directory / f"gauge_livesum_{pid}.db").exists()
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (directory / f"gauge_livesum_{pid}.db").exists():
            assert time.monotonic() < deadline, "child_exit did not mark the worker dead"
            time.sleep(0.1)
        assert (directory / f"counter_{pid}.db").exists()
        deadline = time.monotonic() + 20
        while True:  # until the replacement worker serves
            try:
                after = value(client.get("/metrics").text, "http_requests_total")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    assert after >= before


def test_the_cached_pid_follows_a_fork() -> None:
    """Multiprocess files are named by pid: a child forked after import must not write into its
    parent's file (gunicorn imports the app after the fork, but a preloading launcher would not)."""
    from api.http_metrics import _Pid

    assert _Pid.get() == os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child answers with its exit code)
        os._exit(0 if _Pid.get() == os.getpid() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
