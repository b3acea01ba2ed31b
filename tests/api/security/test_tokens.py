"""Tokens against the real workers: login, forged and misused tokens, refresh rotation,
logout on every worker, and sessions ended by a password change or deletion."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.support.auth import Account, bearer, login, register, token_pair
from tests.support.factories import PASSWORD, assert_error, user_payload
from tests.support.factories import token as unique_tag
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import store_call
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"


@pytest.fixture(scope="module")
def secret(stack: Stack) -> str:
    """The development signing key the workers generated and keep in the store."""
    value = store_call(stack, "kv_get", {"key": "auth:jwt-secret"})
    assert isinstance(value, str) and len(value) >= 32
    return value


@pytest.fixture
def alice(anon: httpx.Client) -> Account:
    return register(anon)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_invalid_token(response: httpx.Response) -> None:
    error = assert_error(response, 401, "INVALID_TOKEN")
    assert error["message"] == "The access token is invalid, expired or revoked"
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- logging in ------------------------------------------------------------------------------


def test_login_answers_rfc6749_json_and_never_caches(anon: httpx.Client) -> None:
    payload = user_payload()
    assert anon.post("/api/v1/users", json=payload).status_code == 201
    sent_at = time.time()
    response = anon.post(
        "/api/v1/auth/token",
        data={"username": payload["email"], "password": payload["password"]},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    # this stack's TTL is 3600, and exp a whole second: no more than is left is promised
    assert 3600 - 2 <= body["expires_in"] <= claims_of(body["access_token"])["exp"] - sent_at
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    access, refresh = claims_of(body["access_token"]), claims_of(body["refresh_token"])
    required = {"iss", "sub", "role", "sid", "jti", "typ", "iat", "exp"}
    assert required <= set(access) and required <= set(refresh)
    assert (access["typ"], refresh["typ"]) == ("access", "refresh")
    assert access["sid"] == refresh["sid"] and access["jti"] != refresh["jti"]
    assert access["role"] == "user"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    assert refresh["exp"] - refresh["iat"] > 6 * 86_400  # refresh tokens last a week
    me = anon.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["data"]["email"] == payload["email"]


def test_any_spelling_of_a_registered_address_logs_in(anon: httpx.Client) -> None:
    """Registration stores the address normalized (NFC, IDNA domain decoded, trimmed); login
    reads the username the same way, so the spelling typed at registration logs in again."""
    tag = unique_tag()
    payload = user_payload(email=f"jos\u00e9-{tag}@b\u00fccher.example")
    assert anon.post("/api/v1/users", json=payload).status_code == 201
    for spelling in (
        f"jose\u0301-{tag}@bücher.example",  # é decomposed (NFD)
        f"jos\u00e9-{tag}@xn--bcher-kva.example",  # the punycode domain
        f"  JOS\u00c9-{tag}@B\u00dcCHER.EXAMPLE ",
    ):
        response = anon.post(
            "/api/v1/auth/token", data={"username": spelling, "password": payload["password"]}
        )
        assert response.status_code == 200, (spelling, response.text)


@pytest.mark.parametrize("spelling", ["Anyone <{}>", '"{}" <{}>', "<{}>"])
def test_a_display_name_form_logs_in_to_no_account(
    anon: httpx.Client, alice: Account, spelling: str
) -> None:
    """Registration refuses ``Name <address>`` (422); login reads the username as it does, so
    that form is no spelling of an account's address (QA: it logged in as the address)."""
    email = alice.user["email"]
    username = spelling.format(email, email)
    response = anon.post(
        "/api/v1/auth/token", data={"username": username, "password": alice.password}
    )
    assert_error(response, 401, "INVALID_CREDENTIALS")
    plain = {"username": email, "password": alice.password}
    assert anon.post("/api/v1/auth/token", data=plain).status_code == 200


