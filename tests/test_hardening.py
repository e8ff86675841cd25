"""Holes an independent review found, each closed and kept closed: snapshot isolation that
hid committed holds and login failures, advisory locks anyone could hold, a completion key
anyone could claim first, a re-seed that promoted a registered user; and issue 16's attack
(test_attack_*: an idle audited transaction, the lock-out as a weapon and failing open, the
default admin password, unbounded settings, change_password guessing)."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from keen_client import KeenError, errors
from keen_db import deploy

from .conftest import assert_ledger_clean
from .test_credits import balance, grant
from .test_sessions import complete, create
from .test_users import age_login_failures, email_of, fail_logins, login

D = Decimal


def test_ledger_functions_refuse_a_repeatable_read_transaction_and_write_nothing(keen, db, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    for isolation in ("REPEATABLE READ", "SERIALIZABLE"):
        for call in (
            "SELECT keen.deduct_credits(%s, 1)",
            "SELECT * FROM keen.reserve_credits(%s, 1)",
            "SELECT keen.set_spending_limits(%s, 10, NULL)",
        ):
            with pytest.raises(KeenError) as err:
                with keen.transaction() as tx:
                    tx.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                    tx.execute("SELECT keen.act_as(%s)", (user,))
                    tx.execute(call, (user,))
            assert err.value.sqlstate == "25000", call
    assert balance(keen, user).current_balance == D(100)
    with db.su() as conn:
        assert (
            conn.execute("SELECT count(*) FROM keen.credit_reservations WHERE user_id = %s", (user,)).fetchone()[0] == 0
        )
    assert_ledger_clean(db)


def test_login_refuses_a_repeatable_read_transaction_so_the_lockout_always_sees_the_count(keen, make_user, db):
    email = email_of(db, make_user())
    with pytest.raises(KeenError) as err:
        with keen.transaction() as tx:
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            tx.users.login(email, "not the password")
    assert err.value.sqlstate == "25000"


def test_keen_app_cannot_take_advisory_locks(keen):
    for call in (
        "SELECT pg_advisory_lock(7301, hashtext('main'))",
        "SELECT pg_try_advisory_xact_lock(1263420242, 1)",
        "SELECT pg_advisory_lock_shared(42)",
    ):
        with pytest.raises(errors.PermissionDenied):
            with keen.transaction() as tx:
                tx.scalar(call)


def test_a_failed_login_is_counted_even_while_the_audit_chain_is_held(keen, make_user, db):
    email = email_of(db, make_user())
    with db.su() as holder:
        holder.execute("SELECT pg_advisory_lock(7301, hashtext('main'))")  # longer than the linker's lock_timeout
        fail_logins(keen, email, 2)
        holder.execute("SELECT pg_advisory_unlock_all()")
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.login_attempts WHERE email = %s", (email,)).fetchone()[0] == 2
    fail_logins(keen, email, 8)
    with pytest.raises(errors.AuthenticationFailed) as err:
        login(keen, email, "correct horse battery")
    assert err.value.sqlstate == "28P01"


# ---- issue 16: what an independent attack broke, one regression test per finding -------------


def test_attack_idle_transaction_after_an_audited_call_no_longer_blocks_every_login(keen, make_user, db):
    """Finding 1: register_user (audited) in a transaction left idle held the audit chain's lock,
    and every audited function on the platform waited. The chain is linked at commit now: a
    login completes while the idle transaction sits there, and would fail (55P03) if it waited
    more than a second."""
    email = email_of(db, make_user())
    with psycopg.connect(db.app_url) as idle, psycopg.connect(db.app_url) as other:
        idle.execute("SELECT keen.register_user('idle@example.com', 'idle_one', 'idle password 1')")  # and idles
        other.execute("SET lock_timeout = '1s'")
        other.execute("SET statement_timeout = '5s'")
        assert other.execute("SELECT user_id FROM keen.login(%s, %s)", (email, "correct horse battery")).fetchone()
        other.commit()  # the commit links the login's audit entry: the chain is free
        other.execute("SELECT keen.register_user('busy@example.com', 'busy_one', 'busy password 1')")
        other.commit()
        idle.rollback()
    with psycopg.connect(db.maintenance_url) as conn:
        assert conn.execute("SELECT count(*) FROM keen.verify_audit_chain()").fetchone()[0] == 0


def test_attack_failed_logins_while_the_chain_is_busy_are_still_audited(keen, make_user, db):
    """Finding 2: a failed login during a held chain lock was a warning, not an entry."""
    email = email_of(db, make_user())
    with psycopg.connect(db.app_url) as idle:
        idle.execute("SELECT keen.register_user('idle2@example.com', 'idle_two', 'idle password 2')")
        fail_logins(keen, email, 3)
        idle.rollback()
    with psycopg.connect(db.maintenance_url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM keen.audit_logs WHERE event_subtype = 'login_failed' AND event_data ->> 'email' = %s",
                (email,),
            ).fetchone()[0]
            == 3
        )


def test_attack_ten_wrong_passwords_for_the_admin_do_not_lock_the_admin_out(keen, db):
    """Finding 3: ten wrong passwords for the admin's published e-mail locked the admin out, and
    28000 vs 28P01 told the attacker when to send ten more."""
    admin_email = "ahiya.butman@gmail.com"
    answers = set()
    for _ in range(12):
        with pytest.raises(errors.AuthenticationFailed) as err:
            login(keen, admin_email, "guess", "203.0.113.66")
        answers.add((err.value.sqlstate, err.value.message))
    assert answers == {("28P01", "invalid e-mail or password")}  # locked or not: the same answer
    with pytest.raises(errors.AuthenticationFailed):  # the attacker's source stays refused...
        login(keen, admin_email, "2con-creator", "203.0.113.66")
    assert login(keen, admin_email, "2con-creator", "198.51.100.20").is_admin  # ...the admin elsewhere is not


def test_attack_a_source_spraying_many_emails_is_refused_and_other_sources_are_not(keen, make_user, db):
    victim = email_of(db, make_user())
    for i in range(30):
        with pytest.raises(errors.AuthenticationFailed):
            login(keen, f"spray{i}@example.com", "guess", "203.0.113.77")
    with pytest.raises(errors.AuthenticationFailed):
        login(keen, victim, "correct horse battery", "203.0.113.77")
    assert login(keen, victim, "correct horse battery", "198.51.100.21").user_id


def test_attack_a_recorder_that_cannot_connect_fails_closed(keen, make_user, db):
    """Finding 4: with every connection slot taken the recorder could not count failures, and
    guessing was unlimited. Now an attempt that cannot be counted is never checked: even the right
    password is refused while the recorder is unreachable. (Its slots are its own: keen_app's
    CONNECTION LIMIT 150 leaves them free; test_role_limits_leave_room_for_the_recorder.)"""
    email = email_of(db, make_user())
    with db.su() as conn:
        conn.execute("UPDATE keen.auth_secrets SET value = 'host=/nonexistent port=1' WHERE name = 'recorder_conninfo'")
    with pytest.raises(errors.AuthenticationFailed) as err:
        login(keen, email, "correct horse battery")
    assert err.value.sqlstate == "28P01"
    with db.su() as conn:
        assert (
            conn.execute("SELECT count(*) FROM keen.audit_logs WHERE event_subtype = 'login_succeeded'").fetchone()[0]
            == 0
        )


def test_role_limits_leave_room_for_the_recorder(db, settings):
    from keen_db import config, doctor

    with db.su() as conn:
        ok, detail = doctor.check_role_limits(config.Settings(settings.home, settings.port, db.name, None), conn)
        limits = dict(
            conn.execute("SELECT rolname, rolconnlimit FROM pg_roles WHERE rolname LIKE 'keen_%%' AND rolcanlogin")
        )
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    assert ok, detail
    assert limits["keen_app"] + limits["keen_maintenance"] + limits["keen_recorder"] < max_connections - 3
    with psycopg.connect(db.app_url) as conn:
        timeouts = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("lock_timeout", "statement_timeout")}
        idle = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
    assert timeouts["lock_timeout"] != "0" and timeouts["statement_timeout"] != "0" and idle != "0"


def test_attack_the_published_admin_password_is_refused_on_a_server_and_the_doctor_fails(db, settings, monkeypatch):
    """Finding 5: the published default admin password worked on any deployment."""
    from keen_db import config, doctor

    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="published default"):
        deploy.seed(db.superuser_url, allow_default_password=False)
    # A server given by URL that is not this checkout's embedded cluster (another port), and the
    # embedded cluster itself, with no URL or with a URL naming it.
    server = config.Settings(settings.home, settings.port + 1, db.name, db.superuser_url)
    embedded = config.Settings(settings.home, settings.port, db.name, None)
    assert config.Settings(settings.home, settings.port, db.name, db.superuser_url).on_embedded_server
    assert not deploy.default_password_allowed(server) and deploy.default_password_allowed(embedded)
    monkeypatch.setenv(deploy.ALLOW_DEFAULT_ENV, "1")
    assert deploy.default_password_allowed(server)
    with db.su() as conn:
        assert doctor.check_default_admin_password(server, conn)[0] is False
        assert doctor.check_default_admin_password(embedded, conn)[0] is True
    monkeypatch.setenv("ADMIN_PASSWORD", "a much better admin password")
    deploy.seed(db.superuser_url, allow_default_password=False)
    with db.su() as conn:
        assert doctor.check_default_admin_password(server, conn)[0] is True


@pytest.mark.parametrize(
    "key, value", [("markup_multiplier", "0.0001"), ("bcrypt_cost", "32"), ("hard_max_session_depth", "100000")]
)
def test_attack_set_setting_outside_its_bounds_is_refused(keen, admin_id, key, value):
    with pytest.raises(errors.InvalidInput), keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting(%s, %s::jsonb)", (key, value))


def test_attack_set_setting_leaves_a_trace_with_old_and_new_value(keen, admin_id, db):
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting('markup_multiplier', '4.0')")
        tx.execute("SELECT keen.set_setting('markup_multiplier', '5.0')")
    with psycopg.connect(db.maintenance_url) as conn:
        rows = conn.execute(
            "SELECT actor_id, event_data FROM keen.audit_logs WHERE event_subtype = 'setting_changed' ORDER BY chain_seq"
        ).fetchall()
    assert [(a, d["old_value"], d["new_value"]) for a, d in rows] == [(admin_id, 5.0, 4.0), (admin_id, 4.0, 5.0)]


def test_attack_guessing_the_password_through_change_password_is_locked_out_like_login(keen, make_user, db):
    """Partly broken: change_password had no lock-out (a stolen key could guess the password)."""
    user = make_user()
    for _ in range(10):
        with pytest.raises(errors.AuthenticationFailed), keen.as_user(user) as tx:
            tx.users.change_password("a wrong guess", "the attacker's password")
    with pytest.raises(errors.AuthenticationFailed), keen.as_user(user) as tx:
        tx.users.change_password("correct horse battery", "the attacker's password")  # right, but locked out
    assert login(keen, email_of(db, user), "correct horse battery", "198.51.100.30").user_id  # the owner signs in


def test_attack_rotating_the_source_cannot_guess_a_password_without_limit(keen, make_user, db):
    """Review S4: the lock-out was per (e-mail, source) and per source, and the source is the
    caller's word (p_ip): a leaked keen_app connection rotating it guessed without limit. Now the
    e-mail's failures across all sources are capped too (login_max_failures_per_email), refusing
    then every source that has not signed the e-mail in within the window, with the same 28P01."""
    email = email_of(db, make_user())
    with db.su() as conn:
        assert (
            conn.execute("SELECT value FROM keen.settings WHERE key = 'login_max_failures_per_email'").fetchone()[0]
            == 100
        )
        conn.execute("UPDATE keen.settings SET value = '20' WHERE key = 'login_max_failures_per_email'")
    assert login(keen, email, "correct horse battery", "198.51.100.60").user_id  # the owner's source is known
    for i in range(20):  # one guess per source: no pair or source cap is ever reached
        with pytest.raises(errors.AuthenticationFailed) as err:
            login(keen, email, "a guess", f"203.0.{i}.1")
        assert (err.value.sqlstate, err.value.message) == ("28P01", "invalid e-mail or password")
    with pytest.raises(errors.AuthenticationFailed) as err:  # even the right password, from a new source
        login(keen, email, "correct horse battery", "203.0.200.1")
    assert (err.value.sqlstate, err.value.message) == ("28P01", "invalid e-mail or password")
    assert login(keen, email, "correct horse battery", "198.51.100.60").user_id  # the owner at its known source
    age_login_failures(db, email, 16)
    assert login(keen, email, "correct horse battery", "203.0.200.2").user_id  # the failures aged out


def test_attack_wrong_current_passwords_from_the_gateway_do_not_block_another_users_change_password(
    keen, make_user, db
):
    """Review S8: change_password counted its failures per connection address, the gateway's for
    everyone: 30 wrong current passwords from anyone blocked every user's change_password. Now
    they are counted per user, and not against the user's sign-ins."""
    guessers = [make_user("guesser") for _ in range(3)]
    for guesser in guessers:
        for _ in range(11):
            with pytest.raises(errors.AuthenticationFailed), keen.as_user(guesser) as tx:
                tx.users.change_password("a wrong guess", "the attacker's password")
    victim = make_user("victim")
    with keen.as_user(victim) as tx:
        tx.users.change_password("correct horse battery", "a new horse battery")
    assert login(keen, email_of(db, victim), "a new horse battery").user_id
    assert login(keen, email_of(db, guessers[0]), "correct horse battery").user_id  # its sign-ins are not locked


