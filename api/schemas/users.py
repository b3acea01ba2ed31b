"""User models: what a client sends and what it gets back (never a password or its hash)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(description="1 to 100 characters; surrounding whitespace is trimmed"),
]
Age = Annotated[int, Field(strict=True, gt=0, lt=150)]
Password = Annotated[str, Field(min_length=8, max_length=72, description="8 to 72 UTF-8 bytes")]
Role = Literal["user", "admin"]
RoleField = Annotated[
    Role | None, Field(description="`user` (the default) or `admin`; only an admin may set it")
]


def _check_password_bytes(value: str | None) -> str | None:
    # bcrypt reads only 72 bytes; refuse longer passwords rather than truncate them.
    if value is not None and len(value.encode("utf-8")) > 72:
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

    email: EmailStr
    full_name: FullName
    age: Age | None = None
    password: Password
    role: RoleField = None

    _password_bytes = field_validator("password")(_check_password_bytes)


class UserUpdate(BaseModel):
    """A partial update; ``age: null`` removes the age, other fields may not be null.

    Changing your own password needs ``current_password``; changing a role needs an admin.
    A new password or role ends every session of that user.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"full_name": "Ada King"},
                {"password": "a new long passphrase", "current_password": "correct horse battery"},
            ]
        },
    )

    # ``None`` is the "not sent" default only, except for age: the document shows no null
    # (SkipJsonSchema), and a null sent is refused below.
    email: EmailStr | SkipJsonSchema[None] = None
    full_name: FullName | SkipJsonSchema[None] = None
    age: Age | None = None
    password: Password | SkipJsonSchema[None] = None
    current_password: Annotated[
        str | None, Field(max_length=72, description="Required to change your own password")
    ] = None
    role: Annotated[
        Role | SkipJsonSchema[None],
        Field(description="`user` or `admin`; only an admin may change it"),
    ] = None

    _password_bytes = field_validator("password", "current_password")(_check_password_bytes)

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
