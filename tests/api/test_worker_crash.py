"""A gunicorn worker killed under load: the master replaces it, and clients lose at most the
requests that were in flight on it."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.support.stack import Stack, running_stack, worker_pids

pytestmark = pytest.mark.integration

CLIENTS = 8


def wait_for_workers(stack: Stack, count: int, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(stack)
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"expected {count} workers, have {worker_pids(stack)}")


def test_killed_worker_is_replaced_and_only_in_flight_requests_fail():
    with running_stack(workers=2) as stack:
        before = wait_for_workers(stack, 2)
        stop = threading.Event()
        outcomes: list[list[str]] = [[] for _ in range(CLIENTS)]

        def hammer(slot: int) -> None:
            with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
                while not stop.is_set():
                    try:
                        ok = http.get("/api/v1/ready").status_code == 200
                        outcomes[slot].append("ok" if ok else "bad-status")
                    except httpx.HTTPError:
                        outcomes[slot].append("error")

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(30)

        after = wait_for_workers(stack, 2)
        assert victim not in after and len(after - before) == 1, (before, after)
        failures = sum(o.count("error") + o.count("bad-status") for o in outcomes)
        successes = sum(o.count("ok") for o in outcomes)
        print(f"worker crash: {successes} ok, {failures} failed across {CLIENTS} clients")
        assert successes > 100  # there was real load before and after the kill
        # Each client has one request in flight at a time: at most one lost per client.
        assert failures <= CLIENTS, outcomes
        # Every client got answers again after the kill.
        assert all(o[-1] == "ok" for o in outcomes), [o[-3:] for o in outcomes]
