"""The ledger under concurrency: no double spending, limits and holds never passed, a hold
ends exactly once, retries of one idempotency key make one row, and no deadlocks. Many
threads, each on its own pooled connection, released together by a barrier."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from keen_client import errors
from keen_client.credits import CreditTransaction, Reservation

from .conftest import assert_ledger_clean
from .test_credits import balance, grant, ledger_rows

D = Decimal


def run_parallel(threads: int, tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run the tasks on `threads` threads started together; each task's result or KeenError."""
    results: list[Any] = [None] * len(tasks)
    next_task = itertools.count()
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        while (i := next(next_task)) < len(tasks):
            try:
                results[i] = tasks[i]()
            except errors.KeenError as exc:
                results[i] = exc
            except BaseException as exc:  # anything else fails the test below
                failures.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []
    return results


def outcome(results: list[Any]) -> Counter:
    """'ok' for each success, the SQLSTATE for each failure."""
    return Counter("ok" if not isinstance(r, errors.KeenError) else r.sqlstate for r in results)


def deduct_task(keen, user_id, cost, actor=None, **kw) -> Callable[[], CreditTransaction]:
    def task() -> CreditTransaction:
        with keen.as_user(actor or user_id) as tx:
            return tx.credits.deduct_credits(user_id, D(cost), **kw)

    return task


def test_200_concurrent_deductions_against_a_balance_for_100_let_exactly_100_through(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 50)  # 100 charges of 0.5
    results = run_parallel(16, [deduct_task(keen, user, "0.1") for _ in range(200)])
    assert outcome(results) == Counter({"ok": 100, "KN001": 100})
    assert sorted(r.balance_after for r in results if isinstance(r, CreditTransaction)) == [
        D("0.5") * i for i in range(100)
    ]
    b = balance(keen, user)
    assert (b.current_balance, b.lifetime_spent, b.spent_today) == (D(0), D(50), D(50))
    assert ledger_rows(db, user) == 101
    assert_ledger_clean(db)


def test_balance_10_with_concurrent_costs_of_1_50_and_1_00_lets_exactly_one_through(db, keen, admin_id, make_user):
    for _ in range(5):
        user = make_user()
        grant(keen, admin_id, user, 10)
        results = run_parallel(
            2,
            [
                deduct_task(keen, user, "1.50", session_id=None, description="session1"),
                deduct_task(keen, user, "1.00", description="session2"),
            ],
        )
        assert outcome(results) == Counter({"ok": 1, "KN001": 1})
        [won] = [r for r in results if isinstance(r, CreditTransaction)]
        assert won.amount in (D("-7.50"), D("-5.00"))
        assert balance(keen, user).current_balance == 10 + won.amount
    assert_ledger_clean(db)


def test_a_daily_limit_holds_under_concurrency(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 1000)
    with keen.as_user(user) as tx:
        tx.credits.set_spending_limits(user, D(25), D(1000))
    results = run_parallel(16, [deduct_task(keen, user, 1) for _ in range(40)])
    assert outcome(results) == Counter({"ok": 5, "KN002": 35})
    b = balance(keen, user)
    assert (b.spent_today, b.current_balance) == (D(25), D(975))
    assert_ledger_clean(db)


def test_concurrent_holds_and_deductions_never_pass_the_available_balance(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 50)

    def reserve() -> Reservation:
        with keen.as_user(user) as tx:
            return tx.credits.reserve_credits(user, D(1))  # holds 5

    tasks = [reserve if i % 2 else deduct_task(keen, user, "0.5") for i in range(60)]  # deduct 2.5
    results = run_parallel(16, tasks)
    assert set(outcome(results)) == {"ok", "KN001"}
    holds = [r for r in results if isinstance(r, Reservation)]
    charges = [r for r in results if isinstance(r, CreditTransaction)]
    left = 50 - 5 * len(holds) - D("2.5") * len(charges)
    # Nothing is used twice; once a deduction was refused nothing was left, once a hold was
    # refused less than a hold was left.
    deduction_refused = any(isinstance(r, errors.KeenError) for r in results[0::2])
    assert left == 0 or (left == D("2.5") and not deduction_refused)
    b = balance(keen, user)
    assert (b.current_balance, b.available_balance) == (50 - D("2.5") * len(charges), left)
    # Capturing every hold at its estimate, concurrently with more deductions: the captures
    # fit exactly, and only what was left goes to deductions.
    capture = lambda h: lambda: keen_capture(keen, user, h.reservation_id, D(1))  # noqa: E731
    results = run_parallel(16, [capture(h) for h in holds] + [deduct_task(keen, user, "0.1") for _ in range(20)])
    fits = int(left / D("0.5"))
    assert outcome(results[: len(holds)]) == Counter({"ok": len(holds)})
    assert outcome(results[len(holds) :]) == Counter({"ok": fits, "KN001": 20 - fits})
    b = balance(keen, user)
    assert (b.current_balance, b.available_balance) == (0, 0)
    assert_ledger_clean(db)


