"""The checks on what a user is given as an email and a name, without a server: lookalike
addresses (compatibility characters, mixed scripts) and names that hide or garble text."""

from __future__ import annotations

import unicodedata

import pytest
from pydantic import ValidationError

from api.schemas.lookalikes import letter_script, lookalike_problem
from api.schemas.users import UserCreate, UserUpdate

PASSWORD = "correct horse battery"


def email_error(email: str) -> str:
    """The one error message for ``email``, at the field itself."""
    with pytest.raises(ValidationError) as info:
        UserCreate(email=email, full_name="Ada", password=PASSWORD)
    (error,) = info.value.errors()
    assert error["loc"] == ("email",)
    return str(error["msg"])


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("\u0430dmin@example.com", "the local part 'аdmin' mixes letters of several scripts (Cyrillic, Latin)"),  # noqa: E501, RUF001
        ("x@ex\u0430mple.com", "the domain label 'exаmple' mixes letters of several scripts (Cyrillic, Latin)"),  # noqa: E501, RUF001
        ("ab\u03b1@example.com", "mixes letters of several scripts (Greek, Latin)"),
        ("\uff41dmin@example.com", "has U+FF41 FULLWIDTH LATIN SMALL LETTER A, a compatibility form of 'a'"),  # noqa: E501
        ("\U0001d426b@example.com", "has U+1D426 MATHEMATICAL BOLD SMALL M, a compatibility form of 'm'"),  # noqa: E501
        ("\ufb01x@example.com", "has U+FB01 LATIN SMALL LIGATURE FI, a compatibility form of 'fi'"),
        ("\u00aa@example.com", "has U+00AA FEMININE ORDINAL INDICATOR"),
        ("x\u2460@example.com", "has U+2460 CIRCLED DIGIT ONE"),
    ],
)  # fmt: skip
def test_lookalike_addresses_are_refused_saying_why(email: str, expected: str) -> None:
    message = email_error(email)
    assert expected in message and "could pass for another" in message


@pytest.mark.parametrize(
    "email",
    [
        "ada.lovelace+tag@example.com",
        "jos\u00e9@example.com",  # one script, accents included
        "ivan@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",  # Latin here, Cyrillic there
        "\u0438\u0432\u0430\u043d@example.com",  # all Cyrillic: one script
        "\u65e5\u672c\u8a9eabc\u3072\u30ab\u30fc@example.jp",  # Latin, Han, Hiragana, Katakana
        "x\u3105\u4e2d@example.tw",  # Latin, Bopomofo, Han
        "kim\ud55c\uae00@example.kr",  # Latin, Hangul
        "user1\u0661@example.com",  # digits go with any script
    ],
)
def test_addresses_of_one_script_or_an_allowed_mix_are_accepted(email: str) -> None:
    assert UserCreate(email=email, full_name="Ada", password=PASSWORD).email == email


def test_what_email_validation_maps_first_is_not_refused() -> None:
    """NFC (a Kelvin sign is K) and IDNA (a fullwidth domain letter) give the plain address,
    which the unique index then compares: no lookalike is left to refuse."""
    assert UserCreate(email="\u212aate@example.com", full_name="A", password=PASSWORD).email == (
        "Kate@example.com"
    )
    assert UserCreate(email="x@\uff45xample.com", full_name="A", password=PASSWORD).email == (
        "x@example.com"
    )


def test_lookalikes_within_latin_are_not_caught() -> None:
    """Dotless i and dotted capital I are Latin letters NFKC keeps: neither rule applies (the
    store's case-insensitive index tells them from ``i`` too, so these are other accounts)."""
    for local in ("adm\u0131n", "\u0130NFO"):
        assert lookalike_problem(local) is None


def test_a_change_of_email_is_checked_as_registration_is() -> None:
    with pytest.raises(ValidationError) as info:
        UserUpdate(email="\u0430dmin@example.com")
    (error,) = [e for e in info.value.errors() if e["loc"][-1] != "none"]  # not the null member
    assert error["loc"][0] == "email" and "mixes letters of several scripts" in str(error["msg"])


