"""Demo step: roll up today as the maintenance role (what cron runs), then show the admin the
platform metrics and the busiest hours of the 24-hour dashboard."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg


def _admin_id(ctx):
    if ctx.state.get("admin_id"):
        return ctx.state["admin_id"]
    with psycopg.connect(ctx.superuser_url()) as conn:
        admin_id = conn.execute(
            "SELECT id FROM keen.users WHERE is_admin AND role = 'super_admin' ORDER BY created_at LIMIT 1"
        ).fetchone()[0]
    ctx.state["admin_id"] = admin_id
    return admin_id


def run(ctx) -> None:
    ctx.step("Analytics: the daily rollup and the platform metrics")
    today = datetime.now(UTC).date()
    with psycopg.connect(ctx.maintenance_url()) as conn:
        conn.execute("SELECT keen.rollup_daily_analytics(%s)", (today,))
        conn.execute("SELECT keen.refresh_dashboard_metrics()")
    ctx.say(
        f"keen_maintenance rolled up {today} (UTC) and refreshed the dashboard "
        "(cron runs [bold]keen-db rollup[/] the same way)."
    )

    with ctx.keen.as_user(_admin_id(ctx)) as tx:
        m = tx.analytics.platform_metrics(today, today)
        hours = [h for h in tx.analytics.dashboard_metrics() if h.sessions_started]

    rows = [
        ["users (total / active / new)", f"{m.total_users} / {m.active_users} / {m.new_users}"],
        [
            "sessions (started / completed / failed)",
            f"{m.total_sessions} / {m.successful_sessions} / {m.failed_sessions}",
        ],
        ["avg session duration (min)", m.avg_session_duration_minutes],
        ["Claude cost (USD)", m.total_claude_cost_usd],
        ["credit revenue (usage charges - refunds)", m.total_credit_revenue],
        ["credits purchased / used", f"{m.credits_purchased} / {m.credits_used}"],
        ["markup effectiveness (revenue / cost)", m.markup_effectiveness],
        ["tokens", m.total_tokens],
        ["agents spawned", m.agents_spawned],
        ["recursion depth (avg / max)", f"{m.avg_recursion_depth} / {m.max_recursion_depth}"],
        ["admin sessions / bypass transactions", f"{m.admin_sessions} / {m.admin_bypass_transactions}"],
        ["phase time (s)", ", ".join(f"{k} {v}" for k, v in m.phase_time_seconds.items())],
    ]
    ctx.table(f"keen.platform_metrics('{today}', '{today}') as the admin", ["metric", "value"], rows)
    if hours:
        ctx.table(
            "keen.dashboard_metrics(): hours with sessions (UTC)",
            ["hour", "started", "completed", "failed", "Claude cost", "credits"],
            [
                [
                    h.hour_bucket.astimezone(UTC).strftime("%H:00"),
                    h.sessions_started,
                    h.sessions_completed,
                    h.sessions_failed,
                    h.total_claude_costs,
                    h.total_credit_cost,
                ]
                for h in hours
            ],
        )
    ctx.say("The metrics read the rollups only: their cost does not grow with the ledger.")
