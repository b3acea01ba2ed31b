"""JSON Schema validation of a table's records (``set_schema``), with the jsonschema library.

Draft 2020-12. The validated instance is the record without the store-owned fields (``id``,
``created_at``, ``updated_at``, ``version``), so a schema with ``additionalProperties: false``
describes only what clients write. ``Decimal`` values are numbers (and integers when
integral). ``multipleOf`` is exact in decimal, a float counting as its shortest text (``19.99``
is a multiple of ``0.01``, though not in binary floating point). References to other documents
(``$ref`` to a URL) are not fetched: only references inside the schema resolve.

Validation runs in the store's single thread, so no keyword may take more than linear time in
the record, whatever the schema:

- ``pattern``, ``patternProperties`` (and so ``propertyNames`` patterns, and the matching of
  ``patternProperties`` by ``additionalProperties`` and ``unevaluatedProperties``) run on RE2, which
  never backtracks (``^(a+)+$`` cannot stall the store). A pattern RE2 cannot compile
  (backreferences, lookaround) is refused by ``set_schema``, not at the first write. As in
  ECMA-262 (the dialect JSON Schema names), RE2's ``\\d`` and ``\\w`` are ASCII and ``$``
  is the end of the text (Python's ``re`` differs on all three).
- ``uniqueItems`` compares hashable keys (``query.index_key``) instead of jsonschema's
  pairwise fallback, which is quadratic for arrays of maps. Same equality: ``1 == 1.0`` but
  ``true != 1``; map key order does not matter, list order does.
- A schema nested deeper than ``MAX_SCHEMA_DEPTH`` maps and lists is refused: checking it
  would exhaust Python's recursion limit.
- A Decimal in a schema has at most ``records.MAX_DECIMAL_DIGITS`` digits, as a stored one
  does: ``multipleOf`` turns both into ints, quadratic in their digits. A value with more
  (kept from before the store bounded them) fails ``multipleOf`` unchecked, with that reason.
- Every ``$ref`` (and ``$dynamicRef``) a record can reach must resolve to a schema, and no
  chain of them may loop back to a subschema without stepping into a part of the record
  (``{"$defs": {"x": {"$ref": "#/$defs/x"}}}``): checking a record that reaches such a loop
  recurses until Python's limit, so every write would fail. A loop through ``properties``,
  ``items``... (a tree) is fine: it ends with the record.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jsonschema._utils
import re2
import structlog
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.exceptions import SchemaError
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from storeserver.errors import BadRequest, ValidationFailed
from storeserver.query import index_key
from storeserver.records import MAX_DECIMAL_DIGITS, META_FIELDS, decimal_problem

log = structlog.get_logger("storeserver.schemas")

MAX_ERRORS = 10
"""Errors reported for one record."""
MAX_SCHEMA_DEPTH = 64
"""Maps and lists nested in a schema document. jsonschema's checks recurse several frames per
level (a chain of ~125 ``not`` exhausts the default recursion limit); 64 leaves room for a
record's 32 levels described by ``properties`` (2 levels each)."""

_BASE = Draft202012Validator.TYPE_CHECKER


def _is_number(checker: Any, instance: Any) -> bool:
    return type(instance) is Decimal or _BASE.is_type(instance, "number")


def _is_integer(checker: Any, instance: Any) -> bool:
    if type(instance) is Decimal:
        return instance.is_finite() and instance == instance.to_integral_value()
    return _BASE.is_type(instance, "integer")


def _decimal(number: int | float | Decimal) -> Decimal:
    # A float's repr is its shortest round-tripping text, the one the client wrote: 19.99,
    # not the binary 19.989999999999998436805981327779591083526611328125.
    return Decimal(repr(number)) if type(number) is float else Decimal(number)


