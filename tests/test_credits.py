"""The credit ledger through the client: 5x markup, admin bypass, limits, holds, idempotency,
refunds, auto-recharge requests, hostile input and the append-only ledger. Every test that
moves money ends with assert_ledger_clean(db)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from keen_client import errors
from keen_client.credits import Balance, CreditTransaction

from .conftest import assert_ledger_clean

D = Decimal


# --- helpers (the concurrency and model tests use them too) ----------------------------------


def grant(keen, admin_id, user_id, amount, key=None) -> CreditTransaction:
    with keen.as_user(admin_id) as tx:
        return tx.credits.add_credits(user_id, D(amount), "test purchase", key)


def deduct(keen, user_id, cost, actor=None, **kw) -> CreditTransaction:
    with keen.as_user(actor or user_id) as tx:
        return tx.credits.deduct_credits(user_id, D(cost), **kw)


def balance(keen, user_id) -> Balance:
    with keen.as_user(user_id) as tx:
        return tx.credits.get_balance(user_id)


def ledger_rows(db, user_id) -> int:
    with db.su() as conn:
        return conn.execute("SELECT count(*) FROM keen.credit_transactions WHERE user_id = %s", (user_id,)).fetchone()[
            0
        ]


def hold_rows(db, user_id) -> int:
    with db.su() as conn:
        return conn.execute("SELECT count(*) FROM keen.credit_reservations WHERE user_id = %s", (user_id,)).fetchone()[
            0
        ]


def make_session(db, user_id) -> uuid.UUID:
    """A running agent session of user_id, through keen.create_session."""
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.act_as(%s)", (user_id,))
        return conn.execute(
            "SELECT id FROM keen.create_session(%s, %s, 'main', 'test', '/tmp')", (user_id, uuid.uuid4().hex)
        ).fetchone()[0]


@pytest.fixture
def funded(keen, admin_id, make_user):
    """A user holding 100 credits."""
    user = make_user("funded")
    grant(keen, admin_id, user, 100)
    return user


# --- purchases and usage ---------------------------------------------------------------------


def test_a_purchase_adds_credits_and_writes_one_purchase_row(db, keen, admin_id, make_user):
    user = make_user()
    row = grant(keen, admin_id, user, "12.345678")
    assert (row.transaction_type, row.amount, row.balance_after) == ("purchase", D("12.345678"), D("12.345678"))
    b = balance(keen, user)
    assert (b.current_balance, b.available_balance, b.lifetime_purchased, b.lifetime_spent) == (
        D("12.345678"),
        D("12.345678"),
        D("12.345678"),
        D(0),
    )
    assert ledger_rows(db, user) == 1
    assert_ledger_clean(db)


def test_usage_is_charged_at_five_times_the_claude_cost(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    row = deduct(keen, user, "2.00", description="Regular user test")
    assert row.transaction_type == "usage"
    assert row.amount == D("-10.00")
    assert row.claude_cost_usd == D("2.00") and row.markup_multiplier == D("5.0")
    assert row.balance_after == D(90) and not row.is_admin_bypass
    b = balance(keen, user)
    assert (b.current_balance, b.lifetime_spent, b.spent_today, b.spent_this_month) == (D(90), D(10), D(10), D(10))
    assert_ledger_clean(db)


def test_admin_deduction_records_cost_but_charges_nothing(db, keen, admin_id):
    before = balance(keen, admin_id)
    row = deduct(keen, admin_id, "10.50", description="Admin test execution")
    assert row.transaction_type == "admin_bypass" and row.is_admin_bypass
    assert row.amount == 0 and row.claude_cost_usd == D("10.50") and row.markup_multiplier == D(5)
    assert row.metadata["waived_credits"] == D("52.5")
    after = balance(keen, admin_id)
    assert after.unlimited_credits and after.current_balance == before.current_balance
    assert after.spent_today == 0
    assert_ledger_clean(db)


def test_an_admin_may_charge_a_user_and_the_user_pays(db, keen, admin_id, funded):
    row = deduct(keen, funded, 1, actor=admin_id)
    assert row.transaction_type == "usage" and row.user_id == funded and row.amount == D(-5)
    assert balance(keen, funded).current_balance == D(95)
    assert_ledger_clean(db)


def test_the_multiplier_is_stored_on_each_row_so_a_change_never_reprices_history(db, keen, admin_id, funded):
    first = deduct(keen, funded, 1)
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting('markup_multiplier', '3.0')")
    second = deduct(keen, funded, 1)
    assert (first.amount, first.markup_multiplier) == (D(-5), D(5))
    assert (second.amount, second.markup_multiplier) == (D(-3), D(3))
    with keen.as_user(funded) as tx:
        history = tx.credits.credit_history(funded)
    assert [(r.amount, r.markup_multiplier) for r in history[:2]] == [(D(-3), D(3)), (D(-5), D(5))]
    assert_ledger_clean(db)


def test_the_charge_is_rounded_to_six_decimal_places(db, keen, admin_id, funded):
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting('markup_multiplier', '1.2345')")
    assert deduct(keen, funded, "0.000003").amount == D("-0.000004")  # 0.0000037035
    assert deduct(keen, funded, "0.123457").amount == D("-0.152408")  # 0.1524076665
    assert_ledger_clean(db)


def test_a_cost_that_rounds_to_no_charge_is_invalid_input(db, keen, admin_id, funded):
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting('markup_multiplier', '0.1')")
    with pytest.raises(errors.InvalidInput):
        deduct(keen, funded, "0.000001")
    assert ledger_rows(db, funded) == 1
    assert_ledger_clean(db)


def test_a_short_balance_is_kn001_and_writes_nothing(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, "9.999995")
    with pytest.raises(errors.InsufficientCredits):
        deduct(keen, user, 2)
    assert balance(keen, user).current_balance == D("9.999995")
    assert ledger_rows(db, user) == 1
    assert deduct(keen, user, "1.999999").balance_after == D(0)
    assert_ledger_clean(db)


def test_a_charge_may_take_the_balance_to_exactly_zero_but_no_further(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    assert deduct(keen, user, 2).balance_after == 0
    with pytest.raises(errors.InsufficientCredits):
        deduct(keen, user, "0.000001")
    assert_ledger_clean(db)


# --- hostile input ---------------------------------------------------------------------------

HOSTILE = [
    None,
    D("NaN"),
    D("Infinity"),
    D("-Infinity"),
    D(0),
    D("-0.000001"),
    D(-5),
    D("0.0000001"),
    D("1.0000005"),
    D("1000000.000001"),
    D(10) ** 30,
    D("1e-30"),
]


# A USD cost is an input kept with up to 12 decimal places (CONTRACT.md section 3): 7 to 12 are
# accepted, 13 are refused. Money (credits: purchases, limits, refunds) keeps 6.
HOSTILE_COST = [c for c in HOSTILE if c not in (D("0.0000001"), D("1.0000005"))] + [
    D("0.0000000000001"),
    D("1.0000000000005"),
]


@pytest.mark.parametrize("cost", HOSTILE_COST, ids=str)
def test_a_hostile_cost_is_invalid_input_and_writes_nothing(db, keen, funded, cost):
    for call in (
        lambda tx: tx.credits.deduct_credits(funded, cost),
        lambda tx: tx.credits.reserve_credits(funded, cost),
        lambda tx: tx.credits.validate_credits(funded, cost),
    ):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(funded) as tx:
                call(tx)
    assert ledger_rows(db, funded) == 1 and hold_rows(db, funded) == 0
    assert balance(keen, funded).current_balance == D(100)
    assert_ledger_clean(db)


@pytest.mark.parametrize("amount", [a for a in HOSTILE if a != D("1000000.000001")] + [D("1000000000.000001")], ids=str)
def test_a_hostile_purchase_amount_is_invalid_input_and_writes_nothing(db, keen, admin_id, make_user, amount):
    user = make_user()
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(admin_id) as tx:
            tx.credits.add_credits(user, amount, "hostile")
    assert ledger_rows(db, user) == 0
    assert_ledger_clean(db)


def test_trailing_zeros_are_not_extra_decimal_places(db, keen, funded):
    assert deduct(keen, funded, D("1.500000000")).amount == D("-7.5")
    assert_ledger_clean(db)


@pytest.mark.parametrize(
    "description, key", [(None, None), ("", None), ("   ", None), ("x" * 1025, None), ("ok", ""), ("ok", "k" * 256)]
)
def test_a_missing_description_or_a_bad_idempotency_key_is_invalid_input(db, keen, funded, description, key):
    with pytest.raises(errors.InvalidInput):
        deduct(keen, funded, 1, description=description, idempotency_key=key)
    assert ledger_rows(db, funded) == 1
    assert_ledger_clean(db)


def test_a_balance_past_a_trillion_credits_is_refused(db, keen, admin_id, make_user):
    user = make_user()
    with keen.as_user(admin_id) as tx:
        for _ in range(1000):
            tx.credits.add_credits(user, D(1_000_000_000), "whale")
    with pytest.raises(errors.InvalidInput):
        grant(keen, admin_id, user, 1)
    assert balance(keen, user).current_balance == D(10) ** 12
    assert_ledger_clean(db)


def test_a_float_is_refused_by_the_client_before_anything_is_sent(db, keen, funded):
    with pytest.raises(TypeError):
        with keen.as_user(funded) as tx:
            tx.credits.deduct_credits(funded, 0.1)
    assert ledger_rows(db, funded) == 1
    assert_ledger_clean(db)


def test_money_comes_back_as_decimal(db, keen, funded):
    b = balance(keen, funded)
    assert all(
        isinstance(v, Decimal)
        for v in (
            b.current_balance,
            b.available_balance,
            b.lifetime_purchased,
            b.lifetime_spent,
            b.spent_today,
            b.spent_this_month,
        )
    )
    assert_ledger_clean(db)


# --- who may do what -------------------------------------------------------------------------


def test_only_an_admin_may_add_credits(db, keen, make_user):
    user = make_user()
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(user) as tx:
            tx.credits.add_credits(user, D(100), "self-service")
    with pytest.raises(errors.PermissionDenied):
        with keen.transaction() as tx:  # no actor at all
            tx.credits.add_credits(user, D(100), "anonymous")
    assert ledger_rows(db, user) == 0
    assert_ledger_clean(db)


def test_a_user_cannot_touch_another_users_account(db, keen, funded, make_user):
    mallory = make_user("mallory")
    calls = [
        lambda tx: tx.credits.deduct_credits(funded, D(1)),
        lambda tx: tx.credits.reserve_credits(funded, D(1)),
        lambda tx: tx.credits.get_balance(funded),
        lambda tx: tx.credits.validate_credits(funded, D(1)),
        lambda tx: tx.credits.credit_history(funded),
        lambda tx: tx.credits.set_spending_limits(funded, D(0), D(0)),
        lambda tx: tx.credits.set_auto_recharge(funded, True),
        lambda tx: tx.credits.verify_ledger(),
    ]
    for call in calls:
        with pytest.raises(errors.PermissionDenied):
            with keen.as_user(mallory) as tx:
                call(tx)
    assert ledger_rows(db, funded) == 1 and hold_rows(db, funded) == 0
    assert_ledger_clean(db)


def test_a_refused_caller_holds_no_lock_on_the_account_it_tried(db, keen, funded, make_user):
    mallory = make_user("mallory")
    for call in ("SELECT keen.deduct_credits(%s, 1)", "SELECT keen.reserve_credits(%s, 1)"):
        with psycopg.connect(db.app_url) as stuck:  # refused, then left open (aborted, not rolled back)
            stuck.execute("SELECT keen.act_as(%s)", (mallory,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                stuck.execute(call, (funded,))
            with keen.as_user(funded) as tx:
                tx.execute("SET LOCAL lock_timeout = '2s'")
                tx.credits.deduct_credits(funded, D(1))
    assert balance(keen, funded).current_balance == D(90)
    assert_ledger_clean(db)


def test_another_tenants_hold_transaction_or_session_reads_as_not_found(db, keen, admin_id, funded, make_user):
    mallory = make_user("mallory")
    grant(keen, admin_id, mallory, 100)
    with keen.as_user(funded) as tx:
        hold = tx.credits.reserve_credits(funded, D(1))
    session = make_session(db, funded)
    for call in (
        lambda tx: tx.credits.capture_reservation(hold.reservation_id, D(1)),
        lambda tx: tx.credits.release_reservation(hold.reservation_id),
        lambda tx: tx.credits.release_reservation(uuid.uuid4()),
        lambda tx: tx.credits.deduct_credits(mallory, D(1), session_id=session),
    ):
        with pytest.raises(errors.NotFound):
            with keen.as_user(mallory) as tx:
                call(tx)
    assert balance(keen, funded).available_balance == D(95)
    assert_ledger_clean(db)


def test_a_usage_can_name_its_own_session(db, keen, funded):
    session = make_session(db, funded)
    row = deduct(keen, funded, 1, session_id=session)
    assert row.session_id == session
    assert_ledger_clean(db)


def test_an_unknown_user_is_not_found_even_for_an_admin(db, keen, admin_id):
    nobody = uuid.uuid4()
    for call in (
        lambda tx: tx.credits.add_credits(nobody, D(1), "x"),
        lambda tx: tx.credits.deduct_credits(nobody, D(1)),
        lambda tx: tx.credits.get_balance(nobody),
        lambda tx: tx.credits.reserve_credits(nobody, D(1)),
    ):
        with pytest.raises(errors.NotFound):
            with keen.as_user(admin_id) as tx:
                call(tx)
    assert_ledger_clean(db)


# --- limits ----------------------------------------------------------------------------------


def test_a_daily_limit_refuses_the_charge_that_would_pass_it_and_null_means_no_limit(db, keen, funded):
    with keen.as_user(funded) as tx:
        tx.credits.set_spending_limits(funded, D(12), None)
    deduct(keen, funded, 2)  # 10 of 12
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, "0.400001")  # 12.000005 > 12
    deduct(keen, funded, "0.4")  # exactly 12
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, "0.000001")
    with keen.as_user(funded) as tx:
        tx.credits.set_spending_limits(funded, None, None)
    deduct(keen, funded, 1)
    b = balance(keen, funded)
    assert (b.current_balance, b.spent_today, b.daily_limit) == (D(83), D(17), None)
    assert_ledger_clean(db)


def test_a_monthly_limit_refuses_like_a_daily_one(db, keen, funded):
    with keen.as_user(funded) as tx:
        tx.credits.set_spending_limits(funded, None, D(7))
    deduct(keen, funded, 1)
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, 1)
    assert balance(keen, funded).spent_this_month == D(5)
    assert_ledger_clean(db)


def test_a_zero_limit_stops_all_usage_and_a_hostile_limit_is_invalid_input(db, keen, funded):
    with keen.as_user(funded) as tx:
        tx.credits.set_spending_limits(funded, D(0), None)
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, "0.000001")
    for bad in (D(-1), D("NaN"), D("Infinity"), D("0.0000001"), D(10) ** 13):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(funded) as tx:
                tx.credits.set_spending_limits(funded, None, bad)
    assert balance(keen, funded).daily_limit == 0
    assert_ledger_clean(db)


def test_the_usage_counters_start_again_on_a_new_utc_day_and_month(db, keen, funded):
    with keen.as_user(funded) as tx:
        tx.credits.set_spending_limits(funded, D(6), D(6))
    deduct(keen, funded, 1)
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, "0.4")
    with db.su() as conn:  # as if that usage had been last month
        conn.execute(
            """UPDATE keen.credit_accounts
                           SET spent_day = spent_day - 40,
                               spent_month = (date_trunc('month', spent_month::timestamp) - interval '1 month')::date
                         WHERE user_id = %s""",
            (funded,),
        )
    assert (balance(keen, funded).spent_today, balance(keen, funded).spent_this_month) == (0, 0)
    deduct(keen, funded, "1.2")
    b = balance(keen, funded)
    assert (b.spent_today, b.spent_this_month, b.current_balance) == (D(6), D(6), D(89))
    assert_ledger_clean(db)


def test_admins_are_not_held_to_limits(db, keen, admin_id):
    with keen.as_user(admin_id) as tx:
        tx.credits.set_spending_limits(admin_id, D(0), D(0))
        assert tx.credits.deduct_credits(admin_id, D(5)).is_admin_bypass
    assert_ledger_clean(db)


# --- holds -----------------------------------------------------------------------------------


def test_a_hold_reduces_the_available_balance_and_counts_against_limits(db, keen, funded):
    with keen.as_user(funded) as tx:
        hold = tx.credits.reserve_credits(funded, D(4))
    assert (hold.held_credits, hold.available_balance) == (D(20), D(80))
    b = balance(keen, funded)
    assert (b.current_balance, b.available_balance) == (D(100), D(80))
    with pytest.raises(errors.InsufficientCredits):
        deduct(keen, funded, "16.000001")
    deduct(keen, funded, 16)
    assert balance(keen, funded).available_balance == 0
    with keen.as_user(funded) as tx:
        tx.credits.release_reservation(hold.reservation_id)
        tx.credits.set_spending_limits(funded, D(90), None)  # 80 spent today
        tx.credits.reserve_credits(funded, D(1))  # holds 5: 85 of 90, 15 available
    with pytest.raises(errors.SpendingLimitExceeded):
        deduct(keen, funded, "1.000001")
    with pytest.raises(errors.SpendingLimitExceeded):
        with keen.as_user(funded) as tx:
            tx.credits.reserve_credits(funded, D("1.000001"))
    deduct(keen, funded, 1)
    assert_ledger_clean(db)


def test_an_expired_hold_stops_counting_without_any_job(db, keen, funded):
    with keen.as_user(funded) as tx:
        hold = tx.credits.reserve_credits(funded, D(20), ttl=timedelta(minutes=5))
    with pytest.raises(errors.InsufficientCredits):
        deduct(keen, funded, 1)
    with db.su() as conn:  # as if five minutes had passed
        conn.execute(
            "UPDATE keen.credit_reservations SET expires_at = now() - interval '1 second', "
            "created_at = created_at - interval '5 minutes' WHERE id = %s",
            (hold.reservation_id,),
        )
    assert balance(keen, funded).available_balance == D(100)
    deduct(keen, funded, 20)
    for call in (
        lambda tx: tx.credits.capture_reservation(hold.reservation_id, D(1)),
        lambda tx: tx.credits.release_reservation(hold.reservation_id),
    ):
        with pytest.raises(errors.ReservationError):
            with keen.as_user(funded) as tx:
                call(tx)
    assert_ledger_clean(db)


def test_capture_may_charge_more_or_less_than_the_estimate_and_ends_the_hold(db, keen, funded):
    with keen.as_user(funded) as tx:
        more = tx.credits.reserve_credits(funded, D(2))
        less = tx.credits.reserve_credits(funded, D(2))
    with keen.as_user(funded) as tx:
        a = tx.credits.capture_reservation(more.reservation_id, D(3), "bigger than thought")
        b = tx.credits.capture_reservation(less.reservation_id, D("0.5"))
    assert (a.amount, b.amount) == (D(-15), D("-2.5"))
    assert a.metadata["reservation_id"] == str(more.reservation_id) and a.transaction_type == "usage"
    bal = balance(keen, funded)
    assert (bal.current_balance, bal.available_balance, bal.spent_today) == (D("82.5"), D("82.5"), D("17.5"))
    assert_ledger_clean(db)


def test_capture_beyond_the_balance_is_kn001_and_the_hold_stays_live(db, keen, funded):
    with keen.as_user(funded) as tx:
        hold = tx.credits.reserve_credits(funded, D(10))
    with pytest.raises(errors.InsufficientCredits):
        with keen.as_user(funded) as tx:
            tx.credits.capture_reservation(hold.reservation_id, D("20.000001"))
    assert balance(keen, funded).available_balance == D(50)
    with keen.as_user(funded) as tx:
        assert tx.credits.capture_reservation(hold.reservation_id, D(20)).balance_after == 0
    assert_ledger_clean(db)


def test_a_hold_ends_exactly_once(db, keen, funded):
    with keen.as_user(funded) as tx:
        captured = tx.credits.reserve_credits(funded, D(1))
        released = tx.credits.reserve_credits(funded, D(1))
        tx.credits.capture_reservation(captured.reservation_id, D(1))
        tx.credits.release_reservation(released.reservation_id)
    for res in (captured, released):
        for call in (
            lambda tx, res=res: tx.credits.capture_reservation(res.reservation_id, D(1)),
            lambda tx, res=res: tx.credits.release_reservation(res.reservation_id),
        ):
            with pytest.raises(errors.ReservationError):
                with keen.as_user(funded) as tx:
                    call(tx)
    assert balance(keen, funded).current_balance == D(95)
    assert_ledger_clean(db)


def test_an_unlimited_account_holds_nothing_and_its_capture_is_an_admin_bypass(db, keen, admin_id):
    with keen.as_user(admin_id) as tx:
        hold = tx.credits.reserve_credits(admin_id, D(1000))
        assert hold.held_credits == 0
        row = tx.credits.capture_reservation(hold.reservation_id, D(2000))
    assert row.transaction_type == "admin_bypass" and row.amount == 0 and row.claude_cost_usd == D(2000)
    assert_ledger_clean(db)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(days=7, seconds=1), None])
def test_a_hold_needs_a_ttl_above_zero_and_at_most_a_week(db, keen, funded, ttl):
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(funded) as tx:
            tx.credits.reserve_credits(funded, D(1), ttl=ttl)
    assert hold_rows(db, funded) == 0
    assert_ledger_clean(db)


def test_a_capture_is_priced_at_the_multiplier_quoted_with_the_hold(db, keen, admin_id, funded):
    with keen.as_user(funded) as tx:
        hold = tx.credits.reserve_credits(funded, D(1))
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.set_setting('markup_multiplier', '7.0')")
    with keen.as_user(funded) as tx:
        row = tx.credits.capture_reservation(hold.reservation_id, D(2))
    assert (row.amount, row.markup_multiplier) == (D(-10), D(5))
    assert_ledger_clean(db)


# --- idempotency -----------------------------------------------------------------------------


def test_a_retried_deduction_returns_the_first_result_and_charges_nothing_more(db, keen, funded):
    first = deduct(keen, funded, 1, idempotency_key="run-1")
    again = deduct(keen, funded, D("1.000000"), idempotency_key="run-1", description="other words, same request")
    assert again == first
    assert balance(keen, funded).current_balance == D(95)
    with pytest.raises(errors.IdempotencyConflict):
        deduct(keen, funded, 2, idempotency_key="run-1")
    with pytest.raises(errors.IdempotencyConflict):
        deduct(keen, funded, 1, idempotency_key="run-1", session_id=make_session(db, funded))
    assert ledger_rows(db, funded) == 2
    assert_ledger_clean(db)


def test_a_retry_is_answered_even_when_the_balance_no_longer_covers_it(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 5)
    first = deduct(keen, user, 1, idempotency_key="last-credits")
    assert deduct(keen, user, 1, idempotency_key="last-credits") == first
    assert_ledger_clean(db)


def test_a_retried_purchase_adds_nothing_and_a_different_amount_is_kn005(db, keen, admin_id, make_user):
    user = make_user()
    first = grant(keen, admin_id, user, 50, key="stripe-pi-1")
    assert grant(keen, admin_id, user, 50, key="stripe-pi-1") == first
    with pytest.raises(errors.IdempotencyConflict):
        grant(keen, admin_id, user, 51, key="stripe-pi-1")
    with pytest.raises(errors.IdempotencyConflict):  # a purchase key is not a usage key
        deduct(keen, user, 1, idempotency_key="stripe-pi-1")
    assert balance(keen, user).current_balance == D(50)
    assert_ledger_clean(db)


def test_a_retried_hold_returns_the_first_hold(db, keen, funded):
    with keen.as_user(funded) as tx:
        first = tx.credits.reserve_credits(funded, D(2), idempotency_key="hold-1")
        again = tx.credits.reserve_credits(funded, D(2), idempotency_key="hold-1")
        assert again.reservation_id == first.reservation_id and again.held_credits == D(10)
        assert again.available_balance == D(90)
    with pytest.raises(errors.IdempotencyConflict):
        with keen.as_user(funded) as tx:
            tx.credits.reserve_credits(funded, D(3), idempotency_key="hold-1")
    assert hold_rows(db, funded) == 1
    assert_ledger_clean(db)


def test_the_same_key_on_two_accounts_is_two_requests(db, keen, admin_id, funded, make_user):
    other = make_user()
    grant(keen, admin_id, other, 100)
    a = deduct(keen, funded, 1, idempotency_key="shared")
    b = deduct(keen, other, 1, idempotency_key="shared")
    assert a.id != b.id
    assert_ledger_clean(db)


# --- refunds ---------------------------------------------------------------------------------


def test_a_refund_is_a_new_row_and_the_original_is_never_edited(db, keen, admin_id, funded):
    usage = deduct(keen, funded, 2)
    with keen.as_user(admin_id) as tx:
        refund = tx.credits.refund_credits(usage.id, "agent crashed")
    assert (refund.transaction_type, refund.amount, refund.refund_of) == ("refund", D(10), usage.id)
    assert refund.description == "agent crashed" and refund.metadata["refunded_type"] == "usage"
    with keen.as_user(funded) as tx:
        history = tx.credits.credit_history(funded)
    assert history[1] == usage
    b = balance(keen, funded)
    assert (b.current_balance, b.lifetime_spent) == (D(100), D(0))
    assert_ledger_clean(db)


def test_a_transaction_is_refunded_at_most_once_in_part_or_whole(db, keen, admin_id, funded):
    usage = deduct(keen, funded, 2)
    with keen.as_user(admin_id) as tx:
        assert tx.credits.refund_credits(usage.id, "half", D(4)).amount == D(4)
    with pytest.raises(errors.Conflict):
        with keen.as_user(admin_id) as tx:
            tx.credits.refund_credits(usage.id, "the other half", D(6))
    assert balance(keen, funded).current_balance == D(94)
    assert_ledger_clean(db)


def test_refunding_a_purchase_takes_credits_back_and_needs_them_available(db, keen, admin_id, make_user):
    user = make_user()
    purchase = grant(keen, admin_id, user, 10)
    with keen.as_user(user) as tx:
        tx.credits.reserve_credits(user, D(1))  # holds 5
    with pytest.raises(errors.InsufficientCredits):
        with keen.as_user(admin_id) as tx:
            tx.credits.refund_credits(purchase.id, "chargeback")
    with keen.as_user(admin_id) as tx:
        row = tx.credits.refund_credits(purchase.id, "partial chargeback", D(5))
    assert row.amount == D(-5) and row.balance_after == D(5)
    b = balance(keen, user)
    assert (b.current_balance, b.available_balance, b.lifetime_purchased) == (D(5), D(0), D(5))
    assert_ledger_clean(db)


def test_only_purchases_and_usage_are_refunded_and_never_for_more_than_their_amount(db, keen, admin_id, funded):
    usage = deduct(keen, funded, 1)
    bypass = deduct(keen, admin_id, 1)
    with keen.as_user(admin_id) as tx:
        refund = tx.credits.refund_credits(usage.id, "sorry", D(1))
    for txid, amount in ((usage.id, None), (bypass.id, None), (refund.id, None)):
        with pytest.raises((errors.InvalidInput, errors.Conflict)):
            with keen.as_user(admin_id) as tx:
                tx.credits.refund_credits(txid, "again", amount)
    other = deduct(keen, funded, 1)
    for bad in (D("5.000001"), D(0), D(-1), D("NaN"), D("0.0000001")):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(admin_id) as tx:
                tx.credits.refund_credits(other.id, "too much", bad)
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(admin_id) as tx:
            tx.credits.refund_credits(other.id, None)
    assert_ledger_clean(db)


def test_only_an_admin_may_refund_and_an_unknown_transaction_is_not_found(db, keen, admin_id, funded):
    usage = deduct(keen, funded, 1)
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(funded) as tx:
            tx.credits.refund_credits(usage.id, "I want it back")
    with pytest.raises(errors.NotFound):
        with keen.as_user(admin_id) as tx:
            tx.credits.refund_credits(uuid.uuid4(), "what")
    assert_ledger_clean(db)


def test_credit_grants_and_refunds_are_audited(db, keen, admin_id, funded):
    usage = deduct(keen, funded, 1)
    with keen.as_user(admin_id) as tx:
        refund = tx.credits.refund_credits(usage.id, "audited")
    with db.su() as conn:
        rows = conn.execute(
            """SELECT event_subtype, event_data->>'transaction_id', actor_id
                                 FROM keen.audit_logs WHERE event_type = 'credits' AND user_id = %s
                                ORDER BY id""",
            (funded,),
        ).fetchall()
    assert [r[0] for r in rows] == ["grant", "refund"]
    assert rows[1][1] == str(refund.id) and rows[1][2] == admin_id
    assert_ledger_clean(db)


# --- the ledger itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE keen.credit_transactions SET amount = amount + 1",
        "UPDATE keen.credit_transactions SET description = 'x' WHERE false",
        "DELETE FROM keen.credit_transactions",
        "TRUNCATE keen.credit_transactions CASCADE",
    ],
)
@pytest.mark.parametrize("role", [None, "keen_owner"])
def test_the_ledger_refuses_update_delete_and_truncate_for_every_role(db, keen, funded, statement, role):
    with db.su() as conn:
        if role:
            conn.execute(f"SET ROLE {role}")
            conn.execute("SELECT keen.act_as(%s)", (funded,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
    assert ledger_rows(db, funded) == 1
    assert_ledger_clean(db)


def test_keen_app_cannot_write_the_ledger_tables_directly(db, keen, funded):
    for statement in (
        "INSERT INTO keen.credit_transactions (user_id, account_id, transaction_type, amount, "
        "balance_after, description) SELECT user_id, id, 'purchase', 1, 1, 'x' FROM keen.credit_accounts",
        "UPDATE keen.credit_accounts SET current_balance = 1e9",
    ):
        with pytest.raises(errors.PermissionDenied):
            with keen.as_user(funded) as tx:
                tx.execute(statement)
    assert_ledger_clean(db)


def test_verify_ledger_is_for_admins_and_maintenance_and_catches_a_tampered_balance(db, keen, admin_id, funded):
    with keen.as_user(admin_id) as tx:
        rows = tx.credits.verify_ledger()
    assert {r.user_id for r in rows} >= {funded, admin_id} and all(r.ok for r in rows)
    with pytest.raises(errors.PermissionDenied):
        with keen.transaction() as tx:
            tx.credits.verify_ledger()
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.credit_accounts SET current_balance = current_balance + 1 WHERE user_id = %s", (funded,)
        )
    with keen.as_user(admin_id) as tx:
        bad = [r for r in tx.credits.verify_ledger() if not r.ok]
    assert [(r.user_id, r.balance, r.ledger_sum) for r in bad] == [(funded, D(101), D(100))]
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.credit_accounts SET current_balance = current_balance - 1 WHERE user_id = %s", (funded,)
        )
    assert_ledger_clean(db)


def test_history_is_newest_first_and_limited(db, keen, funded):
    for cost in ("0.1", "0.2", "0.3"):
        deduct(keen, funded, cost)
    with keen.as_user(funded) as tx:
        rows = tx.credits.credit_history(funded, 2)
        assert [r.amount for r in rows] == [D("-1.5"), D("-1.0")]
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(funded) as tx:
            tx.credits.credit_history(funded, 0)
    assert_ledger_clean(db)


def test_validate_credits_judges_the_available_balance_and_writes_nothing(db, keen, admin_id, funded):
    with keen.as_user(funded) as tx:
        tx.credits.reserve_credits(funded, D(10))  # holds 50
        v = tx.credits.validate_credits(funded, D(11))
    assert (v.sufficient, v.current_balance, v.required, v.shortfall, v.unlimited) == (
        False,
        D(100),
        D(55),
        D(5),
        False,
    )
    with keen.as_user(funded) as tx:
        assert tx.credits.validate_credits(funded, D(10)).sufficient
    with keen.as_user(admin_id) as tx:
        a = tx.credits.validate_credits(admin_id, D(1000))
    assert (a.sufficient, a.required, a.shortfall, a.unlimited) == (True, D(5000), D(0), True)
    assert ledger_rows(db, funded) == 1
    assert_ledger_clean(db)


# --- auto-recharge ---------------------------------------------------------------------------


def test_auto_recharge_records_one_pending_request_per_threshold_crossing(db, keen, admin_id, funded):
    with keen.as_user(funded) as tx:
        tx.credits.set_auto_recharge(funded, True, D(50), D(25))
    deduct(keen, funded, 9)  # 100 -> 55: above the threshold
    with keen.as_user(funded) as tx:
        assert tx.credits.recharge_requests() == []
    crossing = deduct(keen, funded, 1)  # 55 -> 50: not below
    crossing = deduct(keen, funded, "0.2")  # 50 -> 49: crossed
    deduct(keen, funded, 1)  # 49 -> 44: still below, no new request
    with keen.as_user(funded) as tx:
        [req] = tx.credits.recharge_requests()
    assert (req.threshold, req.requested_amount, req.balance_at_request, req.triggered_by) == (
        D(50),
        D(25),
        D(49),
        crossing.id,
    )
    # The payment side buys and closes it; the next crossing makes a new one.
    with keen.as_user(admin_id) as tx:
        purchase = tx.credits.add_credits(funded, req.requested_amount, "auto-recharge", f"recharge:{req.id}")
        done = tx.credits.resolve_recharge_request(req.id, "completed", purchase.id)
        assert done.status == "completed" and done.purchase_transaction_id == purchase.id
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(admin_id) as tx:
            tx.credits.resolve_recharge_request(req.id, "cancelled")
    deduct(keen, funded, 4)  # 69 -> 49: crossed again
    with keen.as_user(funded) as tx:
        assert len(tx.credits.recharge_requests()) == 1
        assert len(tx.credits.recharge_requests("completed")) == 1
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(funded) as tx:
            tx.credits.resolve_recharge_request(req.id, "failed")
    assert_ledger_clean(db)


def test_no_recharge_request_while_auto_recharge_is_off(db, keen, funded):
    deduct(keen, funded, 19)
    with keen.as_user(funded) as tx:
        assert tx.credits.recharge_requests() == []
    assert_ledger_clean(db)


def test_keen_app_cannot_become_the_ledgers_owner(db):
    """keen_ledger bypasses row policies on the ledger tables (docs/credits.md): no login role
    may become it, by SET ROLE or SET SESSION AUTHORIZATION, nor log in as it."""
    for statement in ("SET ROLE keen_ledger", "SET SESSION AUTHORIZATION keen_ledger"):
        with psycopg.connect(db.app_url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with db.su() as conn:
        assert conn.execute(
            "SELECT rolbypassrls AND NOT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = 'keen_ledger'"
        ).fetchone() == (True,)
        members = conn.execute("SELECT count(*) FROM pg_auth_members WHERE roleid = 'keen_ledger'::regrole").fetchone()[
            0
        ]
    assert members == 0


# --- scopes (CONTRACT.md "Scopes": a scoped key may do only what its scopes cover) ------------


def api_key(keen, user_id, scopes) -> str:
    """A new API key of user_id with these scopes (made by the user, unscoped)."""
    with keen.as_user(user_id) as tx:
        return tx.scalar("SELECT token FROM keen.create_api_key('scope test', %s)", (list(scopes),))


@pytest.mark.parametrize("scopes", [["sessions:read"], ["credits:read"], ["credits:write", "credits:read"]])
def test_no_scoped_key_may_change_the_spending_limits_or_auto_recharge(db, keen, make_user, scopes):
    """No scope covers them: the limits bound what the spending keys spend, so no key lifts them."""
    user = make_user()
    with keen.as_user(user) as tx:
        tx.credits.set_spending_limits(user, D(10), D(100))
    token = api_key(keen, user, scopes)
    for call in (
        "SELECT keen.set_spending_limits(%s, NULL, NULL)",
        "SELECT keen.set_auto_recharge(%s, true, 5, 50)",
    ):
        with pytest.raises(errors.PermissionDenied), keen.with_api_key(token) as tx:
            tx.execute(call, (user,))
    after = balance(keen, user)
    assert (after.daily_limit, after.monthly_limit) == (D(10), D(100))
    with db.su() as conn:
        assert conn.execute(
            "SELECT auto_recharge_enabled FROM keen.credit_accounts WHERE user_id = %s", (user,)
        ).fetchone() == (False,)
    with keen.with_api_key(api_key(keen, user, [])) as tx:  # an unscoped key still may
        tx.execute("SELECT keen.set_spending_limits(%s, NULL, NULL)", (user,))
    assert balance(keen, user).daily_limit is None


def test_an_admin_key_with_a_scope_list_cannot_change_anyones_limits(keen, admin_id, make_user):
    user = make_user()
    token = api_key(keen, admin_id, ["credits:write"])
    for call in (
        "SELECT keen.set_spending_limits(%s, 1, 1)",
        "SELECT keen.set_auto_recharge(%s, false)",
    ):
        with pytest.raises(errors.PermissionDenied), keen.with_api_key(token) as tx:
            tx.execute(call, (user,))
    assert balance(keen, user).daily_limit is None


def test_the_recharge_queue_needs_credits_read(keen, funded):
    with pytest.raises(errors.PermissionDenied), keen.with_api_key(api_key(keen, funded, ["sessions:read"])) as tx:
        tx.credits.recharge_requests()
    with keen.with_api_key(api_key(keen, funded, ["credits:read"])) as tx:
        assert tx.credits.recharge_requests() == []


def test_a_validate_constraint_runs_in_a_migration_of_its_own():
    """A VALIDATE scans its table; a migration that also takes ACCESS EXCLUSIVE locks (a DROP
    CONSTRAINT, as 0015 did) would hold them for the whole scan. From 0009 on, a file that
    validates does nothing else but SET its timeouts."""
    schema = Path(__file__).resolve().parent.parent / "db" / "schema"
    validating = []
    for path in sorted(schema.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        if path.name.endswith(".rollback.sql") or int(path.name[:4]) < 9:
            continue
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        if any("VALIDATE CONSTRAINT" in s.upper() for s in statements):
            validating.append(path.name)
            others = [
                s for s in statements if not s.upper().startswith("SET ") and "VALIDATE CONSTRAINT" not in s.upper()
            ]
            assert others == [], f"{path.name} validates a constraint and also runs {others}"
    assert "0018_validate_session_cost.sql" in validating
