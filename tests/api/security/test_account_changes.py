"""What signs in to an account (its email and password) changes only with the password, once
per check, and only to an address that cannot pass for another; names show as they are.

Against the real stack: a stolen access token cannot move the account to another address;
two changes checked against the same password cannot both be written; lookalike addresses
and names with controls or invisible characters are refused with a 422 at the field.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher

from tests.support.auth import Account, bearer, login, register
from tests.support.factories import PASSWORD, assert_error, token, user_payload
from tests.support.stack import Stack, running_stack
from tests.support.storedirect import store_call

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"
TOKEN_URL = "/api/v1/auth/token"


def new_email() -> str:
    return f"moved-{token()}@example.com"


def assert_no_login(anon: httpx.Client, email: str, password: str) -> None:
    refused = anon.post(TOKEN_URL, data={"username": email, "password": password})
    assert_error(refused, 401, "INVALID_CREDENTIALS")


def assert_field_error(response: httpx.Response, field: str, message: str) -> None:
    error = assert_error(response, 422, "VALIDATION_ERROR")
    details = {detail["field"]: detail["message"] for detail in error["details"]}
    assert field in details, error
    assert message in details[field], error


# --- your own email needs current_password -----------------------------------------------------


def test_a_stolen_token_cannot_move_the_account_to_another_address(anon: httpx.Client) -> None:
    account = register(anon)
    old, moved = account.user["email"], new_email()
    headers = account.headers
    missing = anon.patch(ME, json={"email": moved}, headers=headers)
    assert_field_error(missing, "body.current_password", "required to change your email")
    wrong = anon.patch(ME, json={"email": moved, "current_password": "a guess"}, headers=headers)
    error = assert_error(wrong, 403, "WRONG_PASSWORD")
    assert error["message"] == "current_password is not your password"  # as for a password
    both = anon.patch(ME, json={"email": moved, "password": "a brand new one"}, headers=headers)
    assert_field_error(both, "body.current_password", "required to change your email and password")
    assert anon.get(ME, headers=headers).json()["data"]["email"] == old
    login(anon, old, PASSWORD)  # the owner still signs in
    # The owner, who knows the password, moves the account.
    right = anon.patch(ME, json={"email": moved, "current_password": PASSWORD}, headers=headers)
    assert right.status_code == 200, right.text
    assert right.json()["status"] == "success" and right.json()["data"]["email"] == moved
    login(anon, moved, PASSWORD)
    assert_no_login(anon, old, PASSWORD)


def test_other_changes_of_your_own_need_no_password(anon: httpx.Client) -> None:
    account = register(anon)
    renamed = anon.patch(ME, json={"full_name": "Ada King", "age": 37}, headers=account.headers)
    assert renamed.status_code == 200, renamed.text


def test_your_own_address_sent_again_needs_no_password(anon: httpx.Client) -> None:
    """A client that saves a whole profile form sends the email as stored: no change of
    email, so no current_password, and the email is not written (it cannot put an address
    back over a change that landed meanwhile). Re-cased, it is a change of the stored
    spelling: with current_password."""
    account = register(anon)
    email, headers = account.user["email"], account.headers
    form = anon.patch(ME, json={"email": email, "full_name": "New"}, headers=headers)
    assert form.status_code == 200, form.text
    assert form.json()["status"] == "success"
    assert form.json()["data"]["email"] == email and form.json()["data"]["full_name"] == "New"
    alone = anon.patch(ME, json={"email": email}, headers=headers)  # nothing else to write
    assert alone.status_code == 200 and alone.json()["data"]["email"] == email, alone.text
    assert alone.json()["data"]["version"] == form.json()["data"]["version"]  # no write
    recased = anon.patch(ME, json={"email": email.upper(), "age": 41}, headers=headers)
    assert_field_error(recased, "body.current_password", "required to change your email")
    login(anon, email, PASSWORD)  # still the same account
    # Another address, or a new password with the same address, still needs it.
    moved = anon.patch(ME, json={"email": new_email(), "full_name": "New"}, headers=headers)
    assert_field_error(moved, "body.current_password", "required to change your email")
    both = {"email": email, "password": "a brand new passphrase"}
    refused = anon.patch(ME, json=both, headers=headers)
    assert_field_error(refused, "body.current_password", "required to change your password")


def test_your_own_address_sent_again_through_data_needs_no_password(
    client: httpx.Client, anon: httpx.Client
) -> None:
    """The same through /data/users (admins only), where your own email never changes: sent
    as stored it is left out of the write; re-cased it is refused as any change of it."""
    account = register(anon)
    promoted = client.patch(f"/api/v1/users/{account.id}", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    admin = login(anon, account.user["email"], PASSWORD)
    url, email = f"/api/v1/data/users/{admin.id}", account.user["email"]
    same = anon.patch(
        url, json={"data": {"email": email, "full_name": "Kept"}}, headers=admin.headers
    )
    assert same.status_code == 200, same.text
    assert same.json()["status"] == "success"
    assert same.json()["data"]["full_name"] == "Kept"
    recased = anon.patch(url, json={"data": {"email": email.upper()}}, headers=admin.headers)
    assert_field_error(recased, "body.data.email", "your own email changes only through PATCH")
    moved = anon.patch(url, json={"data": {"email": new_email()}}, headers=admin.headers)
    assert_field_error(moved, "body.data.email", "your own email changes only through PATCH")


def test_an_admin_moves_someone_else_without_their_password(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    moved = new_email()
    response = client.patch(f"/api/v1/users/{account.id}", json={"email": moved})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["email"] == moved
    login(anon, moved, PASSWORD)


def test_an_admin_moves_their_own_account_only_with_their_password(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    promoted = client.patch(f"/api/v1/users/{account.id}", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    admin = login(anon, account.user["email"], PASSWORD)  # the role is in the token
    url, moved = f"/api/v1/users/{admin.id}", new_email()
    missing = anon.patch(url, json={"email": moved}, headers=admin.headers)
    assert_field_error(missing, "body.current_password", "required to change your email")
    with_it = anon.patch(
        url, json={"email": moved, "current_password": PASSWORD}, headers=admin.headers
    )
    assert with_it.status_code == 200, with_it.text
    assert with_it.json()["data"]["email"] == moved


@pytest.fixture(scope="module")
def limited() -> Iterator[Stack]:
    with running_stack(workers=2, extra_env={"AUTH_RATE_LIMIT": "3/minute"}) as stack:
        yield stack


def test_email_change_guesses_are_limited_like_logins(limited: Stack) -> None:
    """current_password on an email change is a password guess: AUTH_RATE_LIMIT per account,
    counted with the password changes' guesses."""
    with httpx.Client(base_url=limited.base_url, timeout=10.0) as http:
        account = register(http)
        moved = new_email()
        guesses = [{"password": "a brand new passphrase"}, {"email": moved}, {"email": moved}]
        for guess in guesses:
            answer = http.patch(
                ME, json={**guess, "current_password": "guess"}, headers=account.headers
            )
            assert_error(answer, 403, "WRONG_PASSWORD")
        right = http.patch(
            ME, json={"email": moved, "current_password": PASSWORD}, headers=account.headers
        )
        refused = assert_error(right, 429, "RATE_LIMITED")
        assert "password attempts" in refused["message"]
        assert 1 <= int(right.headers["retry-after"]) <= 60
        # QA: the general limit's headers (remaining: hundreds) replaced the attempts' own
        assert right.headers["x-rate-limit-limit"] == "3"
        assert right.headers["x-rate-limit-remaining"] == "0"
        assert (
            http.get(ME, headers=account.headers).json()["data"]["email"] == account.user["email"]
        )


