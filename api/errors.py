"""The error envelope and the one set of exception handlers that produce it.

Every error response has the shape
``{"status": "error", "error": {"code", "message", "details": [...]}, "request_id": ...}``.
Store errors are mapped to HTTP statuses here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Message

from api.encoding import dumps
from api.middleware import CLIENT_LEFT, logged_path, request_id_of, response_headers_for
from storeserver import errors as store_errors
from storeserver.throttledlog import ThrottledWarning

# Request id, method and path come from the log context bound by the request middleware.
log = structlog.get_logger("api.errors")


class StreamCutOff(Exception):
    """A streamed answer that cannot be completed (its store cursor is gone): the response has
    started, so the connection closes without its last chunk. Whoever raises it has logged why
    (one warning); ``already_logged`` spares it the 500 handler's line and uvicorn's traceback
    (``api.logs.DropLoggedErrors``)."""

    already_logged = True


class ApiError(Exception):
    """An error the API raises itself (bad query, bad table name, failed precondition)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def bad_query(field: str, message: str) -> ApiError:
    """400 for a query parameter that names an unknown field or operator."""
    return ApiError(400, "BAD_QUERY", message, [{"field": field, "message": message}])


def query_limit(field: str, message: str) -> ApiError:
    """400 for a query string past one of the API's limits (filters, ``in`` values)."""
    return ApiError(400, "LIMIT_EXCEEDED", message, [{"field": field, "message": message}])


def invalid_value(field: str, message: str) -> ApiError:
    """422 for a query value that cannot be read as its field's type."""
    return ApiError(
        422, "VALIDATION_ERROR", "Request validation failed", [{"field": field, "message": message}]
    )


