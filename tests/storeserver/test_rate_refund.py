"""``rate_refund``: one hit taken back only from the window it was counted in (the API takes
back a successful login's count on its username, after a bcrypt check the window may not
have outlived)."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import BadRequest
from tests.support.engine import T0, FakeClock, fail, run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    return Engine(clock=clock)


def hit(engine: Engine, key: str = "user") -> dict[str, Any]:
    result: dict[str, Any] = run(engine, "rate_hit", key=key, limit=3, window=60)
    return result


def test_a_hit_is_taken_back_from_its_own_window(engine: Engine) -> None:
    counted = hit(engine)
    hit(engine)
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is True
    assert hit(engine)["remaining"] == 1  # 2 - 1 + 1
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is True
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is True
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is False  # none left
    assert hit(engine)["remaining"] == 2
    assert engine.drain_changes() == []  # counters are not journaled


def test_a_hit_whose_window_ended_takes_nothing_from_the_next(
    engine: Engine, clock: FakeClock
) -> None:
    counted = hit(engine)
    assert counted["reset"] == T0 + 60
    clock.advance(60)  # the window ends (during the login's bcrypt check)
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is False
    later = hit(engine)  # someone else's hit, in the next window
    assert later == {"allowed": True, "remaining": 2, "reset": T0 + 120}
    assert run(engine, "rate_refund", key="user", reset=counted["reset"]) is False
    assert hit(engine)["remaining"] == 1  # the next window's hit still counts
    assert run(engine, "rate_refund", key="user", reset=later["reset"]) is True


@pytest.mark.parametrize("reset", [T0 + 59, T0 + 61, T0])
def test_a_reset_naming_no_current_window_takes_nothing(engine: Engine, reset: float) -> None:
    hit(engine)
    assert run(engine, "rate_refund", key="user", reset=reset) is False
    assert run(engine, "rate_refund", key="nobody", reset=T0 + 60) is False
    assert hit(engine)["remaining"] == 1


@pytest.mark.parametrize(
    "args",
    [
        {"reset": T0 + 60},
        {"key": "user"},
        {"key": "user", "reset": "soon"},
        {"key": "user", "reset": True},
        {"key": "user", "reset": 0},
        {"key": "", "reset": T0 + 60},
        {"key": 5, "reset": T0 + 60},
        {"key": "k" * 1025, "reset": T0 + 60},
        {"key": "user", "reset": T0 + 60, "limit": 3},
    ],
)
def test_rate_refund_argument_errors(engine: Engine, args: dict[str, Any]) -> None:
    counted = hit(engine)
    fail(engine, BadRequest, "rate_refund", **args)
    assert hit(engine)["remaining"] == 1  # nothing was taken back
    assert counted["reset"] == T0 + 60


def test_rate_hit_refund_without_a_window_still_takes_back_the_current_one(
    engine: Engine,
) -> None:
    # rate_hit's own refund (the guard's, in the same request) is unchanged.
    hit(engine)
    run(engine, "rate_hit", key="ip", limit=3, window=60, refund="user")
    assert hit(engine)["remaining"] == 2
