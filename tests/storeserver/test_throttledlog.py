"""``ThrottledWarning``: a few lines a second, the rest counted in one summary line."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from storeserver.throttledlog import WARNINGS_PER_S, ThrottledWarning


class Lines:
    """A logger keeping each line with the log context bound when it was logged."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({**structlog.contextvars.get_contextvars(), "event": event, **fields})


async def test_the_summary_line_carries_no_single_requests_context() -> None:
    """QA: the summary was scheduled from the first suppressed call's context, so a count over
    many requests went out with that one request's id and path."""
    log = Lines()
    warn = ThrottledWarning("store_unavailable", log)

    async def request(n: int) -> None:
        structlog.contextvars.bind_contextvars(request_id=f"req-{n}", path=f"/api/v1/x/{n}")
        warn(detail="down")

    await asyncio.gather(*(asyncio.create_task(request(n)) for n in range(WARNINGS_PER_S + 5)))
    await asyncio.sleep(1.1)  # the end of the window
    warned = [line for line in log.lines if line["event"] == "store_unavailable"]
    assert len(warned) == WARNINGS_PER_S and all("request_id" in line for line in warned)
    (summary,) = [line for line in log.lines if line["event"] == "store_unavailable_suppressed"]
    assert summary["suppressed"] == 5 and summary["last"] == {"detail": "down"}
    assert "request_id" not in summary and "path" not in summary
