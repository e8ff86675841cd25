"""API keys: the rolling-hour rate limit (KN007, exact under concurrency) and scopes from the
contract's list, enforced inside the functions by keen_private.require_scope (CONTRACT.md
"Users and tokens", "Scopes")."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from keen_client.errors import InvalidInput, PermissionDenied, RateLimited

from .conftest import assert_ledger_clean


def make_key(keen, user_id, scopes=(), limit=1000):
    with keen.as_user(user_id) as tx:
        return tx.conn.execute(
            "SELECT token_id, token FROM keen.create_api_key('test key', %s, NULL, %s)", (list(scopes), limit)
        ).fetchone()


def call(db, token) -> str:
    try:
        with psycopg.connect(db.app_url) as conn:
            conn.execute("SELECT keen.authenticate_api_key(%s)", (token,))
    except psycopg.Error as exc:
        return exc.sqlstate or "?"
    return "ok"


def test_a_key_past_its_rate_limit_in_the_rolling_hour_is_kn007_with_the_next_allowed_time(keen, db, make_user):
    _, token = make_key(keen, make_user(), limit=3)
    assert [call(db, token) for _ in range(3)] == ["ok"] * 3
    with psycopg.connect(db.app_url) as conn, pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT keen.authenticate_api_key(%s)", (token,))
    assert err.value.sqlstate == "KN007"
    detail = err.value.diag.message_detail or ""
    at = datetime.fromisoformat(re.search(r"next request allowed at (\S+)", detail).group(1).replace("Z", "+00:00"))
    assert timedelta(minutes=59) < at - datetime.now(UTC) <= timedelta(hours=1)
    with keen.transaction() as tx, pytest.raises(RateLimited) as limited:
        tx.execute("SELECT keen.authenticate_api_key(%s)", (token,))
    assert limited.value.detail and "next request allowed at" in limited.value.detail


def test_the_window_rolls_a_request_an_hour_old_frees_its_slot(keen, db, make_user):
    token_id, token = make_key(keen, make_user(), limit=2)
    assert [call(db, token) for _ in range(2)] == ["ok", "ok"]
    assert call(db, token) == "KN007"
    with db.su() as conn:  # the first request slips out of the hour: exactly one more is allowed
        conn.execute(
            "UPDATE keen.api_key_request_slots SET requested_at = requested_at - interval '61 minutes'"
            " WHERE token_id = %s AND requested_at = (SELECT min(requested_at) FROM keen.api_key_request_slots"
            " WHERE token_id = %s)",
            (token_id, token_id),
        )
    assert [call(db, token) for _ in range(2)] == ["ok", "KN007"]


@pytest.mark.parametrize("round_", range(3))
def test_racing_calls_of_one_key_exactly_the_limit_get_through(keen, db, make_user, round_):
    _, token = make_key(keen, make_user(), limit=10)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: call(db, token), range(30)))
    assert outcomes.count("ok") == 10 and outcomes.count("KN007") == 20


def test_a_refused_call_is_not_counted_against_the_key(keen, db, make_user):
    token_id, token = make_key(keen, make_user(), limit=2)
    for _ in range(5):
        call(db, token)
    with db.su() as conn:
        assert conn.execute("SELECT usage_count FROM keen.auth_tokens WHERE id = %s", (token_id,)).fetchone()[0] == 2


def test_the_admins_keys_bypass_the_limit_and_never_wait(keen, db, admin_key):
    with psycopg.connect(db.app_url) as first, psycopg.connect(db.app_url) as second:
        first.execute("SELECT keen.authenticate_api_key(%s)", (admin_key,))  # in flight
        second.execute("SET lock_timeout = '1s'")
        assert second.execute("SELECT bypass_limits FROM keen.authenticate_api_key(%s)", (admin_key,)).fetchone()[0]
    assert all(call(db, admin_key) == "ok" for _ in range(5))


@pytest.mark.parametrize("scopes", [["*"], ["admin:*"], ["credits:read", "credits:everything"], ["Credits:read"]])
def test_a_scope_outside_the_contracts_list_is_22023(keen, make_user, scopes):
    with pytest.raises(InvalidInput), keen.as_user(make_user()) as tx:
        tx.execute("SELECT keen.create_api_key('k', %s)", (scopes,))


@pytest.mark.parametrize("limit", [0, -1, 1_000_001, None])
def test_a_rate_limit_outside_1_to_a_million_is_22023(keen, make_user, limit):
    with pytest.raises(InvalidInput), keen.as_user(make_user()) as tx:
        tx.execute("SELECT keen.create_api_key('k', '{}', NULL, %s)", (limit,))


def test_a_credits_read_key_reads_the_balance_and_cannot_deduct(keen, db, make_user, admin_id):
    user_id = make_user()
    with keen.as_user(admin_id) as tx:
        tx.credits.add_credits(user_id, Decimal("10"), "scope test")
    _, token = make_key(keen, user_id, ["credits:read"])
    with keen.with_api_key(token) as tx:
        assert tx.credits.get_balance(user_id).current_balance == Decimal("10")
    with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
        tx.credits.deduct_credits(user_id, Decimal("0.01"))
    with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
        tx.execute("SELECT keen.create_session(%s, 's', 'main', 'v', '/w')", (user_id,))
    for account_call in (
        "SELECT keen.change_password('correct horse battery', 'x new password')",
        "SELECT keen.enroll_totp()",
        "SELECT keen.create_api_key('more', '{credits:read}')",
    ):
        with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
            tx.execute(account_call)
    assert_ledger_clean(db)


def test_a_key_never_makes_a_key_with_more_scopes_than_its_own(keen, make_user):
    user_id = make_user()
    _, token = make_key(keen, user_id, ["keys:manage", "credits:read"])
    with keen.with_api_key(token) as tx:
        assert tx.scalar("SELECT token IS NOT NULL FROM keen.create_api_key('narrower', '{credits:read}')")
    for wider in (["credits:write"], []):
        with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
            tx.execute("SELECT keen.create_api_key('wider', %s)", (wider,))


def test_an_admin_key_with_scopes_cannot_do_admin_work(keen, admin_id, make_user):
    _, token = make_key(keen, admin_id, ["credits:read"])
    with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
        tx.users.list_users()


def test_dropping_or_widening_the_scope_list_by_hand_leaves_no_actor(db, keen, make_user):
    user_id = make_user()
    _, token = make_key(keen, user_id, ["credits:read"])
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.authenticate_api_key(%s)", (token,))
        assert conn.execute("SELECT keen.actor_id()").fetchone()[0] == user_id
        for forged in ("", "credits:read,credits:write"):
            conn.execute("SELECT set_config('keen_private.actor_scopes', %s, true)", (forged,))
            assert conn.execute("SELECT keen.actor_id()").fetchone()[0] is None
            conn.execute("SAVEPOINT s")
            with pytest.raises(
                (psycopg.errors.InvalidAuthorizationSpecification, psycopg.errors.InsufficientPrivilege)
            ):
                conn.execute("SELECT keen.deduct_credits(%s, 0.01)", (user_id,))
            conn.execute("ROLLBACK TO SAVEPOINT s")
