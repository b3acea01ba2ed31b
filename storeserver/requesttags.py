"""The tags the API adds to a command's arguments: its request id and its acting user.

The client adds them (``client.REQUEST_ID_ARG`` and ``client.ACTOR_ARG``, from what the API sets
per request); the server takes them out before the engine sees the arguments (``take_tags``),
for its slow-command log and the audit, and refuses one long enough to flood either.
"""

from __future__ import annotations

from typing import Any

from .client import ACTOR_ARG, REQUEST_ID_ARG
from .errors import BadRequest

MAX_TAG_CHARS = 128
"""Characters of a ``_request_id``, and of each ``_actor`` field, a command may carry: the
API's ids are no longer (request ids, user ids). Each is copied into log lines, the slow list
and audit entries: a longer one is refused, so that none of them can be made to flood."""


def take_tags(args: dict[str, Any]) -> tuple[Any, Any]:
    """Remove the API's request id (slow-command log, audit) and the acting user (audit) from
    ``args``: the engine never sees them. ``BadRequest`` naming the tag when one is longer than
    ``MAX_TAG_CHARS`` (or the request id is not a string)."""
    request_tag = args.pop(REQUEST_ID_ARG, None)
    actor = args.pop(ACTOR_ARG, None) if ACTOR_ARG in args else None
    if request_tag is not None and (
        type(request_tag) is not str or len(request_tag) > MAX_TAG_CHARS
    ):
        raise BadRequest(
            f"{REQUEST_ID_ARG} must be a string of at most {MAX_TAG_CHARS} characters",
            {"arg": REQUEST_ID_ARG, "max": MAX_TAG_CHARS},
        )
    if type(actor) is dict and any(
        type(value) is str and len(value) > MAX_TAG_CHARS for value in actor.values()
    ):
        raise BadRequest(
            f"{ACTOR_ARG} fields must be at most {MAX_TAG_CHARS} characters",
            {"arg": ACTOR_ARG, "max": MAX_TAG_CHARS},
        )
    return request_tag, actor