def _is_multiple(value: Decimal, divisor: Decimal) -> bool | None:
    """Whether ``value / divisor`` is an integer, exactly. With ``value = a·10^m`` and
    ``divisor = b·10^n`` (integers ``a``, ``b``) no power of ten is ever built, so exponents
    such as ``1e308`` and ``1e-308`` (or a Decimal's ``1e999999``) cost a few multiplications:
    a Decimal remainder would need as many digits of precision as the quotient has. ``None``
    (not checked) past ``MAX_DECIMAL_DIGITS`` digits: ``int()`` of one is quadratic."""
    if not value.is_finite() or not divisor.is_finite() or not divisor:
        return False
    if not value:
        return True
    _, a_digits, m = value.as_tuple()
    _, b_digits, n = divisor.as_tuple()
    assert isinstance(m, int) and isinstance(n, int)  # finite: not the "n"/"F" markers
    if len(a_digits) > MAX_DECIMAL_DIGITS or len(b_digits) > MAX_DECIMAL_DIGITS:
        return None
    a, b = int(Decimal((0, a_digits, 0))), int(Decimal((0, b_digits, 0)))
    if m >= n:
        return a * pow(10, m - n, b) % b == 0
    # a must be a multiple of b·10^(n-m), which exceeds a once n-m reaches a's digit count.
    return n - m < len(a_digits) and a % (b * 10 ** (n - m)) == 0


def _multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Iterator[Any]:
    # Exact in decimal for ints, floats and Decimals alike. jsonschema divides floats in
    # binary, where 19.99 is not a multiple of 0.01.
    if not validator.is_type(instance, "number"):
        return
    multiple = _is_multiple(_decimal(instance), _decimal(divisor))
    if multiple is None:
        yield ValidationError(
            f"multipleOf is not checked on a number of more than {MAX_DECIMAL_DIGITS} digits"
        )
    elif not multiple:
        yield ValidationError(f"{instance!r} is not a multiple of {divisor}")


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the client's mistake, not a log line


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (``re2.error`` if it cannot be): matching is linear time."""
    return re2.compile(pattern, _RE2_OPTIONS)


# The three keywords below mirror jsonschema's ``_keywords`` (``search``, not ``match``).


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, pattern_properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        regex = compile_pattern(pattern)
        for k, v in instance.items():
            if regex.search(k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


class _Re2Search:
    """Stands in for the ``re`` module inside ``jsonschema._utils``, whose only use of it is
    ``re.search`` with ``patternProperties`` patterns, for ``additionalProperties`` and
    ``unevaluatedProperties``: Python's backtracking ``re`` would run ``^(a+)+$`` against a
    long key for minutes on the store's one thread. (A test checks it stays in place.)"""

    @staticmethod
    def search(pattern: str, string: str) -> Any:
        return compile_pattern(pattern).search(string)


jsonschema._utils.re = _Re2Search


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for position, item in enumerate(instance):
        key = index_key(item)
        if key in seen:
            # Not jsonschema's message: that one repeats the whole (maybe huge) array.
            yield ValidationError(
                f"has non-unique elements (item {position} repeats an earlier one)"
            )
            return
        seen.add(key)


RecordValidator = validators.extend(
    Draft202012Validator,
    validators={
        "multipleOf": _multiple_of,
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "uniqueItems": _unique_items,
    },
    type_checker=_BASE.redefine_many({"number": _is_number, "integer": _is_integer}),
)


