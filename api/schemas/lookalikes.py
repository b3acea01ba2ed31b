"""Text people read as an identity: addresses that could pass for another, names that hide
what they show. Checked on what a user is given (``api.schemas.users``), never on what the
store already holds, so existing accounts keep signing in.
"""

from __future__ import annotations

import unicodedata

# Scripts that UTS #39's "highly restrictive" level lets one string mix (Latin with the
# scripts written alongside it in Japan, Taiwan and Korea); any other mix is refused.
ALLOWED_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# A letter's script is the first word of its Unicode name (``CYRILLIC SMALL LETTER A``), the
# only script data ``unicodedata`` has; these first words name another script's letters.
_SCRIPT_OF_WORD = {
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",
    "HENTAIGANA": "HIRAGANA",
    "ROMAN": "LATIN",
    "TURNED": "LATIN",
}
# What a name may not contain: it is shown to people (and written to terminals, logs, CSV).
_REFUSED_IN_NAMES = {
    "Cc": "a control character",
    "Cf": "a format character (bidi control, zero-width)",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
# Letters and symbols that show no glyph (the Hangul fillers, the blank Braille pattern): a
# name of only these is as invisible as one of spaces.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def letter_script(char: str) -> str | None:
    """The script of a letter; ``None`` for what goes with any script: digits, punctuation,
    symbols, combining marks and modifier letters (category ``Lm``: U+02BC, U+30FC).

    Several historic scripts whose names start alike (``OLD ITALIC``, ``OLD PERSIAN``) count
    as one; letters ``unicodedata`` has no name for (Tangut) count as one script of their own.
    """
    if unicodedata.category(char) not in ("Lu", "Ll", "Lt", "Lo"):
        return None
    word = unicodedata.name(char, "UNNAMED").split(" ", 1)[0]
    return _SCRIPT_OF_WORD.get(word, word)


def lookalike_problem(part: str) -> str | None:
    """Why one part of an address (the local part, or a domain label) could pass for another
    address, or ``None``: a character NFKC changes (fullwidth letters, mathematical bold ones,
    the ligature fi), or letters of scripts that do not go together (Latin ``a`` with Cyrillic
    U+0430). Lookalikes within one script (dotless i U+0131, U+0130) are not caught here."""
    for char in part:
        compatible = unicodedata.normalize("NFKC", char)
        if compatible != char:
            name = unicodedata.name(char, "")
            return f"has U+{ord(char):04X} {name}, a compatibility form of {compatible!r}"
    scripts = {script for char in part if (script := letter_script(char)) is not None}
    if len(scripts) > 1 and not any(scripts <= mix for mix in ALLOWED_SCRIPT_MIXES):
        named = ", ".join(sorted(script.title() for script in scripts))
        return f"mixes letters of several scripts ({named})"
    return None


def refuse_lookalike_email(email: str) -> str:
    """An address as ``EmailStr`` normalized it (NFC; the domain lowercased, IDNA-decoded) that
    could not be taken for another: checked on every address a user is given, so that
    ``admin@example.com`` with a Cyrillic U+0430 for the ``a`` is refused. Only new
    addresses: the store's data, its unique index and logins are untouched."""
    local, _, domain = email.rpartition("@")
    parts = [("the local part", local)] + [
        ("the domain label", label) for label in domain.split(".")
    ]
    for where, part in parts:
        problem = lookalike_problem(part)
        if problem is not None:
            raise ValueError(f"{where} {part!r} {problem}, so the address could pass for another")
    return email


def refuse_invisible_name(name: str) -> str:
    """A name shown to people as it is: no control characters (NUL, ANSI escapes, newlines),
    no format characters (bidi overrides, zero-width characters), no line or paragraph
    separators, and something visible (a letter, digit, punctuation or symbol)."""
    for char in name:
        kind = _REFUSED_IN_NAMES.get(unicodedata.category(char))
        if kind is not None:
            raise ValueError(f"may not contain U+{ord(char):04X}, {kind}")
    if not any(unicodedata.category(char)[0] in "LNPS" and char not in _BLANK for char in name):
        raise ValueError("must contain a visible character")
    return name
