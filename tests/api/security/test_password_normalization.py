"""One password however a keyboard spells it: passwords are hashed and checked normalized
(Unicode spaces as U+0020, then NFKC), hashes made of the password as sent before that still
log in (and are replaced), and bcrypt's 72 bytes count the normalized form."""

from __future__ import annotations

import secrets
import unicodedata
from pathlib import Path

import httpx
import pytest
from pwdlib.hashers.bcrypt import BcryptHasher

from api.settings import DEV_ADMIN_PASSWORD
from tests.support.auth import production_env
from tests.support.factories import assert_error, user_payload
from tests.support.logs import wait_for_records
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration
TOKEN_URL = "/api/v1/auth/token"
ACCENTED = unicodedata.normalize("NFC", "pässwörd-été")


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def fullwidth(text: str) -> str:
    """ASCII letters as their fullwidth forms (U+FF41...), as an East Asian IME types them."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in text)


FULLWIDTH_DEV = fullwidth("dev") + DEV_ADMIN_PASSWORD.removeprefix("dev")


def register(http: httpx.Client, password: str) -> str:
    payload = user_payload(password=password)
    response = http.post("/api/v1/users", json=payload)
    assert response.status_code == 201, response.text
    return str(payload["email"])


def log_in(http: httpx.Client, email: str, password: str) -> httpx.Response:
    return http.post(TOKEN_URL, data={"username": email, "password": password})


def assert_logged_in(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["access_token"]
    assert response.headers["cache-control"] == "no-store"


def stored_hash(stack: Stack, email: str) -> dict[str, object]:
    args = {"table": "users", "where": [["email", "eq", email]], "include_hidden": True}
    record: dict[str, object] = store_call(stack, "find", args)["items"][0]
    return record


@pytest.mark.parametrize(
    ("registered", "typed"),
    [
        (ACCENTED, nfd(ACCENTED)),  # macOS keyboards send decomposed accents
        (nfd(ACCENTED), ACCENTED),
        ("correct\u00a0horse battery", "correct horse battery"),  # no-break space
        ("correct horse battery", "correct\u3000horse\u2003battery"),  # ideographic, em space
        (fullwidth("password one"), "password one"),
    ],
)
def test_a_password_logs_in_however_it_is_spelled(
    anon: httpx.Client, registered: str, typed: str
) -> None:
    email = register(anon, registered)
    assert_logged_in(log_in(anon, email, registered))
    assert_logged_in(log_in(anon, email, typed))


@pytest.mark.parametrize("charset", ["", "; charset=utf-8"])
def test_a_form_with_raw_utf8_logs_in_as_an_escaped_one_does(
    anon: httpx.Client, charset: str
) -> None:
    """QA: ``curl -d 'password=pässwörd'`` sends the UTF-8 bytes unescaped; Starlette read
    them as Latin-1 ("pÃ¤sswÃ¶rd"), so the right password (or a non-ASCII email) was a 401.
    Browsers (WHATWG) read both spellings as UTF-8, and so does the API (api/forms.py)."""
    payload = user_payload(password=ACCENTED)
    email = payload["email"] = str(payload["email"]).replace("@", ".josé@", 1)
    assert anon.post("/api/v1/users", json=payload).status_code == 201
    headers = {"content-type": "application/x-www-form-urlencoded" + charset}
    raw = f"username={email}&password={ACCENTED}".encode()
    assert_logged_in(anon.post(TOKEN_URL, content=raw, headers=headers))
    # raw bytes and escapes in one field, and + as a space
    mixed = "password=p%C3%A4ssw" + "örd-été" + "&username=" + email.replace("@", "%40")
    assert_logged_in(anon.post(TOKEN_URL, content=mixed.encode(), headers=headers))
    wrong = anon.post(TOKEN_URL, content=raw.replace("é".encode(), b"e"), headers=headers)
    assert_error(wrong, 401, "INVALID_CREDENTIALS")


def test_the_72_bytes_count_the_normalized_form(anon: httpx.Client) -> None:
    # 72 bytes composed; 108 bytes (72 code points) as a Mac sends it decomposed.
    email = register(anon, "é" * 36)
    assert_logged_in(log_in(anon, email, nfd("é" * 36)))
    # U+1F8F is 3 bytes composed and 4 code points decomposed: 96 code points typed.
    email = register(anon, "\u1f8f" * 24)
    assert_logged_in(log_in(anon, email, nfd("\u1f8f" * 24)))
    # U+FDFA is 3 bytes, but NFKC spells it out in 33: never hashable, so refused when set.
    refused = anon.post("/api/v1/users", json=user_payload(password="\ufdfa" * 8))
    error = assert_error(refused, 422, "VALIDATION_ERROR")
    (detail,) = error["details"]
    assert detail["field"] == "body.password"
    assert detail["message"].endswith(
        "password must be at most 72 UTF-8 bytes once normalized (NFKC)"
    )
    # At login it is only a wrong password: a hash of it as sent (24 bytes) may predate
    # normalization. 422 is for a password neither form of which bcrypt takes.
    assert_error(log_in(anon, email, "\ufdfa" * 8), 401, "INVALID_CREDENTIALS")
    too_long = log_in(anon, email, "\ufdfa" * 25)
    assert assert_error(too_long, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "body.password"
    )


def test_the_8_characters_count_the_normalized_form(anon: httpx.Client) -> None:
    """ "e" and U+0301 four times is 8 code points typed but "éééé" hashed: too short. Four ff
    ligatures are 4 typed but "ffffffff" hashed: long enough, and log in spelled out."""
    decomposed = "e\u0301" * 4
    refused = anon.post("/api/v1/users", json=user_payload(password=decomposed))
    error = assert_error(refused, 422, "VALIDATION_ERROR")
    (detail,) = error["details"]
    assert detail["field"] == "body.password"
    assert "password must be at least 8 characters once normalized (NFKC)" in detail["message"]
    email = register(anon, "\ufb00" * 4)
    assert_logged_in(log_in(anon, email, "ffffffff"))
    token = log_in(anon, email, "ffffffff").json()["access_token"]
    change = {"password": decomposed, "current_password": "ffffffff"}
    headers = {"Authorization": f"Bearer {token}"}
    short = anon.patch("/api/v1/users/me", json=change, headers=headers)
    assert assert_error(short, 422, "VALIDATION_ERROR")["details"][0]["field"] == "body.password"


def test_a_hash_of_the_password_as_sent_still_logs_in_and_is_replaced(
    stack: Stack, anon: httpx.Client
) -> None:
    """An account registered before normalization, from a Mac: its hash is of the NFD form."""
    email = f"legacy-{secrets.token_hex(6)}@example.com"
    legacy = BcryptHasher(rounds=4).hash(nfd(ACCENTED))  # the stack's BCRYPT_ROUNDS
    record = {"email": email, "full_name": "Legacy", "role": "user", "password_hash": legacy}
    store_call(stack, "insert", {"table": "users", "record": record})
    wrong = log_in(anon, email, nfd("pässwörd-étè"))
    unknown = log_in(anon, f"nobody-{secrets.token_hex(6)}@example.com", nfd(ACCENTED))
    assert assert_error(wrong, 401, "INVALID_CREDENTIALS") == assert_error(
        unknown, 401, "INVALID_CREDENTIALS"
    )
    assert stored_hash(stack, email)["password_hash"] == legacy
    assert_logged_in(log_in(anon, email, nfd(ACCENTED)))  # as it was typed at registration
    replaced = stored_hash(stack, email)
    assert replaced["password_hash"] != legacy and replaced["version"] == 2
    assert BcryptHasher().verify(ACCENTED, str(replaced["password_hash"]))  # normalized
    assert_logged_in(log_in(anon, email, ACCENTED))  # and now typed on any keyboard
    assert_logged_in(log_in(anon, email, nfd(ACCENTED)))


def test_a_wrong_password_is_the_same_401_as_an_unknown_email(anon: httpx.Client) -> None:
    email = register(anon, ACCENTED)
    answers = [
        log_in(anon, email, nfd("pässwörd-étè")),
        log_in(anon, f"nobody-{secrets.token_hex(6)}@example.com", nfd(ACCENTED)),
    ]
    errors = [assert_error(r, 401, "INVALID_CREDENTIALS") for r in answers]
    assert errors[0] == errors[1]
    assert all(r.headers["www-authenticate"] == "Bearer" for r in answers)


def test_the_development_password_in_other_letters_is_refused_in_production(
    tmp_path: Path,
) -> None:
    """Normalized, the fullwidth spelling of ``make run``'s admin password is that password:
    production refuses it at login and when set, as it refuses the password itself."""
    production = production_env(STORE_DATA_DIR=str(tmp_path))
    with running_stack(workers=1, extra_env=production) as prod:
        # A development data directory reused: its admin still has the public password.
        dev_hash = BcryptHasher(rounds=4).hash(DEV_ADMIN_PASSWORD)
        record = {"email": "admin@example.com", "full_name": "A", "role": "admin"}
        store_call(
            prod, "insert", {"table": "users", "record": {**record, "password_hash": dev_hash}}
        )
        before = (prod.workdir / "api.log").stat().st_size
        with httpx.Client(base_url=prod.base_url, timeout=10.0) as http:
            refused = log_in(http, "admin@example.com", FULLWIDTH_DEV)
            assert_error(refused, 401, "INVALID_CREDENTIALS")
            registered = http.post("/api/v1/users", json=user_payload(password=FULLWIDTH_DEV))
        error = assert_error(registered, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == "body.password"
        assert "development admin password" in error["details"][0]["message"]
        wait_for_records(
            prod.workdir / "api.log",
            lambda lines: any(line["event"] == "dev_admin_password_refused" for line in lines),
            start=before,
        )
