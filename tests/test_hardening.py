"""Holes an independent review found, each closed and kept closed: snapshot isolation that
hid committed holds and login failures, advisory locks anyone could hold, a completion key
anyone could claim first, a re-seed that promoted a registered user."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from keen_client import KeenError, errors
from keen_db import deploy

from .conftest import assert_ledger_clean
from .test_credits import balance, grant
from .test_sessions import complete, create
from .test_users import email_of, fail_logins, login

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
        holder.execute("SELECT pg_advisory_lock(7301, hashtext('main'))")  # longer than lock_timeout
        fail_logins(keen, email, 2)
        holder.execute("SELECT pg_advisory_unlock_all()")
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.login_attempts WHERE email = %s", (email,)).fetchone()[0] == 2
    fail_logins(keen, email, 8)
    with pytest.raises(errors.AuthenticationFailed) as err:
        login(keen, email, "correct horse battery")
    assert err.value.sqlstate == "28000"


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
