"""Which field each side of a join uses: pure functions, no server."""

from __future__ import annotations

import pytest

from api.services.joins import join_fields, singulars


@pytest.mark.parametrize(
    ("table", "singular"),
    [
        ("users", "user"),
        ("orders", "order"),
        ("categories", "category"),
        ("addresses", "address"),
        ("boxes", "box"),
        ("statuses", "status"),
        ("churches", "church"),
        ("wishes", "wish"),
        ("buses", "bus"),
        ("horses", "horse"),
        ("movies", "movie"),
        ("person", "person"),
    ],
)
def test_the_usual_english_plurals_have_their_singular_among_the_candidates(
    table: str, singular: str
) -> None:
    assert singular in singulars(table)


@pytest.mark.parametrize(
    ("left", "right", "key", "fields"),
    [
        ("users", "orders", "user_id", ("id", "user_id")),
        ("orders", "users", "user_id", ("user_id", "id")),
        ("categories", "products", "category_id", ("id", "category_id")),
        ("people", "addresses", "address_id", ("address_id", "id")),
        ("boxes", "items", "box_id", ("id", "box_id")),
        ("tickets", "statuses", "status_id", ("status_id", "id")),
        ("products", "stock", "sku", ("sku", "sku")),
        ("users", "orders", "users_id", ("id", "users_id")),
        ("status", "tasks", "status_id", ("id", "status_id")),
        ("people", "address", "address_id", ("address_id", "id")),
        ("users", "orders", "usr_id", ("usr_id", "usr_id")),
        # review: a side's own name and the other's plural name the key: the plural wins
        ("address", "addresses", "address_id", ("address_id", "id")),
        ("statuses", "status", "status_id", ("id", "status_id")),
    ],
)
def test_a_key_named_after_a_side_means_its_id(
    left: str, right: str, key: str, fields: tuple[str, str]
) -> None:
    assert join_fields(left, right, key) == fields