@pytest.fixture(scope="module")
def per_address() -> Iterator[Stack]:
    """AUTH_RATE_LIMIT 2 per session (10 per account), each login from its own address."""
    env = {"AUTH_RATE_LIMIT": "2/minute", "TRUSTED_PROXIES": "127.0.0.1"}
    with running_stack(workers=1, extra_env=env) as stack:
        yield stack


def elsewhere() -> dict[str, str]:
    """Another client address: registrations and logins per address are limited to 2 here."""
    octets = ".".join(str(secrets.randbelow(250)) for _ in range(3))
    return {"X-Forwarded-For": f"10.{octets}"}


def new_account(http: httpx.Client) -> dict[str, Any]:
    payload = user_payload()
    assert http.post("/api/v1/users", json=payload, headers=elsewhere()).status_code == 201
    return payload


def sessions_of(http: httpx.Client, email: str, count: int) -> list[dict[str, str]]:
    """``count`` sessions of one account, each logged in from another client address."""
    headers = []
    for _ in range(count):
        pair = http.post(
            TOKEN_URL, data={"username": email, "password": PASSWORD}, headers=elsewhere()
        )
        assert pair.status_code == 200, pair.text
        headers.append(bearer(pair.json()["access_token"]))
    return headers


def test_a_right_password_whose_write_fails_is_not_counted(per_address: Stack) -> None:
    """QA: a right current_password whose write the store then refused (409: the email is
    taken) stayed counted against the account: ten such tries locked its owner out of
    password changes for the window."""
    with httpx.Client(base_url=per_address.base_url, timeout=10.0) as http:
        account, taken = new_account(http), new_account(http)
        sessions = sessions_of(http, account["email"], 6)
        for headers in sessions[:5]:
            for _ in range(2):  # the per-session count is spent; the account's is given back
                answer = http.patch(
                    ME,
                    json={"email": taken["email"], "current_password": PASSWORD},
                    headers=headers,
                )
                assert_error(answer, 409, "ALREADY_EXISTS")
        moved = new_email()
        answer = http.patch(
            ME, json={"email": moved, "current_password": PASSWORD}, headers=sessions[5]
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["email"] == moved


def test_a_change_its_preconditions_refuse_is_no_password_check(per_address: Stack) -> None:
    """QA: a change refused by If-None-Match (412, the password never checked) was counted."""
    with httpx.Client(base_url=per_address.base_url, timeout=10.0) as http:
        account = new_account(http)
        (headers,) = sessions_of(http, account["email"], 1)
        change = {"email": new_email(), "current_password": PASSWORD}
        for _ in range(3):
            refused = http.patch(ME, json=change, headers={**headers, "If-None-Match": "*"})
            assert_error(refused, 412, "PRECONDITION_FAILED")
        answer = http.patch(ME, json=change, headers=headers)
        assert answer.status_code == 200, answer.text
        # Without current_password it is refused so whatever the preconditions say.
        bare = http.patch(
            ME, json={"email": new_email()}, headers={**headers, "If-None-Match": "*"}
        )
        assert_error(bare, 422, "VALIDATION_ERROR")


# --- one write per check --------------------------------------------------------------------


def slow_to_check(stack: Stack, account: Account) -> None:
    """Store the account's password hashed at bcrypt cost 11 (the stack hashes at 4), so each
    check takes a good fraction of a second and changes sent together are checked together."""
    slow = PasswordHash((BcryptHasher(rounds=11),)).hash(PASSWORD)
    changes = {"password_hash": slow}
    store_call(stack, "patch", {"table": "users", "id": account.id, "changes": changes})


def send_together(
    stack: Stack, account: Account, bodies: list[dict[str, str]]
) -> list[httpx.Response]:
    """PATCH /users/me with each body, from as many threads released at once."""
    start = threading.Barrier(len(bodies))
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def send(index: int) -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30.0) as http:
            start.wait()
            answers[index] = http.patch(ME, json=bodies[index], headers=account.headers)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


