"""Smoke run of ``loadtests/locustfile.py`` so it cannot rot: a few users for a few seconds
against a stack of its own (high RATE_LIMIT, from tests/support/stack.py), every request's body
checked by the locustfile itself. No latency is asserted: only that locust exits 0 (no failed
request at all here) and that each user class made its requests."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, running_stack

pytestmark = pytest.mark.integration

# One request group each user class makes on every run (weights 10:2:1 over 13 users give
# exactly 10 shoppers, 2 refreshers and 1 reporter).
CLASS_ROUTES = {
    "Shopper": ["POST /users [register]", "POST /orders"],
    "TokenRefresher": ["POST /auth/refresh", "GET /users/me"],
    "Reporter": ["POST /auth/token [admin]", "POST /data/{table}"],
}


def test_locustfile_smoke(tmp_path: Path) -> None:
    with running_stack(workers=2) as stack:
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
        cmd += ["--headless", "-u", "13", "-r", "13", "-t", "8s", "--stop-timeout", "5"]
        cmd += ["--host", stack.base_url, "--csv", str(tmp_path / "smoke"), "--only-summary"]
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
        output = done.stdout[-3000:] + done.stderr[-6000:]
        assert done.returncode == 0, f"locust exited {done.returncode}\n{output}\n{stack.logs()}"

    with (tmp_path / "smoke_stats.csv").open() as f:
        counts = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(f)}
    for user_class, routes in CLASS_ROUTES.items():
        for route in routes:
            assert counts.get(route, 0) > 0, f"{user_class} made no {route!r}: {counts}"
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["passed"] and verdict["failures"] == 0, verdict["problems"]
    assert verdict["status_429"] == 0
