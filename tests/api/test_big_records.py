"""Big records through the API, on a stack whose store takes 1 MiB frames (its smallest
``STORE_MAX_FRAME_BYTES``), so the records stay small: a PATCH that would make a record too big
is 413 ``RECORD_TOO_LARGE`` and changes nothing; dumps, exports and /admin/stats keep working on
tables of big records (they read more than a frame's worth)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.auth import login_admin
from tests.support.factories import assert_error, token
from tests.support.logs import wait_for_records
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import bulk_insert

pytestmark = pytest.mark.integration

FRAME = 1 << 20
FIELD = 200_000  # characters per patched field: the third one passes the record limit


@pytest.fixture(scope="module")
def small_frames() -> Iterator[tuple[Stack, httpx.Client]]:
    env = {"STORE_MAX_FRAME_BYTES": str(FRAME), "LOG_LEVEL": "info"}
    with (
        running_stack(workers=1, extra_env=env) as running,
        httpx.Client(base_url=running.base_url, timeout=30.0) as http,
    ):
        http.headers.update(login_admin(http).headers)
        yield running, http


def test_a_patch_that_would_make_a_record_too_big_is_413_and_changes_nothing(
    small_frames: tuple[Stack, httpx.Client],
) -> None:
    """QA's scenario (there 19 PATCHes of 900,000 characters under 16 MiB frames). Before, the
    last PATCH was a 400 with the write applied, and every read of the table failed after."""
    _, client = small_frames
    table = f"huge_{token()}"
    url = f"/api/v1/data/{table}"
    assert client.post(url, json={"data": [{"id": "before"}, {"id": "h"}]}).status_code == 201
    for n in range(2):
        response = client.patch(f"{url}/h", json={"data": {f"f{n}": "x" * FIELD}})
        assert response.status_code == 200, response.text
    response = client.patch(f"{url}/h", json={"data": {"f2": "x" * FIELD}})
    error = assert_error(response, 413, "RECORD_TOO_LARGE")
    assert error["details"] == [{"table": table, "id": "h", "max": FRAME // 2 - 1024}]
    record = client.get(f"{url}/h").json()["data"]
    assert record["version"] == 3 and "f2" not in record
    audit = client.get("/api/v1/admin/audit", params={"table": table, "per_page": 100})
    assert audit.status_code == 200, audit.text
    assert [e["op"] for e in audit.json()["data"]].count("patch") == 2
    assert client.get(url).status_code == 200
    assert client.get(f"/api/v1/dump/{table}").text.count("\n") == 2
    stats = client.get("/api/v1/admin/stats")
    assert stats.status_code == 200, stats.text


def test_stats_sample_fewer_rows_when_they_are_big(
    small_frames: tuple[Stack, httpx.Client],
) -> None:
    """Twenty rows of 400 KB do not fit in one 1 MiB reply: stats sampled them with ``find``
    and answered 400."""
    stack, client = small_frames
    table = f"wide_{token()}"
    bulk_insert(stack, table, [{"v": "x" * 400_000}])
    bulk_insert(stack, table, [{"v": "y" * 400_000}])
    bulk_insert(stack, table, [{"v": "z" * 400_000}])
    stats = client.get("/api/v1/admin/stats")
    assert stats.status_code == 200, stats.text
    info = stats.json()["data"]["tables"][table]
    assert info["rows"] == 3 and info["estimated_bytes"] > 3 * 400_000


@pytest.mark.parametrize("small_first", [0, 1000])
def test_dumps_and_exports_of_big_records_are_whole(
    small_frames: tuple[Stack, httpx.Client], small_first: int
) -> None:
    """QA's fat tables (there 450 records of 40 KB under 16 MiB frames): here 200 of 8 KB, so
    that a chunk of 500 records (the dump's) or 1000 (the export's) passes a 1 MiB frame.
    Before, the dump was a 400; after ``small_first`` small records (its first chunk fine) a
    200 cut off, with an error and a traceback in the log."""
    stack, client = small_frames
    table = f"fat_{token()}"
    bulk_insert(stack, table, [{"n": n} for n in range(small_first)])
    rows = small_first + 200
    for start in range(small_first, rows, 50):  # 400 KB a batch: within a frame
        bulk_insert(stack, table, [{"n": n, "body": "x" * 8_000} for n in range(start, start + 50)])
    request_ids = [f"fat-{token()}", f"fat-{token()}"]
    dump = f"/api/v1/dump/{table}"
    with client.stream("GET", dump, headers={"X-Request-ID": request_ids[0]}) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [r["n"] for r in lines] == list(range(rows))
    export = f"/api/v1/batch/{table}/export"
    with client.stream("GET", export, headers={"X-Request-ID": request_ids[1]}) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert body.count(b"\r\n") == rows + 1  # and the header

    def mine(record: dict[str, Any]) -> bool:
        return record.get("request_id") in request_ids

    records = wait_for_records(
        stack.workdir / "api.log",
        lambda found: sum(r["event"] == "access" for r in found if mine(r)) == 2,
    )
    assert [r.get("error") for r in records if r["event"] == "access" and mine(r)] == [None] * 2
    assert not [r for r in records if r["level"] in ("error", "critical")]
