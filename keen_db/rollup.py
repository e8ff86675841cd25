"""`keen-db rollup`: the daily analytics rollup, for cron.

    keen-db rollup                                  # today (UTC)
    keen-db rollup --day 2025-03-01                 # one day
    keen-db rollup --from 2025-01-01 --to 2025-03-01   # backfill, oldest first

It logs in as keen_maintenance (the role that sees every tenant) and calls
keen.rollup_daily_analytics once per day, one transaction per day, then refreshes the 24-hour
dashboard. The rules are in db/functions/analytics.sql.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

import click
import psycopg

from . import cluster
from .config import Settings

ROLLUP_SQL = "SELECT keen.rollup_daily_analytics(%s)"
REFRESH_SQL = "SELECT keen.refresh_dashboard_metrics()"


class DayParam(click.ParamType):
    """A YYYY-MM-DD date, with a clear message for anything else."""

    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            return value
        try:
            return datetime.strptime(value, "%Y-%m-%d").date()
        except ValueError:
            self.fail(f"{value!r} is not a date in the form YYYY-MM-DD (e.g. 2025-03-01)", param, ctx)


DAY = DayParam()


def utc_today() -> date:
    return datetime.now(UTC).date()


def days_to_roll(day: date | None, from_: date | None, to: date | None) -> list[date]:
    """The days a command line asks for, oldest first (click.UsageError when inconsistent)."""
    if day is not None and (from_ is not None or to is not None):
        raise click.UsageError("use either --day or --from/--to, not both")
    today = utc_today()
    if from_ is None and to is not None:
        raise click.UsageError("--to needs --from")
    if from_ is None:
        first = last = day or today
    else:
        first, last = from_, to or today
    if first > last:
        raise click.UsageError(f"--from {first} is after --to {last}")
    if last > today:
        raise click.UsageError(f"{last} is after today ({today}, UTC): nothing to roll up yet")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@click.command()
@click.option("--day", type=DAY, default=None, help="the UTC day to roll up (default: today, UTC)")
@click.option("--from", "from_", type=DAY, default=None, help="first day of a backfill")
@click.option("--to", type=DAY, default=None, help="last day of a backfill (default: today, UTC)")
@click.option(
    "--dashboard/--no-dashboard", default=True, show_default=True, help="also refresh the 24-hour dashboard view"
)
@click.pass_context
def rollup(ctx: click.Context, day: date | None, from_: date | None, to: date | None, dashboard: bool) -> None:
    """Roll up daily analytics (per user and platform) as the maintenance role."""
    s: Settings = ctx.obj
    days = days_to_roll(day, from_, to)
    if s.embedded:
        try:
            cluster.ensure_running(s)
        except cluster.ClusterError as exc:
            click.echo(f"keen-db: {exc}", err=True)
            sys.exit(1)
    try:
        with psycopg.connect(s.role_url("keen_maintenance"), application_name="keen-db rollup") as conn:
            for d in days:
                with conn.transaction():
                    conn.execute(ROLLUP_SQL, (d,))
                click.echo(f"rolled up {d}")
            if dashboard:
                with conn.transaction():
                    conn.execute(REFRESH_SQL)
                click.echo("refreshed the 24-hour dashboard")
    except psycopg.Error as exc:
        click.echo(f"keen-db: rollup failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{len(days)} day(s) rolled up")


COMMANDS = [rollup]
