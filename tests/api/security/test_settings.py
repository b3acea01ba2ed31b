"""Security settings: what production refuses, and how limits and proxies are parsed."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from pydantic import ValidationError

from api.settings import Settings
from storeserver.settings import settings_errors

STRONG = "k3Y-9vQz_Lw2Rt8Xb5Nm1Hp4Jc7Fd0Sg6Ae-Uo3Iy"


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "",
        "short",
        "a" * 64,  # long, but one character
        "my-jwt-secret-0123456789-abcdefghijkl",  # an example word
        "changeme" * 5,
        "abcdefghijklmnopqrstuvwxyz123456",  # mostly a run of consecutive characters
        "9876543210zyxwvutsrqponmlkjihgfedcba",  # the same, backwards
        "abcdefgh" * 4,  # 8 distinct characters
        "qwertyuio" * 4,  # 9
        "abcde0" * 6,  # 6 distinct, periodic
        "ab12z" + "a1b2z" * 6,  # 5 distinct
        # Mostly repeats (QA): each passed the checks above.
        "0000000000000000000000000012345678",
        "aaaaaaaaaaaaaaaaaaaaaaaa123456789",
        "Tr0ub4dor&3" * 3 + "x",
    ],
)
def test_production_refuses_a_missing_or_weak_jwt_secret(secret: str | None) -> None:
    kwargs: dict[str, Any] = {"env": "production"}
    if secret is not None:
        kwargs["jwt_secret"] = secret
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(**kwargs)


def test_random_secrets_of_the_minimum_length_are_strong() -> None:
    """The repeats check never refuses what ``openssl rand`` gives (4-character pieces of
    random text repeat about never)."""
    for _ in range(2000):
        for secret in (secrets.token_hex(16), secrets.token_urlsafe(24)):
            Settings(env="production", jwt_secret=secret)


def test_a_bad_rate_limit_is_named_without_its_value() -> None:
    """Settings errors never quote values (one may be a secret); limits' own message did."""
    with pytest.raises(ValidationError) as refused:
        Settings(rate_limit="abc-not-a-limit")
    assert "rate_limit" in str(refused.value)
    assert "abc-not-a-limit" not in settings_errors(refused.value)


def test_a_weak_secret_is_called_weak_not_missing() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET is too weak") as weak:
        Settings(env="production", jwt_secret="changeme" * 5)
    assert "openssl rand -hex 32" in str(weak.value)
    with pytest.raises(ValidationError, match="JWT_SECRET must be set"):
        Settings(env="production")


