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
  ``patternProperties`` by ``additionalProperties`` and ``unevaluatedProperties``, each pattern
  on its own) run on RE2, which never backtracks (``^(a+)+$`` cannot stall the store). A
  pattern RE2 cannot compile (backreferences, lookaround), or that compiles too large (alone,
  or with the schema's others: ``schemapatterns.PATTERN_MEMORY``, ``SCHEMA_PATTERN_SIZE``), is
  refused by ``set_schema``, not at the first write. As in
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
- Every ``$ref`` (and ``$dynamicRef``) a record can reach must resolve to a subschema (not to
  a map of them, such as ``#/properties``, nor into a ``const``), and no
  chain of them may loop back to a subschema without stepping into a part of the record
  (``{"$defs": {"x": {"$ref": "#/$defs/x"}}}``): checking a record that reaches such a loop
  recurses until Python's limit, so every write would fail. A loop through ``properties``,
  ``items``... (a tree) is fine: it ends with the record.
- A record's check applies a bounded number of keywords (``MAX_STEPS``, ``STEPS_PER_VALUE``):
  a loop through the record may still reach one value along exponentially many paths, and a
  schema whose levels each reach the next twice (no loop) be walked as many ways by the
  ``unevaluated*`` keywords (their walks are charged too: ``schemakeywords._walk_metered``).

The keywords' checks are in ``schemakeywords``, RE2 in ``schemapatterns``, the ``$ref`` walk in
``schemarefs``; this module holds ``TableSchema``: a schema document checked before it is
attached (the checks above), and the violations of a record.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import structlog
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry

from storeserver.errors import BadRequest, LimitExceeded, ValidationFailed
from storeserver.records import META_FIELDS, decimal_problem
from storeserver.schemakeywords import INSTANCE_KEYS, STEPS, CheckTooCostly, RecordValidator
from storeserver.schemapatterns import (
    PATTERN_WORK,
    SCHEMA_FORMATS,
    WORK,
    PatternsTooCostly,
    PatternTooLarge,
    charged_compiles,
)
from storeserver.schemarefs import check_references

log = structlog.get_logger("storeserver.schemas")

MAX_ERRORS = 10
"""Errors reported for one record."""
MAX_MESSAGE_CHARS = 300
MAX_PATH_KEY_CHARS = 100
BASE_STEPS = 40_000
STEPS_PER_VALUE = 100
MAX_STEPS = 1_000_000
"""A record's check applies at most ``BASE_STEPS + STEPS_PER_VALUE`` x its values schema
keywords, and never more than ``MAX_STEPS``; each takes 1-5 µs. Enough for a schema of
``MAX_SCHEMA_VALUES`` values (an ``anyOf`` of thousands of branches) on a small record, for a
hundred keywords on each value of a mid-sized one, and for a simple schema (two keywords a
value) on a record of up to ~500,000 values. More is a schema that reaches one value along
many paths (``allOf`` of ``$ref``s recursing through ``properties``: 2**18 paths held the
store 12 s, QA), or a record too big for its schema to be checked within a few seconds."""
MAX_SCHEMA_DEPTH = 64
"""Maps and lists nested in a schema document. jsonschema's checks recurse several frames per
level (a chain of ~125 ``not`` exhausts the default recursion limit); 64 leaves room for a
record's 32 levels described by ``properties`` (2 levels each)."""


MAX_SCHEMA_VALUES = 20_000
"""Maps, lists and scalars in a schema document. Checking one costs up to ~40 µs a value
(``{"type": [[], [], ...]}``): 100,000 held the loop ~3 s (QA); 20,000 is far above any
hand-written schema (an ``enum`` of a few thousand codes included)."""


def shape(document: Any) -> tuple[int, int]:  # also the API's, before its own check
    """How deep maps and lists nest in ``document`` and how many values it holds (iterative:
    a deep one cannot recurse), counted up to one past ``MAX_SCHEMA_DEPTH`` and
    ``MAX_SCHEMA_VALUES``."""
    deepest = 0
    values = 1
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH or values > MAX_SCHEMA_VALUES:
            break
        children = node.values() if type(node) is dict else node
        values += len(children)
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return deepest, values


def check_schema_size(values: int) -> None:
    """``LIMIT_EXCEEDED`` for a document of more than ``MAX_SCHEMA_VALUES`` values (``shape``)."""
    if values > MAX_SCHEMA_VALUES:
        raise LimitExceeded(
            f"a schema holds at most {MAX_SCHEMA_VALUES} values (maps, lists and scalars)",
            {"arg": "schema", "max": MAX_SCHEMA_VALUES},
        )


_JSON_SCALARS = (str, bool, int, type(None))


def _value_problem(document: Any) -> tuple[list[Any], str] | None:
    """The first part of ``document`` that is no JSON value (a map key that is not a string,
    bytes, a msgpack timestamp, NaN), or a Decimal that no stored value or filter could be,
    and why. msgpack hands the store bytes keys and timestamps that records refuse: a schema
    took them, kept them and ignored a keyword under a bytes key (QA)."""
    stack: list[tuple[Any, list[Any]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        kind = type(node)
        if kind is dict:
            for key in node:
                if type(key) is not str:
                    return path, "map keys must be strings"
            stack.extend((v, [*path, k]) for k, v in node.items())
        elif kind is list:
            stack.extend((v, [*path, i]) for i, v in enumerate(node))
        elif kind is Decimal:
            if problem := decimal_problem(node, stored=False):
                return path, problem
        elif kind is float:
            if not math.isfinite(node):
                return path, "NaN and infinities are not JSON values"
        elif kind not in _JSON_SCALARS:
            return path, f"{kind.__name__} is not a JSON value"
    return None


def schema_problem(exc: SchemaError) -> str:
    """What is wrong with a schema, as a client reads it (a pattern: what RE2 said)."""
    if exc.validator == "format" and exc.validator_value == "regex":
        reason = exc.cause.args[0] if exc.cause is not None and exc.cause.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if isinstance(exc.cause, PatternTooLarge):
            return f"pattern {exc.instance!r} is too large for RE2 ({reason})"
        return (
            f"pattern {exc.instance!r} is not a regular expression RE2 can run ({reason});"
            " patterns run on RE2: no backreferences or lookaround"
        )
    return exc.message


_NOT_APPLICABLE = "the schema cannot be applied to this record"
# jsonschema shows values with repr(): a Decimal (a CSV cell, a total_price) would read
# "Decimal('19.999') is less than the minimum of 20" to a client that sent 19.999.
# Only the Decimals the error is about are rewritten: a string value that reads like one
# ("Decimal('2')", in quotes in the message) is shown as sent.
_DECIMAL_REPR = re.compile(r"Decimal\('([^']+)'\)")


def _message(error: ValidationError) -> str:
    """jsonschema's message, at most ``MAX_MESSAGE_CHARS``: it quotes the value and the
    keyword's argument whole (an ``enum`` of 800 strings: 36 KB, ten times per record)."""
    text: str = error.message
    if "Decimal('" in text:
        shown = _decimal_reprs([error.instance, error.validator_value])
        text = _DECIMAL_REPR.sub(lambda m: m[1] if m[0] in shown else m[0], text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"


def _path(error: ValidationError) -> list[Any]:
    """Where in the record: map keys past ``MAX_PATH_KEY_CHARS`` are cut (a key can be MBs)."""
    return [
        p[:MAX_PATH_KEY_CHARS] + "…" if type(p) is str and len(p) > MAX_PATH_KEY_CHARS else p
        for p in error.absolute_path
    ]


def _decimal_reprs(value: Any) -> set[str]:
    """``repr()`` of every Decimal in ``value`` (maps and lists walked without recursion)."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is Decimal:
            found.add(repr(node))
        elif type(node) is dict:
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return found


_TOO_COSTLY = (
    f"checking it takes more than {STEPS_PER_VALUE} schema keywords per value of the record,"
    f" or {MAX_STEPS:,} in all (a subschema reached along many paths, such as an allOf of"
    " $refs that recurse, or a record too large for its schema)"
)


_PATTERNS_TOO_COSTLY = (
    f"its patterns would take more than {PATTERN_WORK:,} characters x pattern instructions to"
    " check (a long string against a large pattern, such as .{0,1000}.{0,1000}x)"
)


def _count_values(value: Any) -> int:
    """Maps, lists and scalars in ``value`` (without recursion)."""
    count = 1
    stack = [value]
    while stack:
        node = stack.pop()
        children = node.values() if type(node) is dict else node
        count += len(children)
        stack.extend(c for c in children if type(c) is dict or type(c) is list)
    return count


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
        depth, values = shape(document)
        if depth > MAX_SCHEMA_DEPTH:
            raise BadRequest(
                f"not a valid JSON Schema: nested deeper than {MAX_SCHEMA_DEPTH} levels",
                {"arg": "schema", "path": []},
            )
        check_schema_size(values)
        if found := _value_problem(document):
            path, problem = found
            raise BadRequest(f"not a valid JSON Schema: {problem}", {"arg": "schema", "path": path})
        try:
            with charged_compiles():
                RecordValidator.check_schema(document, format_checker=SCHEMA_FORMATS)
        except SchemaError as exc:
            raise BadRequest(
                f"not a valid JSON Schema: {schema_problem(exc)}",
                {"arg": "schema", "path": [*exc.absolute_path]},
            ) from None
        except RecursionError:  # a shape the depth cap lets through, however unlikely
            raise BadRequest(
                "not a valid JSON Schema: nested too deeply", {"arg": "schema", "path": []}
            ) from None
        check_references(document)
        return cls(document)

    def errors(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The record's violations (at most ``MAX_ERRORS``), ``[]`` if it is valid."""
        instance = {k: v for k, v in record.items() if k not in META_FIELDS}
        out = []
        STEPS.left = min(MAX_STEPS, BASE_STEPS + STEPS_PER_VALUE * _count_values(instance))
        WORK.left = PATTERN_WORK
        INSTANCE_KEYS.clear()
        try:
            for error in self.validator.iter_errors(instance):
                out.append({"path": _path(error), "message": _message(error)})
                if len(out) >= MAX_ERRORS:
                    break
        except RecursionError:
            # What ``parse`` cannot foresee: a ``$ref`` chain hundreds long, a loop through
            # ``$dynamicRef``, a loop in a schema attached before loops were refused.
            out.append({"path": [], "message": _NOT_APPLICABLE + ": it nests too deeply"})
        except CheckTooCostly:
            out.append({"path": [], "message": _NOT_APPLICABLE + ": " + _TOO_COSTLY})
        except PatternsTooCostly:
            out.append({"path": [], "message": _NOT_APPLICABLE + ": " + _PATTERNS_TOO_COSTLY})
        except PatternTooLarge as exc:  # a schema attached before such patterns were refused
            out.append(
                {"path": [], "message": f"{_NOT_APPLICABLE}: a pattern is too large ({exc})"}
            )
        except Exception:  # never crash, never show Python's text: the log has it
            log.exception("schema_not_applicable")
            out.append({"path": [], "message": _NOT_APPLICABLE})
        INSTANCE_KEYS.clear()  # holds parts of the record: not past its check
        WORK.left = None
        return out

    def check(self, record: dict[str, Any], table: str) -> None:
        errors = self.errors(record)
        if errors:
            raise ValidationFailed(
                f"the record does not match the schema of {table}: {errors[0]['message']}",
                {"errors": errors, "table": table},
            )