# Store error class → (HTTP status, envelope code). Subclasses not listed fall to 500.
STORE_STATUS: dict[type[store_errors.StoreError], tuple[int, str]] = {
    store_errors.BadRequest: (400, "BAD_REQUEST"),
    store_errors.NotFound: (404, "NOT_FOUND"),
    store_errors.Conflict: (409, "CONFLICT"),
    store_errors.VersionMismatch: (412, "PRECONDITION_FAILED"),
    store_errors.LimitExceeded: (400, "LIMIT_EXCEEDED"),
    store_errors.RecordTooLarge: (413, "RECORD_TOO_LARGE"),
    store_errors.ValidationFailed: (422, "VALIDATION_ERROR"),
    # The caller's session ended while its request ran (the store refused its write): the
    # 401 every revoked token gets, and its message (``deps.invalid_token``).
    store_errors.CredentialRevoked: (401, "INVALID_TOKEN"),
    store_errors.MemoryLimit: (507, "INSUFFICIENT_STORAGE"),
    store_errors.PersistenceError: (503, "PERSISTENCE_ERROR"),  # before its base class
    store_errors.OutcomeUnknown: (503, "OUTCOME_UNKNOWN"),  # before its base class too
    store_errors.StoreUnavailable: (503, "STORE_UNAVAILABLE"),
    store_errors.StoreBusy: (503, "STORE_BUSY"),
    store_errors.StoreTimeout: (504, "STORE_TIMEOUT"),
}
# The 503s that carry Retry-After: the store cannot take the request now, but will.
_RETRY_LATER: dict[type[store_errors.StoreError], tuple[str, str]] = {
    # Before StoreUnavailable, which it is a kind of: the store answered, and "retry shortly"
    # would send an operator after an outage rather than a full disk (QA).
    store_errors.PersistenceError: (
        "PERSISTENCE_ERROR",
        "The store cannot write to its data directory (disk full or an I/O error): writes and"
        " snapshots are refused until it can; reads go on",
    ),
    store_errors.StoreUnavailable: ("STORE_UNAVAILABLE", "The store is unavailable; retry shortly"),
    store_errors.StoreBusy: (
        "STORE_BUSY",
        "The store is busy with long queries or downloads; retry shortly",
    ),
}
CONFLICT_CODES = {
    "unique": "ALREADY_EXISTS",
    "duplicate_id": "ALREADY_EXISTS",
    "foreign_key": "FOREIGN_KEY_VIOLATION",
    "dependants": "HAS_DEPENDANTS",
    "keep": "LAST_ADMIN",  # the only ``keep`` the API declares: users' role = admin
    "busy": "TABLE_BUSY",  # a long command on the table (an index build): retry once it ends
}
INVALID_TOKEN_MESSAGE = "The access token is invalid, expired or revoked"
INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
LAST_ADMIN_MESSAGE = "The last admin cannot be demoted or deleted: make another user admin first"
# Every route whose delete can meet dependants takes ?cascade=true (a transaction's delete
# has its own ``cascade`` field: ``api.services.batches`` writes its message).
_DEPENDANTS_HINT = " (delete them first, or pass ?cascade=true to delete them too)"
# jsonschema's message for a missing property (its error sits on the enclosing object).
_REQUIRED = re.compile(r"'([^']{1,200})' is a required property")
# Only these keys of a store error's details reach the client.
SAFE_DETAIL_KEYS = ("field", "reason", "table", "id", "current", "arg", "max")
STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the error envelope; errors are never cached."""
    body = {
        "status": "error",
        "error": {"code": code, "message": message, "details": details or []},
        "request_id": request_id_of(request.scope),
    }
    all_headers = {"Cache-Control": "no-store", **(headers or {})}
    if code == "INVALID_TOKEN":  # a route's, a store's refusal, an import's: RFC 6750's challenge
        all_headers.update(INVALID_TOKEN_CHALLENGE)
    return Response(
        dumps(body),
        status_code=status_code,
        headers=all_headers,
        media_type="application/json",
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status_code, exc.code, exc.message, exc.details, exc.headers)


_OUTAGE_WARNINGS: dict[str, ThrottledWarning] = {}


def outage_warning(event: str) -> ThrottledWarning:
    """A request failed by the store's absence or silence: every request fails alike then
    (soak QA: 1,066 lines in a 7 s outage), so at most 10 lines a second are logged, the
    rest counted; the client logs the outage itself (``store_connection_lost``)."""
    warning = _OUTAGE_WARNINGS.get(event)
    if warning is None:
        warning = _OUTAGE_WARNINGS[event] = ThrottledWarning(event, log)
    return warning


_OUTCOME_UNKNOWN = (
    "The connection to the store was lost after this write was sent: it may have been"
    " applied. Read the data before sending it again"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TIMED_OUT = "The store did not answer in time"
_WRITE_TIMED_OUT = (
    "The store did not answer in time: this write may still have been applied. Read the data"
    " before sending it again"
)


async def handle_store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, store_errors.StoreError)
    unknown = request.method not in _SAFE_METHODS and exc.details.get("outcome") == "unknown"
    if unknown and isinstance(exc, store_errors.OutcomeUnknown):
        # Not "retry shortly" and no Retry-After: a client that retried blindly could apply
        # the write twice (QA: 4 of 450 writes cut off by a store crash had been applied).
        # A GET's own store writes (a dump's cursor) change nothing the client asked for.
        outage_warning("outcome_unknown")(detail=exc.message)
        details = [{"reason": "outcome_unknown"}]
        return error_response(request, 503, "OUTCOME_UNKNOWN", _OUTCOME_UNKNOWN, details)
    for cls, (code, message) in _RETRY_LATER.items():
        if isinstance(exc, cls):
            # The client's message may name the socket path: log it, don't send it.
            outage_warning(code.lower())(detail=exc.message)
            retry_after = str(request.app.state.settings.store_retry_after)
            return error_response(request, 503, code, message, headers={"Retry-After": retry_after})
    if isinstance(exc, store_errors.StoreTimeout):
        outage_warning("store_timeout")(detail=exc.message)
        if unknown:
            details = [{"reason": "outcome_unknown"}]
            return error_response(request, 504, "STORE_TIMEOUT", _WRITE_TIMED_OUT, details)
        return error_response(request, 504, "STORE_TIMEOUT", _TIMED_OUT)
    answer = refusal(exc)
    if answer is None:
        log.error("store_error", error=repr(exc))
        return error_response(request, 500, "INTERNAL_ERROR", "Internal server error")
    return error_response(request, *answer)


def refusal(exc: store_errors.StoreError) -> tuple[int, str, str, list[dict[str, Any]]] | None:
    """The status, code, message and details of a store error refusing the request (``None``
    for an outage, which ``handle_store_error`` answers first, or one the API does not know:
    a bug, a 500). One translation for a route's answer and a job's ``error`` (QA: a job said
    the store's ``CONFLICT`` where its route said ``ALREADY_EXISTS`` with the field)."""
    status_code, code = next(
        (found for cls, found in STORE_STATUS.items() if isinstance(exc, cls)),
        (500, "INTERNAL_ERROR"),
    )
    if status_code in (500, 503, 504):  # unknown, or the store away: not the request's fault
        return None
    if isinstance(exc, store_errors.ValidationFailed):
        return 422, code, exc.message, schema_error_details(exc)
    if isinstance(exc, store_errors.CredentialRevoked):
        return 401, code, INVALID_TOKEN_MESSAGE, []
    detail = {key: exc.details[key] for key in SAFE_DETAIL_KEYS if key in exc.details}
    message = exc.message
    if isinstance(exc, store_errors.Conflict):
        code = CONFLICT_CODES.get(str(detail.get("reason")), code)
        if code == "LAST_ADMIN":
            message = LAST_ADMIN_MESSAGE
        elif code == "HAS_DEPENDANTS":
            message += _DEPENDANTS_HINT
    return status_code, code, message, [detail] if detail else []


def schema_error_details(
    exc: store_errors.StoreError, loc: tuple[str, ...] = ("body", "data")
) -> list[dict[str, Any]]:
    """A table's JSON Schema refused a record: one detail per error, naming the field's path
    (``body.data.meta.color``; ``body.data`` for the record as a whole)."""
    errors = exc.details.get("errors")
    if not isinstance(errors, list):
        return [{"field": ".".join(loc), "message": exc.message}]
    details = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        message = str(error.get("message", "invalid value"))
        details.append({"field": ".".join([*loc, *schema_error_path(error)]), "message": message})
    return details


def schema_error_path(error: dict[str, Any]) -> list[str]:
    """The path in the record of the field a JSON Schema error is about: for a missing one,
    the field itself (jsonschema reports it on the enclosing object)."""
    path = [str(part) for part in error.get("path", [])]
    missing = _REQUIRED.fullmatch(str(error.get("message", "")))
    if missing:
        path.append(missing.group(1))
    return path


# Pydantic names the member of a union an error is about in ``loc`` ("dict[str,any]",
# "list[dict[str,any]]", "function-after[...]"): a schema type, not a field of the body.
_UNION_MEMBER = re.compile(
    r"(?:dict|list|set|tuple|literal|nullable|tagged-union|function-(?:after|before|wrap|plain)"
    r"|json-or-python|lax-or-strict|is-instance|chain|default)\[.*\]",
    re.DOTALL,
)


def field_path(loc: Any) -> str:
    """``body.data.name`` from a pydantic ``loc``, without union member names."""
    return ".".join(
        str(part) for part in loc if not (type(part) is str and _UNION_MEMBER.fullmatch(part))
    )


def validation_detail(error: dict[str, Any]) -> dict[str, str]:
    """One detail of a validation error; never its ``input``, which may be a password."""
    loc, message = tuple(error.get("loc", ())), str(error.get("msg", "invalid value"))
    if error.get("type") == "json_invalid" and len(loc) == 2 and type(loc[1]) is int:
        # FastAPI puts the decoder's character offset in ``loc`` (``body.69``): not a field.
        reason = (error.get("ctx") or {}).get("error")
        message = f"{message} at character {loc[1]}" + (f": {reason}" if reason else "")
        loc = loc[:1]
    return {
        "field": field_path(loc),
        "message": message,
        "type": str(error.get("type", "value_error")),
    }


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        # FastAPI parses a JSON body before any dependency runs (every other validation error
        # comes after them): a caller the route refuses must hear that (401/403/404), not
        # what is wrong with the body. (Imported here: api.deps imports this module.)
        from api.deps import check_access

        try:
            await check_access(request)
        except ApiError as refused:
            return await handle_api_error(request, refused)
        except store_errors.StoreError as failed:  # 404 not yours, or the store is down
            return await handle_store_error(request, failed)
    details = [validation_detail(error) for error in optional_members_dropped(exc.errors())]
    return error_response(request, 422, "VALIDATION_ERROR", "Request validation failed", details)


def optional_members_dropped(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """The errors of an optional field (``X | None``) as one error at the field.

    Pydantic reports every member of a failed union, each under the member's schema name
    (``quantity.constrained-int``: "greater than 0"; ``quantity.none``: "Input should be
    None"). The ``none`` member's error is noise next to the real one, and the name after the
    field is not part of the body: both go, whatever the member's type is called.
    """
    optional = {
        tuple(e["loc"][:-1])
        for e in errors
        if e.get("type") == "none_required" and e.get("loc") and e["loc"][-1] == "none"
    }
    if not optional:
        return list(errors)
    out = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        # Its field: the longest prefix that is an optional field (set lookups: a bulk write's
        # thousand records must not cost a thousand squared comparisons).
        cut = next((k for k in range(len(loc) - 1, 0, -1) if loc[:k] in optional), None)
        if cut is None:
            out.append(error)
        elif loc[cut] != "none":  # a union fails only when every member does
            out.append({**error, "loc": (*loc[:cut], *loc[cut + 1 :])})
    return out


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status_code = exc.status_code
    cause = exc.__cause__
    if status_code == 400 and isinstance(cause, UnicodeDecodeError):
        # FastAPI answers a JSON body that is not UTF-8 with a bare 400; malformed JSON is a
        # 422 (json_invalid) and so is this, as the contract says.
        message = f"the body is not valid UTF-8 (byte {cause.start})"
        problem = {"type": "json_invalid", "loc": ("body",), "msg": message, "input": {}}
        return await handle_validation_error(request, RequestValidationError([problem]))
    if status_code == 400 and isinstance(cause, ClientDisconnect):
        # FastAPI's own read of a JSON body the client abandoned: "error parsing the body".
        return await handle_client_disconnect(request, cause)
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = ""
    code = STATUS_CODES.get(status_code) or phrase.upper().replace(" ", "_") or "HTTP_ERROR"
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if status_code >= 500:
        log.error("http_error", status=status_code, detail=message)
        message = phrase
    headers = dict(exc.headers or {})
    if status_code == 405:
        headers["Allow"] = allowed_methods(request.app, request.url.path) or headers.get(
            "Allow", ""
        )
    return error_response(request, status_code, code, message, headers=headers)


F = TypeVar("F", bound=Callable[..., Any])


def refuses_methods(endpoint: F) -> F:
    """Mark a route that only answers 405 for its methods (``/data/{table}/schema`` keeps them
    from the record routes): ``allowed_methods`` does not count them."""
    setattr(endpoint, "refuses_methods", True)  # noqa: B010 (a marker on a function)
    return endpoint


def deciding_routes(app: Any, path: str) -> dict[str, Any]:
    """Per method, the route (a ``RouteContext``) the router runs for it at ``path``: the
    first, in order, whose path and method match. A ``refuses_methods`` one answers 405."""
    decided: dict[str, Any] = {}
    for route in iter_route_contexts(app.routes):
        if route.methods and route.path and compile_path(route.path)[0].match(path):
            for method in route.methods:
                decided.setdefault(method, route)
    return decided


def route_answers(route: Any) -> bool:
    """Whether a route the router picked runs its endpoint (not a ``refuses_methods`` 405)."""
    return not getattr(route.endpoint, "refuses_methods", False)


def allowed_methods(app: Any, path: str) -> str:
    """Every method some route answers at ``path``. Starlette's 405 lists only the first route
    whose path matched (``PUT /data/t`` said ``Allow: PATCH``, though GET, POST and DELETE are
    there too). The router decides per method (``deciding_routes``), so a method counts only
    when that route is not a ``refuses_methods`` one. Computed per 405, which is rare: a pass
    over the routes."""
    methods = {m for m, route in deciding_routes(app, path).items() if route_answers(route)}
    if "GET" in methods:
        methods.add("HEAD")  # every GET answers HEAD too (``RequestIdMiddleware``)
    return ", ".join(sorted(methods))


async def add_cors_headers(request: Request, response: Response) -> None:
    """What the CORS middleware adds to an answer for this request's ``Origin``, for a 500
    made outside it (QA: an allowed origin's app could not read the 500, its request id
    included). Starlette's own ``send`` decides, as it does for every other answer."""
    cors = getattr(request.app.state, "cors", None)
    if cors is None or "origin" not in request.headers:
        return
    start: Message = {"type": "http.response.start", "status": 500, "headers": []}

    async def keep(message: Message) -> None:
        return None

    await cors.send(start, keep, request.headers)
    for name, value in start["headers"]:
        if name.lower() == b"vary":
            response.headers.add_vary_header(value.decode("latin-1"))
        else:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    """500 without internals; runs outside the middleware, so it adds the id headers itself."""
    if getattr(exc, "already_logged", False):
        return Response(status_code=500)  # never sent: the response had started
    # Named explicitly: this handler runs outside the middleware that binds the log context.
    log.error(
        "unhandled_error",
        request_id=request_id_of(request.scope),
        method=request.method,
        path=logged_path(request.url.path),
        exc_info=exc,
    )
    response = error_response(request, 500, "INTERNAL_ERROR", "Internal server error")
    response.headers.update(response_headers_for(request.scope))
    await add_cors_headers(request, response)
    # Starlette raises the exception again once this is sent, and uvicorn then closes the
    # connection: said here, a keep-alive client does not send its next request into it.
    response.headers["connection"] = "close"
    return response


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away while its body was read (an abandoned upload): nobody is left to
    answer and nothing failed here, so no 500 and no traceback. The 400 is what the access
    line records, as for a body cut short on the routes FastAPI reads the body for, with
    ``error`` ``ClientDisconnected``: the answer went to no one."""
    request.scope[CLIENT_LEFT] = True
    return error_response(
        request, 400, "CLIENT_DISCONNECTED", "The client disconnected before its body ended"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler; routes never build error responses themselves."""
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(store_errors.StoreError, handle_store_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
    app.add_exception_handler(Exception, handle_unexpected_error)