@pytest.mark.parametrize(
    ("char", "script"),
    [
        ("a", "LATIN"),
        ("\u0131", "LATIN"),
        ("\u0430", "CYRILLIC"),
        ("\u03b1", "GREEK"),
        ("\u4e2d", "HAN"),
        ("\u3072", "HIRAGANA"),
        ("\u30ab", "KATAKANA"),
        ("\ud55c", "HANGUL"),
        ("\u3105", "BOPOMOFO"),
        ("1", None),
        ("-", None),
        ("\u0301", None),  # a combining mark takes its base's script
        ("\u30fc", None),  # the prolonged sound mark: Hiragana and Katakana alike
    ],
)
def test_the_script_of_a_character(char: str, script: str | None) -> None:
    assert letter_script(char) == script


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Ada\x00", "may not contain U+0000, a control character"),
        ("\x1b[31mRed", "may not contain U+001B, a control character"),
        ("Ada\nLovelace", "may not contain U+000A, a control character"),
        ("\u202eevil", "may not contain U+202E, a format character"),
        ("Ada\u200bLovelace", "may not contain U+200B, a format character"),
        ("\u200b\u200d", "may not contain U+200B, a format character"),
        ("Ada\u2028Lovelace", "may not contain U+2028, a line separator"),
        ("\u3164", "must contain a visible character"),  # Hangul filler, a letter
        ("\u2800\u2800", "must contain a visible character"),  # blank Braille pattern
        ("\u0301\u0301", "must contain a visible character"),  # marks with no base
        ("   ", "at least 1 character"),  # trimmed to nothing
        ("\u3000", "at least 1 character"),
    ],
)
def test_names_that_hide_or_garble_text_are_refused(name: str, message: str) -> None:
    for model, fields in (
        (UserCreate, {"email": "a@example.com", "password": PASSWORD}),
        (UserUpdate, {}),
    ):
        with pytest.raises(ValidationError) as info:
            model.model_validate({"full_name": name, **fields})
        errors = [e for e in info.value.errors() if e["loc"][-1] != "none"]  # UserUpdate's null
        assert errors and errors[0]["loc"][0] == "full_name"
        assert message in str(errors[0]["msg"]), errors


@pytest.mark.parametrize(
    "name", ["Ada Lovelace", "O\u2019Brien", "Jos\u00e9", "\u5f20\u4f1f", "\U0001f600", "R2-D2"]
)
def test_ordinary_names_are_kept(name: str) -> None:
    assert UserUpdate(full_name=f"  {name} ").full_name == name


def test_the_document_says_what_needs_current_password() -> None:
    properties = UserUpdate.model_json_schema()["properties"]
    assert properties["current_password"]["description"] == (
        "Required to change your own password or email"
    )
    assert "mixes scripts" in properties["email"]["description"]
    assert "no control or format characters" in properties["full_name"]["description"]


def test_the_password_limit_counts_the_form_that_is_hashed() -> None:
    """72 bytes once normalized (NFKC), as api.services.passwords hashes it: "é" x 36 typed
    decomposed (a Mac's NFD) is 108 bytes as sent but 72 hashed; U+FDFA is 3 bytes as sent
    but 33 normalized. current_password is judged as a login judges it (any hashable form)."""
    decomposed = unicodedata.normalize("NFD", "é" * 36)
    base = {"email": "pw@example.com", "full_name": "Pat"}
    assert UserCreate(**base, password=decomposed).password == decomposed
    with pytest.raises(ValidationError, match="once normalized"):
        UserCreate(**base, password="\ufdfa" * 8)
    assert UserUpdate(current_password=decomposed).current_password == decomposed
    assert UserUpdate(current_password="\ufdfa" * 8).current_password == "\ufdfa" * 8
    with pytest.raises(ValidationError, match="at most 72 bytes"):
        UserUpdate(current_password="\ufdfa" * 25)
