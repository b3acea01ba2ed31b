"""A warning logged at most ``WARNINGS_PER_S`` times a second, the rest counted in one line.

For the warnings any peer can cause at will (``client_dropped``, ``client_refused``): the
server holds one of each and its connections log through them. The API's workers log a store
outage's failed requests through them too (``api.errors``). Kept apart because it is a
small logging device with its own clock window, neither connection nor dispatch logic.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import structlog

log = structlog.get_logger("storeserver")

WARNINGS_PER_S = 10
"""Lines a second of each warning any peer can cause at will (``ThrottledWarning``)."""


class ThrottledWarning:
    """One warning, logged at most ``WARNINGS_PER_S`` times a second: the rest of that
    second's are counted and told in one ``<event>_suppressed`` line when it ends. Peers
    without the secret can connect and fail as fast as the kernel lets them (QA: 63,591
    ``client_dropped`` lines in 5 s)."""

    __slots__ = ("_last", "_log", "_logged", "_suppressed", "_window_ends", "event")

    def __init__(self, event: str, logger: Any = None) -> None:
        """``logger``: a structlog logger (default: the store's)."""
        self.event = event
        self._log = log if logger is None else logger
        self._window_ends = 0.0
        self._logged = 0
        self._suppressed = 0
        self._last: dict[str, Any] = {}

    def __call__(self, **fields: Any) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._window_ends:
            self._window_ends = now + 1.0
            self._logged = 0
        if self._logged < WARNINGS_PER_S:
            self._logged += 1
            self._log.warning(self.event, **fields)
            return
        if not self._suppressed:
            # In a context of its own: the summary counts many requests, and the one that
            # happened to schedule it would lend it its request id and path (QA).
            loop.call_at(self._window_ends, self._report, context=contextvars.Context())
        self._suppressed += 1
        self._last = fields

    def _report(self) -> None:
        self._log.warning(
            f"{self.event}_suppressed",
            message=f"suppressed {self._suppressed} more",
            suppressed=self._suppressed,
            last=self._last,
        )
        self._suppressed = 0
