"""Transaction and bulk-insert bodies."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    Tag,
)

from api.filters import text_problem

MAX_OPERATIONS = 100
MAX_BULK_RECORDS = 1000
TABLE_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
REF = re.compile(r"[0-9]{1,4}(\.[A-Za-z0-9_]{1,64}){1,8}")


def _id_or_ref(value: object) -> str | dict[str, str] | None:
    """``str | dict[str, str] | None`` checked as one: an id that is neither is one error at
    ``id``, not one per member of the union (``id.str``, ``id.dict[str,str]``)."""
    if value is None:
        return value
    if type(value) is str:
        texts: list[str] = [value]
    elif type(value) is dict and all(type(v) is str for v in value.values()):
        texts = [*value, *value.values()]
    else:
        raise ValueError('must be a record id (a string) or a reference such as {"$ref": "0.id"}')
    # QA: a lone surrogate (\ud800) reached the store's encoder, a 400 quoting its error.
    for text in texts:
        if problem := text_problem(text):
            raise ValueError(problem)
    return value


RecordIdOrRef = Annotated[
    str | dict[str, str] | None,
    PlainValidator(_id_or_ref, json_schema_input_type=str | dict[str, str] | None),
]


def ref_index(value: object) -> int | None:
    """The operation a reference ``{"$ref": "<index>.<path>"}`` names; ``None`` if ``value``
    is not a well-formed reference."""
    if not isinstance(value, dict) or len(value) != 1 or not isinstance(value.get("$ref"), str):
        return None
    ref = value["$ref"]
    return int(ref.split(".", 1)[0]) if REF.fullmatch(ref) else None


class TransactionOp(BaseModel):
    """One operation. `insert` takes `data` (an `id` inside it is optional; `upsert: true`
    merges into an existing record on generic tables); `replace` and `patch` take `id` and
    `data`; `delete` takes `id` (and `cascade`). `expected_version` makes the operation
    conditional (412 otherwise). In `id` and in `data` values, `{"$ref": "0.id"}` stands for
    a value of an earlier operation's result (on users/orders: only `orders.user_id`, as the
    id of a users operation's record, `{"$ref": "<i>.id"}`). Your own password is changed only
    through `PATCH /users/{id}` (with `current_password`), not here."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["insert", "replace", "patch", "delete"]
    table: str = Field(pattern=TABLE_PATTERN, examples=["orders"])
    id: RecordIdOrRef = Field(
        None, description='Record id, or a reference such as `{"$ref": "0.id"}`'
    )
    data: dict[str, Any] | None = Field(None, description="Fields, as in /data bodies")
    expected_version: int | None = Field(None, strict=True, ge=1, le=2**62)
    cascade: StrictBool = Field(False, description="delete: also delete records that reference it")
    upsert: StrictBool = Field(False, description="insert: merge into the record with this id")


class TransactionBody(BaseModel):
    """Operations applied atomically, in order: all of them, or none.

    A user and their first order in one call: `{"operations": [{"op": "insert", "table":
    "users", "data": {...}}, {"op": "insert", "table": "orders", "data": {"user_id": {"$ref":
    "0.id"}, ...}}]}`.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "operations": [
                        {
                            "op": "insert",
                            "table": "users",
                            "data": {
                                "email": "ada@example.com",
                                "full_name": "Ada Lovelace",
                                "password": "correct horse battery",
                            },
                        },
                        {"op": "insert", "table": "products", "data": {"id": "sku-2", "stock": 1}},
                        {
                            "op": "patch",
                            "table": "products",
                            "id": "sku-1",
                            "data": {"stock": 7},
                            "expected_version": 3,
                        },
                    ]
                }
            ]
        },
    )

    operations: list[TransactionOp] = Field(min_length=1, max_length=MAX_OPERATIONS)


class TransactionResult(BaseModel):
    """Each operation's result, in order: the stored record, or `{id, cascaded}` for a delete."""

    results: list[dict[str, Any]]


BulkRecords = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BULK_RECORDS)]


_ONE, _MANY = "dict[str,any]", "list[dict[str,any]]"


def _one_or_many(value: Any) -> str:
    return _MANY if isinstance(value, list) else _ONE


class DataCreateBody(BaseModel):
    """One record, or a list of records inserted atomically (at most 1000)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"data": {"name": "blue widget", "stock": 12, "price": 9.5}},
                {
                    "data": [
                        {"id": "sku-1", "stock": 3, "price": 4},
                        {"id": "sku-2", "stock": 5, "price": 6},
                    ]
                },
            ]
        },
    )

    # Tagged by the value's kind, so a list with too many records says only that (an untagged
    # union also reported "Input should be a valid dictionary" for it). The tags are the names
    # pydantic gives the members itself, which ``api.errors.field_path`` leaves out of paths.
    data: Annotated[
        Annotated[dict[str, Any], Tag(_ONE)] | Annotated[BulkRecords, Tag(_MANY)],
        Discriminator(_one_or_many),
    ] = Field(
        description="A record, or a list of records; id, created_at, updated_at, version are"
        " managed (an id may be chosen)"
    )


class BulkMeta(BaseModel):
    inserted: int = Field(ge=0)
    updated: int = Field(ge=0, description="Records merged into (upsert)")
