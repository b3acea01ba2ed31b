"""Response compression negotiated by Accept-Encoding, and the ``Vary`` that says what a
response was chosen by (RFC 9110 §12.5.5): Accept-Encoding, and Authorization where the route
reads the token. Pure ASGI, innermost of the stack (``api.middleware``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from starlette.middleware.gzip import GZipMiddleware, GZipResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Accept-Encoding values browsers and HTTP libraries send, decided without parsing.
_USUAL_ACCEPT_ENCODINGS = {
    b"gzip": True,
    b"gzip, deflate": True,
    b"gzip, deflate, br": True,
    b"gzip, deflate, br, zstd": True,
    b"gzip, deflate, zstd": True,
    b"identity": False,
    b"": False,
}


def accepts_gzip(accept_encoding: bytes) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3): codings are
    case-insensitive, ``q=0`` means "not acceptable", and ``*`` stands for gzip unless gzip
    is listed itself. ``x-gzip`` is gzip (§8.4.1.3)."""
    usual = _USUAL_ACCEPT_ENCODINGS.get(accept_encoding)
    if usual is not None:
        return usual
    gzip_q: float | None = None
    any_q: float | None = None
    for item in accept_encoding.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        q = 1.0
        for param in params.split(b";"):
            name, _, value = param.partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # an unreadable weight: identity is always safe
        if coding in (b"gzip", b"x-gzip"):
            gzip_q = max(q, gzip_q or 0.0)
        elif coding == b"*":
            any_q = max(q, any_q or 0.0)
    if gzip_q is None:
        gzip_q = any_q
    return gzip_q is not None and gzip_q > 0


def gzip_accepted(scope: Scope) -> bool:
    """``accepts_gzip`` of the request's Accept-Encoding, its lines read as one list."""
    return accepts_gzip(b",".join([v for n, v in scope["headers"] if n == b"accept-encoding"]))


def with_vary(
    raw: Iterable[tuple[bytes, bytes]], names: Iterable[bytes]
) -> list[tuple[bytes, bytes]]:
    """``raw`` with ``names`` added to its Vary, as one line: a name already listed (in any
    case, on any line) is not repeated, and ``*`` (varies on everything) stays alone."""
    headers: list[tuple[bytes, bytes]] = []
    listed: list[bytes] = []
    for name, value in raw:
        if name.lower() == b"vary":
            listed += [item.strip() for item in value.split(b",") if item.strip()]
        else:
            headers.append((name, value))
    seen = {item.lower() for item in listed}
    if b"*" not in seen:
        listed += [name for name in dict.fromkeys(names) if name.lower() not in seen]
    headers.append((b"vary", b", ".join(listed)))
    return headers


class AcceptEncodingGZipMiddleware(GZipMiddleware):
    """Starlette's gzip, chosen by ``accepts_gzip``: Starlette looks for the text "gzip" in
    the first Accept-Encoding line, so ``gzip;q=0`` got gzip and ``GZIP`` or ``*`` did not.

    Every response it passes says ``Vary: Accept-Encoding`` (Starlette's only when it had a
    body to compress: a 304 or a short body had none, though the 200 of the same request may
    have, RFC 9110 §15.4.5); and ``Authorization`` too when the matched route reads the token
    (``authenticates``, given the route's ``Dependant``): ``/users/me`` is someone else's for
    another token, and a cache keyed by URL must not revalidate one user's copy with the
    other's tag. Both are decided by the route, never by the response, so a 304 and its 200
    say the same. (CORS, outside, adds ``Origin`` to the same line.)
    """

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int = 500,
        authenticates: Callable[[Any], bool] = lambda dependant: False,
    ) -> None:
        super().__init__(app, minimum_size)
        self.authenticates = authenticates
        # By id (routes are not hashable), the route kept alive with it: one entry per route.
        self.route_vary: dict[int, tuple[object, tuple[bytes, ...]]] = {}

    def vary_of(self, scope: Scope) -> tuple[bytes, ...]:
        route = scope.get("route")  # None: no route matched (404)
        known = self.route_vary.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
        dependant = getattr(route, "dependant", None)
        token = dependant is not None and self.authenticates(dependant)
        vary = (b"Accept-Encoding", b"Authorization") if token else (b"Accept-Encoding",)
        self.route_vary[id(route)] = (route, vary)
        return vary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Without gzip the app's messages pass as they are: Starlette's IdentityResponder would
        # hold the start message back and add only the Vary that send_with_vary adds (about 5 %
        # of a small GET's in-process time in a py-spy sample).
        responder: ASGIApp = self.app
        if gzip_accepted(scope):
            responder = GZipResponder(
                self.app,
                self.minimum_size,
                compresslevel=self.compresslevel,
                thread_minimum_size=self.thread_minimum_size,
                exclude_content_types=self.exclude_content_types,
            )

        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_vary(message.get("headers") or (), self.vary_of(scope))
            await send(message)

        await responder(scope, receive, send_with_vary)
