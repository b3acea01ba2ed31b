"""Query, count and aggregate bodies, and the records they return.

The filter tree is documented by the models below; its validation is done by ``api.filters``
(``SkipValidation`` here), so an error names the exact node (``body.filter.or.1.op``) rather
than listing what every member of a union would have wanted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, model_validator

from api.queries import MAX_FIELD_LENGTH, MAX_SORT_LENGTH, NAME_PART
from api.schemas.envelope import Envelope, PageMeta
from api.schemas.orders import OrderPublic
from api.schemas.users import UserPublic

FilterOp = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "startswith", "exists"]
MetricOp = Literal["count", "sum", "avg", "min", "max"]
NAME_PATTERN = f"^{NAME_PART}$"
DEFAULT_METRIC = "count"


class FilterCondition(BaseModel):
    """One condition. ``in`` takes a list (≤ 100), ``exists`` true/false, ``contains`` a
    substring or a list element, ``startswith`` a string prefix."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"field": "age", "op": "gte", "value": 30}]}
    )

    field: str = Field(description="Field name; dotted paths reach into nested objects")
    op: FilterOp
    value: Any = Field(None, description="Compared value (of the field's type on users/orders)")


class FilterAnd(BaseModel):
    """True when every node is."""

    model_config = ConfigDict(extra="forbid")
    all_of: list[FilterNode] = Field(alias="and", min_length=1)


class FilterOr(BaseModel):
    """True when any node is."""

    model_config = ConfigDict(extra="forbid")
    any_of: list[FilterNode] = Field(alias="or", min_length=1)


class FilterNot(BaseModel):
    """True when the node is not."""

    model_config = ConfigDict(extra="forbid")
    negated: FilterNode = Field(alias="not")


FilterNode = FilterCondition | FilterAnd | FilterOr | FilterNot
FilterAnd.model_rebuild()
FilterOr.model_rebuild()
FilterNot.model_rebuild()

FilterField = Annotated[
    FilterNode | None,
    SkipValidation,
    Field(
        description="A filter tree: at most 8 levels and 100 nodes (a plain user's on orders: 7"
        " and 98, as the condition limiting it to their own orders takes the rest)"
    ),
]
SortField = Annotated[
    str | None,
    Field(
        max_length=MAX_SORT_LENGTH,
        description="`field:asc|desc[,field:dir]`",
        examples=["age:desc"],
    ),
]
# Strict: these are JSON body fields, where "2" or 2.0 is a client's type error (query-string
# page numbers are text and are parsed elsewhere).
PageField = Annotated[
    int, Field(strict=True, ge=1, le=1_000_000, description="Page number, from 1")
]
PerPageField = Annotated[
    int, Field(strict=True, ge=1, le=100, description="Items per page, 1 to 100")
]


class QueryBody(BaseModel):
    """A query: filter tree, sort, page and an optional projection."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "filter": {
                        "or": [
                            {"field": "age", "op": "gte", "value": 30},
                            {"not": {"field": "email", "op": "exists", "value": True}},
                        ]
                    },
                    "sort": "age:desc",
                    "page": 1,
                    "per_page": 20,
                    "fields": ["email", "age"],
                }
            ]
        },
    )

    filter: FilterField = None
    sort: SortField = None
    page: PageField = 1
    per_page: PerPageField = 20
    fields: list[str] | None = Field(
        None, max_length=50, description="Return only `id` and these fields (≤ 50)"
    )


class OrderQueryBody(QueryBody):
    """A query of orders; ``expand: "user"`` embeds each order's user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "filter": {
                        "and": [
                            {"field": "total_price", "op": "gte", "value": "10.00"},
                            {"field": "product_name", "op": "startswith", "value": "Widget"},
                        ]
                    },
                    "sort": "total_price:desc",
                    "page": 1,
                    "per_page": 20,
                    "fields": ["product_name", "total_price"],
                    "expand": "user",
                }
            ]
        },
    )

    expand: Literal["user"] | None = None


class MetricSpec(BaseModel):
    """One aggregate: ``count`` (rows, or non-null values of ``field``), ``sum``, ``avg``,
    ``min``, ``max``; the result is named ``as``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: MetricOp
    field: str | None = Field(None, max_length=MAX_FIELD_LENGTH)
    name: str = Field(alias="as", pattern=NAME_PATTERN, description="Name of the result")


def row_count(name: str) -> MetricSpec:
    """The metric counting a group's rows, named ``name``."""
    return MetricSpec.model_validate({"op": "count", "as": name})


class AggregateBody(BaseModel):
    """Group-by aggregation; groups are sorted and paginated like records."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "group_by": ["user_id"],
                    "metrics": [
                        {"op": "sum", "field": "total_price", "as": "revenue"},
                        {"op": "count", "as": "orders"},
                    ],
                    "sort": "revenue:desc",
                    "per_page": 10,
                }
            ]
        },
    )

    group_by: list[str] = Field(default_factory=list, max_length=4)
    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [row_count(DEFAULT_METRIC)],
        min_length=1,
        max_length=20,
        description="Default: one row count named `count` (`_count` when a group field is"
        " named `count`, with one more leading underscore per group field taking that name)",
    )
    filter: FilterField = None
    sort: Annotated[
        str | None,
        Field(
            max_length=MAX_SORT_LENGTH,
            description="Over group fields and metric names: `revenue:desc`",
        ),
    ] = None
    page: PageField = 1
    per_page: PerPageField = 20

    @model_validator(mode="after")
    def _default_metric_clear_of_group_fields(self) -> AggregateBody:
        """A client grouping by a field named ``count`` did not name the default metric, so it
        must not clash with that field (QA: a 422 blaming ``body.metrics.0.as``, a metric the
        client never sent); metrics the client sends keep their names and the clash check."""
        if "metrics" not in self.model_fields_set:
            name = DEFAULT_METRIC
            while name in self.group_by:  # at most 4 group fields, so at most 4 turns
                name = "_" + name
            self.metrics = [row_count(name)]
        return self


class CountResult(BaseModel):
    count: int = Field(ge=0, description="Records matching the filters")


class OrderWithUser(OrderPublic):
    """An order with its user embedded (``expand=user``)."""

    user: UserPublic | None = None


class UserWithOrders(UserPublic):
    """A user with one page of their orders (``embed=orders``; the page is in ``meta.orders``)."""

    orders: list[OrderPublic] = []


class EmbeddedPages(BaseModel):
    orders: PageMeta = Field(description="The page of orders under `data.orders`")


class UserEnvelope(Envelope[UserWithOrders]):
    """A user; with `embed=orders`, a page of their orders and `meta` describing it."""

    meta: EmbeddedPages | None = Field(None, description="Only with `embed=orders`")
