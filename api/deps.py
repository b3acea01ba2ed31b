"""Dependencies as ``Annotated`` aliases, all in one place; tests swap them with
``app.dependency_overrides``. The query and path parameters (pages, list queries, table
names) are defined in ``api.query_params`` and taken from here like the rest.

Authentication and authorization live here and nowhere else: ``Caller`` (anyone; a bad
token is still 401), ``CurrentUser`` (a valid access token, else 401), ``AdminUser`` (an
admin, else 403), and the ownership checks ``UserId``/``OrderId`` (yourself or your own order,
unless admin; anything else is the same 404 as a record that does not exist). A write to an
order takes ``OrderWrite``: made at the version its ownership was checked at, so an order
given to someone else in between is never written by its former owner.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.security import OAuth2PasswordBearer

from api.auth.principals import AuthOutcome, Principal, bearer_token
from api.auth.sessions import credential, ensure_not_revoked
from api.auth.tokens import InvalidToken, TokenService
from api.conditions import WriteConditions, header_list, parse_write_conditions
from api.errors import INVALID_TOKEN_MESSAGE, ApiError
from api.etags import parse_entity_tags
from api.query_params import FILTERING as FILTERING
from api.query_params import CreatedAfter as CreatedAfter
from api.query_params import CreatedBefore as CreatedBefore
from api.query_params import DataListQuery as DataListQuery
from api.query_params import JoinKey as JoinKey
from api.query_params import JoinListQuery as JoinListQuery
from api.query_params import LeftTable as LeftTable
from api.query_params import OrderListQuery as OrderListQuery
from api.query_params import OrdersEmbed as OrdersEmbed
from api.query_params import PageParams as PageParams
from api.query_params import RightTable as RightTable
from api.query_params import TableName as TableName
from api.query_params import UserListQuery as UserListQuery
from api.query_params import check_table_name as check_table_name
from api.query_params import embeds_only as embeds_only
from api.query_params import only_params as only_params
from api.query_params import table_filter_query as table_filter_query
from api.services import orders, users
from api.services.versions import OwnerCheck, RecordWrite, not_found
from api.settings import Settings
from api.store import Store
from storeserver.client import current_actor
from storeserver.errors import StoreUnavailable

TOKEN_URL = "/api/v1/auth/token"

# Parses nothing the guard has not already read; it puts the Authorize button in /docs.
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    description="Log in at `POST /api/v1/auth/token` (username = email); send the access token"
    " as `Authorization: Bearer <token>`.",
)


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> Store:
    """The worker's store client, opened in the lifespan."""
    store: Store = request.app.state.store
    return store


async def get_tokens(request: Request) -> TokenService:
    """The worker's token service (its signing secret is loaded in the lifespan)."""
    tokens: TokenService | None = getattr(request.app.state, "tokens", None)
    if tokens is None:
        raise StoreUnavailable("authentication is not ready: the signing key is not loaded")
    return tokens


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[Store, Depends(get_store)]
TokensDep = Annotated[TokenService, Depends(get_tokens)]


def invalid_token() -> ApiError:
    """401 with the RFC 6750 challenge; one body for every token problem (forged, expired,
    revoked, wrong type), so a client learns nothing about which check failed."""
    return ApiError(401, "INVALID_TOKEN", INVALID_TOKEN_MESSAGE)  # its challenge: error_response


def not_authenticated() -> ApiError:
    return ApiError(
        401,
        "NOT_AUTHENTICATED",
        "Authentication required: send Authorization: Bearer <access token>",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _authenticate(request: Request) -> AuthOutcome:
    """What the guard would have found; for paths it skips and for apps built without it."""
    token = bearer_token(request.scope)
    if token is None:
        return AuthOutcome()
    try:
        if not token:
            raise InvalidToken("malformed Authorization header")
        claims = (await get_tokens(request)).verify(token, "access")
        await ensure_not_revoked(await get_store(request), claims)
    except InvalidToken as exc:
        return AuthOutcome(error=exc, token_present=True)
    return AuthOutcome(Principal.from_claims(claims), token_present=True)


async def get_caller(request: Request) -> Principal:
    """The caller: anonymous without a token; a token that does not verify is 401.

    It reads the guard's outcome (or the token) from the request itself rather than through
    ``oauth2_scheme``: each dependency level costs FastAPI about 15 µs per request, so the
    scheme is added to the OpenAPI document by ``api.openapi`` instead.
    """
    outcome: AuthOutcome | None = request.scope.get("state", {}).get("auth")
    if outcome is None:
        outcome = await _authenticate(request)
    if outcome.error is not None:
        if isinstance(outcome.error, InvalidToken):
            raise invalid_token()
        raise outcome.error  # a store error: the revocation could not be checked (503/504)
    principal = outcome.principal
    # Every store write of this request carries who is calling (anonymous: no user id), for
    # the store's audit log, and the token's credential, which the store checks before it
    # writes (``sessions.credential``). Set here; cleared as each request begins
    # (``RequestIdMiddleware``), as a pipelined request's task starts with the context of the
    # request before it.
    actor: dict[str, Any] = {"user_id": principal.id, "role": principal.role}
    user_id, session_id, issued_at = principal.id, principal.session_id, principal.issued_at
    if user_id is not None and session_id is not None and issued_at is not None:
        actor["credential"] = credential(session_id, user_id, issued_at)
    current_actor.set(actor)
    return principal


Caller = Annotated[Principal, Depends(get_caller)]


async def require_user(caller: Caller) -> Principal:
    """An authenticated user (any role), else 401."""
    if caller.id is None:
        raise not_authenticated()
    return caller


CurrentUser = Annotated[Principal, Depends(require_user)]


async def require_admin(caller: CurrentUser) -> Principal:
    """Generic tables, joins, dumps and the user list: admins only (403 for a user)."""
    if not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "This operation needs the admin role")
    return caller