REFUSED_LOSERS = {(409, "CONFLICT"), (403, "WRONG_PASSWORD"), (401, "INVALID_TOKEN")}


def assert_refused_loser(answer: httpx.Response) -> None:
    """A change that lost to another: written after its check (409 CONFLICT), checked after
    the other's write (403: the password is no longer that), or sent after a password change
    ended the sessions (401). Never a 200."""
    error = assert_error(answer, answer.status_code)
    assert (answer.status_code, error["code"]) in REFUSED_LOSERS, answer.text
    if answer.status_code == 409:
        assert "current_password" in error["message"]


def test_password_changes_checked_together_are_written_once(
    stack: Stack, anon: httpx.Client
) -> None:
    """Each change is checked against the password it replaces and written only at the
    version it was checked at: one wins (200), the others are refused."""
    account = register(anon)
    slow_to_check(stack, account)
    new_passwords = [f"new passphrase number {n}" for n in range(3)]
    bodies = [{"password": new, "current_password": PASSWORD} for new in new_passwords]
    answers = send_together(stack, account, bodies)
    won = [n for n, answer in enumerate(answers) if answer.status_code == 200]
    assert len(won) == 1, [answer.text for answer in answers]
    for n, answer in enumerate(answers):
        if n != won[0]:
            assert_refused_loser(answer)
            assert_no_login(anon, account.user["email"], new_passwords[n])
    login(anon, account.user["email"], new_passwords[won[0]])


