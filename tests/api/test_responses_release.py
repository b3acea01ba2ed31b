"""``api.responses.ReleasingStreamingResponse``: a stream the client leaves lets go of what it
was sending at once (its body iterator closed, nothing kept in a reference cycle), and a
stream that ends normally is sent whole, as Starlette's own."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from api.responses import ReleasingStreamingResponse

SCOPE = {"type": "http", "method": "GET", "asgi": {"spec_version": "2.3"}}


class Page:
    """Stands for a page of records the stream holds (weakly referenceable, unlike bytes)."""


@pytest.fixture
def no_cyclic_collection() -> Iterator[None]:
    """What a worker sees between its rare collections (``api.collector``): only reference
    counting frees anything."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Client:
    """An ASGI peer that reads ``chunks`` body messages and then, if ``leaves``, hangs up."""

    def __init__(self, leaves_after: int | None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leaves_after = leaves_after
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        bodies = sum(1 for m in self.sent if m["type"] == "http.response.body")
        if self.leaves_after is not None and bodies >= self.leaves_after:
            self.gone.set()
        await asyncio.sleep(0)  # a real send lets the loop run


def stream(log: list[str], pages: list[weakref.ref[Page]], count: int) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        try:
            for n in range(count):
                page = Page()
                pages.append(weakref.ref(page))
                yield f"{n}\n".encode()
                await asyncio.sleep(0)
        finally:
            log.append("closed")

    return body()


async def test_a_client_that_leaves_releases_the_stream_at_once(no_cyclic_collection) -> None:
    log: list[str] = []
    pages: list[weakref.ref[Page]] = []
    client = Client(leaves_after=2)
    response = ReleasingStreamingResponse(stream(log, pages, 1_000))
    await response(SCOPE, client.receive, client.send)
    assert log == ["closed"]  # the iterator's finally ran before the response returned
    del response
    assert pages and all(page() is None for page in pages)  # no cycle keeps a page alive
    assert len(pages) < 1_000  # and the stream stopped when the client left


async def test_a_whole_stream_is_sent_and_then_its_background_runs() -> None:
    log: list[str] = []
    client = Client(leaves_after=None)

    async def background() -> None:
        log.append("background")

    response = ReleasingStreamingResponse(stream(log, [], 3))
    response.background = background  # type: ignore[assignment]
    await asyncio.wait_for(response(SCOPE, client.receive, client.send), 5)
    bodies = [m["body"] for m in client.sent if m["type"] == "http.response.body"]
    assert client.sent[0]["type"] == "http.response.start"
    assert bodies == [b"0\n", b"1\n", b"2\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert log == ["closed", "background"]


async def test_an_error_in_the_body_reaches_the_caller_and_the_body_is_closed() -> None:
    log: list[str] = []

    async def failing() -> AsyncIterator[bytes]:
        try:
            yield b"first\n"
            raise RuntimeError("store went away")
        finally:
            log.append("closed")

    client = Client(leaves_after=None)
    with pytest.raises(RuntimeError, match="store went away"):
        await ReleasingStreamingResponse(failing())(SCOPE, client.receive, client.send)
    assert log == ["closed"]
