"""Usage metering (CONTRACT.md "Usage metering"): each LLM call priced from the dated price
table, kept exact, charged at once through the ledger's locked path, idempotent by request id
per session. Every test that moves money ends with assert_ledger_clean(db)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from keen_client import errors

from .conftest import assert_ledger_clean
from .test_credits import balance, grant, ledger_rows, make_session

D = Decimal


def record(keen, actor, session, model="claude-opus-4-5", inp=0, out=0, cw=0, cr=0, request_id=None):
    with keen.as_user(actor) as tx:
        return tx.credits.record_llm_usage(session, model, inp, out, cw, cr, request_id)


def session_costs(db, session):
    with db.su() as conn:
        return conn.execute(
            "SELECT claude_cost_usd, keen_cost_credits FROM keen.agent_sessions WHERE id = %s", (session,)
        ).fetchone()


def test_the_seeded_prices_are_the_published_ones_of_2025_11_24(db):
    with db.su() as conn:
        rows = conn.execute(
            "SELECT model, input_usd_per_mtok, output_usd_per_mtok, cache_write_usd_per_mtok, cache_read_usd_per_mtok,"
            " effective_from FROM keen.model_prices ORDER BY model"
        ).fetchall()
    when = datetime(2025, 11, 24, tzinfo=UTC)
    assert rows == [
        ("claude-haiku-4-5", 1, 5, D("1.25"), D("0.10"), when),
        ("claude-opus-4-5", 5, 25, D("6.25"), D("0.50"), when),
        ("claude-sonnet-4-5", 3, 15, D("3.75"), D("0.30"), when),
    ]


def test_a_call_is_priced_from_the_price_in_force_and_charged_at_once_at_5x(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    usage = record(keen, user, sid, "claude-opus-4-5", 1000, 500, 200, 3000)
    # (1000 x 5 + 500 x 25 + 200 x 6.25 + 3000 x 0.50) / 10^6
    assert usage.claude_cost_usd == D("0.02025")
    assert usage.charged_credits == D("0.10125")
    assert usage.balance_after == D("99.89875")
    assert balance(keen, user).current_balance == D("99.89875")
    assert session_costs(db, sid) == (D("0.02025"), D("0.10125"))
    with db.su() as conn:
        tx = conn.execute(
            "SELECT transaction_type, amount, claude_cost_usd, markup_multiplier, session_id"
            " FROM keen.credit_transactions WHERE id = %s",
            (usage.transaction_id,),
        ).fetchone()
    assert tx == ("usage", D("-0.10125"), D("0.02025"), D("5.0"), sid)
    assert_ledger_clean(db)


def test_a_few_tokens_of_a_cheap_model_keep_twelve_decimal_places(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 1)
    sid = make_session(db, user)
    usage = record(keen, user, sid, "claude-haiku-4-5", cr=3)
    assert usage.claude_cost_usd == D("0.0000003")  # 3 x 0.10 / 10^6, not rounded away
    assert usage.charged_credits == D("0.000002")  # round(0.0000015, 6)
    assert session_costs(db, sid)[0] == D("0.0000003")
    assert_ledger_clean(db)


def test_a_cost_that_rounds_to_zero_credits_is_recorded_with_no_ledger_row(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 1)
    sid = make_session(db, user)
    with keen.as_user(admin_id) as tx:
        tx.credits.set_model_price("tiny-model", D("0.05"), D("0.05"))
    before = ledger_rows(db, user)
    usage = record(keen, user, sid, "claude-haiku-4-5", cr=1)  # 0.0000001 USD, 0.0000005 rounds up
    assert (usage.claude_cost_usd, usage.charged_credits) == (D("0.0000001"), D("0.000001"))
    tiny = record(keen, user, sid, "tiny-model", inp=1)  # 0.00000005 USD, 0.00000025 credits: 0
    assert (tiny.claude_cost_usd, tiny.charged_credits, tiny.transaction_id, tiny.balance_after) == (
        D("0.00000005"),
        0,
        None,
        None,
    )
    zero = record(keen, user, sid, "claude-haiku-4-5")  # no tokens at all
    assert (zero.claude_cost_usd, zero.charged_credits, zero.transaction_id) == (0, 0, None)
    assert ledger_rows(db, user) == before + 1
    assert session_costs(db, sid) == (D("0.00000015"), D("0.000001"))
    assert_ledger_clean(db)


def test_the_same_request_id_returns_the_first_result_and_charges_once(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    first = record(keen, user, sid, "claude-sonnet-4-5", 1000, 1000, request_id="req-1")
    again = record(keen, user, sid, "claude-sonnet-4-5", 1000, 1000, request_id="req-1")
    assert again == first
    assert balance(keen, user).current_balance == D(100) - first.charged_credits
    assert session_costs(db, sid)[0] == first.claude_cost_usd
    # The id is per session: another session of the user may use it.
    other = record(keen, user, make_session(db, user), "claude-sonnet-4-5", 1000, 1000, request_id="req-1")
    assert other.usage_id != first.usage_id
    assert_ledger_clean(db)


def test_a_request_id_reused_with_other_counts_is_an_idempotency_conflict(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    record(keen, user, sid, "claude-sonnet-4-5", 1000, 1000, request_id="req-1")
    for changed in ({"inp": 1001, "out": 1000}, {"inp": 1000, "out": 1000, "cr": 1}, {"model": "claude-opus-4-5"}):
        kw = {"inp": 1000, "out": 1000, "model": "claude-sonnet-4-5"} | changed
        with pytest.raises(errors.IdempotencyConflict):
            record(keen, user, sid, request_id="req-1", **kw)
    assert ledger_rows(db, user) == 2
    assert_ledger_clean(db)


def test_an_unknown_model_or_a_bad_count_is_invalid_input_and_writes_nothing(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    for kw in (
        {"model": "gpt-nope", "inp": 1},
        {"inp": -1},
        {"out": None},
        {"cw": 10**13},
        {"inp": 1, "request_id": "x" * 300},
        {"inp": 1, "request_id": ""},
    ):
        with pytest.raises(errors.InvalidInput):
            record(keen, user, sid, **kw)
    assert ledger_rows(db, user) == 1 and session_costs(db, sid) == (0, 0)
    assert_ledger_clean(db)


def test_another_tenants_session_is_not_found_and_charges_nobody(db, keen, admin_id, make_user):
    owner, other = make_user(), make_user()
    grant(keen, admin_id, owner, 100)
    grant(keen, admin_id, other, 100)
    sid = make_session(db, owner)
    with pytest.raises(errors.NotFound):
        record(keen, other, sid, inp=1000)
    with pytest.raises(errors.NotFound):
        record(keen, other, uuid.uuid4(), inp=1000)
    assert balance(keen, owner).current_balance == D(100) and balance(keen, other).current_balance == D(100)
    assert_ledger_clean(db)


def test_another_tenant_replaying_a_recorded_request_id_is_not_found_and_learns_nothing(db, keen, admin_id, make_user):
    """record_llm_usage runs without the row policies (keen_ledger): it must check the actor
    against the session's owner before it looks the request id up, or a stranger who guessed a
    session and a request id would read the owner's cost and balance (or a KN005 telling the
    counts apart)."""
    owner, other = make_user(), make_user()
    grant(keen, admin_id, owner, 100)
    grant(keen, admin_id, other, 100)
    sid = make_session(db, owner)
    first = record(keen, owner, sid, inp=1000, request_id="req-1")
    for inp in (1000, 2000):
        with pytest.raises(errors.NotFound):
            record(keen, other, sid, inp=inp, request_id="req-1")
    assert balance(keen, other).current_balance == D(100)
    assert balance(keen, owner).current_balance == first.balance_after
    assert_ledger_clean(db)


def test_a_metered_call_with_no_actor_is_refused_as_unauthenticated_and_writes_nothing(db, admin_id, make_user):
    owner = make_user()
    sid = make_session(db, owner)
    with psycopg.connect(db.app_url) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            conn.execute("SELECT * FROM keen.record_llm_usage(%s, 'claude-opus-4-5', 1000, 0)", (sid,))
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.llm_usage WHERE session_id = %s", (sid,)).fetchone() == (0,)
    assert_ledger_clean(db)


def test_an_admin_records_on_a_users_session_and_the_user_is_charged(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    usage = record(keen, admin_id, sid, inp=1_000_000)
    assert usage.charged_credits == D(25)
    assert balance(keen, user).current_balance == D(75)
    assert_ledger_clean(db)


def test_the_admins_own_usage_is_recorded_as_a_bypass_and_not_charged(db, keen, admin_id):
    with keen.as_user(admin_id) as tx:
        sid = tx.scalar("SELECT id FROM keen.create_session(%s, 'admin-s', 'main', 'test', '/tmp')", (admin_id,))
    usage = record(keen, admin_id, sid, inp=1_000_000)
    assert (usage.claude_cost_usd, usage.charged_credits) == (D(5), D(0))
    with db.su() as conn:
        row = conn.execute(
            "SELECT transaction_type, amount, is_admin_bypass, claude_cost_usd FROM keen.credit_transactions"
            " WHERE id = %s",
            (usage.transaction_id,),
        ).fetchone()
    assert row == ("admin_bypass", 0, True, D(5))
    assert session_costs(db, sid) == (D(5), D(0))
    assert_ledger_clean(db)


def test_a_short_balance_or_a_limit_refuses_the_call_and_records_nothing(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    sid = make_session(db, user)
    with pytest.raises(errors.InsufficientCredits):
        record(keen, user, sid, inp=1_000_000)  # 25 credits
    with keen.as_user(user) as tx:
        tx.credits.set_spending_limits(user, D("0.1"), None)
    with pytest.raises(errors.SpendingLimitExceeded):
        record(keen, user, sid, inp=100_000)  # 2.5 credits
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.llm_usage").fetchone()[0] == 0
    assert session_costs(db, sid) == (0, 0) and balance(keen, user).current_balance == D(10)
    assert_ledger_clean(db)


def test_a_live_hold_counts_against_a_metered_call(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    sid = make_session(db, user)
    with keen.as_user(user) as tx:
        tx.credits.reserve_credits(user, D("1.9"))  # holds 9.5 credits
    with pytest.raises(errors.InsufficientCredits):
        record(keen, user, sid, inp=200_000)  # 5 credits
    assert_ledger_clean(db)


def test_usage_keeps_the_price_it_was_charged_at(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    before = record(keen, user, sid, inp=1_000_000)
    with keen.as_user(admin_id) as tx:
        tx.credits.set_model_price("claude-opus-4-5", D(10), D(50))
    after = record(keen, user, sid, inp=1_000_000)
    assert (before.claude_cost_usd, after.claude_cost_usd) == (D(5), D(10))
    with db.su() as conn:
        prices = conn.execute(
            "SELECT p.input_usd_per_mtok, p.cache_read_usd_per_mtok FROM keen.llm_usage u"
            " JOIN keen.model_prices p ON p.id = u.price_id ORDER BY u.created_at, p.input_usd_per_mtok"
        ).fetchall()
        audit = conn.execute(
            "SELECT count(*) FROM keen.audit_logs WHERE event_type = 'credits' AND event_subtype = 'set_model_price'"
        ).fetchone()[0]
    assert prices == [(D(5), D("0.50")), (D(10), D(10))]  # NULL cache prices: the input price
    assert audit == 1
    assert_ledger_clean(db)


def test_a_price_from_the_future_is_not_in_force_yet(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    with keen.as_user(admin_id) as tx:
        tx.credits.set_model_price("claude-opus-4-5", D(100), D(100), None, None, datetime.now(UTC) + timedelta(days=1))
    assert record(keen, user, sid, inp=1_000_000).claude_cost_usd == D(5)
    assert_ledger_clean(db)


def test_only_an_admin_sets_a_price_and_a_bad_price_is_invalid_input(db, keen, admin_id, make_user):
    user = make_user()
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(user) as tx:
            tx.credits.set_model_price("claude-opus-4-5", D(0), D(0))
    for model, price in (("bad model!", D(1)), ("m", D(-1)), ("m", D("0.0000001")), ("m", D("NaN")), ("m", None)):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(admin_id) as tx:
                tx.credits.set_model_price(model, price, D(1))
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.model_prices").fetchone()[0] == 3


def test_a_usd_cost_of_twelve_decimals_is_accepted_everywhere_and_only_credits_round(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    with keen.as_user(user) as tx:
        row = tx.credits.deduct_credits(user, D("0.1234567"))
        assert (row.claude_cost_usd, row.amount) == (D("0.1234567"), D("-0.617284"))
        hold = tx.credits.reserve_credits(user, D("0.0000002"))  # 0.000001 credits held
        assert hold.held_credits == D("0.000001")
        capture = tx.credits.capture_reservation(hold.reservation_id, D("0.000000300001"))
        assert (capture.claude_cost_usd, capture.amount) == (D("0.000000300001"), D("-0.000002"))
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(user) as tx:
            tx.credits.deduct_credits(user, D("0.1234567890123"))  # 13 decimals
    assert_ledger_clean(db)


def test_complete_session_charges_on_top_of_what_the_calls_already_charged(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    record(keen, user, sid, inp=1_000_000)  # 5 USD, 25 credits
    with keen.as_user(user) as tx:
        done = tx.sessions.complete_session(sid, True, D("0.5"))
    assert (done.claude_cost_usd, done.keen_cost_credits) == (D("5.5"), D("27.5"))
    assert balance(keen, user).current_balance == D("72.5")
    assert_ledger_clean(db)


def test_a_cancelled_session_has_already_paid_for_its_calls(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    record(keen, user, sid, "claude-sonnet-4-5", 1_000_000, 100_000)  # 4.5 USD
    with keen.as_user(user) as tx:
        tx.sessions.cancel_session(sid, "stop")
    assert balance(keen, user).current_balance == D("77.5")
    assert session_costs(db, sid) == (D("4.5"), D("22.5"))
    assert_ledger_clean(db)


def test_usage_by_model_sums_a_users_calls_per_model_own_or_admin(db, keen, admin_id, make_user):
    user, other = make_user(), make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    record(keen, user, sid, "claude-opus-4-5", 1000, 100)
    record(keen, user, sid, "claude-opus-4-5", 2000, 0, 10, 20)
    record(keen, user, sid, "claude-haiku-4-5", 0, 1000)
    today = datetime.now(UTC).date()
    with keen.as_user(user) as tx:
        lines = tx.credits.usage_by_model(user, today, today)
    assert [
        (m.model, m.calls, m.input_tokens, m.output_tokens, m.cache_write_tokens, m.cache_read_tokens) for m in lines
    ] == [
        ("claude-haiku-4-5", 1, 0, 1000, 0, 0),
        ("claude-opus-4-5", 2, 3000, 100, 10, 20),
    ]
    assert lines[1].claude_cost_usd == D("0.0175725")  # (3000x5 + 100x25 + 10x6.25 + 20x0.5) / 10^6
    assert lines[1].credits == D("0.087863")  # 0.0375 + round(0.0503625, 6)
    with keen.as_user(admin_id) as tx:
        assert len(tx.credits.usage_by_model(user, today, today)) == 2
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(other) as tx:
            tx.credits.usage_by_model(user, today, today)
    with keen.as_user(user) as tx:
        assert tx.credits.usage_by_model(user, today - timedelta(days=2), today - timedelta(days=1)) == []
    assert_ledger_clean(db)


def test_concurrent_metered_calls_charge_exactly_those_the_balance_covers(db, keen, admin_id, make_user):
    """Balance 25 credits; 12 calls of 2.5 credits each, at once: exactly 10 are charged, the
    others refused with KN001, and the balance ends at 0."""
    for _ in range(3):
        user = make_user()
        grant(keen, admin_id, user, 25)
        sid = make_session(db, user)
        results: list[object] = []
        barrier = threading.Barrier(12)

        def call(i: int, user=user, sid=sid, barrier=barrier, results=results) -> None:
            barrier.wait()
            try:
                results.append(record(keen, user, sid, inp=100_000, request_id=f"r{i}"))
            except errors.InsufficientCredits as exc:
                results.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        charged = [r for r in results if not isinstance(r, Exception)]
        assert len(charged) == 10 and len(results) == 12
        assert balance(keen, user).current_balance == 0
        assert session_costs(db, sid) == (D("5.0"), D("25"))
        assert_ledger_clean(db)


def test_a_retry_racing_the_first_call_charges_once(db, keen, admin_id, make_user):
    for _ in range(3):
        user = make_user()
        grant(keen, admin_id, user, 100)
        sid = make_session(db, user)
        results: list[object] = []
        barrier = threading.Barrier(6)

        def call(user=user, sid=sid, barrier=barrier, results=results) -> None:
            barrier.wait()
            results.append(record(keen, user, sid, inp=100_000, request_id="same"))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({r.usage_id for r in results}) == 1  # type: ignore[attr-defined]
        assert balance(keen, user).current_balance == D("97.5")
        assert_ledger_clean(db)


def test_the_rollup_and_platform_metrics_count_cost_and_credits_per_model(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    record(keen, user, sid, "claude-opus-4-5", 1_000_000)
    record(keen, user, sid, "claude-haiku-4-5", 0, 1_000_000)
    today = datetime.now(UTC).date()
    with psycopg.connect(db.maintenance_url, autocommit=True) as conn:
        conn.execute("SELECT keen.rollup_daily_analytics(%s)", (today,))
        conn.execute("SELECT keen.rollup_daily_analytics(%s)", (today,))  # idempotent
        rows = conn.execute(
            "SELECT model, calls, users, claude_cost_usd, credits FROM keen.daily_model_usage ORDER BY model"
        ).fetchall()
        conn.execute("SELECT keen.refresh_dashboard_metrics()")
    assert rows == [("claude-haiku-4-5", 1, 1, D(5), D(25)), ("claude-opus-4-5", 1, 1, D(5), D(25))]
    with keen.as_user(admin_id) as tx:
        metrics = tx.scalar("SELECT keen.platform_metrics(%s, %s) -> 'by_model'", (today, today))
        dash = tx.scalar("SELECT jsonb_agg(cost_by_model) FROM keen.dashboard_metrics() WHERE cost_by_model <> '{}'")
    assert metrics["claude-opus-4-5"]["credits"] == 25 and metrics["claude-haiku-4-5"]["calls"] == 1
    assert dash[0]["claude-opus-4-5"]["claude_cost_usd"] == 5
    assert_ledger_clean(db)


def test_one_markup_rate_prices_both_the_sessions_credits_and_the_charge(db, keen, admin_id, make_user):
    """record_llm_usage reads the owner's rate once. A markup change that becomes visible between
    the session's cost update and the charge (a trigger on agent_sessions stands in for a
    set_setting that commits in between) cannot make keen_cost_credits and the ledger disagree."""
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    with db.su() as conn:
        conn.execute(
            "CREATE FUNCTION public.bump_markup() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$"
            " BEGIN UPDATE keen.settings SET value = '7' WHERE key = 'markup_multiplier'; RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER bump_markup AFTER UPDATE OF claude_cost_usd ON keen.agent_sessions"
            " FOR EACH ROW EXECUTE FUNCTION public.bump_markup()"
        )
    usage = record(keen, user, sid, "claude-sonnet-4-5", 1000, 1000)  # 0.018 USD
    assert usage.charged_credits == D("0.09")  # 5x: the rate in force when the call was priced
    assert session_costs(db, sid) == (D("0.018"), D("0.09"))
    with db.su() as conn:
        assert conn.execute(
            "SELECT amount, markup_multiplier FROM keen.credit_transactions WHERE id = %s", (usage.transaction_id,)
        ).fetchone() == (D("-0.09"), D("5.0"))
    assert_ledger_clean(db)


@pytest.mark.parametrize("stop", ["complete", "cancel"])
def test_usage_reported_after_the_session_stopped_is_still_charged(db, keen, admin_id, make_user, stop):
    """A call the agent reports late was made, and paid for, while the session ran: stopping a
    run never undoes what it used, so record_llm_usage charges it (no state check)."""
    user = make_user()
    grant(keen, admin_id, user, 100)
    sid = make_session(db, user)
    with keen.as_user(user) as tx:
        if stop == "complete":
            tx.execute("SELECT keen.complete_session(%s, true)", (sid,))
        else:
            tx.execute("SELECT keen.cancel_session(%s, 'stopped')", (sid,))
    usage = record(keen, user, sid, "claude-sonnet-4-5", 1000, 1000, request_id="late-1")
    assert (usage.claude_cost_usd, usage.charged_credits) == (D("0.018"), D("0.09"))
    assert balance(keen, user).current_balance == D("99.91")
    assert session_costs(db, sid) == (D("0.018"), D("0.09"))
    assert_ledger_clean(db)
