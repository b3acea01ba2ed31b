"""bcrypt runs in worker threads, at most ``HASHING_THREADS`` at once per worker: a burst of
logins used anyio's 40 threads, and the requests on the loop competed with 40 hashes for the
cores (soak QA: GET p95 from 9 to 252 ms beside 20 logins)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api.services import passwords


async def test_no_more_than_hashing_threads_hash_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "HASHING_THREADS", 2)
    lock = threading.Lock()
    running, most = 0, 0

    def slow_hash(password: str) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # stands for bcrypt's work, done outside the GIL
        with lock:
            running -= 1
        return f"hash of {password}"

    class Hasher:
        hash = staticmethod(slow_hash)

    monkeypatch.setattr(passwords, "password_hasher", lambda: Hasher())
    monkeypatch.setattr(passwords, "normalize_password", lambda password: password)
    hashes = await asyncio.gather(*(passwords.hash_password(f"p{i}") for i in range(8)))
    assert hashes == [f"hash of p{i}" for i in range(8)]
    assert 1 <= most <= 2
