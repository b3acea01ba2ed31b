"""Real answers checked against the OpenAPI document the stack serves."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema

API = "/api/v1"
# The headers of ours a client may read (others are HTTP's own: Content-Type, Vary, ...).
OUR_HEADERS = {
    "etag",
    "location",
    "last-modified",
    "content-range",
    "retry-after",
    "www-authenticate",
    "x-request-id",
    "x-rate-limit-limit",
    "x-rate-limit-remaining",
    "x-rate-limit-reset",
}


def assert_documented(
    spec: dict[str, Any], response: httpx.Response, method: str, path: str
) -> None:
    """``response`` to ``method path`` (the path as the document writes it) is declared."""
    declared = spec["paths"][API + path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in declared, f"{method} {path}: {status} is not in {sorted(declared)}"
    documented = {name.lower() for name in declared[status].get("headers", {})}
    sent = OUR_HEADERS & set(response.headers.keys())
    assert sent <= documented, f"{method} {path} {status}: {sorted(sent - documented)} undeclared"
    content = declared[status].get("content")
    if content is None:
        assert not response.content, f"{method} {path}: {status} documents no body"
        return
    # The schemas' $refs point into the document's components: validate with them at hand.
    schema = {**content["application/json"]["schema"], "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(response.json())
