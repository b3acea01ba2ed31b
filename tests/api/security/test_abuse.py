"""Abuse of the auth and hardening layers: revoked tokens, oversized heads and bodies, text
that is not Unicode, a settings value that cannot work, and a store at its memory limit.

Each was a defect found in review (a leaked revoked token could spend its user's rate budget,
logout failed at the memory limit, a replacement worker could not start there, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.schemas.users import UserCreate
from api.settings import Settings
from tests.conftest import CORS_ORIGIN
from tests.support.auth import Account, login, login_admin, register
from tests.support.factories import assert_error, create_order, token, user_payload
from tests.support.stack import Stack, running_stack, worker_pids

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"
LIMIT = 1024 * 1024  # MAX_BODY_BYTES of the stacks here
JSON = {"Content-Type": "application/json"}


def _oversized(prefix: bytes, suffix: bytes, total: int = 2 * LIMIT) -> Iterator[bytes]:
    """A chunked body (no Content-Length) well over the limit."""
    yield prefix
    for _ in range(total // (64 * 1024)):
        yield b"x" * 64 * 1024
    yield suffix


# --- rate limits -------------------------------------------------------------------------------


def test_a_revoked_token_does_not_spend_its_users_rate_budget(anon: httpx.Client) -> None:
    """A revoked token makes an anonymous request: counted per client IP, and the hit on its
    user taken back, so a leaked token its user revoked cannot keep that user at 429."""
    account = register(anon)
    other_session = login(anon, account.user["email"], account.password)
    assert anon.post("/api/v1/auth/logout", headers=account.headers).status_code == 204

    before = anon.get(ME, headers=other_session.headers)
    assert before.status_code == 200
    for _ in range(5):
        assert_error(anon.get(ME, headers=account.headers), 401, "INVALID_TOKEN")
    after = anon.get(ME, headers=other_session.headers)
    assert after.status_code == 200
    spent = int(before.headers["x-rate-limit-remaining"]) - int(
        after.headers["x-rate-limit-remaining"]
    )
    assert spent == 1, f"{spent - 1} requests with a revoked token were charged to the user"


# --- hardening -----------------------------------------------------------------------------------


def test_body_errors_carry_cors_headers_for_an_allowed_origin(anon: httpx.Client) -> None:
    """413 and 415 carry the CORS headers too (CORS sits outside the body checks), so a
    browser app from an allowed origin can read them."""
    origin = {"Origin": CORS_ORIGIN}
    control = anon.post("/api/v1/users", content=b"{", headers={**origin, **JSON})
    assert control.status_code == 422
    assert control.headers.get("access-control-allow-origin") == CORS_ORIGIN
    big = anon.post("/api/v1/users", content=b"x" * (LIMIT + 1), headers={**origin, **JSON})
    assert_error(big, 413, "PAYLOAD_TOO_LARGE")
    plain = anon.post(
        "/api/v1/users", content=b"x", headers={**origin, "Content-Type": "text/plain"}
    )
    assert_error(plain, 415, "UNSUPPORTED_MEDIA_TYPE")
    for response in (big, plain):
        assert response.headers.get("access-control-allow-origin") == CORS_ORIGIN, (
            response.status_code
        )


def test_request_headers_have_a_size_limit(anon: httpx.Client) -> None:
    """More than 32 KiB of request headers is 431 in the envelope (uvicorn's httptools has no
    limit of its own)."""
    try:
        response = anon.get(ME, headers={"Authorization": "Bearer " + "a" * (LIMIT + 1)})
    except httpx.TransportError:
        return  # the server refused by closing the connection
    assert response.status_code in (400, 413, 431), response.status_code


def test_a_lone_surrogate_in_a_generic_record_is_422_naming_the_field(
    client: httpx.Client,
) -> None:
    """A lone surrogate (``"\\ud800"``) in a generic record is a 422 naming the field, not
    the store codec's 400."""
    response = client.post(
        f"/api/v1/data/t_{token()}", content=b'{"data": {"name": "\\ud800"}}', headers=JSON
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.data.name"
    assert "codec" not in response.text and "store" not in error["message"]


def test_a_lone_surrogate_in_a_users_query_value_is_422(anon: httpx.Client) -> None:
    """The same for a filter-tree value on ``POST /orders/query`` (any user can send one)."""
    account = register(anon)
    body = b'{"filter": {"field": "product_name", "op": "eq", "value": "\\ud800"}}'
    response = anon.post("/api/v1/orders/query", content=body, headers={**account.headers, **JSON})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "codec" not in response.text
    assert error["details"][0]["field"].startswith("body.filter")


# --- admin bootstrap -----------------------------------------------------------------------------


def test_an_admin_password_the_settings_accept_can_create_the_admin() -> None:
    """ADMIN_PASSWORD follows UserCreate's rules (at least 8 characters, at most 72 bytes):
    "ééééé" (10 bytes, 5 characters) is a settings error, not a worker that cannot start."""
    password = "ééééé"
    try:
        Settings(_env_file=None, admin_email="boot@example.com", admin_password=password)  # type: ignore[call-arg]
    except ValueError:
        return  # refused up front with a clear message: fine
    try:
        UserCreate(
            email="boot@example.com", full_name="Administrator", password=password, role="admin"
        )
    except ValueError as exc:
        pytest.fail(f"Settings accepted ADMIN_PASSWORD that ensure_admin cannot use: {exc}")


# --- error paths not covered elsewhere (these pass) -------------------------------------------


def test_lone_surrogates_in_typed_bodies_are_422(anon: httpx.Client) -> None:
    payload = user_payload()
    value = (
        b'{"email": "' + payload["email"].encode() + b'", "full_name": "\\ud800",'
        b' "password": "correct horse battery"}'
    )
    key = (
        b'{"email": "' + payload["email"].encode() + b'", "full_name": "x",'
        b' "password": "correct horse battery", "\\udfff": 1}'
    )
    for body in (value, key):
        response = anon.post("/api/v1/users", content=body, headers=JSON)
        assert_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/users/%00", 404),
        # Not UTF-8 once percent-decoded: refused before routing (they read as U+FFFD before)
        ("/api/v1/users/%FF%FE", 400),
        ("/api/v1/orders/%ED%A0%80/user", 400),
        ("/api/v1/users?em%00ail=x", 400),
        ("/api/v1/users?sort=%00", 400),
        ("/api/v1/users?%FF=1", 400),
        ("/api/v1/users?age=%EF%BC%91", 422),
        ("/api/v1/data/t%00x", 400),
    ],
)
def test_nul_and_bad_utf8_in_paths_and_queries_stay_in_the_envelope(
    client: httpx.Client, path: str, status: int
) -> None:
    response = client.get(path)
    assert_error(response, status)


