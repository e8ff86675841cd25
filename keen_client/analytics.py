"""Analytics: the daily rollup, platform metrics, a user's usage, the 24-hour dashboard.
Every rule is in db/functions/analytics.sql; this module calls and maps."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from ._base import Area, M, Query, query, rows, scalar, void


@dataclass(frozen=True)
class DailyUsage:
    """One row of keen.daily_usage_stats: a user's figures for one UTC day."""

    id: UUID
    user_id: UUID
    date_bucket: date
    sessions_started: int
    sessions_completed: int
    sessions_failed: int
    sessions_cancelled: int
    total_session_time_seconds: int
    explore_phase_time_seconds: int
    plan_phase_time_seconds: int
    found_phase_time_seconds: int
    summon_phase_time_seconds: int
    complete_phase_time_seconds: int
    agents_spawned: int
    max_recursion_depth: int
    tool_executions: int
    unique_tools_used: list[str]
    total_tokens_consumed: int
    total_cost: Decimal
    total_claude_cost_usd: Decimal
    credits_purchased: Decimal
    credits_used: Decimal
    admin_bypass_transactions: int
    files_modified: int
    files_created: int
    git_operations: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class PlatformMetrics:
    """keen.platform_metrics over UTC days from_..to; money and ratios are Decimal, averages
    and markup_effectiveness are None when there is nothing to average or divide by."""

    from_: date
    to: date
    days_in_range: int
    days_rolled_up: int
    total_users: int
    active_users: int
    active_user_days: int
    avg_daily_active_users: Decimal | None
    new_users: int
    total_sessions: int
    successful_sessions: int
    failed_sessions: int
    cancelled_sessions: int
    ended_sessions: int
    avg_session_duration_minutes: Decimal | None
    total_claude_cost_usd: Decimal
    total_credit_revenue: Decimal
    credits_purchased: Decimal
    credits_used: Decimal
    credits_refunded: Decimal
    markup_effectiveness: Decimal | None
    total_tokens: int
    context_tokens: int
    agents_spawned: int
    admin_sessions: int
    admin_bypass_transactions: int
    avg_recursion_depth: Decimal | None
    max_recursion_depth: int | None
    phase_time_seconds: dict[str, int]

    @classmethod
    def from_json(cls, text: str) -> PlatformMetrics:
        """From the function's jsonb as text, numbers kept exact (Decimal, never float)."""
        data: dict[str, Any] = json.loads(text, parse_float=Decimal)
        data["from_"] = date.fromisoformat(data.pop("from"))
        data["to"] = date.fromisoformat(data["to"])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DashboardHour:
    """One UTC hour of keen.admin_dashboard_metrics (the last 24 hours)."""

    hour_bucket: datetime
    sessions_started: int
    sessions_completed: int
    sessions_failed: int
    admin_sessions: int
    total_tokens: int
    total_context_tokens: int
    total_claude_costs: Decimal
    total_credit_cost: Decimal
    avg_credit_cost_per_session: Decimal | None
    avg_recursion_depth: Decimal | None
    max_recursion_depth: int | None
    refreshed_at: datetime


# Columns named explicitly: a column added to the table later must not break class_row.
USER_USAGE_SQL = """SELECT id, user_id, date_bucket, sessions_started, sessions_completed, sessions_failed,
           sessions_cancelled, total_session_time_seconds, explore_phase_time_seconds,
           plan_phase_time_seconds, found_phase_time_seconds, summon_phase_time_seconds,
           complete_phase_time_seconds, agents_spawned, max_recursion_depth, tool_executions,
           unique_tools_used, total_tokens_consumed, total_cost, total_claude_cost_usd,
           credits_purchased, credits_used, admin_bypass_transactions, files_modified,
           files_created, git_operations, created_at, updated_at
      FROM keen.user_usage(p_user_id => %s, p_from => %s, p_to => %s)"""
DASHBOARD_SQL = """SELECT hour_bucket, sessions_started, sessions_completed, sessions_failed, admin_sessions,
           total_tokens, total_context_tokens, total_claude_costs, total_credit_cost,
           avg_credit_cost_per_session, avg_recursion_depth, max_recursion_depth, refreshed_at
      FROM keen.dashboard_metrics()"""
ROLLUP_SQL = "SELECT keen.rollup_daily_analytics()"
ROLLUP_DAY_SQL = "SELECT keen.rollup_daily_analytics(p_day => %s)"
# As text: the JSON is parsed with Decimal for every number (psycopg's jsonb loader uses float).
PLATFORM_SQL = "SELECT keen.platform_metrics(p_from => %s, p_to => %s)::text"
REFRESH_SQL = "SELECT keen.refresh_dashboard_metrics()"


class AnalyticsApi(Area[M]):
    """tx.analytics: see CONTRACT.md "Analytics" and docs/analytics.md. Every read here is
    lag-tolerant (rollups): a Keen's read pool may serve it."""

    @query
    def rollup_daily_analytics(self, day: date | None = None) -> Query[None]:
        """Roll up one UTC day (today in UTC by default); admin or maintenance."""
        return void(ROLLUP_SQL) if day is None else void(ROLLUP_DAY_SQL, (day,))

    @query
    def platform_metrics(self, from_: date, to: date) -> Query[PlatformMetrics]:
        """Platform figures over UTC days from_..to (inclusive); admin only."""
        return scalar(PLATFORM_SQL, (from_, to), str).then(PlatformMetrics.from_json)

    @query
    def user_usage(self, user_id: UUID | str, from_: date, to: date) -> Query[list[DailyUsage]]:
        """A user's daily rows over UTC days from_..to, oldest first; own, or any for an admin."""
        return rows(USER_USAGE_SQL, (user_id, from_, to), DailyUsage)

    @query
    def refresh_dashboard_metrics(self) -> Query[datetime]:
        """REFRESH MATERIALIZED VIEW CONCURRENTLY of the 24-hour dashboard; admin or maintenance."""
        return scalar(REFRESH_SQL, None, datetime)

    @query
    def dashboard_metrics(self) -> Query[list[DashboardHour]]:
        """The 24 UTC hours of the dashboard as of its last refresh, oldest first; admin only."""
        return rows(DASHBOARD_SQL, None, DashboardHour)
