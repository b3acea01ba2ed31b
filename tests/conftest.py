"""Shared fixtures. ``stack`` starts the real store and gunicorn (2 workers) once per session;
tests that do not ask for it start nothing.

``client`` is authenticated as the stack's administrator (who may do everything), so tests of
behaviour other than access control need no token handling; ``anon`` has no token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import settings

from tests.support.auth import Account, login_admin
from tests.support.stack import Stack, running_stack

CORS_ORIGIN = "https://app.example.com"

# No per-example deadline: it is a timed assertion, and on a loaded 2-core machine a 200 ms
# example that took 250 ms failed the suite (a unique-index build property test). Speed is
# measured in benchmarks.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

# The suite starts its own stores and workers with their own settings; settings inherited from
# the shell (or from `make run`'s) would leak into them, e.g. a shared STORE_DATA_DIR.
_SERVICE_SETTINGS = (
    "ENV", "PORT", "HOST", "WEB_CONCURRENCY", "JWT_SECRET", "RATE_LIMIT", "AUTH_RATE_LIMIT",
    "ADMIN_EMAIL", "ADMIN_PASSWORD", "CORS_ORIGINS", "TRUSTED_PROXIES", "MAX_BODY_BYTES",
    "PROMETHEUS_MULTIPROC_DIR", "LOG_LEVEL", "METRICS_TOKEN",
)  # fmt: skip
for _name in [n for n in os.environ if n.startswith("STORE_") or n in _SERVICE_SETTINGS]:
    del os.environ[_name]

# In this process only (the store and workers the tests start are untouched): structlog
# loggers never cache their configuration. The service caches it on first use (a speed-up),
# but in tests a logger first used under one test's configuration (create_app's, the
# store's) would keep it, and a later test's ``capture_logs`` or ``caplog`` would see
# nothing: which tests failed depended on the order tests ran in (and so on pytest-xdist's
# split of them).
_configure = structlog.configure


def _configure_uncached(*args: Any, **kwargs: Any) -> None:
    _configure(*args, **{**kwargs, "cache_logger_on_first_use": False})


structlog.configure = _configure_uncached


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # An hour-long access token: the session admin token outlives any test run.
    env = {"CORS_ORIGINS": CORS_ORIGIN, "ACCESS_TOKEN_TTL": "3600"}
    with running_stack(workers=2, extra_env=env) as running:
        yield running


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Account:
    """One administrator session for the whole run (tests must not end it)."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        return login_admin(http)


@pytest.fixture
def client(stack: Stack, admin: Account) -> Iterator[httpx.Client]:
    """A synchronous client on the session's stack, sending the admin's access token."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0, headers=admin.headers) as http:
        yield http


@pytest.fixture
def anon(stack: Stack) -> Iterator[httpx.Client]:
    """A synchronous client on the session's stack without a token."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        yield http
