"""Scheduled upkeep: pg_cron where it is installed, `keen-db jobs` where it is not.

The jobs, their schedules and what each does are in db/functions/streaming.sql
(keen.maintenance_job_catalog, keen.run_maintenance_job); this module only schedules and calls
them.

    keen-db jobs              # run every job that is due, once (for an operator's crontab)
    keen-db jobs --all        # run every job now
    keen-db jobs --job NAME   # run one job now
    keen-db jobs --status     # each job's last success, due / overdue
    keen-db jobs --install    # (re)schedule the jobs in pg_cron

With pg_cron (the embedded cluster: keen-db up loads it and schedules the jobs), each job is
`SELECT keen.run_maintenance_job(name)` run by pg_cron in the keen database as keen_maintenance,
in a background worker (no password, no loopback connection). pg_cron keeps its own tables in
one database per server (cron.database_name: `postgres` in the embedded cluster, so that a
backup of the keen database holds none of it); jobs target any database of the server
(cron.schedule_in_database), here the keen database.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import psycopg

from . import cluster
from .config import Settings

JOB_PREFIX = "keen:"
RUN_SQL = "SELECT keen.run_maintenance_job(%s)"
STATUS_SQL = """SELECT job_name, cron_schedule, registered, last_succeeded_at, last_result, due, overdue
                  FROM keen.maintenance_job_status()"""


def command_for(job_name: str) -> str:
    if not job_name.replace("_", "").isalpha() or not job_name.islower():
        raise ValueError(f"unexpected job name {job_name!r}")
    return f"SELECT keen.run_maintenance_job('{job_name}')"


def pg_cron_loaded(conn: psycopg.Connection[Any]) -> bool:
    """pg_cron is in shared_preload_libraries of the running server (a restart loads it)."""
    row = conn.execute("SELECT pg_catalog.current_setting('shared_preload_libraries')").fetchone()
    return row is not None and "pg_cron" in [p.strip() for p in str(row[0]).split(",")]


def cron_database(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT pg_catalog.current_setting('cron.database_name', true)").fetchone()
    return None if row is None or not row[0] else str(row[0])


def install(s: Settings, database: str | None = None) -> str:
    """Schedule every job of the catalog in pg_cron, for `database` (default: the keen database),
    as keen_maintenance; jobs of ours that left the catalog are unscheduled. Idempotent. Returns
    one line saying what was done, or why nothing could be (pg_cron not loaded: a restart of
    the server loads it; keen-db never restarts a running cluster by itself)."""
    target = database or s.database
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as probe:
        if not pg_cron_loaded(probe):
            return (
                "pg_cron is not loaded on this server: upkeep runs with `keen-db jobs` (crontab); "
                "the embedded cluster loads it at its next start"
            )
        home = cron_database(probe) or "postgres"
    with psycopg.connect(s.superuser_url(home), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        with psycopg.connect(s.superuser_url(target)) as keen:
            catalog = keen.execute("SELECT job_name, cron_schedule FROM keen.maintenance_job_catalog()").fetchall()
        wanted = {f"{JOB_PREFIX}{target}:{name}": (name, schedule) for name, schedule in catalog}
        existing = [
            r[0]
            for r in conn.execute(
                "SELECT jobname FROM cron.job WHERE jobname LIKE %s AND database = %s", (f"{JOB_PREFIX}%", target)
            ).fetchall()
        ]
        for jobname in existing:
            if jobname not in wanted:
                conn.execute("SELECT cron.unschedule(%s)", (jobname,))
        for jobname, (name, schedule) in wanted.items():
            # Scheduling a name again updates the job (pg_cron 1.4: upsert by name and user).
            conn.execute(
                "SELECT cron.schedule_in_database(%s, %s, %s, %s, 'keen_maintenance', true)",
                (jobname, schedule, command_for(name), target),
            )
    with psycopg.connect(s.role_url("keen_maintenance", target)) as mconn:
        mconn.execute("SELECT keen.register_maintenance_jobs()")
    return f"pg_cron runs {len(wanted)} upkeep jobs in {target!r} as keen_maintenance"


def run_due(s: Settings, everything: bool = False, only: str | None = None) -> list[tuple[str, bool, str]]:
    """Run the due jobs (or all, or one), each in its own transaction as keen_maintenance:
    (job, ok, result or error) per job run."""
    done: list[tuple[str, bool, str]] = []
    with psycopg.connect(s.role_url("keen_maintenance"), application_name="keen-db jobs") as conn:
        with conn.transaction():
            conn.execute("SELECT keen.register_maintenance_jobs()")
            status = conn.execute("SELECT job_name, due FROM keen.maintenance_job_status()").fetchall()
        names = [r[0] for r in status]
        if only is not None and only not in names:
            raise click.UsageError(f"unknown job {only!r}: one of {', '.join(names)}")
        for name, due in status:
            if not (everything or (only == name) or (only is None and due)):
                continue
            try:
                with conn.transaction():
                    row = conn.execute(RUN_SQL, (name,)).fetchone()
                done.append((name, True, "" if row is None else str(row[0])))
            except psycopg.Error as exc:
                done.append((name, False, str(exc).strip().splitlines()[0]))
    return done


def last_runs(s: Settings, conn: psycopg.Connection[Any]) -> dict[str, tuple[str, Any]]:
    """pg_cron's last run of each of our jobs for this database: job -> (status, end time)."""
    if not pg_cron_loaded(conn):
        return {}
    home = cron_database(conn)
    if home is None:
        return {}
    try:
        with psycopg.connect(s.superuser_url(home), autocommit=True, connect_timeout=5) as cconn:
            if cconn.execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'").fetchone() is None:
                return {}
            rows = cconn.execute(
                """SELECT DISTINCT ON (j.jobname) j.jobname, d.status, d.end_time
                     FROM cron.job j JOIN cron.job_run_details d ON d.jobid = j.jobid
                    WHERE j.jobname LIKE %s AND j.database = %s
                    ORDER BY j.jobname, d.start_time DESC""",
                (f"{JOB_PREFIX}%", s.database),
            ).fetchall()
    except psycopg.Error:
        return {}
    return {str(r[0]).rsplit(":", 1)[-1]: (str(r[1]), r[2]) for r in rows}


