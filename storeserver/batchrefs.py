"""References between the operations of one ``batch``: ``{"$ref": "<i>.<dotted path>"}``.

In an op's ``id``, ``record`` or ``changes``, a map whose only key is ``"$ref"`` stands for a
value of the result of op ``i`` (an earlier one), e.g. ``{"$ref": "0.id"}`` for the id the
first insert generated. A reference that names nothing is ``BAD_REQUEST``. A batch with
``refs: false`` resolves nothing: its maps are data, stored as they are (a CSV import).
"""

from __future__ import annotations

from typing import Any

from storeserver.arguments import quoted
from storeserver.errors import BadRequest

REF_ARGS = ("id", "record", "changes")
MAX_DEPTH = 32


def resolve_refs(value: Any, results: list[Any], depth: int = 0) -> Any:
    """``value`` with every ``{"$ref": "<i>.<dotted path>"}`` replaced by that value of the
    result of batch op ``i`` (an earlier one); ``BadRequest`` for a reference that names
    nothing. Maps and lists are copied only where a reference was replaced."""
    if type(value) is dict:
        if len(value) == 1 and "$ref" in value:
            return _referenced(value["$ref"], results)
        if depth >= MAX_DEPTH:
            return value
        out = {k: resolve_refs(v, results, depth + 1) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if type(value) is list and depth < MAX_DEPTH:
        items = [resolve_refs(v, results, depth + 1) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _referenced(ref: Any, results: list[Any]) -> Any:
    index, _, path = ref.partition(".") if type(ref) is str else ("", "", "")
    if not index.isdigit() or int(index) >= len(results) or not path:
        raise BadRequest(
            f"$ref {quoted(ref)} must be '<index of an earlier op>.<field path>'", {"arg": "$ref"}
        )
    value: Any = results[int(index)]
    for part in path.split("."):
        if type(value) is not dict or part not in value:
            raise BadRequest(f"$ref {quoted(ref)} names nothing in that result", {"arg": "$ref"})
        value = value[part]
    return value
