"""Addresses that read as ASCII though they are not (UTS #39's whole-script confusables with an
ASCII address, and the dotless and dotted i), without a server: refused with a 422 message
that says which ASCII they pass for; addresses with a letter that looks like no ASCII one are
genuine and kept."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.schemas.lookalikes import ascii_lookalike, ascii_readings
from api.schemas.users import UserCreate, UserUpdate
from tests.api.schemas.test_users import PASSWORD, email_error


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        # One script each, so the mixed-script rule lets them through: all Cyrillic...
        ("\u0455\u0441\u043e\u0440\u0435@example.com", "the local part 'ѕсоре' reads as the ASCII 'scope'"),  # noqa: RUF001, E501
        ("\u0440\u0430\u0443\u0440\u0430\u006c@example.com", "mixes letters"),  # a Latin l: mixed
        ("\u0440\u0430\u0443\u0440\u0430@example.com", "reads as the ASCII 'paypa'"),
        ("\u0410\u0412\u0421@example.com", "reads as the ASCII 'ABC'"),  # capitals
        # ...all Greek, all Armenian,
        ("\u0391\u0392\u0395@example.com", "reads as the ASCII 'ABE'"),
        ("\u0578\u0585@example.com", "reads as the ASCII 'no'"),
        # Latin letters NFKC keeps: the dotless i, and the dotted capital I, which Turkish and
        # Azeri lowercase to a plain i,
        ("adm\u0131n@example.com", "the local part 'admın' reads as the ASCII 'admin'"),  # noqa: RUF001
        ("\u0130NFO@example.com", "reads as the ASCII 'INFO'"),
        # a digit of another script beside Latin ones (digits go with any script),
        ("user1\u0661@example.com", "reads as the ASCII 'user1l'"),
        # and a domain label: apple.com's homograph, and another under a Cyrillic TLD.
        ("x@\u0430\u0440\u0440\u04cf\u0435.com", "the domain label 'аррӏе' reads as the ASCII"),  # noqa: RUF001
        ("x@\u0455\u0441\u043e\u0440\u0435.\u0440\u0444", "the domain label 'ѕсоре' reads as"),  # noqa: RUF001
        ("info@\u0131nfo.com", "the domain label 'ınfo' reads as the ASCII 'info'"),  # noqa: RUF001
    ],
)  # fmt: skip
def test_addresses_that_read_as_ascii_are_refused_saying_as_what(email: str, expected: str) -> None:
    message = email_error(email)
    assert expected in message and "could pass for another" in message, message


@pytest.mark.parametrize(
    "email",
    [
        "\u0438\u0432\u0430\u043d@example.com",  # Cyrillic, и looks like no ASCII letter
        "\u0441\u043e\u043a@example.com",  # Cyrillic, к neither (in Unicode's data)
        "ivan@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",  # п, ф
        "\u03b1\u03b8\u03b7\u03bd\u03b1@example.gr",  # Greek, θ
        "\u03b1\u03b2\u03b3@example.gr",
        "k\u0131\u015f@example.com.tr",  # a dotless i beside ş, which reads as no ASCII
        "stra\u00dfe@example.de",
        "s\u00f8ren@example.dk",
        "jos\u00e9@example.com",
        "\u4e2d\u6587@\u4f8b\u3048.jp",
        "\u0627\u062d\u0645\u062f@example.com",
        "user1\u0e51@example.th",  # a Thai digit reads as no ASCII one
    ],
)
def test_addresses_with_a_letter_that_reads_as_no_ascii_are_accepted(email: str) -> None:
    assert UserCreate(email=email, full_name="Ada", password=PASSWORD).email == email


def test_ligature_letters_read_as_their_two_letters() -> None:
    """Unicode's data counts æ and œ as ``ae`` and ``oe``: an address of them and ASCII only
    (a Danish ``kær``, a French ``cœur``) is refused too; with another accented letter it is
    not (``bjørnæs``: ø reads as no ASCII)."""
    assert ascii_lookalike("k\u00e6r") == "kaer"
    assert ascii_lookalike("c\u0153ur") == "coeur"
    assert ascii_lookalike("bj\u00f8rn\u00e6s") is None


def test_a_change_of_email_is_checked_alike() -> None:
    with pytest.raises(ValidationError) as info:
        UserUpdate(email="adm\u0131n@example.com")
    (error,) = [e for e in info.value.errors() if e["loc"][-1] != "none"]  # not the null member
    assert error["loc"][0] == "email" and "reads as the ASCII 'admin'" in str(error["msg"])


def test_ascii_text_is_never_a_lookalike() -> None:
    assert ascii_lookalike("admin") is None
    assert ascii_lookalike("") is None


def test_the_readings_come_from_the_pinned_confusables_data() -> None:
    """The package's data file as this code reads it (a new layout would fail here first):
    non-ASCII characters only, each read as ASCII text."""
    readings = ascii_readings()
    assert 1500 < len(readings) < 2500, len(readings)
    assert all(not char.isascii() and text.isascii() for char, text in readings.items())
    expected = {
        "\u0430": "a",  # Cyrillic a
        "\u0440": "p",  # Cyrillic er
        "\u0131": "i",  # dotless i
        "\u0130": "I",  # dotted capital I: by its case, not the data
        "\u0391": "A",  # Greek capital alpha
        "\u0585": "o",  # Armenian oh
        "\u0661": "l",  # Arabic-Indic one, written right to left in the data's comments
        "\u00e6": "ae",
    }
    assert {char: readings.get(char) for char in expected} == expected
    for genuine in ("\u0438", "\u043f", "\u00f8", "\u00e9", "\u4e2d"):  # и п ø é 中
        assert genuine not in readings