@pytest.mark.parametrize("grant_type", ["client_credentials", "refresh_token", "PASSWORD", "x"])
def test_only_the_password_grant_is_taken(
    anon: httpx.Client, alice: Account, grant_type: str
) -> None:
    """RFC 6749 §5.2: another grant_type is 400 unsupported_grant_type, even with the right
    password (it issued tokens); without one, or with password, the login works."""
    form = {"username": alice.user["email"], "password": alice.password}
    response = anon.post("/api/v1/auth/token", data={**form, "grant_type": grant_type})
    error = assert_error(response, 400, "UNSUPPORTED_GRANT_TYPE")
    assert "unsupported_grant_type" in error["message"] and "access_token" not in response.text
    assert response.headers["cache-control"] == "no-store"
    wrong = {**form, "password": "wrong password", "grant_type": grant_type}
    assert_error(anon.post("/api/v1/auth/token", data=wrong), 400, "UNSUPPORTED_GRANT_TYPE")
    for accepted in ({**form, "grant_type": "password"}, form, {**form, "grant_type": ""}):
        assert anon.post("/api/v1/auth/token", data=accepted).status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_401(
    anon: httpx.Client, alice: Account
) -> None:
    email = alice.user["email"]
    responses = [
        anon.post("/api/v1/auth/token", data={"username": email, "password": "wrong password"}),
        anon.post(
            "/api/v1/auth/token", data={"username": "nobody@example.com", "password": PASSWORD}
        ),
        anon.post("/api/v1/auth/token", data={"username": "not an email", "password": PASSWORD}),
    ]
    errors = [assert_error(r, 401, "INVALID_CREDENTIALS") for r in responses]
    assert errors[0] == errors[1] == errors[2]
    assert all(r.headers["cache-control"] == "no-store" for r in responses)
    assert all(r.headers["www-authenticate"] == "Bearer" for r in responses)


