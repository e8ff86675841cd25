"""The second factor: TOTP (RFC 6238, computed in PL/pgSQL), its secret sealed away from keen_app,
replay refusal, ten single-use recovery codes (CONTRACT.md "Login sessions, ... second factor")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from datetime import UTC, datetime

import psycopg
import pytest

from keen_client.errors import InvalidInput, SecondFactorRequired

PASSWORD = "correct horse battery"
RFC_SECRET = b"12345678901234567890"


def code_at(secret: bytes, step: int, digits: int = 6) -> str:
    """An independent RFC 6238 implementation (Python's hmac) to check the database's against."""
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[19] & 15
    binary = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def now_step() -> int:
    return int(time.time()) // 30


def email_of(db, user_id) -> str:
    with db.su() as conn:
        return conn.execute("SELECT email FROM keen.users WHERE id = %s", (user_id,)).fetchone()[0]


def start(db, email, second_factor=None):
    with psycopg.connect(db.app_url) as conn:
        return conn.execute(
            "SELECT aal, login_session_id FROM keen.start_login_session(%s, %s, %s)", (email, PASSWORD, second_factor)
        ).fetchone()


def enroll(keen, user_id) -> tuple[bytes, list[str]]:
    with keen.as_user(user_id) as tx:
        secret32, uri = tx.conn.execute("SELECT * FROM keen.enroll_totp()").fetchone()
    secret = base64.b32decode(secret32)
    assert len(secret) == 20 and f"secret={secret32}" in uri and uri.startswith("otpauth://totp/keen:")
    with keen.as_user(user_id) as tx:
        codes = [r[0] for r in tx.conn.execute("SELECT * FROM keen.confirm_totp(%s)", (code_at(secret, now_step()),))]
    return secret, codes


@pytest.mark.parametrize(
    "at, expected",
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_totp_code_gives_the_rfc_6238_appendix_b_sha1_vectors(db, at, expected):
    with psycopg.connect(db.app_url) as conn:
        got = conn.execute(
            "SELECT keen.totp_code(%s, %s, 8, 30)", (RFC_SECRET, datetime.fromtimestamp(at, UTC))
        ).fetchone()[0]
    assert got == expected == code_at(RFC_SECRET, at // 30, 8)


def test_totp_code_refuses_invalid_arguments_with_22023(db):
    with psycopg.connect(db.app_url, autocommit=True) as conn:
        for args in ((b"", 6, 30), (RFC_SECRET, 5, 30), (RFC_SECRET, 6, 0)):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute("SELECT keen.totp_code(%s, now(), %s, %s)", args)


def test_the_totp_secret_is_stored_sealed_and_keen_app_can_read_neither_it_nor_the_codes(keen, db, make_user):
    user_id = make_user()
    secret, codes = enroll(keen, user_id)
    with db.su() as conn:
        sealed = conn.execute(
            "SELECT secret_encrypted FROM keen.totp_factors WHERE user_id = %s", (user_id,)
        ).fetchone()[0]
        hashes = {
            r[0] for r in conn.execute("SELECT code_hash FROM keen.recovery_codes WHERE user_id = %s", (user_id,))
        }
    assert secret not in bytes(sealed) and secret.hex().encode() not in bytes(sealed)
    assert hashes == {hashlib.sha256(c.replace("-", "").encode()).hexdigest() for c in codes} and len(codes) == 10
    with psycopg.connect(db.app_url, autocommit=True) as conn:
        for query in (
            "SELECT * FROM keen.totp_factors",
            "SELECT * FROM keen.recovery_codes",
            "SELECT mfa_secret FROM keen.users",
            "SELECT value FROM keen.auth_secrets",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
        for helper in ("keen_private.auth_totp_decrypt(%s)", "keen_private.check_second_factor(NULL, %s)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT " + helper, (bytes(sealed) if "decrypt" in helper else "x",))


def test_confirm_totp_with_a_wrong_code_is_kn006_and_leaves_the_factor_off(keen, db, make_user):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        secret = base64.b32decode(tx.conn.execute("SELECT secret_base32 FROM keen.enroll_totp()").fetchone()[0])
    wrong = code_at(secret, now_step() + 5)
    with pytest.raises(SecondFactorRequired), keen.as_user(user_id) as tx:
        tx.scalar("SELECT count(*) FROM keen.confirm_totp(%s)", (wrong,))
    assert start(db, email_of(db, user_id))[0] == "aal1"


def test_with_the_second_factor_on_sign_in_needs_a_code_and_reports_aal2(keen, db, make_user):
    user_id = make_user()
    email = email_of(db, user_id)
    secret, _ = enroll(keen, user_id)
    with pytest.raises(psycopg.Error) as err:
        start(db, email)
    assert err.value.sqlstate == "KN006"
    with db.su() as conn:
        assert (
            conn.execute("SELECT count(*) FROM keen.login_sessions WHERE user_id = %s", (user_id,)).fetchone()[0] == 0
        )
    assert start(db, email, code_at(secret, now_step() + 1))[0] == "aal2"


def test_an_accepted_totp_code_is_refused_when_presented_again(keen, db, make_user):
    user_id = make_user()
    email = email_of(db, user_id)
    secret, _ = enroll(keen, user_id)  # confirm used the current step
    code = code_at(secret, now_step() + 1)
    assert start(db, email, code)[0] == "aal2"
    for replay in (code, code_at(secret, now_step())):  # the same code, and an earlier step
        with pytest.raises(psycopg.Error) as err:
            start(db, email, replay)
        assert err.value.sqlstate == "KN006"


def test_each_recovery_code_works_once(keen, db, make_user):
    user_id = make_user()
    email = email_of(db, user_id)
    _, codes = enroll(keen, user_id)
    assert start(db, email, codes[0])[0] == "aal2"
    assert start(db, email, codes[1].lower().replace("-", ""))[0] == "aal2"  # any case, with or without the dash
    with pytest.raises(psycopg.Error) as err:
        start(db, email, codes[0])
    assert err.value.sqlstate == "KN006"


def test_disable_totp_needs_a_valid_code_and_turns_the_factor_off(keen, db, make_user):
    user_id = make_user()
    email = email_of(db, user_id)
    _, codes = enroll(keen, user_id)
    with pytest.raises(SecondFactorRequired), keen.as_user(user_id) as tx:
        tx.execute("SELECT keen.disable_totp('not a code')")
    with keen.as_user(user_id) as tx:
        tx.execute("SELECT keen.disable_totp(%s)", (codes[3],))
    assert start(db, email)[0] == "aal1"
    enroll(keen, user_id)
    with pytest.raises(InvalidInput), keen.as_user(user_id) as tx:  # enrolling again while on: 22023
        tx.execute("SELECT keen.enroll_totp()")
    with db.su() as conn:
        audited = [
            r[0]
            for r in conn.execute(
                "SELECT event_subtype FROM keen.audit_logs WHERE user_id = %s AND event_subtype LIKE 'second_factor%%'"
                " ORDER BY chain_seq",
                (user_id,),
            )
        ]
    assert audited == ["second_factor_enabled", "second_factor_disabled", "second_factor_enabled"]


def wrong_code(secret: bytes) -> str:
    """A six-digit code that is none of the codes accepted now (one step early to one late)."""
    accepted = {code_at(secret, now_step() + d) for d in (-2, -1, 0, 1, 2)}
    return next(c for c in (f"{n:06d}" for n in range(1000000)) if c not in accepted)


def age_second_factor_failures(db, email: str, minutes: int) -> None:
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.login_attempts SET attempted_at = attempted_at - make_interval(mins => %s)"
            " WHERE email = %s AND purpose = 'second_factor'",
            (minutes, email),
        )


def test_attack_rotating_sources_cannot_guess_second_factor_codes_without_limit(keen, db, make_user):
    """Review S4: with the password known, each source could try ten TOTP codes before its pair
    was locked, and the source is the caller's word: unlimited guesses. Now the wrong codes of one
    user are capped (second_factor_max_failures, 10 in the window) whatever the source, counted by
    the recorder (the KN006 rolls the sign-in back); past the cap every code is KN006."""
    user_id = make_user()
    email = email_of(db, user_id)
    secret, codes = enroll(keen, user_id)
    guess = wrong_code(secret)

    def sign_in(code, ip):
        with psycopg.connect(db.app_url) as conn:
            return conn.execute(
                "SELECT aal FROM keen.start_login_session(%s, %s, %s, %s)", (email, PASSWORD, code, ip)
            ).fetchone()[0]

    for i in range(10):
        with pytest.raises(psycopg.Error) as err:
            sign_in(guess, f"203.0.113.{i}")
        assert err.value.sqlstate == "KN006"
    for right in (code_at(secret, now_step() + 1), codes[0]):  # a current code, an unused recovery code
        with pytest.raises(psycopg.Error) as err:
            sign_in(right, "198.51.100.70")
        assert err.value.sqlstate == "KN006"
    with pytest.raises(SecondFactorRequired), keen.as_user(user_id) as tx:  # disable_totp counts alike
        tx.execute("SELECT keen.disable_totp(%s)", (codes[1],))
    age_second_factor_failures(db, email, 16)
    assert sign_in(codes[0], "198.51.100.70") == "aal2"  # the codes were not used up while refused


def test_attack_a_stolen_access_token_cannot_guess_codes_through_disable_totp(keen, db, make_user):
    user_id = make_user()
    secret, codes = enroll(keen, user_id)
    for _ in range(10):
        with pytest.raises(SecondFactorRequired), keen.as_user(user_id) as tx:
            tx.execute("SELECT keen.disable_totp(%s)", (wrong_code(secret),))
    with pytest.raises(SecondFactorRequired), keen.as_user(user_id) as tx:
        tx.execute("SELECT keen.disable_totp(%s)", (codes[0],))
    with db.su() as conn:
        assert conn.execute("SELECT mfa_enabled FROM keen.users WHERE id = %s", (user_id,)).fetchone()[0]