def test_chunked_bodies_over_the_limit_on_the_auth_endpoints_are_413(anon: httpx.Client) -> None:
    form = anon.post(
        "/api/v1/auth/token",
        content=_oversized(b"username=a%40example.com&password=", b""),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.request.headers["transfer-encoding"] == "chunked"
    assert_error(form, 413, "PAYLOAD_TOO_LARGE")
    refresh = anon.post(
        "/api/v1/auth/refresh",
        content=_oversized(b'{"refresh_token": "', b'"}'),
        headers=JSON,
    )
    assert_error(refresh, 413, "PAYLOAD_TOO_LARGE")
    assert anon.get("/api/v1/health").status_code == 200


def test_a_revoked_token_is_401_even_on_open_routes(anon: httpx.Client) -> None:
    """A logged-out token is not silently treated as anonymous on open registration."""
    account = register(anon)
    assert anon.post("/api/v1/auth/logout", headers=account.headers).status_code == 204
    response = anon.post("/api/v1/users", json=user_payload(), headers=account.headers)
    assert_error(response, 401, "INVALID_TOKEN")


def test_sessions_end_when_a_transaction_deletes_the_user(
    anon: httpx.Client, client: httpx.Client
) -> None:
    account = register(anon)
    create_order(client, account.id)
    deleted = client.post(
        "/api/v1/transaction",
        json={
            "operations": [{"op": "delete", "table": "users", "id": account.id, "cascade": True}]
        },
    )
    assert deleted.status_code == 200, deleted.text
    assert_error(anon.get(ME, headers=account.headers), 401, "INVALID_TOKEN")
    refreshed = anon.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_error(refreshed, 401, "INVALID_TOKEN")


# --- a stack of its own whose store is at its memory limit (destructive: last) ----------------


@dataclass
class FullStore:
    stack: Stack
    admin: Account
    user: Account
    record_url: str


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _wait_ready(http: httpx.Client, stack: Stack) -> None:
    deadline = time.monotonic() + 15
    while http.get("/api/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def full_store() -> Iterator[FullStore]:
    env = {"STORE_WAIT_SECONDS": "5"}
    with (
        running_stack(workers=1, extra_env=env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=10.0) as http,
    ):
        stack.restart_store()
        _wait_ready(http, stack)
        baseline = _rss(stack.processes["store"].pid)
        stack.restart_store({"STORE_MAX_MEMORY": str(baseline + 16 * 2**20)})
        _wait_ready(http, stack)
        admin, user = login_admin(http), register(http)
        kept = http.post("/api/v1/data/blobs", json={"data": {"n": 0}}, headers=admin.headers)
        assert kept.status_code == 201, kept.text
        blob = "x" * 2**19
        for n in range(200):
            response = http.post(
                "/api/v1/data/blobs", json={"data": {"n": n, "blob": blob}}, headers=admin.headers
            )
            if response.status_code != 201:
                break
        assert_error(response, 507, "INSUFFICIENT_STORAGE")
        url = f"/api/v1/data/blobs/{kept.json()['data']['id']}"
        assert http.get(url, headers=admin.headers).status_code == 200  # reads go on
        yield FullStore(stack, admin, user, url)


def test_logout_still_revokes_at_the_memory_limit(full_store: FullStore) -> None:
    """Revocation marks are small expiring keys the store accepts over its memory limit:
    logout still ends the session."""
    with httpx.Client(base_url=full_store.stack.base_url, timeout=10.0) as http:
        out = http.post("/api/v1/auth/logout", headers=full_store.user.headers)
        assert out.status_code == 204, out.text
        assert_error(http.get(ME, headers=full_store.user.headers), 401, "INVALID_TOKEN")


def test_a_worker_restarted_at_the_memory_limit_still_serves_reads(full_store: FullStore) -> None:
    """A worker (re)connecting to a store at its memory limit skips the set-up steps the
    store refuses (its tables exist already) and serves reads, instead of failing to boot."""
    stack = full_store.stack
    for pid in worker_pids(stack):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    outcome: Any = None
    while time.monotonic() < deadline:
        if stack.processes["api"].poll() is not None:
            outcome = f"gunicorn exited with {stack.processes['api'].returncode}"
            break
        try:
            response = httpx.get(
                stack.url(full_store.record_url), headers=full_store.admin.headers, timeout=5.0
            )
            outcome = response.status_code
            if outcome == 200:
                break
        except httpx.TransportError as exc:
            outcome = repr(exc)
        time.sleep(0.2)
    assert outcome == 200, f"{outcome}\n{stack.logs()[-1500:]}"


def _closed_by_server(sock: socket.socket, bound: float = 15.0) -> bool:
    """Whether the server closes ``sock`` (EOF) before ``bound`` seconds (a failure bound,
    not a timing assertion: the deadline under test is 1 s)."""
    sock.settimeout(bound)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_send_whole_headers_are_closed() -> None:
    """A slow-headers client (nothing, or part of a request, then silence) held a worker's fd
    forever: uvicorn arms its keep-alive timer only after a response."""
    with (
        running_stack(workers=1, extra_env={"HEADER_TIMEOUT": "1"}) as stack,
        contextlib.ExitStack() as sockets,
    ):

        def connect() -> socket.socket:
            return sockets.enter_context(socket.create_connection(("127.0.0.1", stack.port)))

        silent = connect()
        partial = connect()
        partial.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        # a keep-alive connection's second request, stalled the same way
        second = connect()
        second.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        second.settimeout(10)
        assert second.recv(4096).startswith(b"HTTP/1.1 200")
        second.sendall(b"GET /api/v1/health HTTP/1.1\r\n")
        # headers sent slowly but whole in time are served
        slow = connect()
        slow.sendall(b"GET /api/v1/health HTTP/1.1\r\n")
        time.sleep(0.3)
        slow.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        slow.settimeout(10)
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        assert [_closed_by_server(sock) for sock in (silent, partial, second)] == [True] * 3


def test_a_body_that_stops_arriving_is_408() -> None:
    """Headers whole, then part of the body and silence: the request held its task and its
    connection for as long as the client liked."""
    with (
        running_stack(workers=1, extra_env={"BODY_TIMEOUT": "1"}) as stack,
        socket.create_connection(("127.0.0.1", stack.port)) as sock,
    ):
        sock.sendall(
            b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"email": '
        )
        sock.settimeout(15)  # a failure bound, not a timing assertion
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        error = json.loads(body)["error"]
        assert error["code"] == "REQUEST_TIMEOUT" and "stopped arriving" in error["message"]
        # a body that keeps coming, however slowly, is read whole
        with httpx.Client(base_url=stack.base_url) as http:

            def slowly() -> Iterator[bytes]:
                for piece in (b'{"email": "slow@example.com", ', b'"full_name": "Slow"}'):
                    time.sleep(0.5)
                    yield piece

            response = http.post(
                "/api/v1/users", content=slowly(), headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422  # read whole: no password is a validation error
