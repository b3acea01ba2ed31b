"""Log users in against a running stack: tokens, bearer headers, and ready-made accounts.

``login_admin(client)`` opens a session of the admin every stack ensures (ADMIN_EMAIL);
``register(client)`` registers a new user and logs in; ``account.headers`` is the bearer header.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.factories import PASSWORD, user_payload
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD

TOKEN_URL = "/api/v1/auth/token"


@dataclass
class Account:
    """A logged-in user: the public record, the token pair and the bearer header."""

    user: dict[str, Any]
    access_token: str
    refresh_token: str
    password: str = PASSWORD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.user["id"])

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_pair(client: httpx.Client, email: str, password: str) -> dict[str, Any]:
    response = client.post(TOKEN_URL, data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def login(client: httpx.Client, email: str, password: str) -> Account:
    """A new session for an existing account."""
    pair = token_pair(client, email, password)
    me = client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200, me.text
    return Account(me.json()["data"], pair["access_token"], pair["refresh_token"], password)


def login_admin(client: httpx.Client) -> Account:
    """A new session of the stack's administrator (ADMIN_EMAIL / ADMIN_PASSWORD)."""
    return login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


def register(client: httpx.Client, **fields: Any) -> Account:
    """Register a new user (open registration) and log in."""
    payload = user_payload(**fields)
    response = client.post("/api/v1/users", json=payload)
    assert response.status_code == 201, response.text
    return login(client, payload["email"], payload["password"])


def production_env(**extra: str) -> dict[str, str]:
    """The settings ``ENV=production`` demands of a stack (a strong JWT_SECRET, bcrypt at cost
    12, no worker pid in headers) and no ADMIN_* of the test session, with ``extra``."""
    return {
        "ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "12",
        "EXPOSE_WORKER_PID": "0",
        "ADMIN_EMAIL": "",
        "ADMIN_PASSWORD": "",
        **extra,
    }
