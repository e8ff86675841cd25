"""Users and tokens through the client: registration, login and its lock-out, API keys,
suspension, passwords and profiles (CONTRACT.md "Users and tokens", docs/users.md)."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from keen_client import Keen
from keen_client.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, PermissionDenied
from keen_db import deploy

from .conftest import create_database, database_info, drop_database

PASSWORD = "correct horse battery"


def email_of(db, user_id) -> str:
    with db.su() as conn:
        return conn.execute("SELECT email FROM keen.users WHERE id = %s", (user_id,)).fetchone()[0]


def login(keen: Keen, email: str, password: str, ip: str | None = None):
    with keen.transaction() as tx:
        return tx.users.login(email, password, ip)


def fail_logins(keen: Keen, email: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(AuthenticationFailed) as err:
            login(keen, email, "not the password")
        assert err.value.sqlstate == "28P01"


def age_login_failures(db, email: str, minutes: int) -> None:
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.login_attempts SET attempted_at = attempted_at - make_interval(mins => %s) WHERE email = %s",
            (minutes, email),
        )


@pytest.fixture
def fresh_shipped_db(settings):
    """A database migrated and seeded as shipped (not a copy of the cheaper test template)."""
    name = f"keen_shipped_{os.getpid()}"
    create_database(settings, name)
    deploy.migrate(settings.superuser_url(name))
    deploy.set_role_passwords(settings, settings.superuser_url(name))
    deploy.seed(settings.superuser_url(name))
    yield database_info(settings, name)
    drop_database(settings, name)


def test_a_freshly_migrated_database_hashes_with_bcrypt_cost_12(fresh_shipped_db):
    with fresh_shipped_db.su() as conn:
        cost = conn.execute("SELECT keen.setting_numeric('bcrypt_cost')").fetchone()[0]
        admin_hash = conn.execute("SELECT password_hash FROM keen.users WHERE role = 'super_admin'").fetchone()[0]
        new_id = conn.execute(
            "SELECT id FROM keen.register_user('cost@example.com', 'cost', 'cost password')"
        ).fetchone()[0]
        new_hash = conn.execute("SELECT password_hash FROM keen.users WHERE id = %s", (new_id,)).fetchone()[0]
    assert cost == 12
    assert re.match(r"^\$2[ab]\$12\$", admin_hash)
    assert re.match(r"^\$2[ab]\$12\$", new_hash)


# Registration ---------------------------------------------------------------------------------


def test_register_returns_the_user_and_opens_an_empty_credit_account(keen, db):
    with keen.transaction() as tx:
        user = tx.users.register("New.User@Example.com", "new_user", PASSWORD, "New User")
    assert (user.email, user.username, user.role, user.is_admin, user.account_status) == (
        "new.user@example.com",
        "new_user",
        "user",
        False,
        "active",
    )
    with db.su() as conn:
        row = conn.execute(
            "SELECT u.display_name, a.current_balance FROM keen.users u "
            "JOIN keen.credit_accounts a ON a.user_id = u.id WHERE u.id = %s",
            (user.id,),
        ).fetchone()
    assert row == ("New User", 0)


@pytest.mark.parametrize(
    "email, username, password",
    [
        ("no-at-sign.example.com", "valid_name", PASSWORD),
        ("two@@example.com", "valid_name", PASSWORD),
        ("x@nodot", "valid_name", PASSWORD),
        ("ok@example.com", "ab", PASSWORD),
        ("ok@example.com", "has space", PASSWORD),
        ("ok@example.com", "-leading-dash", PASSWORD),
        ("ok@example.com", "x" * 65, PASSWORD),
        ("ok@example.com", "valid_name", "seven77"),
        ("ok@example.com", "valid_name", "é" * 37),  # 74 bytes: over bcrypt's 72
    ],
)
def test_register_refuses_invalid_input_with_22023_and_writes_nothing(keen, db, email, username, password):
    with pytest.raises(InvalidInput) as err, keen.transaction() as tx:
        tx.users.register(email, username, password)
    assert err.value.sqlstate == "22023"
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.users WHERE role = 'user'").fetchone()[0] == 0


def test_register_refuses_an_email_or_username_taken_in_any_case(keen, make_user, db):
    existing = make_user("taken")
    email = email_of(db, existing)
    username = email.split("@")[0]
    for e, u in ((email.upper(), "someone_else"), ("other@example.com", username.upper())):
        with pytest.raises(Conflict) as err, keen.transaction() as tx:
            tx.users.register(e, u, PASSWORD)
        assert err.value.sqlstate == "23505"


# Login ----------------------------------------------------------------------------------------


def test_login_checks_the_password_and_records_last_login_at_and_ip(keen, make_user, db):
    user_id = make_user()
    result = login(keen, email_of(db, user_id).upper(), PASSWORD, "203.0.113.9")
    assert (result.user_id, result.is_admin, result.role, result.admin_privileges) == (user_id, False, "user", {})
    with db.su() as conn:
        at, ip = conn.execute(
            "SELECT last_login_at, last_login_ip FROM keen.users WHERE id = %s", (user_id,)
        ).fetchone()
    assert at is not None and str(ip) == "203.0.113.9"


def test_the_seeded_admin_logs_in_with_its_privileges(keen):
    result = login(keen, "ahiya.butman@gmail.com", "2con-creator")
    assert result.is_admin and result.role == "super_admin"
    assert result.admin_privileges["unlimited_credits"] is True


def test_wrong_password_and_unknown_email_fail_identically(keen, make_user, db):
    email = email_of(db, make_user())
    errors = []
    for e in (email, "nobody-here@example.com"):
        with pytest.raises(AuthenticationFailed) as err:
            login(keen, e, "wrong password")
        errors.append((type(err.value), err.value.sqlstate, err.value.message))
    assert errors[0] == errors[1] == (AuthenticationFailed, "28P01", "invalid e-mail or password")


def test_ten_failed_logins_lock_the_email_out_until_the_failures_leave_the_window(keen, make_user, db):
    email = email_of(db, make_user())
    fail_logins(keen, email, 10)
    with pytest.raises(AuthenticationFailed) as err:
        login(keen, email, PASSWORD)
    # the answer of a wrong password: a lock-out is not told apart (the guesser learns nothing)
    assert (err.value.sqlstate, err.value.message) == ("28P01", "invalid e-mail or password")
    age_login_failures(db, email, 14)
    with pytest.raises(AuthenticationFailed):
        login(keen, email, PASSWORD)
    age_login_failures(db, email, 2)
    assert login(keen, email, PASSWORD).user_id is not None


def test_a_successful_login_resets_the_failure_count(keen, make_user, db):
    email = email_of(db, make_user())
    fail_logins(keen, email, 9)
    login(keen, email, PASSWORD)
    fail_logins(keen, email, 9)
    assert login(keen, email, PASSWORD).user_id is not None


def test_an_unknown_email_locks_out_like_a_known_one(keen, db):
    fail_logins(keen, "nobody-at-all@example.com", 10)
    with pytest.raises(AuthenticationFailed) as err:
        login(keen, "nobody-at-all@example.com", "anything at all")
    assert err.value.sqlstate == "28P01"
    with psycopg.connect(db.maintenance_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM keen.audit_logs WHERE event_subtype = 'login_refused_locked_out'"
            ).fetchone()[0]
            == 1
        )


def test_parallel_guesses_cannot_outrun_the_lock_out(keen, make_user, db):
    from concurrent.futures import ThreadPoolExecutor

    email = email_of(db, make_user())

    def guess(_):
        try:
            login(keen, email, "not the password")
        except AuthenticationFailed as exc:
            return exc.sqlstate
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(guess, range(24)))
    assert outcomes == ["28P01"] * 24
    with psycopg.connect(db.maintenance_url) as conn:  # exactly ten were checked, the rest refused unchecked
        checked = dict(
            conn.execute(
                "SELECT event_subtype, count(*) FROM keen.audit_logs"
                " WHERE event_type = 'auth' AND event_data ->> 'email' = %s GROUP BY 1",
                (email,),
            ).fetchall()
        )
    assert checked == {"login_failed": 10, "login_refused_locked_out": 14}


def test_failed_logins_are_audited_although_the_login_rolls_back(keen, make_user, db):
    user_id = make_user()
    fail_logins(keen, email_of(db, user_id), 1)
    fail_logins(keen, "stranger@example.com", 1)
    with psycopg.connect(db.maintenance_url) as conn:
        rows = conn.execute(
            "SELECT user_id, event_data ->> 'email', risk_level FROM keen.audit_logs "
            "WHERE event_subtype = 'login_failed' ORDER BY chain_seq"
        ).fetchall()
    assert rows == [(user_id, email_of(db, user_id), "medium"), (None, "stranger@example.com", "medium")]


def test_the_doctor_can_see_that_the_login_recorder_works(db):
    with psycopg.connect(db.maintenance_url) as conn:
        assert conn.execute("SELECT keen.login_recorder_status()").fetchone()[0] is None


# Suspension -----------------------------------------------------------------------------------


def test_a_suspended_user_can_neither_log_in_nor_be_acted_as_nor_use_its_keys(keen, make_user, admin_id, db):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        key = tx.users.create_api_key("ci")
    with keen.as_user(admin_id) as tx:
        tx.users.suspend_user(user_id, "chargeback")
    with pytest.raises(AuthenticationFailed) as err:
        login(keen, email_of(db, user_id), PASSWORD)
    assert (err.value.sqlstate, err.value.message) == ("28000", "this account is suspended")
    with pytest.raises(AuthenticationFailed), keen.as_user(user_id):
        pass
    with pytest.raises(AuthenticationFailed), keen.with_api_key(key.token):
        pass
    with keen.as_user(admin_id) as tx:
        tx.users.reactivate_user(user_id)
    assert login(keen, email_of(db, user_id), PASSWORD).user_id == user_id
    with keen.with_api_key(key.token) as tx:
        assert tx.actor_id == user_id


def test_only_an_admin_suspends_and_nobody_suspends_themselves_or_the_super_admin(keen, make_user, admin_id):
    alice, bob = make_user("alice"), make_user("bob")
    with pytest.raises(PermissionDenied), keen.as_user(alice) as tx:
        tx.users.suspend_user(bob)
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.users.suspend_user(admin_id)
    with keen.as_user(admin_id) as tx:
        with pytest.raises(NotFound):
            tx.users.suspend_user(uuid.uuid4())


def test_list_users_is_for_admins_and_pages(keen, make_user, admin_id):
    ids = [make_user() for _ in range(3)]
    with keen.as_user(admin_id) as tx:
        users = tx.users.list_users()
        page = tx.users.list_users(limit=2, offset=1)
    assert [u.id for u in users] == [admin_id, *ids]
    assert [u.id for u in page] == ids[:2]
    with pytest.raises(PermissionDenied), keen.as_user(ids[0]) as tx:
        tx.users.list_users()
    with pytest.raises(PermissionDenied), keen.transaction() as tx:
        tx.users.list_users()
    with pytest.raises(InvalidInput), keen.as_user(admin_id) as tx:
        tx.users.list_users(limit=1001)


# Passwords and profiles -----------------------------------------------------------------------


def test_change_password_requires_the_current_one(keen, make_user, db):
    user_id = make_user()
    email = email_of(db, user_id)
    with pytest.raises(AuthenticationFailed) as err, keen.as_user(user_id) as tx:
        tx.users.change_password("not it", "brand new password")
    assert err.value.sqlstate == "28P01"
    with pytest.raises(InvalidInput), keen.as_user(user_id) as tx:
        tx.users.change_password(PASSWORD, "short")
    with keen.as_user(user_id) as tx:
        tx.users.change_password(PASSWORD, "brand new password")
    assert login(keen, email, "brand new password").user_id == user_id
    with pytest.raises(AuthenticationFailed):
        login(keen, email, PASSWORD)


def test_update_profile_validates_the_timezone_and_the_preferences(keen, make_user):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        profile = tx.users.update_profile("  Ada  ", "America/New_York", {"theme": "dark", "beta": True})
    assert (profile.id, profile.display_name, profile.timezone, profile.preferences) == (
        user_id,
        "Ada",
        "America/New_York",
        {"theme": "dark", "beta": True},
    )
    with keen.as_user(user_id) as tx:
        assert tx.users.update_profile(timezone="UTC").display_name == "Ada"
    for kwargs in (
        {"timezone": "Atlantis/Lost"},
        {"preferences": ["not", "an", "object"]},
        {"display_name": " "},
        {"preferences": {"blob": "x" * 20000}},
    ):
        with pytest.raises(InvalidInput), keen.as_user(user_id) as tx:
            tx.users.update_profile(**kwargs)
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.users.update_profile("nobody")


# API keys -------------------------------------------------------------------------------------


def test_an_api_key_is_random_url_safe_shown_once_and_stored_as_sha256(keen, make_user, db):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        keys = [tx.users.create_api_key(f"key {i}", ["sessions:write", "credits:read"]) for i in range(2)]
    assert all(re.fullmatch(r"keen_[A-Za-z0-9_-]{43}", k.token) for k in keys)
    assert keys[0].token != keys[1].token
    assert keys[0].token not in repr(keys[0])
    with db.su() as conn:
        stored = dict(
            conn.execute("SELECT id, token_hash FROM keen.auth_tokens WHERE user_id = %s", (user_id,)).fetchall()
        )
    assert stored == {k.token_id: hashlib.sha256(k.token.encode()).hexdigest() for k in keys}


def test_authenticate_api_key_makes_its_owner_the_actor_and_counts_the_use(keen, make_user, db):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        key = tx.users.create_api_key("ci", ["sessions:read", "credits:read", "sessions:read"])
    with keen.transaction() as tx:
        ident = tx.users.authenticate_api_key(key.token, ip="198.51.100.4")
        assert tx.actor_id == user_id
    assert (ident.user_id, ident.token_id, ident.scopes, ident.is_admin, ident.bypass_limits) == (
        user_id,
        key.token_id,
        ["credits:read", "sessions:read"],
        False,
        False,
    )
    with keen.with_api_key(key.token) as tx:
        assert tx.actor_id == user_id
    with db.su() as conn:
        count, used_at, ip = conn.execute(
            "SELECT usage_count, last_used_at, last_used_ip FROM keen.auth_tokens WHERE id = %s", (key.token_id,)
        ).fetchone()
    assert count == 2 and used_at is not None and ip is not None


def test_an_admins_key_carries_its_bypass(keen, admin_id):
    with keen.as_user(admin_id) as tx:
        key = tx.users.create_api_key("admin ci")
    with keen.transaction() as tx:
        ident = tx.users.authenticate_api_key(key.token)
    assert ident.is_admin and ident.bypass_limits


def test_revoked_expired_and_unknown_keys_fail_alike(keen, make_user, db):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        revoked = tx.users.create_api_key("revoked")
        expired = tx.users.create_api_key("expired", expires_at=datetime.now(UTC) + timedelta(hours=1))
        tx.users.revoke_api_key(revoked.token_id)
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.auth_tokens SET expires_at = now() - interval '1 second' WHERE id = %s", (expired.token_id,)
        )
    outcomes = set()
    for token in (revoked.token, expired.token, "keen_" + "A" * 43, "not even a key"):
        with pytest.raises(AuthenticationFailed) as err, keen.transaction() as tx:
            tx.users.authenticate_api_key(token)
        outcomes.add((err.value.sqlstate, err.value.message))
    assert outcomes == {("28000", "invalid API key")}


def test_create_api_key_needs_an_actor_and_valid_input(keen, make_user):
    user_id = make_user()
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.users.create_api_key("no actor")
    for args in (
        ("",),
        ("x" * 256,),
        ("ok", ["UPPER"]),
        ("ok", ["a"] * 33),
        ("ok", [], datetime.now(UTC) - timedelta(seconds=1)),
    ):
        with pytest.raises(InvalidInput), keen.as_user(user_id) as tx:
            tx.users.create_api_key(*args)


def test_revoke_api_key_is_for_the_owner_or_an_admin(keen, make_user, admin_id):
    alice, bob = make_user("alice"), make_user("bob")
    with keen.as_user(alice) as tx:
        key = tx.users.create_api_key("alice")
        other = tx.users.create_api_key("alice 2")
    with pytest.raises(NotFound), keen.as_user(bob) as tx:
        tx.users.revoke_api_key(key.token_id)
    with pytest.raises(NotFound), keen.as_user(bob) as tx:
        tx.users.revoke_api_key(uuid.uuid4())
    with keen.as_user(alice) as tx:
        tx.users.revoke_api_key(key.token_id)
        tx.users.revoke_api_key(key.token_id)
    with keen.as_user(admin_id) as tx:
        tx.users.revoke_api_key(other.token_id)
    for token in (key.token, other.token):
        with pytest.raises(AuthenticationFailed), keen.with_api_key(token):
            pass


def test_parallel_requests_with_one_limited_key_take_turns_within_a_bounded_wait(keen, make_user, db):
    """The exact rate limit counts each request under the key's row lock: a second request of the
    same key waits for the first to end, never longer than lock_timeout (then 55P03)."""
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        key = tx.users.create_api_key("shared by parallel agents")
    with psycopg.connect(db.app_url) as first, psycopg.connect(db.app_url) as second:
        first.execute("SELECT keen.authenticate_api_key(%s)", (key.token,))  # in flight, not committed
        second.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            second.execute("SELECT user_id FROM keen.authenticate_api_key(%s)", (key.token,))
        second.rollback()
        first.commit()
        assert (
            second.execute("SELECT user_id FROM keen.authenticate_api_key(%s)", (key.token,)).fetchone()[0] == user_id
        )
        second.commit()
    with db.su() as conn:
        assert (
            conn.execute("SELECT usage_count FROM keen.auth_tokens WHERE id = %s", (key.token_id,)).fetchone()[0] == 2
        )
