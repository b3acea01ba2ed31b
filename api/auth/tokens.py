"""JWT access and refresh tokens (PyJWT, HS256 only) and a per-worker cache of verifications.

Claims: ``iss``, ``sub`` (user id), ``role``, ``sid`` (session id), ``jti`` (token id), ``typ``
(``access`` or ``refresh``), ``iat`` (float seconds, so "issued before this instant" is exact)
and ``exp``. Every one is required; the algorithm list is fixed to HS256, so ``alg: none``,
HS512 or RS256 headers, a changed payload or another key all fail the same way.

Verifying costs ~80 µs (HMAC plus JSON and claim checks); an access token is sent with every
request, so successful verifications are kept in a small LRU keyed by the token string (equal
strings carry equal signatures) and honour ``exp`` on every hit. Revocation is never cached:
``api.auth.sessions`` asks the store on every request.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Literal

import jwt

ALGORITHM: Final = "HS256"
ISSUER: Final = "memdb-service"
REQUIRED_CLAIMS: Final = ("iss", "sub", "role", "sid", "jti", "typ", "iat", "exp")
CLOCK_SKEW: Final = 5.0
"""Seconds a token's ``iat`` may be ahead of this host's clock (API hosts kept in sync by NTP
differ by far less); one further ahead is refused (401)."""
ROLES: Final = frozenset({"user", "admin"})
TokenType = Literal["access", "refresh"]


class InvalidToken(Exception):
    """The token is malformed, forged, expired, revoked or of the wrong type (always 401)."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    role: str
    session_id: str
    token_id: str
    token_type: TokenType
    issued_at: float
    expires_at: int  # the earlier of its exp and its iat plus the lifetime configured now
    signed_expires_at: int = 0  # its exp: a later configuration may let it live that long


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_claims: Claims  # what verifying ``refresh_token`` would give, without decoding it
    refresh_expires_at: int = 0  # the refresh token's exp, the pair's last moment


class TokenCache:
    """Bounded LRU of verified tokens; an entry is dropped when read after its ``exp``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Claims] = OrderedDict()

    def get(self, token: str, now: float) -> Claims | None:
        claims = self._items.get(token)
        if claims is None:
            return None
        if now >= claims.expires_at:
            del self._items[token]
            return None
        self._items.move_to_end(token)
        return claims

    def put(self, token: str, claims: Claims) -> None:
        if self.size <= 0:
            return
        self._items[token] = claims
        self._items.move_to_end(token)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class TokenService:
    """Issue and verify tokens with one worker-wide secret (see ``api.auth.secret``)."""

    def __init__(
        self, secret: str, access_ttl: int, refresh_ttl: int, cache_size: int = 4096
    ) -> None:
        self.secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._cache = TokenCache(cache_size)

    def issue_pair(
        self,
        user_id: str,
        role: str,
        session_id: str,
        issued_at: float | None = None,
        refresh_id: str | None = None,
    ) -> TokenPair:
        """``issued_at``: when what the tokens vouch for was read (the user's role, password
        and sessions), if earlier than now. A password or role change, or a logout, that
        lands between that read and now ends the user's sessions with a later timestamp, so
        these tokens are refused too (``sessions.check_not_revoked``): they are dated by what
        they were built from, not by when they were signed. ``refresh_id`` with the
        ``issued_at`` it was first signed at: that refresh token again (a refresh repeated:
        ``sessions.Successor``), with a new access token."""
        signed_at = time.time()
        # Rounded as the iat claim is, before exp is derived from it: a repeated refresh signs
        # again from the claims' iat and must get the same exp (QA: at a fraction of .9999995
        # or more, int() of the unrounded time gave an exp a second earlier).
        now = round(signed_at if issued_at is None else issued_at, 6)
        access_exp = int(now) + self.access_ttl
        access = self._encode(user_id, role, session_id, "access", now, access_exp)
        refresh_exp = self.refresh_expiry(now)
        refresh_id = refresh_id or uuid.uuid4().hex
        refresh = self._encode(user_id, role, session_id, "refresh", now, refresh_exp, refresh_id)
        # exp is int(now) + refresh_ttl, so the configured-lifetime cap of ``_decode`` is exp.
        claims = Claims(
            user_id,
            role,
            session_id,
            refresh_id,
            "refresh",
            round(now, 6),
            refresh_exp,
            refresh_exp,
        )
        # exp is rounded down (and issued_at may be earlier than now), so less than access_ttl
        # is left: promise only the whole seconds that are. Not exp rounded up instead: a
        # token would outlive by up to a second the revocation marks set at its issue, and
        # ``_decode`` caps it at int(iat) + ttl anyway.
        expires_in = max(access_exp - math.ceil(signed_at), 0)
        return TokenPair(access, refresh, expires_in, claims, refresh_exp)

    def refresh_expiry(self, issued_at: float) -> int:
        """The exp of a refresh token issued at ``issued_at``."""
        return int(issued_at) + self.refresh_ttl

    def verify(self, token: str, expected: TokenType) -> Claims:
        """The token's claims, or ``InvalidToken``; only access tokens are cached."""
        now = time.time()
        if expected == "access":
            cached = self._cache.get(token, now)
            if cached is not None:
                return cached
        claims = self._decode(token, expected)
        if expected == "access":
            self._cache.put(token, claims)
        return claims

    def _encode(
        self,
        user_id: str,
        role: str,
        session_id: str,
        kind: TokenType,
        now: float,
        exp: int,
        token_id: str | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": user_id,
            "role": role,
            "sid": session_id,
            "jti": token_id or uuid.uuid4().hex,
            "typ": kind,
            "iat": round(now, 6),
            "exp": exp,
        }
        return jwt.encode(payload, self.secret, algorithm=ALGORITHM)

    def _decode(self, token: str, expected: TokenType) -> Claims:
        if len(token) > 4096:
            raise InvalidToken("token too long")
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": list(REQUIRED_CLAIMS)},
                # An iat up to CLOCK_SKEW ahead of this host's clock: a token signed by another
                # API host a moment ahead (PyJWT truncates iat to whole seconds, so even a ms
                # of skew refused fresh tokens there, review). Expiry is checked below, exactly.
                leeway=CLOCK_SKEW,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        sub, role, sid, jti, typ = (payload.get(k) for k in ("sub", "role", "sid", "jti", "typ"))
        iat: Any = payload.get("iat")
        exp: Any = payload.get("exp")
        if typ != expected:
            raise InvalidToken(f"not an {expected} token")
        if not isinstance(role, str) or role not in ROLES:  # a list is unhashable (QA: 500)
            raise InvalidToken("unknown role")
        if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in (sub, sid, jti)):
            raise InvalidToken("malformed subject, session or token id")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp)):
            raise InvalidToken("malformed iat or exp")
        # A token lives at most the lifetime configured now, whatever its exp says: revocation
        # marks (logout, password change) live that long, so a token signed under a longer
        # lifetime (REFRESH_TOKEN_TTL lowered since) would outlive its mark and come back.
        ttl = self.access_ttl if expected == "access" else self.refresh_ttl
        expires_at = min(int(exp), int(iat) + ttl)
        if time.time() >= expires_at:
            raise InvalidToken("expired under the configured token lifetime")
        return Claims(
            subject=str(sub),
            role=str(role),
            session_id=str(sid),
            token_id=str(jti),
            token_type=expected,
            issued_at=float(iat),
            expires_at=expires_at,
            signed_expires_at=int(exp),
        )


def new_session_id() -> str:
    return uuid.uuid4().hex