def _is_re2_pattern(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


# Checking a schema checks its patterns (the meta-schema's ``format: regex``) with RE2, the
# engine that will run them; the other formats as jsonschema does.
_SCHEMA_FORMATS = FormatChecker(formats=())
_SCHEMA_FORMATS.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
_SCHEMA_FORMATS.checks("regex", raises=re2.error)(_is_re2_pattern)


def _depth(document: Any) -> int:
    """How deep maps and lists nest in ``document`` (iterative: a deep one cannot recurse),
    counted up to one past ``MAX_SCHEMA_DEPTH``."""
    deepest = 0
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            break
        children = node.values() if type(node) is dict else node
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return deepest


def _decimal_problem(document: Any) -> tuple[list[Any], str] | None:
    """The first Decimal of ``document`` that no stored value or filter could be, and why."""
    stack: list[tuple[Any, list[Any]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        if type(node) is dict:
            stack.extend((v, [*path, k]) for k, v in node.items())
        elif type(node) is list:
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
        elif type(node) is Decimal and (problem := decimal_problem(node, stored=False)):
            return path, problem
    return None


def _problem(exc: SchemaError) -> str:
    if exc.validator == "format" and exc.validator_value == "regex":
        reason = exc.cause.args[0] if exc.cause is not None and exc.cause.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return (
            f"pattern {exc.instance!r} is not a regular expression RE2 can run ({reason});"
            " patterns run on RE2: no backreferences or lookaround"
        )
    return exc.message


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


def _applied(schema: dict[str, Any], resolver: Any, path: list[Any]) -> list[Edge]:
    """The map subschemas ``schema`` applies, resolved as jsonschema resolves them."""
    out: list[Edge] = []
    for keyword, value in schema.items():
        if keyword in _REFERENCES:
            try:
                contents = (resolved := resolver.lookup(value)).contents
            except Exception:  # referencing's Unresolvable, or a pointer's bad list index
                contents = None
            if type(contents) is dict:
                out.append((contents, resolved.resolver, keyword))
            elif type(contents) is not bool:
                raise BadRequest(
                    f"not a valid JSON Schema: {keyword} {str(value)[:200]!r} points to no"
                    " schema inside this one (references to other documents are not fetched)",
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


def _check_references(document: dict[str, Any]) -> None:
    """Refuse a reachable reference that resolves to no schema, or a loop of subschemas each
    applied to the same instance (see the module's docstring). Iterative, linear in the
    subschemas reachable from the root (the meta-schema's too, if it is referenced)."""
    where = _locations(document)
    root = SPECIFICATIONS.resolver_with_root(DRAFT202012.create_resource(document))
    seen = {id(document): document}  # keeps every walked subschema (and so its id) alive
    same: dict[int, list[tuple[dict[str, Any], list[Any]]]] = {}
    todo: list[tuple[dict[str, Any], Any]] = [(document, root)]
    while todo:
        schema, resolver = todo.pop()
        path = where.get(id(schema), [])
        same[id(schema)] = []
        for child, child_resolver, keyword in _applied(schema, resolver, path):
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


_NOT_APPLICABLE = "the schema cannot be applied to this record"


class TableSchema:
    """A checked schema and its compiled validator."""

    __slots__ = ("document", "validator")

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        # An empty registry: a ``$ref`` to another document fails instead of fetching it.
        self.validator = RecordValidator(document, registry=Registry())

    @classmethod
    def parse(cls, document: Any) -> TableSchema:
        if type(document) is not dict:
            raise BadRequest("schema must be a JSON Schema map (or null)", {"arg": "schema"})
        if _depth(document) > MAX_SCHEMA_DEPTH:
            raise BadRequest(
                f"not a valid JSON Schema: nested deeper than {MAX_SCHEMA_DEPTH} levels",
                {"arg": "schema", "path": []},
            )
        if found := _decimal_problem(document):
            path, problem = found
            raise BadRequest(f"not a valid JSON Schema: {problem}", {"arg": "schema", "path": path})
        try:
            RecordValidator.check_schema(document, format_checker=_SCHEMA_FORMATS)
        except SchemaError as exc:
            raise BadRequest(
                f"not a valid JSON Schema: {_problem(exc)}",
                {"arg": "schema", "path": [*exc.absolute_path]},
            ) from None
        except RecursionError:  # a shape the depth cap lets through, however unlikely
            raise BadRequest(
                "not a valid JSON Schema: nested too deeply", {"arg": "schema", "path": []}
            ) from None
        _check_references(document)
        return cls(document)

    def errors(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The record's violations (at most ``MAX_ERRORS``), ``[]`` if it is valid."""
        instance = {k: v for k, v in record.items() if k not in META_FIELDS}
        out = []
        try:
            for error in self.validator.iter_errors(instance):
                out.append({"path": [*error.absolute_path], "message": error.message})
                if len(out) >= MAX_ERRORS:
                    break
        except RecursionError:
            # What ``parse`` cannot foresee: a ``$ref`` chain hundreds long, a loop through
            # ``$dynamicRef``, a loop in a schema attached before loops were refused.
            out.append({"path": [], "message": _NOT_APPLICABLE + ": it nests too deeply"})
        except Exception:  # never crash, never show Python's text: the log has it
            log.exception("schema_not_applicable")
            out.append({"path": [], "message": _NOT_APPLICABLE})
        return out

    def check(self, record: dict[str, Any], table: str) -> None:
        errors = self.errors(record)
        if errors:
            raise ValidationFailed(
                f"the record does not match the schema of {table}: {errors[0]['message']}",
                {"errors": errors, "table": table},
            )
