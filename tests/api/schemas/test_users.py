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
        "user1\u0e51@example.com",  # digits go with any script (Arabic U+0661 reads as l)
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


def test_lookalikes_within_latin_are_caught() -> None:
    """Dotless i and dotted capital I are Latin letters NFKC keeps, so neither the script nor
    the compatibility rule applies; they read as ASCII (``test_lookalikes_ascii``)."""
    assert "reads as the ASCII 'admin'" in str(lookalike_problem("adm\u0131n"))
    assert "reads as the ASCII 'INFO'" in str(lookalike_problem("\u0130NFO"))


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
        "Required to change your own password or email (not to send your email unchanged)"
    )
    assert "mixes scripts" in properties["email"]["description"]
    assert "characters that show nothing" in properties["email"]["description"]
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


# Each shows as admin@example.com (or example.com) where it is displayed.
INVISIBLE = [
    ("admin\u115f@example.com", "has U+115F HANGUL CHOSEONG FILLER, which shows nothing"),
    ("admin\u1160@example.com", "has U+1160 HANGUL JUNGSEONG FILLER, which shows nothing"),
    ("admin\u2800@example.com", "has U+2800 BRAILLE PATTERN BLANK, which shows nothing"),
    ("admin\u034f@example.com", "has U+034F COMBINING GRAPHEME JOINER, which shows nothing"),
    ("admin\ufe0f@example.com", "has U+FE0F VARIATION SELECTOR-16, which shows nothing"),
    ("admin\U000e0100@example.com", "has U+E0100 VARIATION SELECTOR-17, which shows nothing"),
    ("admin\u180b@example.com", "has U+180B MONGOLIAN FREE VARIATION SELECTOR ONE"),
    ("admin\u17b4@example.com", "has U+17B4 KHMER VOWEL INHERENT AQ, which shows nothing"),
    ("admin\u0336@example.com", "has U+0336 COMBINING LONG STROKE OVERLAY, a combining mark on 'n'"),  # noqa: E501
    ("ma\u0304\u0301x@example.com", "U+0301 COMBINING ACUTE ACCENT, a combining mark on '\u0101'"),
    ("\u0438\u0432\u0430\u043d\u0308@example.com", "U+0308 COMBINING DIAERESIS, a combining mark on"),  # noqa: E501
    ("admin1\u20e3@example.com", "U+20E3 COMBINING ENCLOSING KEYCAP, a combining mark on '1'"),
    ("admin@exa\u0336mple.com", "the domain label 'exa\u0336mple' has U+0336"),
]  # fmt: skip


@pytest.mark.parametrize(("email", "expected"), INVISIBLE)
def test_addresses_with_what_shows_nothing_are_refused(email: str, expected: str) -> None:
    """Default-ignorable characters (Unicode derives them: unicodedata has no such property),
    blank ones, and marks NFC did not compose on a Latin, Cyrillic or Greek letter."""
    message = email_error(email)
    assert expected in message and "could pass for another" in message


@pytest.mark.parametrize(
    "email",
    [
        "jose\u0301@example.com",  # NFC composes it: José
        "\u0928\u092e\u0938\u094d\u0924\u0947@example.in",  # Devanagari vowel signs, virama
        "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35@example.th",  # Thai vowel and tone marks
        "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd@example.il",  # Hebrew points
        "\u03b1\u03b8\u03b7\u03bd\u03ac@example.gr",  # Greek, accent precomposed
        "\u0627\u062d\u0645\u062f@example.com",  # Arabic
        "\u4e2d\u6587@\u4f8b\u3048.jp",  # Han, an IDN domain
    ],
)  # fmt: skip
def test_addresses_in_scripts_that_need_their_marks_are_accepted(email: str) -> None:
    accepted = UserCreate(email=email, full_name="Ada", password=PASSWORD).email
    assert accepted == unicodedata.normalize("NFC", email)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("e\u0301" * 4, "at least 8 characters once normalized"),  # hashed as 4: "éééé"
        ("short", "at least 8 characters once normalized"),
        ("\ufdfa" * 8, "at most 72 UTF-8 bytes once normalized"),
    ],
)
def test_a_new_password_is_measured_as_it_is_hashed(password: str, message: str) -> None:
    base = {"email": "pw@example.com", "full_name": "Pat"}
    for model, fields in ((UserCreate, base), (UserUpdate, {})):
        with pytest.raises(ValidationError) as info:
            model.model_validate({**fields, "password": password})
        (error,) = [e for e in info.value.errors() if e["loc"][-1] != "none"]
        assert error["loc"][0] == "password" and message in str(error["msg"]), error


def test_a_password_short_as_sent_but_long_enough_normalized_is_accepted() -> None:
    """Four ff ligatures are 8 letters once NFKC spells them out (``ffffffff``, hashed)."""
    ligatures = "\ufb00" * 4
    base = {"email": "pw@example.com", "full_name": "Pat"}
    assert UserCreate.model_validate({**base, "password": ligatures}).password == ligatures
    assert UserUpdate(password=ligatures).password == ligatures
    assert UserCreate.model_json_schema()["properties"]["password"]["minLength"] == 8


def test_current_password_keeps_the_login_rule() -> None:
    """Only the bytes, as a login: a password set before the rules still signs in."""
    assert UserUpdate(current_password="short").current_password == "short"


@pytest.mark.parametrize(
    "email", ["Ada <ada@example.com>", "<ada@example.com>", "ada>@example.com"]
)
def test_the_display_name_form_is_refused_not_cut_to_the_address(email: str) -> None:
    """EmailStr alone would keep ``ada@example.com`` and drop the name without a word."""
    assert "without a display name" in email_error(email)
    assert UserUpdate(email=" ada@example.com").email == "ada@example.com"
