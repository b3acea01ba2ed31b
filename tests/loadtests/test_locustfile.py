"""A run of ``loadtests/locustfile.py`` so it cannot rot: a few users against a stack of its own
(high RATE_LIMIT, from tests/support/stack.py), every request's body checked by the locustfile
itself. No latency is asserted: only that locust exits 0 (no failed request at all here), that
each user class made its requests, and, as the run outlives the access tokens
(ACCESS_TOKEN_TTL=30), that the users renewed them. (How users split over the classes at other
counts is tests/loadtests/test_locust_verdict.py's.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, Stack, running_stack

pytestmark = pytest.mark.integration

# One request group each user class makes on every run.
CLASS_ROUTES = {
    "Shopper": ["POST /users [register]", "POST /orders"],
    "TokenRefresher": ["POST /auth/refresh", "GET /users/me"],
    "Reporter": ["POST /auth/token [admin]", "POST /data/{table}"],
}


def run_locust(
    tmp_path: Path, stack: Stack, users: int, seconds: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """locust headless against ``stack``, every request's body checked, no latency gate and not
    one failed request allowed: (requests per route, the verdict)."""
    env = {
        **os.environ,
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "LOAD_WAIT": "0.05,0.3",
        "LOAD_LATENCY_GATES": "0",  # no timed assertions in the suite
        "LOAD_MAX_FAIL_RATIO": "0",  # but not a single failed request
        "LOAD_VERDICT_FILE": str(tmp_path / "verdict.json"),
    }
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
    cmd += ["--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s"]
    cmd += ["--stop-timeout", "5", "--only-summary"]
    cmd += ["--host", stack.base_url, "--csv", str(tmp_path / "smoke")]
    done = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 80
    )
    output = done.stdout[-3000:] + done.stderr[-6000:]
    assert done.returncode == 0, f"locust exited {done.returncode}\n{output}\n{stack.logs()}"
    with (tmp_path / "smoke_stats.csv").open() as f:
        counts = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(f)}
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["passed"] and verdict["failures"] == 0, verdict["problems"]
    assert verdict["status_429"] == 0
    return counts, verdict


def test_tokens_are_renewed_before_they_expire(tmp_path: Path) -> None:
    """A run longer than ACCESS_TOKEN_TTL (30 s, its minimum): every user renews its token
    (the shared admin session too) and not one request meets an expired token. 5 users: one
    of each class (the Reporter would get none from locust's weights alone)."""
    with running_stack(workers=2, extra_env={"ACCESS_TOKEN_TTL": "30"}) as stack:
        counts, _ = run_locust(tmp_path, stack, users=5, seconds=36)
    assert counts.get("POST /auth/refresh [renew]", 0) >= 3, counts  # the shoppers'
    assert counts.get("POST /auth/refresh [admin renew]", 0) >= 1, counts
    assert counts.get("POST /auth/token [admin]") == 1, counts
    for user_class, routes in CLASS_ROUTES.items():
        for route in routes:
            assert counts.get(route, 0) > 0, f"{user_class} made no {route!r}: {counts}"