def test_an_email_change_is_never_written_over_a_password_change(
    stack: Stack, anon: httpx.Client
) -> None:
    """An email change checked against the old password is not written after the password
    changed. Both may succeed only one after the other, the email first (its check still held
    when it was written): the versions the two 200s answer say in which order they were
    written."""
    account = register(anon)
    slow_to_check(stack, account)
    moved, new_password = new_email(), "a brand new passphrase"
    bodies = [
        {"password": new_password, "current_password": PASSWORD},
        {"email": moved, "current_password": PASSWORD},
    ]
    password_change, email_change = send_together(stack, account, bodies)
    codes = (password_change.status_code, email_change.status_code)
    if codes == (200, 200):
        written = [answer.json()["data"]["version"] for answer in (email_change, password_change)]
        assert written[0] < written[1], "the email was written after the password changed"
        login(anon, moved, new_password)
    elif codes[0] == 200:
        assert_refused_loser(email_change)
        login(anon, account.user["email"], new_password)
    else:
        assert codes[1] == 200, email_change.text
        assert_refused_loser(password_change)
        login(anon, moved, PASSWORD)


# --- lookalike addresses ----------------------------------------------------------------------

LOOKALIKES = [
    "\u0430dmin@example.com",  # Cyrillic a
    "\uff41dmin@example.com",  # fullwidth a
    "\U0001d426b@example.com",  # mathematical bold m
    "\ufb01le@example.com",  # the ligature fi
    "admin@ex\u0430mple.com",  # Cyrillic a in the domain
    "adm\u03b9n@example.com",  # Greek iota
]


@pytest.mark.parametrize("email", LOOKALIKES)
def test_lookalike_addresses_are_refused_at_registration(anon: httpx.Client, email: str) -> None:
    response = anon.post("/api/v1/users", json=user_payload(email=email))
    assert_field_error(response, "body.email", "so the address could pass for another")


def test_an_address_with_a_display_name_is_refused_at_registration(anon: httpx.Client) -> None:
    """Not registered as its bare address, the name dropped without a word: 422 naming it."""
    response = anon.post("/api/v1/users", json=user_payload(email="Ada <ada-dn@example.com>"))
    assert_field_error(response, "body.email", "without a display name")


