"""Helpers for tests that drive ``storeserver.engine.Engine`` directly: a settable clock
(``Engine(clock=...)`` reads time only through it) and the run/fail shorthands."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import StoreError

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250000Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(engine: Engine, command: str, **args: Any) -> Any:
    """A command run to the end, job or not (``execute`` may hand back a chunked job)."""
    return engine.run_job(engine.execute(command, args))


def fail(engine: Engine, cls: type[StoreError], command: str, **args: Any) -> StoreError:
    """The error ``cls`` (or a subclass) that the command raises."""
    with pytest.raises(cls) as info:
        run(engine, command, **args)
    return info.value