def keen_capture(keen, user, reservation_id, cost) -> CreditTransaction:
    with keen.as_user(user) as tx:
        return tx.credits.capture_reservation(reservation_id, cost)


def keen_release(keen, user, reservation_id) -> None:
    with keen.as_user(user) as tx:
        tx.credits.release_reservation(reservation_id)
    return None


def test_a_hold_raced_by_captures_and_releases_ends_exactly_once(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    with keen.as_user(user) as tx:
        holds = [tx.credits.reserve_credits(user, D(1)) for _ in range(10)]
    tasks = []
    for h in holds:
        tasks += [
            lambda h=h: keen_capture(keen, user, h.reservation_id, D(2)),
            lambda h=h: keen_release(keen, user, h.reservation_id),
            lambda h=h: keen_capture(keen, user, h.reservation_id, D(1)),
        ]
    results = run_parallel(16, tasks)
    per_hold = [outcome(results[i : i + 3]) for i in range(0, len(results), 3)]
    assert all(o == Counter({"ok": 1, "KN003": 2}) for o in per_hold), per_hold
    charged = -sum(r.amount for r in results if isinstance(r, CreditTransaction))
    b = balance(keen, user)
    assert b.current_balance == b.available_balance == 100 - charged
    assert_ledger_clean(db)


def test_parallel_retries_of_one_key_make_one_row_and_one_charge(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    results = run_parallel(16, [deduct_task(keen, user, 2, idempotency_key="retry-storm") for _ in range(48)])
    assert outcome(results) == Counter({"ok": 48})
    assert len({r.id for r in results}) == 1
    assert balance(keen, user).current_balance == D(90)
    assert ledger_rows(db, user) == 2
    assert_ledger_clean(db)


def test_parallel_retries_mixed_with_other_work_on_the_account(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    tasks = []
    for i in range(60):
        tasks.append(deduct_task(keen, user, 1, idempotency_key=f"run-{i % 6}"))
        tasks.append(deduct_task(keen, user, "0.1"))
    results = run_parallel(16, tasks)
    keyed = [r for r in results[0::2]]
    assert outcome(keyed) == Counter({"ok": 60})
    assert len({r.id for r in keyed}) == 6
    assert outcome(results[1::2]) == Counter({"ok": 60})
    assert balance(keen, user).current_balance == 100 - 6 * 5 - 60 * D("0.5")
    assert_ledger_clean(db)


def test_parallel_retries_of_a_purchase_and_a_hold_add_and_hold_once(db, keen, admin_id, make_user):
    user = make_user()

    def buy() -> CreditTransaction:
        with keen.as_user(admin_id) as tx:
            return tx.credits.add_credits(user, D(40), "checkout", "pi_123")

    results = run_parallel(16, [buy for _ in range(32)])
    assert outcome(results) == Counter({"ok": 32}) and len({r.id for r in results}) == 1

    def hold() -> Reservation:
        with keen.as_user(user) as tx:
            return tx.credits.reserve_credits(user, D(2), idempotency_key="hold-once")

    results = run_parallel(16, [hold for _ in range(32)])
    assert outcome(results) == Counter({"ok": 32}) and len({r.reservation_id for r in results}) == 1
    b = balance(keen, user)
    assert (b.current_balance, b.available_balance) == (D(40), D(30))
    assert_ledger_clean(db)


def test_a_mixed_storm_over_several_accounts_has_no_deadlock_and_a_clean_ledger(db, keen, admin_id, make_user):
    users = [make_user() for _ in range(3)]
    for u in users:
        grant(keen, admin_id, u, 200)
    with keen.as_user(users[0]) as tx:
        holds = [tx.credits.reserve_credits(users[0], D("0.5")) for _ in range(10)]

    def refund_latest(u) -> Any:
        with keen.as_user(admin_id) as tx:
            latest = tx.credits.credit_history(u, 1)[0]
            return tx.credits.refund_credits(latest.id, "storm") if latest.transaction_type == "usage" else None

    tasks: list[Callable[[], Any]] = []
    for i in range(90):
        u = users[i % 3]
        tasks.append(deduct_task(keen, u, "0.3", idempotency_key=f"k{i % 15}"))
        tasks.append(deduct_task(keen, u, "0.2", actor=admin_id))
        tasks.append(deduct_task(keen, admin_id, "1"))
        if i % 10 == 0:
            tasks.append(lambda u=u: refund_latest(u))
            tasks.append(lambda u=u: grant(keen, admin_id, u, 5))
    for h in holds:
        tasks.append(lambda h=h: keen_capture(keen, users[0], h.reservation_id, D("0.4")))
        tasks.append(lambda h=h: keen_release(keen, users[0], h.reservation_id))
    results = run_parallel(16, tasks)
    # A deadlock victim would surface here as 40P01 (and a serialization failure as 40001).
    assert set(outcome(results)) <= {"ok", "KN001", "KN003", "KN005", "23505"}, outcome(results)
    assert_ledger_clean(db)