# Each displays as admin@example.com (or example.com): invisible characters, blank ones, and
# marks NFC could not compose on a Latin letter.
INVISIBLE = [
    "admin\u115f@example.com",  # Hangul choseong filler, a Lo letter
    "admin\u1160@example.com",  # Hangul jungseong filler
    "admin\u2800@example.com",  # blank Braille pattern, a symbol
    "admin\u034f@example.com",  # combining grapheme joiner
    "admin\ufe0f@example.com",  # variation selector 16
    "admin\u180b@example.com",  # Mongolian free variation selector
    "admin\u0336@example.com",  # combining long stroke overlay
    "admin@exa\u0336mple.com",  # the same in the domain
]


@pytest.mark.parametrize("email", INVISIBLE)
def test_addresses_with_invisible_characters_are_refused_at_registration(
    anon: httpx.Client, email: str
) -> None:
    response = anon.post("/api/v1/users", json=user_payload(email=email))
    assert_field_error(response, "body.email", "so the address could pass for another")


@pytest.mark.parametrize(
    "local",
    [
        "\u0928\u092e\u0938\u094d\u0924\u0947",  # Devanagari, its vowel signs and virama
        "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",  # Thai, its vowel and tone marks
        "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",  # Hebrew with points
        "\u03b1\u03b8\u03b7\u03bd\u03ac",  # Greek, the accent precomposed
        "jose\u0301",  # NFC composes it: jos\u00e9
    ],
)
def test_addresses_in_scripts_that_need_their_marks_register(
    anon: httpx.Client, local: str
) -> None:
    unique = int(token(), 16)  # digits go with any script; hex letters would mix in Latin
    response = anon.post("/api/v1/users", json=user_payload(email=f"{local}.{unique}@example.com"))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "success"


def test_lookalike_addresses_are_refused_as_a_new_email(
    client: httpx.Client, anon: httpx.Client
) -> None:
    account = register(anon)
    for email in LOOKALIKES:
        by_admin = client.patch(f"/api/v1/users/{account.id}", json={"email": email})
        assert_field_error(by_admin, "body.email", "could pass for another")
        mine = {"email": email, "current_password": PASSWORD}
        assert_field_error(
            anon.patch(ME, json=mine, headers=account.headers), "body.email", "could pass"
        )
        data = client.patch(f"/api/v1/data/users/{account.id}", json={"data": {"email": email}})
        assert_field_error(data, "body.data.email", "could pass for another")
    assert anon.get(ME, headers=account.headers).json()["data"]["email"] == account.user["email"]


def test_dotless_i_is_refused_beside_the_plain_account(anon: httpx.Client) -> None:
    """A Latin letter NFKC keeps, so only the ASCII reading catches it: the case-insensitive
    index would keep it apart from ``i``, a second account that displays as the first."""
    tag = token()
    register(anon, email=f"info-{tag}@example.com")
    dotless = anon.post("/api/v1/users", json=user_payload(email=f"\u0131nfo-{tag}@example.com"))
    assert_field_error(dotless, "body.email", f"reads as the ASCII 'info-{tag}'")


# --- names ----------------------------------------------------------------------------------

BAD_NAMES = [
    ("Ada\x00", "U+0000, a control character"),
    ("\x1b[31mRed", "U+001B, a control character"),
    ("Ada\nLovelace", "U+000A, a control character"),
    ("\u202eevil", "U+202E, a format character"),
    ("\u200b", "U+200B, a format character"),
    ("\u3164", "must contain a visible character"),
]


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_names_with_controls_or_nothing_visible_are_refused(
    client: httpx.Client, anon: httpx.Client, name: str, message: str
) -> None:
    created = anon.post("/api/v1/users", json=user_payload(full_name=name))
    assert_field_error(created, "body.full_name", message)
    account = register(anon)
    patched = anon.patch(ME, json={"full_name": name}, headers=account.headers)
    assert_field_error(patched, "body.full_name", message)
    data = client.post("/api/v1/data/users", json={"data": user_payload(full_name=name)})
    assert_field_error(data, "body.data.full_name", message)
