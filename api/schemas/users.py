"""User models: what a client sends and what it gets back (never a password or its hash)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from api.auth.passwordtext import (
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_LENGTH,
    new_password_problem,
    password_forms,
)
from api.schemas.lookalikes import (
    refuse_display_name,
    refuse_invisible_name,
    refuse_lookalike_email,
)

Email = Annotated[
    EmailStr,
    BeforeValidator(refuse_display_name),
    AfterValidator(refuse_lookalike_email),
    Field(
        description="Unique, case-insensitively. The address alone: the display-name form"
        " (`Jo <jo@example.com>`) is refused (422), as is an address whose local part or"
        " domain label holds characters that show nothing (format characters, variation selectors,"
        " Hangul fillers, blank Braille), combining marks on Latin, Cyrillic or Greek letters,"
        " compatibility characters (fullwidth, mathematical letters, ligatures), mixes"
        " scripts (Latin with Cyrillic or Greek; Latin with Han, Kana, Bopomofo or Hangul is"
        " allowed) or reads as ASCII though it is not: every character looks like an ASCII"
        " one (apple spelled in Cyrillic letters, admin with a dotless i; Unicode's"
        " confusables)"
    ),
]
FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(refuse_invisible_name),
    Field(
        description="1 to 100 characters, some visible; surrounding whitespace is trimmed;"
        " no control or format characters (newlines, escapes, bidi overrides, zero-width)"
    ),
]
Age = Annotated[int, Field(strict=True, gt=0, lt=150)]
# Both limits are counted on the normalized form (``new_password_problem``). max_length only
# bounds the work before it: typed decomposed (NFD), a password takes up to four code points
# per character. minLength is in the document for clients; the server counts normalized.
Password = Annotated[
    str,
    Field(
        max_length=4 * MAX_PASSWORD_BYTES,
        json_schema_extra={"minLength": MIN_PASSWORD_LENGTH},
        description="8 characters to 72 UTF-8 bytes, both counted once normalized (NFKC)",
    ),
]
Role = Literal["user", "admin"]
RoleField = Annotated[
    Role | None, Field(description="`user` (the default) or `admin`; only an admin may set it")
]


def _check_new_password(value: str | None) -> str | None:
    problem = None if value is None else new_password_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_current_password(value: str | None) -> str | None:
    # Checked as a login checks it: any form of it (normalized, or as sent for a hash made
    # before normalization) that bcrypt could have hashed.
    if value is not None and not password_forms(value):
        raise ValueError("password must be at most 72 bytes in UTF-8")
    return value


class UserCreate(BaseModel):
    """A new user (open registration)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "full_name": "Ada Lovelace",
                    "age": 36,
                    "password": "correct horse battery",
                }
            ]
        },
    )

    email: Email
    full_name: FullName
    age: Age | None = None
    password: Password
    role: RoleField = None

    _new_password = field_validator("password")(_check_new_password)


class UserUpdate(BaseModel):
    """A partial update; ``age: null`` removes the age, other fields may not be null.

    Changing your own password or email needs ``current_password`` (your email sent again,
    in any case, is no change); changing a role needs an admin. A new password or role ends
    every session of that user.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"full_name": "Ada King"},
                {"password": "a new long passphrase", "current_password": "correct horse battery"},
                {"email": "ada.king@example.com", "current_password": "correct horse battery"},
            ]
        },
    )

    # ``None`` is the "not sent" default only, except for age: the document shows no null
    # (SkipJsonSchema), and a null sent is refused below.
    email: Email | SkipJsonSchema[None] = None
    full_name: FullName | SkipJsonSchema[None] = None
    age: Age | None = None
    password: Password | SkipJsonSchema[None] = None
    current_password: Annotated[
        str | None,
        Field(
            max_length=4 * MAX_PASSWORD_BYTES,
            description="Required to change your own password or email (not to send your"
            " email unchanged)",
        ),
    ] = None
    role: Annotated[
        Role | SkipJsonSchema[None],
        Field(description="`user` or `admin`; only an admin may change it"),
    ] = None

    _new_password = field_validator("password")(_check_new_password)
    _current_password_bytes = field_validator("current_password")(_check_current_password)

    @field_validator("email", "full_name", "password", "role")
    @classmethod
    def refuse_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null")
        return value


class UserPublic(BaseModel):
    """A user as every endpoint returns it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1",
                    "email": "ada@example.com",
                    "full_name": "Ada Lovelace",
                    "age": 36,
                    "role": "user",
                    "created_at": "2024-05-01T12:00:00.000000Z",
                    "updated_at": "2024-05-01T12:00:00.000000Z",
                    "version": 1,
                }
            ]
        }
    )

    id: str
    email: EmailStr
    full_name: str
    age: int | None = None
    role: Role = "user"
    created_at: datetime
    updated_at: datetime
    version: int = Field(description='Increments on every change; the ETag is W/"<version>"')
