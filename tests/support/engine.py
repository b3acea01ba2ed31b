"""Helpers for tests that drive ``storeserver.engine.Engine`` directly: a settable clock
(``Engine(clock=...)`` reads time only through it), the run/fail shorthands, and an API
``Store`` answered in-process by an engine."""

from __future__ import annotations

from collections.abc import Callable
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


class EngineStore:
    """The API's ``Store`` answered in-process by a real engine holding the API's tables (the
    unique email, the last-admin ``keep`` rule, hidden password hashes).

    ``calls`` records every (command, args); ``before[command]`` runs just before that command
    (to change the data under a caller, or to raise a store error in its place).
    """

    def __init__(self) -> None:
        from api.services.schema import SCHEMAS  # the API's, only for the tests that use this

        self.engine = Engine()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.before: dict[str, Callable[[], None]] = {}
        for schema in SCHEMAS:
            run(self.engine, "create_table", **schema)

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        self.calls.append((command, dict(args or {})))
        hook = self.before.get(command)
        if hook is not None:
            hook()
        return run(self.engine, command, **(args or {}))

    def sent(self, command: str) -> list[dict[str, Any]]:
        """The arguments of every ``command`` call, in order."""
        return [args for name, args in self.calls if name == command]

    def sent_ops(self, op: str) -> list[dict[str, Any]]:
        """The arguments of every ``op`` write, sent alone or as an op of a ``batch`` (the API
        sends a user's change with its session mark as one batch)."""
        found: list[dict[str, Any]] = []
        for name, args in self.calls:
            if name == op:
                found.append(args)
            elif name == "batch":
                found += [
                    {k: v for k, v in o.items() if k != "op"}
                    for o in args["ops"]
                    if o.get("op") == op
                ]
        return found
