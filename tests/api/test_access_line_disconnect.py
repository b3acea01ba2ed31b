"""The access line of an upload its client abandoned mid-body: 400 ``CLIENT_DISCONNECTED`` is
what the app answered, to no one, so the line says ``error: ClientDisconnected`` as it does for
a download cut short (soak QA: a plain 400, indistinguishable from a client's bad request)."""

from __future__ import annotations

from typing import Any

import structlog.testing

from tests.api.test_metrics import ScriptedStore, app_with


def scope_for(path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("test", 80),
        "state": {},
    }


async def test_an_abandoned_upload_is_logged_as_a_disconnect() -> None:
    app = app_with(ScriptedStore({}))
    messages = [{"type": "http.request", "body": b'{"email": "a@', "more_body": True}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with structlog.testing.capture_logs() as lines:
        await app(scope_for("/api/v1/users", 4000), receive, send)
    assert sent[0]["status"] == 400, sent
    assert b'"code":"CLIENT_DISCONNECTED"' in sent[1]["body"]  # not FastAPI's "error parsing"
    (access,) = [line for line in lines if line["event"] == "access"]
    assert access["status"] == 400 and access["error"] == "ClientDisconnected", access