AdminUser = Annotated[Principal, Depends(require_admin)]


async def refuse_tagged_if_match(request: Request) -> None:
    """For a read whose answer carries no ETag (a count, an aggregate, a dump, a job's status):
    an If-Match naming tags names nothing current, so it is false (RFC 9110 §13.1.1) and the
    read is 412; ``*`` holds. QA: such reads answered 200, telling the client its condition
    held. A parameter after the caller's, so 401/403 come first."""
    if_match = header_list(request, "if-match")
    if if_match is not None and parse_entity_tags(if_match) is not None:
        raise ApiError(
            412,
            "PRECONDITION_FAILED",
            "If-Match names a version, and this answer has none (no ETag): only * matches it",
        )


UntaggedRead = Annotated[None, Depends(refuse_tagged_if_match)]


ORDER_OWNER = "user_id"
"""The field of an order that names the user it belongs to."""
ME = "me"
"""The path id that means the caller (``/users/me``); no user can have it: ids are generated."""


async def authorize_user(
    request: Request,
    user_id: Annotated[str, Path(max_length=128, description="User id, or `me` for yourself")],
) -> str:
    """Yourself, or anyone for an admin; someone else's id is 404. Yields the user id
    (the caller's own for ``me``, so every ``/users/{user_id}`` route takes ``me``).

    Calls ``get_caller`` and makes ``require_user``'s check itself (401 first) instead of
    depending on ``Caller``: two dependency levels less on the hottest routes, same answers.
    """
    caller = await get_caller(request)
    if caller.id is None:
        raise not_authenticated()
    if user_id == ME:
        return caller.id
    if caller.id != user_id and not caller.is_admin:
        raise not_found(users.TABLE, user_id)
    return user_id


async def authorize_order(
    request: Request, order_id: Annotated[str, Path(max_length=128, description="Order id")]
) -> str:
    """Your own order, or any for an admin; someone else's is 404. Yields the order id.

    Like ``authorize_user``: the caller read and ``require_user``'s 401 check made here. For a
    caller who is not an admin, what the check read stays with the request
    (``order_owner_check``): ``OrderWrite`` writes at that version, and a read made after it
    is checked again (``visible_order``), as an admin may give the order to someone else at
    any moment.
    """
    caller = await get_caller(request)
    if caller.id is None:
        raise not_authenticated()
    if not caller.is_admin:
        store = await get_store(request)
        order = await store.call("get", {"table": orders.TABLE, "id": order_id})
        if order.get(ORDER_OWNER) != caller.id:
            raise not_found(orders.TABLE, order_id)
        request.state.order_owner_check = OwnerCheck(caller.id, int(order["version"]))
    return order_id


UserId = Annotated[str, Depends(authorize_user)]
OrderId = Annotated[str, Depends(authorize_order)]
Preconditions = Annotated[WriteConditions, Depends(parse_write_conditions)]
"""If-Match and If-None-Match of a write to one record (``api.conditions``)."""


def order_owner_check(request: Request) -> OwnerCheck | None:
    """The ownership ``authorize_order`` found (None: an admin's request, or its check
    overridden)."""
    check: OwnerCheck | None = getattr(request.state, "order_owner_check", None)
    return check


def visible_order(request: Request, order: dict[str, Any]) -> dict[str, Any]:
    """An order read after ``authorize_order``; 404 if it is no longer the caller's."""
    check = order_owner_check(request)
    if check is not None and order.get(ORDER_OWNER) != check.owner:
        raise not_found(orders.TABLE, str(order.get("id")))
    return order


async def authorize_order_write(
    request: Request, order_id: OrderId, store: StoreDep, conditions: Preconditions
) -> RecordWrite:
    """A write to an order the caller may write, under its If-Match/If-None-Match: for a
    caller who is not an admin, made at the version ownership was checked at
    (``RecordWrite``)."""
    check = order_owner_check(request)
    return RecordWrite(store, orders.TABLE, order_id, conditions, check, ORDER_OWNER)


OrderWrite = Annotated[RecordWrite, Depends(authorize_order_write)]

AUTHENTICATING = frozenset({get_caller, authorize_user, authorize_order})
"""The dependencies that read the bearer token: an operation using one documents it."""
REQUIRING_TOKEN = frozenset({require_user, authorize_user, authorize_order})
"""The dependencies that refuse a caller without a token (``require_admin`` through
``require_user``). An operation that authenticates with none of them (``Caller`` alone, as
open registration) takes a token but works without one."""
ACCESS_CHECKS = frozenset(
    {get_caller, require_user, require_admin, authorize_user, authorize_order}
)
"""The dependencies that answer 401, 403 or "not yours" (404) for a route."""


async def check_access(request: Request) -> None:
    """Run the matched route's access checks alone: they raise its 401, 403 or 404.

    FastAPI reads a JSON body before it runs any dependency, so a body that is not JSON was a
    422 even for a caller the route refuses; the validation error handler calls this first.
    FastAPI's own solver runs them, so they answer as in a normal request (and tests'
    ``dependency_overrides`` apply); a check whose own parameters are invalid is skipped.
    """
    top = getattr(request.scope.get("route"), "dependant", None)
    pending: list[Dependant] = [top] if isinstance(top, Dependant) else []
    checks: list[Dependant] = []
    while pending:
        for sub in pending.pop().dependencies:
            (checks if sub.call in ACCESS_CHECKS else pending).append(sub)
    if checks:
        async with AsyncExitStack() as stack:
            await solve_dependencies(
                request=request,
                dependant=Dependant(dependencies=checks),
                dependency_overrides_provider=request.app,
                async_exit_stack=stack,
                embed_body_fields=False,
            )
