"""Demo step: the credit ledger. The admin grants credits to the user (a purchase), the user's
agent run is charged at 5x its Claude cost, the admin's own run is recorded but not charged,
a hold is placed and captured for more than its estimate, a retry of a charge changes nothing,
and the ledger verifies. Uses state["user_id"] and state["admin_id"] when the users step left
them (registers a user itself otherwise); leaves state["user_id"] funded."""

from __future__ import annotations

import uuid
from decimal import ROUND_UP, Decimal

import psycopg

from keen_client.errors import InsufficientCredits
from keen_db.sql import value

D = Decimal


def _balance_row(tx, label: str, user_id) -> list:
    b = tx.credits.get_balance(user_id)
    return [
        label,
        b.current_balance,
        b.available_balance,
        b.lifetime_purchased,
        b.lifetime_spent,
        "yes" if b.unlimited_credits else "no",
    ]


def run(ctx) -> None:
    keen = ctx.keen
    ctx.step("Credits: purchase, 5x markup, admin bypass, holds, idempotency, the ledger check")

    if ctx.state.get("admin_id") is None:  # keen_app sees no user row without an actor: ask the superuser
        with psycopg.connect(ctx.superuser_url()) as conn:
            ctx.state["admin_id"] = value(
                conn, "SELECT id FROM keen.users WHERE role = 'super_admin' ORDER BY created_at LIMIT 1"
            )
    admin_id = ctx.state["admin_id"]
    if ctx.state.get("user_id") is None:
        tag = uuid.uuid4().hex[:6]
        with keen.transaction() as tx:
            ctx.state["user_id"] = tx.scalar(
                "SELECT id FROM keen.register_user(%s, %s, %s)",
                (f"carol_{tag}@example.com", f"carol_{tag}", "demo password 1"),
            )
    user_id = ctx.state["user_id"]
    run_tag = uuid.uuid4().hex[:8]  # idempotency keys of this walkthrough

    with keen.as_user(admin_id) as tx:
        multiplier = tx.scalar("SELECT keen.setting_numeric('markup_multiplier')")
        purchase = tx.credits.add_credits(user_id, D("100.00"), "Credit pack (demo)", f"demo-purchase-1-{run_tag}")
        retried = tx.credits.add_credits(user_id, D("100.00"), "Credit pack (demo)", f"demo-purchase-1-{run_tag}")
    ctx.say(
        f"The admin grants 100 credits (a purchase, audited); the payment side's retry with the same "
        f"idempotency key returns the same row ({'same id' if retried.id == purchase.id else 'NEW ROW?!'}), "
        f"adds nothing. Markup multiplier: [bold]{multiplier}[/]."
    )

    with keen.as_user(user_id) as tx:
        usage = tx.credits.deduct_credits(
            user_id, D("2.00"), description="Agent run (demo)", idempotency_key=f"demo-run-1-{run_tag}"
        )
        again = tx.credits.deduct_credits(
            user_id, D("2.00"), description="Agent run (demo)", idempotency_key=f"demo-run-1-{run_tag}"
        )
    with keen.as_user(admin_id) as tx:
        bypass = tx.credits.deduct_credits(admin_id, D("10.50"), description="Admin agent run (demo)")
    ctx.table(
        "Usage: the charge is round(claude_cost_usd x multiplier, 6), stored with its multiplier",
        ["who", "type", "claude cost (USD)", "multiplier", "amount (credits)", "balance after", "bypass"],
        [
            [
                "user",
                usage.transaction_type,
                usage.claude_cost_usd,
                usage.markup_multiplier,
                usage.amount,
                usage.balance_after,
                usage.is_admin_bypass,
            ],
            [
                "user (retry, same key)",
                again.transaction_type,
                again.claude_cost_usd,
                again.markup_multiplier,
                again.amount,
                again.balance_after,
                "same row" if again.id == usage.id else "NEW ROW?!",
            ],
            [
                "admin",
                bypass.transaction_type,
                bypass.claude_cost_usd,
                bypass.markup_multiplier,
                bypass.amount,
                bypass.balance_after,
                bypass.is_admin_bypass,
            ],
        ],
    )

    with keen.as_user(user_id) as tx:
        hold = tx.credits.reserve_credits(user_id, D("3.00"), idempotency_key=f"demo-hold-1-{run_tag}")
    ctx.say(
        f"A hold for an estimated 3.00 USD: {hold.held_credits} credits held until "
        f"{hold.expires_at:%H:%M:%S} UTC; available now {hold.available_balance}."
    )
    too_big = ((hold.available_balance + 1) / multiplier).quantize(D("0.000001"), ROUND_UP)
    try:
        with keen.as_user(user_id) as tx:
            tx.credits.deduct_credits(user_id, too_big, description="Too big while held")
    except InsufficientCredits as exc:
        ctx.say(f"  A {too_big} USD run meanwhile, one credit more than available: [red]{exc}[/]")
    with keen.as_user(user_id) as tx:
        capture = tx.credits.capture_reservation(hold.reservation_id, D("3.40"), "Agent run, captured (demo)")
    ctx.say(
        f"The run ends and costs 3.40 USD, more than estimated: the capture charges "
        f"{-capture.amount} credits and ends the hold (a second capture would be KN003)."
    )

    with keen.as_user(user_id) as tx:
        user_row = _balance_row(tx, "user", user_id)
    with keen.as_user(admin_id) as tx:
        admin_row = _balance_row(tx, "admin (unlimited)", admin_id)
        checks = tx.credits.verify_ledger()
    ctx.table(
        "Balances (keen.get_balance)",
        ["account", "balance", "available", "purchased", "spent", "unlimited"],
        [user_row, admin_row],
    )
    with keen.as_user(user_id) as tx:
        history = tx.credits.credit_history(user_id, 10)
    ctx.table(
        "The user's ledger, newest first (append-only)",
        ["type", "amount", "balance after", "description"],
        [[t.transaction_type, t.amount, t.balance_after, t.description] for t in history],
    )
    bad = [c for c in checks if not c.ok]
    ctx.say(
        f"keen.verify_ledger(): {len(checks)} accounts, "
        + ("[green]every balance equals the sum of its ledger[/]" if not bad else f"[red]{len(bad)} out of balance[/]")
    )
    _metering(ctx, user_id, run_tag)


