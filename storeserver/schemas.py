"""JSON Schema validation of a table's records (``set_schema``), with the jsonschema library.

Draft 2020-12. The validated instance is the record without the store-owned fields (``id``,
``created_at``, ``updated_at``, ``version``), so a schema with ``additionalProperties: false``
describes only what clients write. ``Decimal`` values are numbers (and integers when
integral); ``multipleOf`` is exact for them. References to other documents (``$ref`` to a URL)
are not fetched: only references inside the schema resolve.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry

from storeserver.errors import BadRequest, ValidationFailed
from storeserver.records import META_FIELDS

MAX_ERRORS = 10
"""Errors reported for one record."""

_BASE = Draft202012Validator.TYPE_CHECKER


def _is_number(checker: Any, instance: Any) -> bool:
    return type(instance) is Decimal or _BASE.is_type(instance, "number")


def _is_integer(checker: Any, instance: Any) -> bool:
    if type(instance) is Decimal:
        return instance.is_finite() and instance == instance.to_integral_value()
    return _BASE.is_type(instance, "integer")


def _multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if type(instance) is Decimal or type(divisor) is Decimal:
        if not validator.is_type(instance, "number"):
            return
        quotient = Decimal(str(instance)) / Decimal(str(divisor))
        if quotient != quotient.to_integral_value():
            yield ValidationError(f"{instance!r} is not a multiple of {divisor}")
        return
    yield from Draft202012Validator.VALIDATORS["multipleOf"](validator, divisor, instance, schema)


RecordValidator = validators.extend(
    Draft202012Validator,
    validators={"multipleOf": _multiple_of},
    type_checker=_BASE.redefine_many({"number": _is_number, "integer": _is_integer}),
)


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
        try:
            RecordValidator.check_schema(document)
        except SchemaError as exc:
            raise BadRequest(
                f"not a valid JSON Schema: {exc.message}",
                {"arg": "schema", "path": [*exc.absolute_path]},
            ) from None
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
        except Exception as exc:  # an unresolvable $ref, say: report it, never crash
            out.append({"path": [], "message": f"the schema cannot be applied: {exc}"[:300]})
        return out

    def check(self, record: dict[str, Any], table: str) -> None:
        errors = self.errors(record)
        if errors:
            raise ValidationFailed(
                f"the record does not match the schema of {table}: {errors[0]['message']}",
                {"errors": errors, "table": table},
            )
