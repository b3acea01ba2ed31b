"""The one rule for a password being set, on the form that is hashed (NFKC), wherever it is
set: the schemas, the last check before hashing, and ``ADMIN_PASSWORD``."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from api.auth.passwordtext import new_password_problem
from api.errors import ApiError
from api.services.passwords import refuse_unusable_password
from api.settings import Settings

SHORT = "password must be at least 8 characters once normalized (NFKC)"
LONG = "password must be at most 72 UTF-8 bytes once normalized (NFKC)"
RULES = [
    ("e\u0301" * 4, SHORT),  # 8 code points typed, "éééé" hashed
    ("seven!!", SHORT),
    ("\u00e9" * 36, None),  # 72 bytes
    ("\u00e9" * 37, LONG),
    ("\ufdfa" * 8, LONG),  # 24 bytes typed, 264 once NFKC spells it out
    ("\ufb00" * 4, None),  # 4 typed, "ffffffff" hashed
    ("correct\u00a0horse", None),
]


@pytest.mark.parametrize(("password", "problem"), RULES)
def test_the_rule_counts_the_normalized_form(password: str, problem: str | None) -> None:
    assert new_password_problem(password) == problem


@pytest.mark.parametrize(("password", "problem"), RULES)
def test_the_last_check_before_hashing_applies_it(password: str, problem: str | None) -> None:
    if problem is None:
        refuse_unusable_password(password, "body.password")
        return
    with pytest.raises(ApiError) as info:
        refuse_unusable_password(password, "body.password")
    assert info.value.status_code == 422
    assert info.value.details == [{"field": "body.password", "message": problem}]


@pytest.mark.parametrize(("password", "problem"), RULES)
def test_admin_password_follows_it(password: str, problem: str | None) -> None:
    def settings() -> Settings:
        return Settings(_env_file=None, admin_email="root@example.com", admin_password=password)  # type: ignore[call-arg,arg-type]

    if problem is None:
        assert settings().admin_password is not None
        return
    with pytest.raises(ValidationError, match=re.escape(f"ADMIN_PASSWORD: {problem}")):
        settings()
