"""Text people read as an identity: addresses that could pass for another, names that hide
what they show. Checked on what a user is given (``api.schemas.users``), never on what the
store already holds, so existing accounts keep signing in.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib import resources

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
# Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 14), for which
# ``unicodedata`` has no property: what renderers show nothing for. Unicode derives it as
# Other_Default_Ignorable_Code_Point + Cf + Variation_Selector, less a few visible Cf (U+0600
# ARABIC NUMBER SIGN...). Here: all of Cf by category (those few have no place in an address
# either), and these ranges for the rest: the grapheme joiner U+034F, the Hangul fillers,
# Khmer inherent vowels, Mongolian free variation selectors (with U+180E), U+2060-206F,
# variation selectors, reserved U+FFF0-FFF8, and the tag and VS17-256 block U+E0000-E0FFF.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)
# Unicode's confusables (UTS #39's confusables.txt, Unicode 15.1) as the confusable-homoglyphs
# package ships them (pinned in constraints.txt): a JSON object from each character (or
# sequence) to the ones confusables.txt maps it to or from, as ``[{"c": text, "n": names}]``.
# Right-to-left characters keep the direction marks they had in the file's comments.
_CONFUSABLES = ("confusable_homoglyphs", "confusables.json")
_DIRECTION_MARKS = str.maketrans("", "", "\u200e\u200f")
# Not a confusable in the data (its dot shows), but Turkish and Azeri lowercase U+0130 to a
# plain i (elsewhere to i + U+0307, which fonts draw as an i): ``İNFO`` is ``info`` there.
_CASE_READINGS = {"\u0130": "I"}
# Scripts whose accented letters Unicode encodes precomposed: after EmailStr's NFC, a combining
# mark still on one of their letters (a stroke overlay, a second accent) composed with nothing
# and only decorates it. Other scripts (Devanagari, Thai, Hebrew points) need their marks.
_PRECOMPOSED_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


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
    address, or ``None``: a character that shows nothing (``invisible_problem``), a character
    NFKC changes (fullwidth letters, mathematical bold ones, the ligature fi), letters of
    scripts that do not go together (Latin ``a`` with Cyrillic U+0430), or only characters
    that pass for ASCII (``ascii_lookalike``): ``apple`` spelled in Cyrillic (U+0430 U+0440
    U+0440 U+04CF U+0435), ``admin`` with a dotless i (U+0131). A Cyrillic or Greek part with a
    letter that looks like no ASCII one (``иван``: и) is a genuine one, kept."""
    problem = invisible_problem(part)
    if problem is not None:
        return problem
    for char in part:
        compatible = unicodedata.normalize("NFKC", char)
        if compatible != char:
            name = unicodedata.name(char, "")
            return f"has U+{ord(char):04X} {name}, a compatibility form of {compatible!r}"
    scripts = {script for char in part if (script := letter_script(char)) is not None}
    if len(scripts) > 1 and not any(scripts <= mix for mix in ALLOWED_SCRIPT_MIXES):
        named = ", ".join(sorted(script.title() for script in scripts))
        return f"mixes letters of several scripts ({named})"
    reading = ascii_lookalike(part)
    if reading is not None:
        return f"reads as the ASCII {reading!r}: each of its characters passes for ASCII"
    return None


def ascii_lookalike(part: str) -> str | None:
    """The ASCII text a non-ASCII ``part`` passes for when every character of it is ASCII or
    looks like ASCII, else ``None``: UTS #39's whole-script confusable with an ASCII address
    (its skeleton is ASCII). ``part`` is NFC, as EmailStr leaves it: NFD, the skeleton's
    first step, would only split accents off, and no mark looks like ASCII."""
    if part.isascii():
        return None
    readings, read = ascii_readings(), []
    for char in part:
        text = char if char.isascii() else readings.get(char)
        if text is None:
            return None
        read.append(text)
    return "".join(read)


@cache
def ascii_readings() -> dict[str, str]:
    """Each non-ASCII character that passes for ASCII text, with that text: U+0430 ``a``,
    U+0131 dotless i ``i``, U+00E6 ``ae`` (Unicode's confusables), U+0130 ``I`` (its case).
    Read once per process, at the first address checked: the data are 900 kB of JSON (about
    50 ms), of which about 1,800 characters read as ASCII."""
    package, name = _CONFUSABLES
    linked: dict[str, list[str]] = {}
    for key, entries in json.loads(resources.files(package).joinpath(name).read_bytes()).items():
        near = linked.setdefault(key.translate(_DIRECTION_MARKS), [])
        near.extend(entry["c"].translate(_DIRECTION_MARKS) for entry in entries)
    readings = dict(_CASE_READINGS)
    for char, near in linked.items():
        if len(char) != 1 or char.isascii():
            continue
        # The data link a character to its prototype and a prototype to every character mapped
        # to it: two steps reach all a character is confusable with, the prototype first.
        group = [*near, *(far for text in near for far in linked.get(text, ()))]
        ascii_text = next((text for text in group if text and text.isascii()), None)
        if ascii_text is not None:
            readings[char] = ascii_text
    return readings


def invisible_problem(part: str) -> str | None:
    """Why ``part`` shows other than it is, or ``None``: a default-ignorable character (format
    characters, variation selectors, the grapheme joiner, Hangul fillers, tags), a blank one
    (``_BLANK``: blank Braille), or a combining mark on a Latin, Cyrillic or Greek letter, or
    on nothing or ASCII (a stroke overlay on ``n``): ``admin`` + U+115F shows as ``admin``."""
    base: str | None = None  # the character the marks that follow sit on
    for char in part:
        category = unicodedata.category(char)
        if category == "Cf" or char in _BLANK or _is_ignorable(char):
            return f"has {_described(char)}, which shows nothing"
        if category not in ("Mn", "Me"):
            base = char
        elif base is None:
            return f"starts with {_described(char)}, a combining mark"
        elif base.isascii() or letter_script(base) in _PRECOMPOSED_SCRIPTS:
            return f"has {_described(char)}, a combining mark on {base!r}"
    return None


def _is_ignorable(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _IGNORABLE_RANGES)


def _described(char: str) -> str:
    """``U+0336 COMBINING LONG STROKE OVERLAY``; reserved code points have no name."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def refuse_display_name(sent: object) -> object:
    """An address alone: ``EmailStr`` also takes the display-name form (``Jo <jo@x.org>``,
    ``<jo@x.org>``) and keeps only the address, so a client that sent a name would see it
    dropped without a word. Angle brackets cannot appear in an unquoted address (and quoted
    local parts are refused), so their presence is that form: 422."""
    if isinstance(sent, str) and ("<" in sent or ">" in sent):
        raise ValueError("give the address alone, without a display name or angle brackets")
    return sent


def refuse_lookalike_email(email: str) -> str:
    """An address as ``EmailStr`` normalized it (NFC; the domain lowercased, IDNA-decoded) that
    could not be taken for another: checked on every address a user is given, so that
    ``admin@example.com`` with a Cyrillic U+0430 for the ``a``, with a dotless i, with an
    invisible U+115F after ``admin``, or ``apple.com`` all in Cyrillic, is refused. Only new
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
