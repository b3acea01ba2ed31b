"""bcrypt runs in worker threads, at most ``HASHING_THREADS`` at once per worker: a burst of
logins used anyio's 40 threads, and the requests on the loop competed with 40 hashes for the
cores (soak QA: GET p95 from 9 to 252 ms beside 20 logins)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from api.services import passwords
from api.settings import get_settings


async def test_no_more_than_hashing_threads_hash_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "hashing_threads", lambda: 2)
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


@pytest.mark.parametrize(
    ("cpu_max", "quota_cpus"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1)],
)
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_worker_hashes_on_its_share_of_the_cpus_it_may_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path, cpu_max: str, quota_cpus: int | None, workers: int
) -> None:
    """Review: the affinity alone gave each of 2 workers 2 threads on 2 cores, and a container
    limited to 2 CPUs on a 64-core host 64 threads a worker."""
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    monkeypatch.setattr(passwords, "CGROUP_CPU_MAX", quota)
    monkeypatch.setenv("WEB_CONCURRENCY", str(workers))
    get_settings.cache_clear()
    passwords.hashing_threads.cache_clear()
    try:
        cpus = len(os.sched_getaffinity(0))
        if quota_cpus is not None:
            cpus = min(cpus, quota_cpus)
        assert passwords.hashing_threads() == max(1, cpus // workers)
    finally:
        get_settings.cache_clear()
        passwords.hashing_threads.cache_clear()