def check_jobs(s: Settings, conn: psycopg.Connection[Any]) -> tuple[bool, str]:
    """The doctor's check: each registered job's last success (and pg_cron's last run); FAIL
    for a job that missed a run it was due for. Nothing registered: upkeep is not scheduled in
    this database (ok, said so)."""
    with psycopg.connect(s.role_url("keen_maintenance"), connect_timeout=5) as mconn:
        rows = mconn.execute(
            "SELECT job_name, registered, last_succeeded_at, overdue FROM keen.maintenance_job_status()"
        ).fetchall()
    if not any(r[1] for r in rows):
        return True, "no upkeep scheduled in this database (keen-db up with pg_cron, or keen-db jobs from cron)"
    cron = last_runs(s, conn)
    parts, late = [], []
    for name, _registered, succeeded, overdue in rows:
        when = succeeded.strftime("%Y-%m-%d %H:%M:%SZ") if succeeded else "never"
        cron_note = f", pg_cron {cron[name][0]}" if name in cron else ""
        parts.append(f"{name} {when}{cron_note}")
        if overdue:
            late.append(name)
    if late:
        return False, "not run when due: " + ", ".join(late) + " (last success: " + "; ".join(parts) + ")"
    return True, "last success: " + "; ".join(parts)


@click.command()
@click.option("--all", "everything", is_flag=True, help="run every job now, due or not")
@click.option("--job", "only", default=None, help="run this one job now")
@click.option("--status", "show_status", is_flag=True, help="print each job's last success and whether it is due")
@click.option("--install", "do_install", is_flag=True, help="schedule the jobs in pg_cron (keen-db up does)")
@click.pass_context
def jobs(ctx: click.Context, everything: bool, only: str | None, show_status: bool, do_install: bool) -> None:
    """Scheduled upkeep: run what is due, once (crontab), or schedule it in pg_cron."""
    s: Settings = ctx.obj
    if s.embedded:
        try:
            cluster.ensure_running(s)
        except cluster.ClusterError as exc:
            click.echo(f"keen-db: {exc}", err=True)
            sys.exit(1)
    try:
        if do_install:
            click.echo(install(s))
            return
        if show_status:
            with psycopg.connect(s.role_url("keen_maintenance")) as conn:
                for name, schedule, registered, last, result, due, overdue in conn.execute(STATUS_SQL).fetchall():
                    state = "OVERDUE" if overdue else ("due" if due else "done")
                    when = last.isoformat() if last else "never"
                    reg = "" if registered else " (not scheduled)"
                    click.echo(f"{name:18} {schedule:12} {state:8} last success {when}{reg} {result or ''}".rstrip())
            return
        done = run_due(s, everything, only)
    except psycopg.Error as exc:
        click.echo(f"keen-db: jobs failed: {exc}", err=True)
        sys.exit(1)
    for name, ok, result in done:
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {result}")
    click.echo(f"{len(done)} job(s) run, {sum(1 for d in done if not d[1])} failed")
    if any(not ok for _, ok, _ in done):
        sys.exit(1)


COMMANDS = [jobs]
