"""Password hashing with bcrypt (pwdlib), always off the event loop; the passwords refused
wherever one is set.

Every password is normalized here before it is hashed or checked (``normalize_password``), so
one password typed on two keyboards is one password: ``é`` composed or decomposed (macOS
sends NFD), a no-break space for a space. Hashes made before that came in are of the password
as sent: a check tries that form too when it differs, and a login that matches it that way
stores a hash of the normalized form instead (``verify_and_rehash``).
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from api.auth.passwordtext import (
    fits_bcrypt,
    new_password_problem,
    normalize_password,
    password_forms,
)
from api.errors import ApiError
from api.settings import DEV_ADMIN_PASSWORD, get_settings

T = TypeVar("T")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, within a cgroup (v2) CPU quota (a
    container limited to 2 CPUs sees the host's 64 in its affinity)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read
    return cpus


@lru_cache
def hashing_threads() -> int:
    """bcrypt calls one worker runs at once: its share of the usable CPUs (at least one).
    bcrypt releases the GIL and anyio's pool runs 40 threads: a burst of logins used them all,
    and the requests on the loops competed with 40 hashes a worker for the cores (soak QA: GET
    p95 from 9 to 252 ms with 20 logins). Past this many, a worker's logins wait their turn."""
    return max(1, usable_cpus() // get_settings().web_concurrency)


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def _hashing(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in a worker thread, at most ``hashing_threads()`` at once per loop (a
    limiter belongs to the loop it was made in: tests run several, one after the other)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(hashing_threads())
    return await anyio.to_thread.run_sync(func, *args, limiter=limiter)


@lru_cache
def password_hasher() -> PasswordHash:
    """The process's hasher; BCRYPT_ROUNDS sets its cost (tests lower it)."""
    return PasswordHash((BcryptHasher(rounds=get_settings().bcrypt_rounds),))


def is_dev_admin_password(password: str) -> bool:
    """Compared normalized: the password spelled in fullwidth letters hashes as it does."""
    return normalize_password(password) == DEV_ADMIN_PASSWORD


def refuse_unusable_password(password: str, field: str) -> None:
    """422 on ``field`` for a password the account could never log in with: in production,
    the development admin's (``make run``'s, public), which login refuses there; anywhere, one
    that breaks ``new_password_problem``'s rule (the schemas check it first; this is the last
    check before any password is hashed, whatever the path)."""
    message = None
    if is_dev_admin_password(password) and get_settings().is_production:
        message = "the development admin password is public and refused in production"
    else:
        message = new_password_problem(password)
    if message is not None:
        detail = {"field": field, "message": message}
        raise ApiError(422, "VALIDATION_ERROR", "Request validation failed", [detail])


async def hash_password(password: str) -> str:
    """bcrypt takes ~0.25 s at cost 12: run it in a worker thread, never on the loop. The
    normalized form is hashed (``refuse_unusable_password`` has checked its length)."""
    return await _hashing(password_hasher().hash, normalize_password(password))


async def verify_password(password: str, password_hash: str) -> bool:
    """Check a password against its stored hash, off the loop."""
    return await _hashing(_matches, password, password_hash)


async def verify_and_rehash(password: str, password_hash: str) -> tuple[bool, str | None]:
    """Whether the password is right and, if so and the hash was made at another cost than
    BCRYPT_ROUNDS or of the password as sent, a new hash of its normalized form at the
    configured cost (one thread call, off the loop)."""
    return await _hashing(_verify_and_rehash, password, password_hash)


def _matches(password: str, password_hash: str) -> bool:
    hasher = password_hasher()
    return any(hasher.verify(form, password_hash) for form in password_forms(password))


def _verify_and_rehash(password: str, password_hash: str) -> tuple[bool, str | None]:
    hasher = password_hasher()
    normalized = normalize_password(password)
    for form in password_forms(password):
        valid, rehashed = hasher.verify_and_update(form, password_hash)
        if valid:
            if form != normalized and fits_bcrypt(normalized):
                # A hash of the password as sent: replaced, so the next login needs one check.
                rehashed = hasher.hash(normalized)
            return True, rehashed
    return False, None
