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
    # ASCII digits, a few: str.isdigit also takes "²" (int() refuses it: INTERNAL) and U+0661
    # (int() reads 1), and int() refuses past 4,300 digits (QA).
    number = index.isascii() and index.isdigit() and len(index) <= 9
    if not number or int(index) >= len(results) or not path:
        raise BadRequest(
            f"$ref {quoted(ref)} must be '<index of an earlier op>.<field path>'", {"arg": "$ref"}
        )
    value: Any = results[int(index)]
    for part in path.split("."):
        if type(value) is not dict or part not in value:
            raise BadRequest(f"$ref {quoted(ref)} names nothing in that result", {"arg": "$ref"})
        value = value[part]
    return value


def encoded_floor(value: Any) -> int:
    """A lower bound of the length of ``value`` encoded, in one walk over its nodes and no
    bytes built: a string or bytes its length, every other node one byte. A result copied
    from earlier ones by reference (or a whole record a patch returns) shares their objects,
    so building it costs nothing, but encoding it costs its full size."""
    size = 0
    stack = [value]
    while stack:
        node = stack.pop()
        t = type(node)
        if t is str or t is bytes:
            size += len(node)  # a str's characters: at most its UTF-8 bytes
        elif t is dict:
            size += 1
            stack.extend(node.keys())
            stack.extend(node.values())
        elif t is list:
            size += 1
            stack.extend(node)
        else:
            size += 1
    return size
