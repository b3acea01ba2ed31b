"""The request id of an HTTP request reaches the store's slow-command log lines."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.stack import running_stack

pytestmark = pytest.mark.integration


def test_store_slow_command_lines_carry_the_http_request_id():
    # Every command counts as slow, so the one this request causes is logged.
    env = {"STORE_SLOW_MS": "0", "STORE_LOG_LEVEL": "INFO"}
    with running_stack(workers=1, extra_env=env) as stack:
        response = httpx.get(
            stack.url("/api/v1/ready"), headers={"X-Request-ID": "trace-me.42"}, timeout=10
        )
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == "trace-me.42"
        log = stack.workdir / "store.log"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            tagged = [x for x in lines if x.get("request_id") == "trace-me.42"]
            if tagged:
                break
            time.sleep(0.05)
        assert tagged, lines[-5:]
        assert tagged[0]["event"] == "slow_command" and tagged[0]["command"] == "ping"
