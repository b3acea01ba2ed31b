"""The checks on an order's product_name, without a server: shown to people like a user's
full_name, it is held to the same rules (QA: NUL, ANSI escapes and bidi overrides were kept)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.schemas.orders import OrderCreate, OrderUpdate

ORDER = {
    "user_id": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1",
    "quantity": 1,
    "total_price": "1.00",
}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a\x00b", "may not contain U+0000, a control character"),
        ("\x1b[31mred\x1b[0m", "may not contain U+001B, a control character"),
        ("line1\nline2", "may not contain U+000A, a control character"),
        ("\u202egnp.exe", "may not contain U+202E, a format character"),
        ("\ufeff", "may not contain U+FEFF, a format character"),
        ("\u2800", "must contain a visible character"),
        ("  ", "at least 1 character"),
    ],
)
def test_product_names_that_hide_or_garble_text_are_refused(name: str, message: str) -> None:
    for model, fields in ((OrderCreate, ORDER), (OrderUpdate, {})):
        with pytest.raises(ValidationError) as info:
            model.model_validate({**fields, "product_name": name})
        (error,) = [e for e in info.value.errors() if e["loc"][-1] != "none"]
        assert error["loc"][0] == "product_name"
        assert message in str(error["msg"]), error


@pytest.mark.parametrize(
    "name", ["Widget Pro", "Caf\u00e9 cr\u00e8me", "\u5f20\u4f1f", "\U0001f600"]
)
def test_ordinary_product_names_are_kept_trimmed(name: str) -> None:
    assert OrderCreate.model_validate({**ORDER, "product_name": f" {name}  "}).product_name == name
    assert OrderUpdate(product_name=name).product_name == name
