"""Users: registration, reads, partial updates, deletion, and a user's orders."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import PlainValidator

from api.auth.credentials import LoginAttempt, count_password_check, refund_username_attempt
from api.auth.principals import Principal
from api.conditions import WRITE_PRECONDITIONS
from api.deps import (
    AdminUser,
    Caller,
    CurrentUser,
    OrderListQuery,
    OrdersEmbed,
    Preconditions,
    StoreDep,
    UserId,
    UserListQuery,
    embeds_only,
)
from api.errors import ApiError
from api.etags import list_etag
from api.http_metrics import MeteredRoute
from api.queries import Page
from api.ratelimit import client_ip, counted_address
from api.responses import (
    DATA_CACHE_CONTROL,
    json_response,
    list_response,
    no_content,
    read_preconditions,
    record_response,
)
from api.routes.auth import limit_attempt, login_limiter, refused_attempt
from api.schemas.envelope import (
    CREATED,
    NOT_MODIFIED,
    QUERY_MATCHED,
    TAGGED,
    Envelope,
    ListEnvelope,
    error_responses,
    projected_list,
)
from api.schemas.query import OrderWithUser, QueryBody, UserEnvelope
from api.schemas.users import UserCreate, UserPublic, UserUpdate
from api.services import orders as order_service
from api.services import record_queries
from api.services import users as user_service
from api.services.typed_tables import validate_body
from api.services.versions import accepted_versions
from api.store import Store

router = APIRouter(route_class=MeteredRoute, prefix="/users", tags=["users"])
UPDATE_REFUSALS = {
    403: "A role change by a user, or a wrong `current_password` (`WRONG_PASSWORD`)",
    409: "The email is taken (`ALREADY_EXISTS`), the last admin (`LAST_ADMIN`), or your own"
    " email or password changed by another request after `current_password` was checked"
    " (`CONFLICT`; nothing written)",
}
# A PATCH body as sent (the document shows it as a UserUpdate): the route validates it once it
# has compared the email with the stored one (``_validated_update``).
SentUserUpdate = Annotated[
    object, Body(), PlainValidator(lambda sent: sent, json_schema_input_type=UserUpdate)
]


@router.post(
    "",
    status_code=201,
    response_model=Envelope[UserPublic],
    responses={**CREATED, **error_responses(401, 403, 409, 413, 415, 422, 429, 507)},
    summary="Create a user",
)
async def create_user(
    request: Request, payload: UserCreate, store: StoreDep, caller: Caller
) -> Response:
    """Register (open: role `user`); the email must be unique, case-insensitively (409).

    Only an admin may create a user with another role (403 otherwise). Registrations other
    than an admin's are limited per client address like logins (AUTH_RATE_LIMIT; 429).
    """
    if payload.role not in (None, "user") and not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "Only an admin may set a role")
    if not caller.is_admin:
        # Each registration hashes a password (bcrypt: a quarter second of a core), as a login
        # checks one: as many a minute per client address (AUTH_RATE_LIMIT), token or not. The
        # general limit follows a token's user, so each account held would add its own.
        address = counted_address(client_ip(request.scope))
        await limit_attempt(request, store, "register", address, "registrations")
    user = await user_service.create_user(store, payload)
    location = request.app.url_path_for("read_user", user_id=user["id"])
    return record_response(request, user, status_code=201, location=location)


@router.get(
    "",
    response_model=ListEnvelope[UserPublic],
    responses={**NOT_MODIFIED, **error_responses(400, 401, 403, 422, 507)},
    summary="List users",
)
async def list_users(
    request: Request, admin: AdminUser, query: UserListQuery, store: StoreDep
) -> Response:
    """List users (admin) with pagination, sorting and filters (email, full_name, age, role...)."""
    # ``admin`` first: dependencies run in order, so a caller without a token gets the 401
    # before any word about the query parameters.
    items, total = await user_service.list_users(store, query)
    return list_response(request, items, total, query.page)


READ_USER_RESPONSES = {**NOT_MODIFIED, **error_responses(400, 401, 404)}


@router.get(
    "/me",
    response_model=UserEnvelope,
    responses=READ_USER_RESPONSES,
    summary="Read yourself",
)
async def read_me(
    request: Request,
    caller: CurrentUser,
    store: StoreDep,
    orders: OrdersEmbed,
    _embeds: Annotated[None, embeds_only("embed")] = None,
) -> Response:
    """The user the access token belongs to: `GET /users/{user_id}` with your own id, the
    same parameters (`embed=orders`, `orders_page`, `orders_per_page`) and answers."""
    assert caller.id is not None
    return await user_answer(request, store, caller.id, orders)


@router.post(
    "/query",
    response_model=projected_list(UserPublic),
    responses={
        **TAGGED,
        **error_responses(400, 401, 403, 413, 415, 422, 507, described=QUERY_MATCHED),
    },
    summary="Query users with a filter tree",
)
async def query_users(
    request: Request, body: QueryBody, store: StoreDep, admin: AdminUser
) -> Response:
    """Users (admin) matching a filter tree, as in `POST /data/{table}/query`."""
    query = record_queries.TreeQuery.parse(body, user_service.FIELDS)
    items, versioned, total = await record_queries.query_records(store, user_service.TABLE, query)
    # The shape too: two projections of one page had one tag (QA: If-None-Match of one
    # answered the other 412 "nothing new").
    return list_response(request, items, total, query.page, versioned, query.shape)


@router.get(
    "/{user_id}",
    response_model=UserEnvelope,
    responses=READ_USER_RESPONSES,
    summary="Read a user",
)
async def read_user(
    request: Request,
    user_id: UserId,
    store: StoreDep,
    orders: OrdersEmbed,
    _embeds: Annotated[None, embeds_only("embed")] = None,
) -> Response:
    """Read yourself (any user by id for an admin); the weak ETag is the record's version.

    `embed=orders` adds one page of the user's orders under `orders` (`orders_page`,
    `orders_per_page`; the page is described in `meta.orders`).
    """
    return await user_answer(request, store, user_id, orders)


async def user_answer(
    request: Request, store: Store, user_id: str, orders: Page | None
) -> Response:
    """A user, with a page of their orders when ``orders`` says which one."""
    if orders is None:
        return record_response(request, await user_service.read_user(store, user_id))
    user, found, total = await order_service.user_with_orders(store, user_id, orders)
    # The tag covers the user and the page of orders, so either changing changes it.
    etag = list_etag([user, *found], total, orders.page, orders.per_page)
    headers = {"ETag": etag, "Cache-Control": DATA_CACHE_CONTROL}
    cached = read_preconditions(request, etag, headers)
    if cached is not None:
        return cached
    meta = {"orders": {"page": orders.page, "per_page": orders.per_page, "total": total}}
    body = {"status": "success", "data": {**user, "orders": found}, "meta": meta}
    return json_response(body, 200, headers)


@router.patch(
    "/{user_id}",
    response_model=Envelope[UserPublic],
    responses={
        **TAGGED,
        **error_responses(
            401, 404, 413, 415, 422, 507, described={**WRITE_PRECONDITIONS, **UPDATE_REFUSALS}
        ),
    },
    summary="Update a user",
)
async def update_user(
    request: Request,
    user_id: UserId,
    sent: SentUserUpdate,
    store: StoreDep,
    conditions: Preconditions,
    caller: CurrentUser,
) -> Response:
    """Change the fields sent; with If-Match the write happens only at that version, with
    If-None-Match only at another (412).

    Your own password or email needs `current_password` (403 if wrong; 429 past
    AUTH_RATE_LIMIT checks per session, or five times that per account, right ones not
    counted there, as logins), and is written only if the account is
    unchanged since it was checked (409 `CONFLICT` otherwise: another change came first). The
    email sent again as stored (or normalizing to it: the domain in capitals) is no change, in
    any case: no `current_password`, not written, and not checked again (an address stored
    before a check refused it still saves).
    A role change needs an admin (your own role sent back is no change), and the last admin
    stays one (409 `LAST_ADMIN`). A new password or role ends all of that user's sessions.
    """
    payload = _without_own_role(await _validated_update(store, user_id, sent), caller)
    current_password = _sensitive_change(caller, user_id, payload)
    accepted = await accepted_versions(store, user_service.TABLE, user_id, conditions)
    if current_password is None:
        user = await user_service.update_user(store, user_id, payload, accepted)
        return record_response(request, user)
    attempt = await _count_password_check(request, store, caller, user_id)
    try:
        user = await user_service.update_own_account(
            store, user_id, payload, accepted, current_password
        )
    except Exception as exc:
        # Anything but a wrong password (a store error too: 409 for a taken email, 412, 507)
        # came after the password was found right, and the owner's right one is no guess.
        if not (isinstance(exc, ApiError) and exc.code == "WRONG_PASSWORD"):
            await refund_username_attempt(store, attempt)
        raise
    await refund_username_attempt(store, attempt)  # the owner's own change is no guess
    return record_response(request, user)


@router.delete(
    "/{user_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 404, 409, described=WRITE_PRECONDITIONS),
    summary="Delete a user",
)
async def delete_user(
    user_id: UserId,
    store: StoreDep,
    conditions: Preconditions,
    cascade: Annotated[bool, Query(description="Also delete the user's orders")] = False,
) -> Response:
    """Delete a user (yourself, or anyone as admin); 409 if the user has orders, unless
    cascade=true deletes them too, and for the last admin (`LAST_ADMIN`). Their sessions end."""
    accepted = await accepted_versions(store, user_service.TABLE, user_id, conditions)
    await user_service.delete_user(store, user_id, accepted, cascade)
    return no_content()


@router.get(
    "/{user_id}/orders",
    response_model=ListEnvelope[OrderWithUser],
    responses={**NOT_MODIFIED, **error_responses(400, 401, 404, 422, 507)},
    summary="List a user's orders",
)
async def list_user_orders(
    request: Request,
    user_id: UserId,
    query: OrderListQuery,
    store: StoreDep,
    expand: Annotated[Literal["user"] | None, Query(description="`user`: embed the user")] = None,
) -> Response:
    """The user's orders, paginated, through the store's user_id index."""
    if expand:

        async def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
            items, total = await order_service.list_user_orders(store, user_id, query)
            return await order_service.with_users(store, items), items, total

        embedded, items, total = await order_service.read_consistently(read)
        users = [order["user"] for order in embedded[:1] if order["user"]]
        return list_response(request, embedded, total, query.page, [*items, *users])
    items, total = await order_service.list_user_orders(store, user_id, query)
    return list_response(request, items, total, query.page)


async def _validated_update(store: Store, user_id: str, sent: object) -> UserUpdate:
    """The body as a ``UserUpdate``, without the email if that is the stored one
    (``user_service.sends_stored_email``: no change, so not checked again)."""
    if isinstance(sent, dict):
        sent = await user_service.without_stored_email(store, user_id, sent)
    return validate_body(UserUpdate, sent, user_service.BODY)


def _without_own_role(payload: UserUpdate, caller: Principal) -> UserUpdate:
    """The role a user sends back as it is (a record read whole and written again) is no
    change, as the stored email is: not written, and no 403 (QA: 403 for "role": "user")."""
    if caller.is_admin or "role" not in payload.model_fields_set or payload.role != caller.role:
        return payload
    kept = payload.model_copy()
    kept.model_fields_set.discard("role")
    return kept


def _sensitive_change(caller: CurrentUser, user_id: str, payload: UserUpdate) -> str | None:
    """403 for a role change by a user. For a change of the caller's own password or email
    (what signs in to the account: a stolen access token must not take it over), the
    ``current_password`` that ``update_own_account`` then checks (422 without one); ``None``
    for any other change (an admin's to someone else's account; the email sent as stored is
    no change, and already out of ``payload``). Before the preconditions: a request refused
    whatever they say is refused so with or without them (RFC 9110 §13.2.1; QA)."""
    if "role" in payload.model_fields_set and not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "Only an admin may change a role")
    signs_in = sorted(set(user_service.SIGN_IN_FIELDS) & payload.model_fields_set)
    if not signs_in or caller.id != user_id:
        return None
    if payload.current_password is None:
        message = f"required to change your {' and '.join(signs_in)}"
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            "Request validation failed",
            [{"field": "body.current_password", "message": message}],
        )
    return payload.current_password


async def _count_password_check(
    request: Request, store: Store, caller: CurrentUser, user_id: str
) -> LoginAttempt:
    """The ``current_password`` check's count (taken back if it is right); 429 past
    AUTH_RATE_LIMIT for the session or five times that for the account. After the
    preconditions: a request they refuse is never counted (QA)."""
    # A password guess, counted as a login is (a stolen access token must not try passwords at
    # the general rate, nor spend the account's own attempts on its owner).
    limiter = login_limiter(request)
    attempt = await count_password_check(store, limiter, caller.session_id or user_id, user_id)
    refusal = attempt.refusal()
    if refusal is not None:
        raise refused_attempt(refusal, "password attempts")
    return attempt
