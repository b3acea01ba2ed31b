"""The ``$ref`` check of a schema document: every reference resolves, and none loops.

``check_references`` walks the subschemas a record can reach from the root, through the
applicator keywords and ``$ref``/``$dynamicRef`` resolved as jsonschema resolves them, and
refuses a reference that points to no schema inside the document, or a chain of subschemas
applied to the same value that loops back (why, in ``schemas``). Kept apart from ``schemas``:
the walk (applicator keywords by the shape of their value, resolution, the search for a
loop) is an algorithm of its own, which only ``TableSchema.parse`` calls.
"""

from __future__ import annotations

from typing import Any

from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing.jsonschema import DRAFT202012

from storeserver.errors import BadRequest

# Applicator keywords by the shape of their value. Those in ``_SAME_INSTANCE`` apply their
# subschemas to the instance itself; the others to a part of it (a property, an item, a key).
_SCHEMA_VALUES = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "additionalProperties",
        "propertyNames",
        "items",
        "contains",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SAME_INSTANCE = frozenset(
    {"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas"}
)
_REFERENCES = ("$ref", "$dynamicRef")

Edge = tuple[dict[str, Any], Any, str]  # a subschema, its resolver, the keyword


def _subschemas(document: dict[str, Any]) -> set[int]:
    """The maps of ``document`` (by identity) that are subschemas: the root and what the
    applicator keywords (and ``$defs``) hold, as ``referencing`` finds them, not a map of
    subschemas (``properties``) nor data (a ``const``)."""
    found = {id(document)}
    stack = [document]
    while stack:
        for child in DRAFT202012.subresources_of(stack.pop()):
            if type(child) is dict and id(child) not in found:
                found.add(id(child))
                stack.append(child)
    return found


def _applied(schema: dict[str, Any], resolver: Any, path: list[Any], is_schema: Any) -> list[Edge]:
    """The map subschemas ``schema`` applies, resolved as jsonschema resolves them."""
    out: list[Edge] = []
    for keyword, value in schema.items():
        if keyword in _REFERENCES:
            try:
                contents = (resolved := resolver.lookup(value)).contents
            except Exception:  # referencing's Unresolvable, or a pointer's bad list index
                contents = None
            # A map of this document that is no subschema (``#/properties``, a ``const``) was
            # applied as one at every write reaching it, and failed (QA); one of another
            # document is a meta-schema's, the only others the resolver knows.
            if type(contents) is dict and is_schema(contents):
                out.append((contents, resolved.resolver, keyword))
            elif type(contents) is not bool:
                raise BadRequest(
                    f"not a valid JSON Schema: {keyword} {str(value)[:200]!r} points to no"
                    " schema inside this one (a subschema, not a map of them nor a const;"
                    " references to other documents are not fetched)",
                    {"arg": "schema", "path": [*path, keyword]},
                )
            continue
        if keyword in _SCHEMA_VALUES:
            children = [value]
        elif keyword in _SCHEMA_LISTS:  # (checked shapes, unless a $ref points into data)
            children = value if type(value) is list else []
        elif keyword in _SCHEMA_MAPS:
            children = [*value.values()] if type(value) is dict else []
        else:
            continue
        for child in children:
            if type(child) is dict:
                resource = DRAFT202012.create_resource(child)
                out.append((child, resolver.in_subresource(resource), keyword))
    return out


def _locations(document: dict[str, Any]) -> dict[int, list[Any]]:
    """Where each map sits in ``document`` (by identity), for error paths."""
    where: dict[int, list[Any]] = {}
    stack: list[tuple[Any, list[Any]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        if type(node) is dict:
            where[id(node)] = path
            stack.extend((v, [*path, k]) for k, v in node.items())
        elif type(node) is list:
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
    return where


def check_references(document: dict[str, Any]) -> None:
    """Refuse a reachable reference that resolves to no schema, or a loop of subschemas each
    applied to the same instance (see ``schemas``' docstring). Iterative, linear in the
    subschemas reachable from the root (the meta-schema's too, if it is referenced)."""
    where = _locations(document)
    subschemas = _subschemas(document)

    def is_schema(contents: dict[str, Any]) -> bool:
        return id(contents) in subschemas or id(contents) not in where

    root = SPECIFICATIONS.resolver_with_root(DRAFT202012.create_resource(document))
    seen = {id(document): document}  # keeps every walked subschema (and so its id) alive
    same: dict[int, list[tuple[dict[str, Any], list[Any]]]] = {}
    todo: list[tuple[dict[str, Any], Any]] = [(document, root)]
    while todo:
        schema, resolver = todo.pop()
        path = where.get(id(schema), [])
        same[id(schema)] = []
        for child, child_resolver, keyword in _applied(schema, resolver, path, is_schema):
            if keyword in _SAME_INSTANCE or keyword in _REFERENCES:
                # A lexical child has its own place; a reference is named by its keyword.
                at = [*path, keyword] if keyword in _REFERENCES else where.get(id(child), path)
                same[id(schema)].append((child, at))
            if id(child) not in seen:
                seen[id(child)] = child
                todo.append((child, child_resolver))
    # A depth-first walk of the same-instance edges: an edge back to a subschema still on
    # the walk's stack closes a loop.
    done: set[int] = set()
    for start in same:
        if start in done:
            continue
        on_stack = {start}
        stack = [(start, iter(same[start]))]
        while stack:
            node, edges = stack[-1]
            for child, at in edges:
                if id(child) in on_stack:
                    raise BadRequest(
                        "not a valid JSON Schema: the schema's $ref chain loops (it leads back"
                        " to the same subschema for the same value: checking a record would"
                        " never end)",
                        {"arg": "schema", "path": at},
                    )
                if id(child) not in done:
                    on_stack.add(id(child))
                    stack.append((id(child), iter(same[id(child)])))
                    break
            else:
                stack.pop()
                on_stack.discard(node)
                done.add(node)
