"""Who is calling: the principal a request carries, and reading the bearer token.

The request guard (``api.guard``) resolves the caller once per request and leaves the outcome
in ``scope["state"]["auth"]``; the dependencies in ``api.deps`` read it and decide 401/403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.types import Scope

from api.auth.tokens import Claims

Role = Literal["anonymous", "user", "admin"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user (``id``, ``role``, ``session_id``, and its token's ``issued_at``),
    or the anonymous caller."""

    id: str | None = None
    role: Role = "anonymous"
    session_id: str | None = None
    issued_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def from_claims(cls, claims: Claims) -> Principal:
        role: Role = "admin" if claims.role == "admin" else "user"
        return cls(claims.subject, role, claims.session_id, claims.issued_at)


ANONYMOUS = Principal()


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """What the guard found: a principal, or the error to raise when a route needs one.

    ``error`` is an ``InvalidToken`` (→ 401) or a store error (→ 503/504: a token whose
    revocation could not be checked is never accepted).
    """

    principal: Principal = ANONYMOUS
    error: Exception | None = None
    token_present: bool = False


def bearer_token(scope: Scope) -> str | None:
    """The bearer token; "" for a malformed Authorization header, None without one."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return ""
            return token
    return None
