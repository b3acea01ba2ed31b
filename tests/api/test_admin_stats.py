"""GET /api/v1/admin/stats: the store's state for people who do not run Prometheus."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import register
from tests.support.factories import assert_error, create_record, token

pytestmark = pytest.mark.integration

STATS = "/api/v1/admin/stats"


def read_stats(client: httpx.Client) -> dict[str, Any]:
    response = client.get(STATS)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    stats: dict[str, Any] = response.json()["data"]
    return stats


def test_stats_are_consistent_with_what_was_written(client: httpx.Client) -> None:
    table = f"st_{token()}"
    for n in range(3):
        create_record(client, table, n=n, text="x" * 100)
    before = read_stats(client)
    assert before["tables"][table]["rows"] == 3
    for n in range(2):
        create_record(client, table, n=n)
    client.post(f"/api/v1/data/{table}/indexes", json={"field": "n"})
    after = read_stats(client)

    info = after["tables"][table]
    assert info["rows"] == 5
    # every row is sampled here, so the estimate is the rows' total size: it grew
    assert info["estimated_bytes"] > before["tables"][table]["estimated_bytes"] > 0
    assert {"field": "n", "unique": False, "casefold": False} in info["indexes"]
    inserts = after["commands"]["insert"]["count"] - before["commands"]["insert"]["count"]
    assert inserts >= 2


def test_stats_fields(client: httpx.Client) -> None:
    create_record(client, f"st_{token()}", n=1)
    stats = read_stats(client)
    assert stats["memory_bytes"] > 0 and stats["tables"]["users"]["estimated_bytes"] > 0
    assert "max_memory" in stats
    assert stats["clients"] >= 1  # the API workers' connections
    assert stats["uptime_s"] > 0 and isinstance(stats["version"], str)
    assert isinstance(stats["persistence"], dict)
    assert isinstance(stats["slow"], list) and len(stats["slow"]) <= 20
    for slow in stats["slow"]:
        assert {"command", "seconds", "at", "request_id"} <= slow.keys()
    insert = stats["commands"]["insert"]
    assert insert["count"] >= 1
    assert 0 <= insert["p50"] <= insert["p95"] <= insert["p99"]


def test_stats_are_admin_only(anon: httpx.Client) -> None:
    user = register(anon)
    assert_error(anon.get(STATS, headers=user.headers), 403, "FORBIDDEN")
    assert_error(anon.get(STATS), 401)


@pytest.mark.parametrize("asked", [None, "true", "false"])
def test_a_snapshot_without_a_data_directory_is_refused_at_once(
    client: httpx.Client, asked: str | None
) -> None:
    """QA: with ``?async=true`` the refusal came as a 202 and a job bound to fail with it."""
    jobs_before = client.get("/api/v1/jobs").json()["meta"]["total"]
    params = {} if asked is None else {"async": asked}
    response = client.post("/api/v1/admin/snapshot", params=params)
    assert_error(response, 400, "BAD_REQUEST")
    assert "STORE_DATA_DIR" in response.json()["error"]["message"]
    assert client.get("/api/v1/jobs").json()["meta"]["total"] == jobs_before
