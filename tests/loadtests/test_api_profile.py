"""``loadtests.api_profile``'s two dependency figures: the minimal routes it times, and the
clock around FastAPI's ``solve_dependencies``."""

from __future__ import annotations

import asyncio

import fastapi.routing

from loadtests import api_profile


def test_the_minimal_routes_take_their_dependencies_and_answer() -> None:
    for count in (0, 1, 4):
        app = api_profile.dependency_app(count)
        (route,) = [r for r in app.routes if getattr(r, "path", "") == "/items/{item_id}"]
        assert len(route.dependant.dependencies) == count
        # drive() raises unless every answer is a 200
        served = asyncio.run(api_profile.drive(app, "/items/abc", [(b"host", b"x")], 25))
        assert served == 25


def test_the_clock_counts_only_while_on_and_puts_fastapi_back() -> None:
    original = fastapi.routing.solve_dependencies
    app = api_profile.dependency_app(2)

    async def requests(clock: api_profile.DependencyClock, on: bool) -> float:
        clock.seconds, clock.on = 0.0, on
        await api_profile.drive(app, "/items/abc", [(b"host", b"x")], 50)
        clock.on = False
        return clock.seconds

    with api_profile.DependencyClock() as clock:
        assert fastapi.routing.solve_dependencies == clock.timed
        assert asyncio.run(requests(clock, False)) == 0.0
        assert asyncio.run(requests(clock, True)) > 0.0
    assert fastapi.routing.solve_dependencies is original
