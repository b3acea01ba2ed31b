"""Rate limits shared by every worker: ``limits`` notation, counters held by the store.

``RATE_LIMIT`` / ``AUTH_RATE_LIMIT`` are parsed with ``limits.parse`` (``100/minute``, ``5 per
10 seconds``) and keyed with its ``key_for``. The counting itself is the store's ``rate_hit``: a
fixed window, checked and incremented in one atomic command on the store's single thread, so
the limit is exact across workers and costs one round trip that never blocks the event loop
(``limits``' own storages are per process or synchronous).

Failure policy: **fail open**. If the store cannot be reached for the check, the request goes
on without rate-limit headers; every route that does work needs the store too and answers 503
itself, so failing open adds no load the store would see. (Logged at most every 10 s.) A
check that times out is 504 at once, in the guard and in the login and password-check limiters
alike: the request would only wait out a second timeout.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import limits
import structlog
from starlette.types import Scope

from api.store import Store
from storeserver.errors import StoreError, StoreTimeout, StoreUnavailable

log = structlog.get_logger("api.ratelimit")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # epoch seconds when the window ends

    def headers(self) -> dict[str, str]:
        return {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(self.remaining),
            "X-Rate-Limit-Reset": str(math.ceil(self.reset)),
        }

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the window ends (at least 1)."""
        return max(1, math.ceil(self.reset - (time.time() if now is None else now)))


class RateLimiter:
    """One limit (``limits.parse`` notation) applied through the store's ``rate_hit``."""

    def __init__(self, spec: str, name: str) -> None:
        self.item = limits.parse(spec)
        self.name = name
        self.amount = self.item.amount
        self.window = self.item.get_expiry()
        self._last_failure_log = 0.0

    def key(self, *identifiers: str) -> str:
        return self.item.key_for(self.name, *identifiers)

    def client_key(self, address: str) -> str:
        """The key counting a client's requests: by ``counted_address`` (an IPv6 host's /64)."""
        return self.key("ip", counted_address(address))

    def args(self, key: str, limit: int | None = None) -> dict[str, object]:
        """``rate_hit``'s arguments: this limiter's amount, or ``limit`` (e.g. a multiple)."""
        hits = self.amount if limit is None else limit
        return {"key": key, "limit": hits, "window": self.window}

    def verdict(self, result: object, limit: int | None = None) -> Verdict | None:
        """The store's answer as a ``Verdict`` (of ``limit``, if the hit was sent with another
        limit than this limiter's amount); ``None`` (fail open) if the store could not be
        reached; a timeout is raised (504)."""
        if isinstance(result, dict):
            hits = self.amount if limit is None else limit
            return Verdict(bool(result["allowed"]), hits, int(result["remaining"]), result["reset"])
        if isinstance(result, StoreTimeout):
            # The store is there but not answering: the request's own calls would wait out a
            # second timeout (a login: 10 s instead of 5). 504 now, as the guard answers.
            raise result
        if isinstance(result, StoreError):
            now = time.monotonic()
            if now - self._last_failure_log > 10:
                self._last_failure_log = now
                log.warning("rate_limit_failing_open", code=result.code, reason=result.message)
            return None
        if isinstance(result, BaseException):
            raise result
        return None

    async def hit(self, store: Store, key: str, limit: int | None = None) -> Verdict | None:
        return self.verdict(await rate_hit(store, self.args(key, limit)), limit)


async def rate_hit(store: Store, args: dict[str, object]) -> object:
    """The store's answer to ``rate_hit``, or the store error it raised (``verdict`` fails
    open on it; the guard answers 504 at once on a timeout)."""
    try:
        result: object = await store.call("rate_hit", args)
    except StoreError as exc:
        if exc.details.get("outcome") == "unknown":
            # A counter's hit, lost or unanswered: the request's own writes were not sent,
            # so its answer must not say they may have been applied.
            kind = StoreUnavailable if isinstance(exc, StoreUnavailable) else StoreTimeout
            return kind(exc.message)
        return exc
    return result


NO_ADDRESS = "unknown"
"""The client address of a request without one, and what every address that is not an IP
address is counted as."""
LOGGED_ADDRESS_CHARS = 64
"""An address is cut past this: an IPv6 address with a zone takes at most about 60."""


def client_ip(scope: Scope) -> str:
    """The client address. X-Forwarded-For is applied by the server (uvicorn's proxy-headers
    middleware) only when the direct peer is in TRUSTED_PROXIES (``deploy/gunicorn.conf.py``
    passes it as ``forwarded_allow_ips``), so here the peer is already the real client. That
    middleware takes whatever text the header holds: past ``LOGGED_ADDRESS_CHARS`` it is cut,
    so no log line carries kilobytes of it."""
    client = scope.get("client")
    if not client:
        return NO_ADDRESS
    address = str(client[0])
    if len(address) <= LOGGED_ADDRESS_CHARS:
        return address
    return f"{address[:LOGGED_ADDRESS_CHARS]}… ({len(address)} characters)"


def trusted_peers(proxies: list[str]) -> list[str]:
    """``TRUSTED_PROXIES`` as uvicorn's ``forwarded_allow_ips``: each IPv4 entry also as its
    IPv4-mapped IPv6 form. On a dual-stack socket (``HOST=[::]``) an IPv4 proxy's address
    arrives as ``::ffff:a.b.c.d``, which uvicorn does not match against ``a.b.c.d`` or its
    network: X-Forwarded-For was dropped and every client behind the proxy shared its budget
    (and one guesser locked everyone out of logins)."""
    peers = list(proxies)
    for entry in proxies:
        network = ipaddress.ip_network(entry)  # validated by the settings
        if network.version == 4:
            mapped = f"::ffff:{network.network_address}"
            peers.append(mapped if "/" not in entry else f"{mapped}/{96 + network.prefixlen}")
    return peers


def counted_address(address: str) -> str:
    """The part of a client address its rate limits count: an IPv6 address's /64 prefix, an
    IPv4 address whole (``::ffff:a.b.c.d``, IPv4 on a dual-stack socket, as ``a.b.c.d``).

    One IPv6 host is routinely given a whole /64 (SLAAC, privacy addresses) and can send from
    any of its 2**64 addresses: counted per address, one host would get a budget per address,
    enough to spend a username's login limit alone. Logs keep the full address (``client_ip``).
    Anything that is not an IP address (none, a Unix socket's path, or the text of an
    X-Forwarded-For that a trusted proxy passed on) shares one budget, ``unknown``: QA sent
    1,100 characters there, a key the store refuses, and the limits failed open for it; any
    other text would have been a fresh budget per request.
    """
    return _counted(address)


@lru_cache(maxsize=4096)
def _counted(address: str) -> str:
    # Parsed once per address a worker sees (~10 µs each: every request of a client paid it).
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return NO_ADDRESS
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def tightest(verdicts: list[Verdict | None]) -> Verdict | None:
    """The verdict to report when several limits apply: a refusal, else the fewest remaining."""
    present = [v for v in verdicts if v is not None]
    if not present:
        return None
    refused = [v for v in present if not v.allowed]
    pool = refused or present
    return min(pool, key=lambda v: (v.remaining, -v.reset))
