"""The record validator: Draft 2020-12 with the keywords the store replaces, run on every
record written to a table with a schema.

``RecordValidator`` is jsonschema's ``Draft202012Validator`` with ``Decimal`` values as
numbers, ``multipleOf`` exact in decimal and bounded in digits, the bounds, ``const`` and
``enum`` taking a Decimal and a float of the same text as equal, ``pattern``,
``patternProperties`` and ``additionalProperties`` on RE2 (``schemapatterns``), each pattern
on its own, and ``uniqueItems`` by hashed keys: why
each, in ``schemas``. Kept apart from ``schemas``, which checks a schema document before it
is attached and reports a record's violations: this module is how each keyword is checked.
"""

from __future__ import annotations

import functools
import math
import operator
import reprlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import attrs
import jsonschema._utils
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema._utils import (
    extras_msg,
    find_evaluated_item_indexes_by_schema,
    find_evaluated_property_keys_by_schema,
)
from referencing.jsonschema import DRAFT202012

from storeserver.query import index_key
from storeserver.records import MAX_DECIMAL_DIGITS
from storeserver.schemapatterns import WORK, compile_pattern, search

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


def _as_written(value: Any) -> Any:
    """``value`` with every finite float as ``_decimal`` of it: a schema's ``0.1`` is the
    decimal its author wrote, and a record's float the text its client sent, so either meets a
    stored ``Decimal("0.1")`` (a CSV cell) as that number, not as the binary
    0.1000000000000000055... Python compares a Decimal with (QA: ``minimum: 0.1`` refused the
    decimal 0.1, ``exclusiveMaximum: 0.1`` took it). For the bounds, which convert only when a
    Decimal is on one side."""
    if type(value) is float and math.isfinite(value):
        return _decimal(value)
    return value


def _float_of(value: Any) -> Any:
    """A Decimal that is some float's shortest text (``0.1``, ``0.10``, ``19.99``) as that
    float, in lists and maps too, the rest unchanged (a container with nothing to change is
    itself, not a copy): for ``const`` and ``enum``, which key values as ``uniqueItems`` does
    (``query.index_key``) with the decimals people write equal to the floats of the same text.
    Floats are left alone, so ``2**60`` still equals the float ``1.152921504606847e18``."""
    t = type(value)
    if t is Decimal:
        near = float(value)
        if math.isfinite(near) and Decimal(repr(near)) == value:
            return near
        return value
    if t is list:
        copied: list[Any] | None = None
        for position, item in enumerate(value):
            new = _float_of(item)
            if new is not item:
                if copied is None:
                    copied = list(value)
                copied[position] = new
        return value if copied is None else copied
    if t is dict:
        changed = {key: new for key, item in value.items() if (new := _float_of(item)) is not item}
        return {**value, **changed} if changed else value
    return value


def _key(value: Any) -> Any:
    return index_key(_float_of(value))


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
        yield ValidationError(
            f"{instance} is not a multiple of {divisor}"
        )  # str: a Decimal repr is Python text


def _bound(refuses: Any, wording: str) -> Any:
    """jsonschema's ``minimum``/``maximum``/``exclusive*`` (its messages too), comparing a
    Decimal with a float as the float's shortest text (``_as_written``); floats and ints with
    each other compare exactly as they are."""

    def check(validator: Any, limit: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "number"):
            return
        value, bound = instance, limit
        if type(value) is Decimal or type(bound) is Decimal:
            value, bound = _as_written(value), _as_written(bound)
        if refuses(value, bound):
            yield ValidationError(f"{instance!r} {wording} {limit!r}")

    return check