def test_nobody_can_claim_a_sessions_completion_key_and_the_completion_still_charges_once(
    keen, db, admin_id, make_user
):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = create(keen, user).id
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(user) as tx:
            tx.credits.deduct_credits(user, D("0.000001"), sid, "squat", f"session-complete:{sid}")
    done = complete(keen, user, sid, cost="0.5")
    assert done.execution_status == "completed" and done.keen_cost_credits == D("2.5")
    with pytest.raises(errors.SessionStateError):
        complete(keen, user, sid, cost="0.5")
    assert balance(keen, user).current_balance == D("97.5")
    with db.su() as conn:
        rows = conn.execute(
            "SELECT idempotency_key, amount FROM keen.credit_transactions WHERE session_id = %s", (sid,)
        ).fetchall()
    assert rows == [(f"session-complete:{sid}", D("-2.5"))]
    assert_ledger_clean(db)


def test_completion_refuses_a_cost_the_ledger_would_refuse(keen, db, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = create(keen, user).id
    for cost in ("0.0000000000001", "1000001"):  # 13 decimals: a USD cost keeps 12
        with pytest.raises(errors.InvalidInput):
            complete(keen, user, sid, cost=cost)
    assert balance(keen, user).current_balance == D(100)
    assert_ledger_clean(db)


def test_seeding_never_promotes_a_user_who_registered_the_admin_email(db, make_user, monkeypatch):
    user = make_user()
    email = email_of(db, user)
    monkeypatch.setenv("ADMIN_EMAIL", email)
    with pytest.raises(ValueError, match="not an admin"):
        deploy.seed(db.superuser_url)
    with psycopg.connect(db.superuser_url) as conn:
        assert conn.execute("SELECT is_admin, role FROM keen.users WHERE id = %s", (user,)).fetchone() == (
            False,
            "user",
        )
        assert (
            conn.execute("SELECT unlimited_credits FROM keen.credit_accounts WHERE user_id = %s", (user,)).fetchone()[0]
            is False
        )