def test_login_password_over_72_bytes_is_422_not_truncated(
    anon: httpx.Client, alice: Account
) -> None:
    # 72 bytes of the real password's prefix would match if bcrypt truncated silently.
    long = (alice.password * 10)[:73]
    response = anon.post(
        "/api/v1/auth/token", data={"username": alice.user["email"], "password": long}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.password"
    assert long not in response.text


def test_login_needs_a_form(anon: httpx.Client, alice: Account) -> None:
    response = anon.post(
        "/api/v1/auth/token", json={"username": alice.user["email"], "password": PASSWORD}
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


# --- forged and misused tokens -----------------------------------------------------------------


def forge(secret: str, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def sign_raw(header: dict[str, Any], claims: dict[str, Any], secret: str) -> str:
    """HMAC-SHA256 over any header: the algorithm-confusion shape (``alg: RS256`` "signed"
    with the shared secret as if it were a public key)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_token_attacks_are_all_401(anon: httpx.Client, alice: Account, secret: str) -> None:
    good = claims_of(alice.access_token)
    header, payload, signature = alice.access_token.split(".")
    admin_claims = {**good, "role": "admin"}
    unsigned_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    attacks = {
        "alg none": f"{unsigned_header}.{b64(json.dumps(admin_claims).encode())}.",
        "alg none, old signature": f"{unsigned_header}.{payload}.{signature}",
        "HS512, same secret": forge(secret, good, "HS512"),
        "HS384, same secret": forge(secret, good, "HS384"),
        "RS256 header, HMAC with the secret": sign_raw({"alg": "RS256"}, good, secret),
        "ES256 header, HMAC with the secret": sign_raw({"alg": "ES256"}, good, secret),
        "RS256 header, original signature": f"{b64(b'{}')}.{payload}.{signature}".replace(
            b64(b"{}"), b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        ),
        "tampered payload": f"{header}.{b64(json.dumps(admin_claims).encode())}.{signature}",
        "other key": forge("another key that is long enough to be a key!!", good),
        "expired": forge(secret, {**good, "iat": time.time() - 7200, "exp": int(time.time()) - 60}),
        "refresh as access": alice.refresh_token,
        "wrong issuer": forge(secret, {**good, "iss": "someone-else"}),
        "unknown role": forge(secret, {**good, "role": "root"}),
        # QA: an unhashable role made the set lookup raise: 500
        "role as a list": forge(secret, {**good, "role": ["admin"]}),
        "role as an object": forge(secret, {**good, "role": {"admin": 1}}),
        "iat in the future": forge(secret, {**good, "iat": time.time() + 3600}),
        "truncated": alice.access_token[:-5],
        "garbage": "not.a.token",
        "huge": "a" * 5000,
    }
    for claim in ("sub", "role", "exp", "iat", "jti", "typ", "sid", "iss"):
        attacks[f"missing {claim}"] = forge(secret, {k: v for k, v in good.items() if k != claim})
    for name, token in attacks.items():
        response = anon.get(ME, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert_invalid_token(response)
    # Control: the same secret and claims, honestly signed, are accepted.
    assert anon.get(ME, headers=bearer(forge(secret, good))).status_code == 200
    refresh = claims_of(alice.refresh_token)
    for role in (["user"], {"user": 1}):
        forged = forge(secret, {**refresh, "role": role})
        answer = anon.post("/api/v1/auth/refresh", json={"refresh_token": forged})
        assert_error(answer, 401, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "Bearer a b", "Bearer\ta"],
)
def test_malformed_authorization_headers_are_401(anon: httpx.Client, header: str) -> None:
    response = anon.get(ME, headers={"Authorization": header})
    assert_error(response, 401)


def test_a_bad_token_is_401_even_on_open_routes(anon: httpx.Client) -> None:
    response = anon.post(
        "/api/v1/users", json=user_payload(), headers={"Authorization": "Bearer nope"}
    )
    assert_invalid_token(response)


def test_access_token_is_not_a_refresh_token(anon: httpx.Client, alice: Account) -> None:
    response = anon.post("/api/v1/auth/refresh", json={"refresh_token": alice.access_token})
    assert_error(response, 401, "INVALID_TOKEN")
    assert response.headers["cache-control"] == "no-store"


# --- refresh rotation --------------------------------------------------------------------------


def refresh(http: httpx.Client, token: str) -> httpx.Response:
    return http.post("/api/v1/auth/refresh", json={"refresh_token": token})


def test_refresh_rotates_and_the_old_token_is_dead(anon: httpx.Client, alice: Account) -> None:
    first = refresh(anon, alice.refresh_token)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    pair = first.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert claims_of(pair["access_token"])["sid"] == claims_of(alice.access_token)["sid"]
    assert anon.get(ME, headers=bearer(pair["access_token"])).status_code == 200
    second = refresh(anon, pair["refresh_token"])
    assert second.status_code == 200
    newest = second.json()

    # Reuse of an already rotated refresh token: refused, and the whole session is revoked.
    assert_error(refresh(anon, alice.refresh_token), 401, "INVALID_TOKEN")
    for token in (alice.access_token, pair["access_token"], newest["access_token"]):
        assert_invalid_token(anon.get(ME, headers=bearer(token)))
    assert_error(refresh(anon, newest["refresh_token"]), 401, "INVALID_TOKEN")
    # Other sessions of the same user are untouched.
    again = login(anon, alice.user["email"], alice.password)
    assert anon.get(ME, headers=again.headers).status_code == 200


async def test_concurrent_refreshes_on_two_workers_rotate_once_and_keep_the_session(
    stack: Stack, anon: httpx.Client
) -> None:
    """One exchange rotates the token; the other, at the same moment, gets the same new
    refresh token (QA: the loser revoked the session as reuse, killing the winner's new pair
    too: a double click or two tabs logged the user out)."""
    account = register(anon)
    pinned = await pinned_clients(stack.base_url, workers=2)
    try:
        clients = [clients[0] for clients in pinned.values()]
        responses = await asyncio.gather(
            *(
                c.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
                for c in clients
            )
        )
        assert {r.headers["x-worker-pid"] for r in responses} == set(pinned)
        assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
        (successor,) = {r.json()["refresh_token"] for r in responses}
        for r in responses:
            me = await clients[0].get(ME, headers=bearer(r.json()["access_token"]))
            assert me.status_code == 200, me.text
        again = await clients[1].post("/api/v1/auth/refresh", json={"refresh_token": successor})
        assert again.status_code == 200, again.text
        # The successor used, the first token is reuse again: the session is revoked.
        reuse = await clients[0].post(
            "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
        )
        assert reuse.status_code == 401
    finally:
        await close_all(pinned)


# --- logout, on every worker --------------------------------------------------------------------


async def test_logout_on_one_worker_refuses_the_token_on_every_worker(
    stack: Stack, anon: httpx.Client
) -> None:
    account = register(anon)
    pinned = await pinned_clients(stack.base_url, workers=2, per_worker=2, headers=account.headers)
    try:
        everyone = [c for clients in pinned.values() for c in clients]
        # Every worker verifies (and caches) the token first.
        before = await asyncio.gather(*(c.get(ME) for c in everyone))
        assert [r.status_code for r in before] == [200] * len(everyone)
        pid_a, on_a = next(iter(pinned.items()))
        out = await on_a[0].post("/api/v1/auth/logout")
        assert out.status_code == 204 and out.headers["x-worker-pid"] == pid_a
        assert out.headers["cache-control"] == "no-store"
        after = await asyncio.gather(*(c.get(ME) for c in everyone for _ in range(10)))
        assert len({r.headers["x-worker-pid"] for r in after}) >= 2
        for response in after:
            assert_invalid_token(response)
        dead = await on_a[0].post(
            "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
        )
        assert_error(dead, 401, "INVALID_TOKEN")
    finally:
        await close_all(pinned)


def test_logout_needs_a_token(anon: httpx.Client) -> None:
    assert_error(anon.post("/api/v1/auth/logout"), 401, "NOT_AUTHENTICATED")


# --- sessions ended by account changes ---------------------------------------------------------


def test_password_change_ends_every_session(anon: httpx.Client) -> None:
    account = register(anon)
    other_session = login(anon, account.user["email"], account.password)
    url = f"/api/v1/users/{account.id}"
    missing = anon.patch(url, json={"password": "a brand new passphrase"}, headers=account.headers)
    assert_error(missing, 422, "VALIDATION_ERROR")
    wrong = anon.patch(
        url,
        json={"password": "a brand new passphrase", "current_password": "not my password"},
        headers=account.headers,
    )
    assert_error(wrong, 403, "WRONG_PASSWORD")
    changed = anon.patch(
        url,
        json={"password": "a brand new passphrase", "current_password": account.password},
        headers=account.headers,
    )
    assert changed.status_code == 200
    assert "password" not in changed.text
    for session in (account, other_session):
        assert_invalid_token(anon.get(ME, headers=session.headers))
        assert_error(refresh(anon, session.refresh_token), 401, "INVALID_TOKEN")
    bad = anon.post(
        "/api/v1/auth/token", data={"username": account.user["email"], "password": PASSWORD}
    )
    assert_error(bad, 401, "INVALID_CREDENTIALS")
    fresh = login(anon, account.user["email"], "a brand new passphrase")
    assert anon.get(ME, headers=fresh.headers).status_code == 200


def test_admin_resetting_a_password_ends_that_users_sessions(
    anon: httpx.Client, client: httpx.Client
) -> None:
    account = register(anon)
    reset = client.patch(f"/api/v1/users/{account.id}", json={"password": "reset by the admin"})
    assert reset.status_code == 200
    assert_invalid_token(anon.get(ME, headers=account.headers))
    assert client.get(ME).status_code == 200  # the admin's own session is untouched


def test_deleting_a_user_ends_their_sessions(anon: httpx.Client) -> None:
    account = register(anon)
    deleted = anon.delete(f"/api/v1/users/{account.id}", headers=account.headers)
    assert deleted.status_code == 204
    assert_invalid_token(anon.get(ME, headers=account.headers))
    assert_error(refresh(anon, account.refresh_token), 401, "INVALID_TOKEN")


def test_revocation_marks_live_in_the_store_with_expiry(stack: Stack, anon: httpx.Client) -> None:
    account = register(anon)
    sid = claims_of(account.access_token)["sid"]
    assert anon.post("/api/v1/auth/logout", headers=account.headers).status_code == 204
    mark = store_call(stack, "kv_get", {"key": f"auth:session-revoked:{sid}"})
    assert isinstance(mark, float) and abs(mark - time.time()) < 60


# --- the development signing key ------------------------------------------------------------


def test_generated_key_signs_every_workers_tokens(anon: httpx.Client, secret: str) -> None:
    pair = token_pair(anon, *_new_credentials(anon))
    decoded = jwt.decode(pair["access_token"], secret, algorithms=["HS256"], issuer="memdb-service")
    assert decoded["typ"] == "access"


def _new_credentials(anon: httpx.Client) -> tuple[str, str]:
    payload = user_payload()
    assert anon.post("/api/v1/users", json=payload).status_code == 201
    return payload["email"], payload["password"]


def test_generated_key_survives_a_restart_of_everything(tmp_path_factory: Any) -> None:
    data_dir = tmp_path_factory.mktemp("persist")
    env = {"STORE_DATA_DIR": str(data_dir), "STORE_FSYNC": "always"}
    with running_stack(workers=1, extra_env=env) as first, _http(first) as http:
        account = register(http)
    with running_stack(workers=2, extra_env=env) as second, _http(second) as http:
        assert http.get(ME, headers=account.headers).status_code == 200
        assert refresh(http, account.refresh_token).status_code == 200


def _http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=10.0)


def test_logins_and_refreshes_raise_the_token_horizon(anon: httpx.Client, stack: Stack) -> None:
    """Before a pair leaves, the store's horizon covers its refresh token's exp: revocation
    marks are kept that long (tests/api/security/test_session_marks.py)."""
    account = register(anon)
    refreshed = anon.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    exp = jwt.decode(refreshed.json()["refresh_token"], options={"verify_signature": False})["exp"]
    horizon = store_call(stack, "kv_get", {"key": "auth:token-horizon"})
    assert horizon >= exp