def _const(validator: Any, const: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """Equal as in ``enum`` (``_key``: ``1 == 1.0``, ``true != 1``, a Decimal ``1.1`` equals
    the float ``1.1``); a list or map keyed only if the other is one of its kind and size, and
    once per check (``INSTANCE_KEYS``), as ``enum`` does (review: 300 ``not const`` over a
    200,000-item list keyed it each time, minutes)."""
    t = type(instance)
    if t is list or t is dict:
        equal = type(const) is t and len(const) == len(instance)
        equal = equal and _container_key(const) == _container_key(instance)
    else:
        equal = (
            type(const) is not list and type(const) is not dict and _key(const) == _key(instance)
        )
    if not equal:
        yield ValidationError(f"{const!r} was expected")


def _container_key(value: Any) -> Any:
    """``_key`` of a list or map, kept for the rest of the check (``INSTANCE_KEYS``)."""
    found = INSTANCE_KEYS.get(id(value))
    if found is None or found[0] is not value:
        found = INSTANCE_KEYS[id(value)] = (value, _key(value))
    return found[1]


# The three keywords below mirror jsonschema's ``_keywords`` (``search``, not ``match``), as
# ``schemapatterns._Re2Search`` does.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not search(compile_pattern(pattern), instance):
        yield ValidationError(f"{_BRIEF.repr(instance)} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, pattern_properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        regex = compile_pattern(pattern)
        for k, v in instance.items():
            if search(regex, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    """jsonschema's, with each ``patternProperties`` pattern searched on its own: jsonschema
    joins them with ``|`` into one pattern, which RE2 may refuse as too large though each
    compiles (every write then failed, QA), and where an inline flag of one applies to the
    next (``(?i)^a|^B$`` took the key ``b``)."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    regexes = [compile_pattern(pattern) for pattern in schema.get("patternProperties", {})]
    extras = [
        key
        for key in instance
        if key not in properties and not any(search(regex, key) for regex in regexes)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            listed, verb = extras_msg(sorted(extras, key=str))
            yield ValidationError(
                f"Additional properties are not allowed ({listed} {verb} unexpected)"
            )


_ENUM_KEYS: dict[int, tuple[list[Any], frozenset[Any], frozenset[tuple[type, int]]]] = {}
"""Keys of the last ``_ENUM_CACHE`` enums checked, and the (type, length) of their lists and
maps, by the list's id (the list kept with them, so an id reused by another list cannot
match)."""
INSTANCE_KEYS: dict[int, tuple[Any, Any]] = {}
"""Keys of the lists and maps of the record being checked (emptied around each check by
``schemas.TableSchema.errors``): an ``enum`` applied again and again to one large value keys
it once (QA: 300 ``not enum`` over a 200,000-item list took 13 s)."""
_ENUM_CACHE = 64
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60


def _enum_keys(enums: list[Any]) -> tuple[frozenset[Any], frozenset[tuple[type, int]]]:
    found = _ENUM_KEYS.get(id(enums))
    if found is not None and found[0] is enums:
        return found[1], found[2]
    keys = frozenset(map(_key, enums))
    shapes = frozenset((type(e), len(e)) for e in enums if type(e) is list or type(e) is dict)
    if len(_ENUM_KEYS) >= _ENUM_CACHE:
        del _ENUM_KEYS[next(iter(_ENUM_KEYS))]
    _ENUM_KEYS[id(enums)] = (enums, keys, shapes)
    return keys, shapes


def _in_enum(enums: Any, instance: Any) -> bool:
    if type(enums) is not list:  # the schema check makes it one; nothing to cache otherwise
        return _key(instance) in frozenset(map(_key, enums))
    keys, shapes = _enum_keys(enums)
    t = type(instance)
    if t is not list and t is not dict:
        return _key(instance) in keys
    if (t, len(instance)) not in shapes:  # no item of its kind and size: no need to key it
        return False
    return _container_key(instance) in keys


def _enum(validator: Any, enums: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's ``enum`` compares the value with every item in Python and quotes the whole
    list when it fails: an enum of 19,000 codes cost ~20 ms an application (review). Hashed
    keys instead (``query.index_key``, jsonschema's equality: ``1 == 1.0``, ``true != 1``),
    a list or map keyed only if the enum holds one of its size, and once per check; the list
    quoted briefly."""
    if not _in_enum(enums, instance):
        yield ValidationError(f"{_BRIEF.repr(instance)} is not one of {_BRIEF.repr(enums)}")


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for position, item in enumerate(instance):
        key = _key(item)  # a Decimal and a float of the same text are one number (QA)
        if key in seen:
            # Not jsonschema's message: that one repeats the whole (maybe huge) array.
            yield ValidationError(
                f"has non-unique elements (item {position} repeats an earlier one)"
            )
            return
        seen.add(key)


def _unevaluated_items(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    """jsonschema's, with the evaluated indexes in a set: it looked each item up in a list,
    n² for n items (QA: 32,000 items held the store ~9 s)."""
    if not validator.is_type(instance, "array"):
        return
    evaluated = set(
        jsonschema._utils.find_evaluated_item_indexes_by_schema(validator, instance, schema)
    )
    extras = [item for index, item in enumerate(instance) if index not in evaluated]
    if extras:
        yield ValidationError(f"Unevaluated items are not allowed ({_BRIEF.repr(extras)})")


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    """jsonschema's, with the evaluated keys in a set (a list before: n² for n keys)."""
    if not validator.is_type(instance, "object"):
        return
    evaluated = set(
        jsonschema._utils.find_evaluated_property_keys_by_schema(validator, instance, schema)
    )
    invalid = [
        key
        for key in instance
        if key not in evaluated
        and any(True for _ in validator.descend(instance[key], unevaluated, path=key))
    ]
    if not invalid:
        return
    if unevaluated is False:
        message = "Unevaluated properties are not allowed"
    else:
        message = "Unevaluated properties are not valid under the given schema"
    yield ValidationError(f"{message} ({_BRIEF.repr(sorted(invalid, key=str))})")


def _walk_metered(find: Any) -> Any:
    """``find`` charged a step a call during a record's check (``WORK`` is set only then).

    jsonschema's walks for the ``unevaluated*`` keywords follow ``$ref``, ``if``/``then``,
    ``dependentSchemas`` and the ``allOf``/``anyOf``/``oneOf`` branches, and call themselves
    through their module's names: stood in for there (below), every call counts. Uncharged, a
    2 KB schema whose levels each reach the next twice (a ``$ref`` and a ``then`` to it, no
    loop) cost 2^depth calls on each write (QA: depth 18 held the store 6.9 s a record)."""

    @functools.wraps(find)
    def metered(validator: Any, instance: Any, schema: Any) -> Any:
        if WORK.left is not None:
            _charge(1)
        return find(validator, instance, schema)

    return metered


# (A test checks they stay in place.)
jsonschema._utils.find_evaluated_item_indexes_by_schema = _walk_metered(
    find_evaluated_item_indexes_by_schema
)
jsonschema._utils.find_evaluated_property_keys_by_schema = _walk_metered(
    find_evaluated_property_keys_by_schema
)


class CheckTooCostly(Exception):
    """A record's check took more keyword applications than ``STEPS`` allowed it."""


class _Steps:
    """Keyword applications the running check may still make (the store has one thread)."""

    left = 0


STEPS = _Steps()
NAMES_PER_STEP = 32
"""Names of a ``required`` or ``dependentRequired`` list looked up for one step's cost."""


def _charge(steps: int) -> None:
    STEPS.left -= steps
    if STEPS.left < 0:
        raise CheckTooCostly


def _holds(validator: Any, subschema: Any, instance: Any) -> bool:
    """Whether ``instance`` is valid under ``subschema``, stopping at its first violation:
    a branch's errors are not kept (one step for the try: a ``false`` branch has no keyword
    to count it)."""
    _charge(1)
    if type(subschema) is bool:
        return subschema
    # In the branch's own resource, as ``descend`` enters it: a ``$ref`` there is relative to
    # the branch's ``$id``, not to the document's.
    resolver = validator._resolver.in_subresource(DRAFT202012.create_resource(subschema))
    return bool(validator.evolve(schema=subschema, _resolver=resolver).is_valid(instance))


_NONE_HOLDS = "is not valid under any of the given schemas"


def _any_of(validator: Any, any_of: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's collects every failing branch's errors, each quoting the whole value, and
    quotes it again: three levels of 60 branches ending in ``false`` held the store 2.8 s and
    550 MB for a record ``{"n": 1}``, an ``anyOf`` of a 19,000-name ``required`` 52 s for 500
    items (QA). Here a branch stops at its first violation and is then forgotten."""
    if not any(_holds(validator, subschema, instance) for subschema in any_of):
        yield ValidationError(f"{_BRIEF.repr(instance)} {_NONE_HOLDS}")


def _one_of(validator: Any, one_of: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """As ``_any_of``, until a second branch holds too."""
    held: list[Any] = []
    for subschema in one_of:
        if _holds(validator, subschema, instance):
            held.append(subschema)
            if len(held) > 1:
                each = ", ".join(_BRIEF.repr(branch) for branch in held)
                yield ValidationError(f"{_BRIEF.repr(instance)} is valid under each of {each}")
                return
    if not held:
        yield ValidationError(f"{_BRIEF.repr(instance)} {_NONE_HOLDS}")


def _not(validator: Any, not_schema: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's, quoting the value and the schema briefly."""
    if _holds(validator, not_schema, instance):
        yield ValidationError(
            f"{_BRIEF.repr(instance)} should not be valid under {_BRIEF.repr(not_schema)}"
        )


def _required(validator: Any, required: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's, charged by the length of the list: one application of 19,000 names is
    some 19,000 lookups, not one step's work."""
    if not validator.is_type(instance, "object"):
        return
    _charge(len(required) // NAMES_PER_STEP)
    for name in required:
        if name not in instance:
            yield ValidationError(f"{name!r} is a required property")  # api.errors reads it


def _dependent_required(
    validator: Any, dependent: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    """jsonschema's, charged like ``_required``."""
    if not validator.is_type(instance, "object"):
        return
    for name, names in dependent.items():
        if name not in instance:
            continue
        _charge(len(names) // NAMES_PER_STEP)
        for each in names:
            if each not in instance:
                yield ValidationError(f"{_BRIEF.repr(each)} is a dependency of {_BRIEF.repr(name)}")


def _metered(check: Any) -> Any:
    """``check``, counting one step each time it is applied to a part of a record. A schema
    can apply one subschema to one value along exponentially many paths (``allOf`` of two
    ``$ref``s back through ``properties``: 2**depth), so the work a check takes is bounded
    here rather than by the shape of the schema (``schemas.TableSchema.errors``)."""

    @functools.wraps(check)
    def metered(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _charge(1)
        errors = check(validator, value, instance, schema)
        return _quotes_charged(errors) if errors else errors

    return metered


_UNSET = ValidationError("").validator  # what jsonschema fills in once the error leaves its keyword
QUOTED_PER_STEP = 256
"""Characters of an error's message counted as one step: jsonschema's keywords quote the value
whole (``repr``), ~10 ns a character, where a step is 1-5 µs."""


def _quotes_charged(errors: Any) -> Iterator[Any]:
    """``errors``, each charged for its message: a keyword failing on a big value quotes all of
    it, once per branch tried (QA: ``type`` in 100 ``anyOf`` branches under 100 more, over a
    list of 10,000 numbers, was 10,000 quotes of it within the steps: seconds)."""
    for error in errors:
        if error.validator is _UNSET:  # made by this keyword; a child's was charged already
            _charge(len(error.message) // QUOTED_PER_STEP)
        yield error


_KEYWORDS = {
    **Draft202012Validator.VALIDATORS,
    "additionalProperties": _additional_properties,
    "anyOf": _any_of,
    "const": _const,
    "dependentRequired": _dependent_required,
    "enum": _enum,
    "exclusiveMaximum": _bound(operator.ge, "is greater than or equal to the maximum of"),
    "exclusiveMinimum": _bound(operator.le, "is less than or equal to the minimum of"),
    "maximum": _bound(operator.gt, "is greater than the maximum of"),
    "minimum": _bound(operator.lt, "is less than the minimum of"),
    "multipleOf": _multiple_of,
    "not": _not,
    "oneOf": _one_of,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "required": _required,
    "uniqueItems": _unique_items,
    "unevaluatedItems": _unevaluated_items,
    "unevaluatedProperties": _unevaluated_properties,
}
RecordValidator = validators.extend(
    Draft202012Validator,
    validators={keyword: _metered(check) for keyword, check in _KEYWORDS.items()},
    type_checker=_BASE.redefine_many({"number": _is_number, "integer": _is_integer}),
)


def _false_schema(instance: Any) -> ValidationError:
    """jsonschema's error for a ``false`` subschema, quoting the value briefly, and a step:
    jsonschema quotes it whole, and a ``false`` applies no keyword the steps count (QA:
    100 ``anyOf`` branches each of 100 ``false`` on a list of 10,000 numbers held the store
    8 s, repr after repr)."""
    _charge(1)
    return ValidationError(
        f"False schema does not allow {_BRIEF.repr(instance)}",
        validator=None,
        validator_value=None,
        instance=instance,
        schema=False,
    )


_descend = RecordValidator.descend
_iter_errors = RecordValidator.iter_errors


def _descend_briefly(
    self: Any,
    instance: Any,
    schema: Any,
    path: Any = None,
    schema_path: Any = None,
    resolver: Any = None,
) -> Any:
    if schema is False:
        # Placed where it is, as descend places a keyword's errors (jsonschema leaves a
        # ``false`` one at its parent: ``{"properties": {"secret": false}}`` named no field).
        error = _false_schema(instance)
        if path is not None:
            error.path.appendleft(path)
        if schema_path is not None:
            error.schema_path.appendleft(schema_path)
        yield error
        return
    yield from _descend(self, instance, schema, path, schema_path, resolver)


def _iter_errors_briefly(self: Any, instance: Any, _schema: Any = None) -> Any:
    if _schema is None and self.schema is False:
        yield _false_schema(instance)
        return
    yield from _iter_errors(self, instance, _schema)


_EVOLVED_FIELDS = [(f.name, f.alias) for f in attrs.fields(RecordValidator) if f.init]


def _evolve_as_record_validator(self: Any, **changes: Any) -> Any:
    """jsonschema's ``evolve``, always into a ``RecordValidator``. jsonschema's picks the class
    by the subschema's ``$schema``: one naming Draft 2020-12 (the root's, copied in, reached
    again through a ``$ref: "#"``) was checked by the stock validator, with Python's ``re``,
    no steps and whole quotes (QA: ``^(a+)+$`` on 27 characters held the store 4.6 s)."""
    changes.setdefault("schema", self.schema)
    for attr_name, init_name in _EVOLVED_FIELDS:
        if init_name not in changes:
            changes[init_name] = getattr(self, attr_name)
    return RecordValidator(**changes)


# Where jsonschema answers a ``false`` subschema itself, before any keyword: through a
# keyword's subschema (``descend``) and as a validator's whole schema (``iter_errors``, which
# ``is_valid`` calls: a ``$ref`` to ``false``, an ``anyOf`` branch). And where it picks the
# class that checks a subschema.
RecordValidator.descend = _descend_briefly
RecordValidator.iter_errors = _iter_errors_briefly
RecordValidator.evolve = _evolve_as_record_validator
