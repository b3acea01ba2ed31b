"""A store with a shared secret (STORE_SECRET, required with STORE_TCP): the workers send it in
every handshake, and a store whose secret they do not know is unavailable to them, not open."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.support.stack import start_stack

pytestmark = pytest.mark.integration

SECRET = "a-shared-store-secret-for-the-handshake"


def ready_status(base: str, want: int, timeout: float = 20.0) -> int:
    """Poll /ready until it answers ``want`` (or time runs out); the last status seen."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/api/v1/ready", timeout=5.0).status_code
        if status == want:
            break
        time.sleep(0.2)
    return status


def test_workers_send_the_store_secret_and_a_wrong_one_is_refused() -> None:
    stack = start_stack(1, {"STORE_SECRET": SECRET}, 60.0)
    base = stack.url("")
    try:
        # Started at all: gunicorn's on_starting ping and the worker's lifespan both got in.
        created = httpx.post(
            f"{base}/api/v1/users",
            json={"email": "secret@example.com", "full_name": "S", "password": "a long password"},
        )
        assert created.status_code == 201, created.text

        # A store that expects another secret drops the workers' handshake: 503, not served.
        stack.restart_store({"STORE_SECRET": "some-other-secret-the-workers-lack"})
        assert ready_status(base, 503) == 503
        refused = httpx.get(f"{base}/api/v1/ready")
        assert refused.json()["status"] == "error"

        # The right secret again: the same workers reconnect.
        stack.restart_store()
        assert ready_status(base, 200) == 200
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
