"""The text of a password as it is hashed and checked: normalized, and within bcrypt's bytes.

Pure functions with no imports from the app: ``api.settings`` checks ``ADMIN_PASSWORD`` with
them, ``api.schemas.users`` a new password, and ``api.services.passwords`` hashes and verifies
with them.
"""

from __future__ import annotations

import unicodedata

MAX_PASSWORD_BYTES = 72
"""bcrypt reads no more (bcrypt 5 refuses more): the limit on the form that is hashed."""
MIN_PASSWORD_LENGTH = 8
"""Characters (code points) of the form that is hashed: ``e`` and U+0301 typed are one ``é``."""


def normalize_password(password: str) -> str:
    """The form a password is hashed and checked in: every Unicode space separator as U+0020
    (PRECIS OpaqueString, RFC 8265), then NFKC (NIST SP 800-63B 5.1.1.2)."""
    spaced = "".join(" " if unicodedata.category(char) == "Zs" else char for char in password)
    return unicodedata.normalize("NFKC", spaced)


def new_password_problem(password: str) -> str | None:
    """Why a password may not be set, or ``None``: the one rule for every password set
    (registration, changes, ``ADMIN_PASSWORD``), on the normalized form, as it is hashed: at
    least 8 characters (so ``e`` + U+0301 four times, ``éééé``, is short, and ``ﬀﬀﬀﬀ``,
    ``ffffffff``, is not) and at most 72 UTF-8 bytes. A login checks less (``password_forms``):
    an old password set before these rules still signs in."""
    normalized = normalize_password(password)
    if len(normalized) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters once normalized (NFKC)"
    if not fits_bcrypt(normalized):
        return f"password must be at most {MAX_PASSWORD_BYTES} UTF-8 bytes once normalized (NFKC)"
    return None


def fits_bcrypt(password: str) -> bool:
    """Whether bcrypt can hash it: at most 72 bytes in UTF-8 (a lone surrogate has none)."""
    try:
        return len(password.encode()) <= MAX_PASSWORD_BYTES
    except UnicodeEncodeError:
        return False


def password_forms(password: str) -> list[str]:
    """The forms of a password checked against a stored hash: the normalized one, then the
    password as sent if that differs (a hash made before normalization came in); each only
    if bcrypt takes it. Empty: no form could ever have been hashed (the login's 422).

    Trade-off: a password whose forms differ costs two bcrypt checks when wrong. Login timing
    still does not tell accounts apart: an unknown email checks the same forms against the
    dummy hash, so both failures cost the same, and the caller knows its own password's
    forms anyway. The price is twice the CPU for such guesses, within AUTH_RATE_LIMIT."""
    normalized = normalize_password(password)
    forms = [normalized] if normalized == password else [normalized, password]
    return [form for form in forms if fits_bcrypt(form)]
