"""Dependencies as ``Annotated`` aliases, all in one place; tests swap them with
``app.dependency_overrides``.

Authentication and authorization live here and nowhere else: ``Caller`` (anyone; a bad
token is still 401), ``CurrentUser`` (a valid access token, else 401), ``AdminUser`` (an
admin, else 403), and the ownership checks ``UserId``/``OrderId`` (yourself or your own order,
unless admin; anything else is the same 404 as a record that does not exist).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.security import OAuth2PasswordBearer

from api.auth.principals import AuthOutcome, Principal, bearer_token
from api.auth.sessions import ensure_not_revoked
from api.auth.tokens import InvalidToken, TokenService
from api.conditions import WriteConditions, parse_write_conditions
from api.errors import ApiError, bad_query
from api.queries import EXPANDABLE, RESERVED, Fields, ListQuery, Page, build_list_query
from api.services import orders, typed_tables, users
from api.settings import Settings
from api.store import Store
from storeserver.client import current_actor
from storeserver.errors import NotFound, StoreUnavailable

TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
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
    return ApiError(
        401,
        "INVALID_TOKEN",
        "The access token is invalid, expired or revoked",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


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
    # Every store call of this request carries who is calling (anonymous: no user id), for
    # the store's audit log. Set, not reset: uvicorn runs each request in its own task.
    current_actor.set({"user_id": principal.id, "role": principal.role})
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


def not_found(table: str, record_id: str) -> NotFound:
    """Exactly the store's 404 for a missing record, so "not yours" leaks no existence."""
    return NotFound(f"no record {record_id!r} in {table}", {"table": table, "id": record_id})


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

    Like ``authorize_user``: the caller read and ``require_user``'s 401 check made here.
    """
    caller = await get_caller(request)
    if caller.id is None:
        raise not_authenticated()
    if not caller.is_admin:
        store = await get_store(request)
        order = await store.call("get", {"table": orders.TABLE, "id": order_id})
        if order.get("user_id") != caller.id:
            raise not_found(orders.TABLE, order_id)
    return order_id


UserId = Annotated[str, Depends(authorize_user)]
OrderId = Annotated[str, Depends(authorize_order)]

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


Preconditions = Annotated[WriteConditions, Depends(parse_write_conditions)]
"""If-Match and If-None-Match of a write to one record (``api.conditions``)."""


async def validate_table(
    table: Annotated[
        str,
        Path(
            description="Table name: ^[a-z][a-z0-9_]{0,62}$",
            json_schema_extra={"pattern": f"^{TABLE_NAME.pattern}$"},
            examples=["products"],
        ),
    ],
) -> str:
    """Hostile names (``../x``, ``users;drop``, 10 KB, unicode) get 400, not a store call."""
    return check_table_name(table, "table")


def check_table_name(name: str, param: str) -> str:
    if not TABLE_NAME.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ApiError(
            400,
            "INVALID_TABLE_NAME",
            f"invalid table name {shown!r}: use ^[a-z][a-z0-9_]{{0,62}}$",
            [{"field": param, "message": "must match ^[a-z][a-z0-9_]{0,62}$"}],
        )
    return name


async def validate_left(
    left: Annotated[str, Path(description="Left table", examples=["users"])],
) -> str:
    return check_table_name(left, "left")


async def validate_right(
    right: Annotated[str, Path(description="Right table", examples=["orders"])],
) -> str:
    return check_table_name(right, "right")


TableName = Annotated[str, Depends(validate_table)]
LeftTable = Annotated[str, Depends(validate_left)]
RightTable = Annotated[str, Depends(validate_right)]


async def parse_page(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="Items per page, 1 to 100")] = 20,
) -> Page:
    return Page(page, per_page)


PageParams = Annotated[Page, Depends(parse_page)]


async def parse_orders_embed(
    embed: Annotated[
        Literal["orders"] | None, Query(description="`orders`: embed a page of their orders")
    ] = None,
    orders_page: Annotated[int, Query(ge=1, le=1_000_000, description="Page of orders")] = 1,
    orders_per_page: Annotated[int, Query(ge=1, le=100, description="Orders per page")] = 20,
) -> Page | None:
    """The page of a user's orders to embed (``embed=orders``), else None. One dependency for
    ``GET /users/{user_id}`` and ``GET /users/me``: the same parameters, the same answers."""
    return Page(orders_page, orders_per_page) if embed is not None else None


OrdersEmbed = Annotated[Page | None, Depends(parse_orders_embed)]
SortParam = Annotated[
    str | None,
    Query(description="`field:asc|desc[,field:dir]`", examples=["created_at:desc"]),
]
CreatedAfter = Annotated[
    str | None,
    Query(description="ISO date or datetime (UTC if no offset)", examples=["2024-01-01"]),
]
CreatedBefore = Annotated[str | None, Query(description="ISO date or datetime (UTC if no offset)")]


def _list_query(
    request: Request,
    page: Page,
    sort: str | None,
    after: str | None,
    before: str | None,
    fields: Fields | None,
    reserved: frozenset[str] = RESERVED,
) -> ListQuery:
    params = request.query_params.multi_items()
    return build_list_query(params, page, sort, after, before, fields, reserved)


FILTERING: dict[Callable[..., Any], Fields | None] = {}
"""The list-query dependencies and their filterable fields (``None``: any field); the
filters are read from the query string as a whole, so ``api.openapi`` describes them."""


def typed_list_query(
    fields: Fields, reserved: frozenset[str] = RESERVED
) -> Callable[..., Awaitable[ListQuery]]:
    """The list-query dependency of a typed resource whose filterable fields are ``fields``
    (``reserved``: its parameters that are not filters)."""

    async def parse(
        request: Request,
        page: PageParams,
        sort: SortParam = None,
        created_after: CreatedAfter = None,
        created_before: CreatedBefore = None,
    ) -> ListQuery:
        return _list_query(request, page, sort, created_after, created_before, fields, reserved)

    FILTERING[parse] = fields
    return parse


parse_user_list_query = typed_list_query(users.FIELDS)
parse_order_list_query = typed_list_query(orders.FIELDS, EXPANDABLE)  # its routes take expand


async def parse_data_list_query(
    request: Request,
    table: TableName,
    page: PageParams,
    sort: SortParam = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> ListQuery:
    fields = typed_tables.fields_of(table)
    return _list_query(request, page, sort, created_after, created_before, fields)


async def parse_join_query(
    request: Request,
    left: LeftTable,
    page: PageParams,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> ListQuery:
    """Filters apply to the left table; a join has no sort (the left table's order)."""
    if "sort" in request.query_params:
        raise bad_query("sort", "a join is returned in the left table's order; sort is unsupported")
    fields = typed_tables.fields_of(left)
    return _list_query(request, page, None, created_after, created_before, fields)


FILTERING[parse_data_list_query] = FILTERING[parse_join_query] = None
UserListQuery = Annotated[ListQuery, Depends(parse_user_list_query)]
OrderListQuery = Annotated[ListQuery, Depends(parse_order_list_query)]
DataListQuery = Annotated[ListQuery, Depends(parse_data_list_query)]
JoinListQuery = Annotated[ListQuery, Depends(parse_join_query)]


async def validate_key(
    key: Annotated[str, Path(description="Join field name", examples=["user_id"])],
) -> str:
    if not FIELD_NAME.fullmatch(key):
        raise bad_query("key", "join key must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    return key


JoinKey = Annotated[str, Depends(validate_key)]
