"""Users: registration, reads, partial updates, deletion, and a user's orders."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import (
    AdminUser,
    Caller,
    CurrentUser,
    IfMatch,
    OrderListQuery,
    StoreDep,
    UserId,
    UserListQuery,
)
from api.errors import ApiError
from api.responses import list_response, no_content, record_response
from api.schemas.envelope import Envelope, ListEnvelope, error_responses
from api.schemas.orders import OrderPublic
from api.schemas.users import UserCreate, UserPublic, UserUpdate
from api.services import orders as order_service
from api.services import users as user_service

router = APIRouter(prefix="/users", tags=["users"])


@router.post(
    "",
    status_code=201,
    response_model=Envelope[UserPublic],
    responses=error_responses(401, 403, 409, 413, 415, 422),
    summary="Create a user",
)
async def create_user(
    request: Request, payload: UserCreate, store: StoreDep, caller: Caller
) -> Response:
    """Register (open: role `user`); the email must be unique, case-insensitively (409).

    Only an admin may create a user with another role (403 otherwise).
    """
    if payload.role not in (None, "user") and not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "Only an admin may set a role")
    user = await user_service.create_user(store, payload)
    location = request.app.url_path_for("read_user", user_id=user["id"])
    return record_response(request, user, status_code=201, location=location)


@router.get(
    "",
    response_model=ListEnvelope[UserPublic],
    responses=error_responses(400, 401, 403, 422),
    summary="List users",
)
async def list_users(
    request: Request, query: UserListQuery, store: StoreDep, admin: AdminUser
) -> Response:
    """List users (admin) with pagination, sorting and filters (email, full_name, age, role...)."""
    items, total = await user_service.list_users(store, query)
    return list_response(request, items, total, query.page)


@router.get(
    "/me",
    response_model=Envelope[UserPublic],
    responses={304: {"description": "Not modified (If-None-Match)"}, **error_responses(401)},
    summary="Read yourself",
)
async def read_me(request: Request, caller: CurrentUser, store: StoreDep) -> Response:
    """The user the access token belongs to."""
    assert caller.id is not None
    return record_response(request, await user_service.read_user(store, caller.id))


@router.get(
    "/{user_id}",
    response_model=Envelope[UserPublic],
    responses={
        304: {"description": "Not modified (If-None-Match)"},
        **error_responses(401, 404),
    },
    summary="Read a user",
)
async def read_user(request: Request, user_id: UserId, store: StoreDep) -> Response:
    """Read yourself (any user by id for an admin); the weak ETag is the record's version."""
    return record_response(request, await user_service.read_user(store, user_id))


@router.patch(
    "/{user_id}",
    response_model=Envelope[UserPublic],
    responses=error_responses(401, 403, 404, 409, 412, 413, 415, 422),
    summary="Update a user",
)
async def update_user(
    request: Request,
    user_id: UserId,
    payload: UserUpdate,
    store: StoreDep,
    if_match: IfMatch,
    caller: CurrentUser,
) -> Response:
    """Change the fields sent; with If-Match the write happens only at that version (412).

    Your own password needs `current_password` (403 if wrong); a role change needs an admin.
    A new password or role ends all of that user's sessions.
    """
    await _check_sensitive_changes(store, caller, user_id, payload)
    user = await user_service.update_user(store, user_id, payload, if_match)
    return record_response(request, user)


@router.delete(
    "/{user_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 404, 409, 412),
    summary="Delete a user",
)
async def delete_user(
    user_id: UserId,
    store: StoreDep,
    if_match: IfMatch,
    cascade: Annotated[bool, Query(description="Also delete the user's orders")] = False,
) -> Response:
    """Delete a user (yourself, or anyone as admin); 409 if the user has orders, unless
    cascade=true deletes them too. Their sessions end."""
    await user_service.delete_user(store, user_id, if_match, cascade)
    return no_content()


@router.get(
    "/{user_id}/orders",
    response_model=ListEnvelope[OrderPublic],
    responses=error_responses(400, 401, 404, 422),
    summary="List a user's orders",
)
async def list_user_orders(
    request: Request, user_id: UserId, query: OrderListQuery, store: StoreDep
) -> Response:
    """The user's orders, paginated, through the store's user_id index."""
    items, total = await order_service.list_user_orders(store, user_id, query)
    return list_response(request, items, total, query.page)


async def _check_sensitive_changes(
    store: StoreDep, caller: CurrentUser, user_id: str, payload: UserUpdate
) -> None:
    if "role" in payload.model_fields_set and not caller.is_admin:
        raise ApiError(403, "FORBIDDEN", "Only an admin may change a role")
    if "password" in payload.model_fields_set and caller.id == user_id:
        if payload.current_password is None:
            raise ApiError(
                422,
                "VALIDATION_ERROR",
                "Request validation failed",
                [{"field": "body.current_password", "message": "required to change your password"}],
            )
        if not await user_service.password_matches(store, user_id, payload.current_password):
            raise ApiError(403, "WRONG_PASSWORD", "current_password is not your password")