def test_production_accepts_a_strong_secret_and_development_needs_none() -> None:
    assert Settings(env="production", jwt_secret=STRONG).jwt_secret is not None
    # what the message suggests: openssl rand -hex 32
    hex_key = "3f9c1e7a5b2d8f60c4e19a7b3d5f2e8c0a6b4d1f7e9c3a5b8d2f6e0c4a1b7d9e"
    assert Settings(env="production", jwt_secret=hex_key).jwt_secret is not None
    assert Settings(env="development").jwt_secret is None
    assert STRONG not in repr(Settings(env="production", jwt_secret=STRONG))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"admin_email": "a@example.com"}, "ADMIN_EMAIL and ADMIN_PASSWORD"),
        ({"admin_password": "long enough pass"}, "ADMIN_EMAIL and ADMIN_PASSWORD"),
        ({"admin_email": "a@example.com", "admin_password": "é" * 37}, "72"),
        ({"rate_limit": "lots"}, "rate limit"),
        ({"auth_rate_limit": "10 per fortnight"}, "not a rate limit"),
        ({"trusted_proxies": "10.0.0.1/8"}, "host bits"),
        ({"trusted_proxies": "proxy.local"}, "one is neither"),
        ({"access_token_ttl": 3600, "refresh_token_ttl": 1800}, "REFRESH_TOKEN_TTL"),
        # 0 would answer every request 400 at run time; several limits are not applied
        ({"rate_limit": "0/minute"}, "at least 1 request"),
        ({"rate_limit": "100/minute;10/second"}, "one limit only"),
        # past the store's 64-bit integers: accepted at start, then every request failed 400
        ({"rate_limit": f"{2**64}/second"}, r"below 2\*\*63"),
        ({"rate_limit": f"{2**63}/second"}, r"below 2\*\*63"),
        ({"auth_rate_limit": f"1 per {2**64} seconds"}, r"below 2\*\*63"),
        ({"cors_origins": "not a url"}, "scheme://host"),
        ({"cors_origins": "https://app.example.com/path"}, "no path"),
        # ops QA: each started, then matched no browser's Origin
        ({"cors_origins": "https://user@app.example.com"}, "user name"),
        ({"cors_origins": "https://*.example.com"}, "wildcard"),
        ({"cors_origins": "https://app.example.com:99999"}, "1 to 65535"),
        # QA: started, and no browser sends a host with these characters
        ({"cors_origins": "https://a%00.com"}, "letters, digits"),
        ({"cors_origins": "https://a.example.com\\evil.com"}, "letters, digits"),
        ({"cors_origins": 'https://a"x.com'}, "letters, digits"),
        ({"cors_origins": "https://\u0300b\u00fc.com"}, "international domain name"),
        ({"cors_origins": "http://[1:2:3]"}, "IPv6 address is not valid"),
        ({"store_socket": "tcp://localhost"}, "tcp://host:port"),
        ({"store_socket": "unix:"}, "socket path"),
    ],
)
def test_bad_security_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_production_refuses_a_short_admin_password() -> None:
    with pytest.raises(ValidationError, match="ADMIN_PASSWORD"):
        Settings(
            env="production", jwt_secret=STRONG, admin_email="a@example.com", admin_password="x" * 9
        )


def test_origins_are_kept_as_browsers_send_them() -> None:
    """ops QA: CORS compares the Origin header as a string, and browsers send the scheme and
    host in lowercase, without the scheme's default port: listed otherwise, none matched."""
    listed = "HTTPS://App.Example,https://b.example:443,http://c.example:80,http://[::1]:5173"
    assert Settings(cors_origins=listed).cors_origins == [  # type: ignore[arg-type]
        "https://app.example",
        "https://b.example",
        "http://c.example",
        "http://[::1]:5173",
    ]
    assert Settings(cors_origins="capacitor://localhost").cors_origins == [  # type: ignore[arg-type]
        "capacitor://localhost"
    ]


def test_origins_are_written_as_a_browsers_url_parser_serializes_them() -> None:
    """QA: an IDN host and an uncompressed IPv6 address started and then matched no request:
    browsers send punycode and the compressed form (``new URL(o).origin``)."""
    listed = (
        "https://bücher.example,http://[0:0:0:0:0:0:0:1]:8080,http://[::ffff:127.0.0.1],"
        "http://[2001:DB8:0:0:1:0:0:1],http://[1:0:0:2:0:0:0:3],https://STRASSE.de"
    )
    assert Settings(cors_origins=listed).cors_origins == [  # type: ignore[arg-type]
        "https://xn--bcher-kva.example",
        "http://[::1]:8080",
        "http://[::ffff:7f00:1]",
        "http://[2001:db8::1:0:0:1]",
        "http://[1:0:0:2::3]",
        "https://strasse.de",
    ]


def test_limits_and_proxies_parse() -> None:
    settings = Settings(
        rate_limit="5 per 10 seconds",
        trusted_proxies="10.0.0.0/8, 192.168.1.7",  # type: ignore[arg-type]
    )
    assert settings.rate_limit == "5 per 10 seconds"
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.7"]
    assert Settings().rate_limit == "100/minute"
    assert Settings(rate_limit=f"{2**63 - 1}/second").rate_limit == f"{2**63 - 1}/second"