def _metering(ctx, user_id, run_tag: str) -> None:
    """Usage metering: a session's LLM calls priced from the dated price table and charged at
    once; one call retried with the same provider request id; cost per model and on the tree."""
    keen = ctx.keen
    from datetime import UTC, datetime

    with keen.as_user(user_id) as tx:
        root = tx.sessions.create_session(user_id, f"metered-{run_tag}", "main", "Metered agent run", "/tmp/demo")
        child = tx.sessions.create_session(
            user_id, f"metered-{run_tag}-child", "feature/metered", "A child agent", "/tmp/demo", root.id
        )
    calls = [
        (root.id, "claude-opus-4-5", 12_000, 2_000, 0, 40_000, f"req-{run_tag}-1"),
        (root.id, "claude-sonnet-4-5", 30_000, 4_000, 8_000, 0, f"req-{run_tag}-2"),
        (child.id, "claude-haiku-4-5", 50_000, 6_000, 0, 120_000, f"req-{run_tag}-3"),
        (child.id, "claude-haiku-4-5", 0, 0, 0, 3, f"req-{run_tag}-4"),  # 3 cache-read tokens
        (root.id, "claude-opus-4-5", 12_000, 2_000, 0, 40_000, f"req-{run_tag}-1"),  # the retry
    ]
    rows = []
    for session, model, inp, out, cw, cr, request in calls:
        with keen.as_user(user_id) as tx:
            u = tx.credits.record_llm_usage(session, model, inp, out, cw, cr, request)
        rows.append(
            [model, f"{inp}/{out}/{cw}/{cr}", request[-1], u.claude_cost_usd, u.charged_credits, u.balance_after]
        )
    rows[-1][2] += " (retry)"
    ctx.table(
        "Metered LLM calls (keen.record_llm_usage): tokens x the price in force / 10^6, exact; charged at once",
        ["model", "in/out/cache w/cache r", "request", "claude cost (USD)", "credits", "balance after"],
        rows,
    )
    ctx.say(
        "The retry of request 1 returns the first result and charges nothing; 3 cache-read haiku tokens cost "
        f"{rows[3][3]} USD, kept to 12 decimals, and {rows[3][4]} credits (only credits round to 6)."
    )
    today = datetime.now(UTC).date()
    with keen.as_user(user_id) as tx:
        by_model = tx.credits.usage_by_model(user_id, today, today)
        tree = tx.sessions.session_tree(root.id)
    ctx.table(
        "keen.usage_by_model (today, UTC)",
        ["model", "calls", "input", "output", "cache write", "cache read", "claude cost (USD)", "credits"],
        [
            [
                m.model,
                m.calls,
                m.input_tokens,
                m.output_tokens,
                m.cache_write_tokens,
                m.cache_read_tokens,
                m.claude_cost_usd,
                m.credits,
            ]
            for m in by_model
        ],
    )
    ctx.table(
        "The session tree carries what its calls cost (keen.session_tree)",
        ["session", "branch", "claude cost (USD)", "credits"],
        [[t.session_id, t.git_branch, t.claude_cost_usd, t.keen_cost_credits] for t in tree],
    )
