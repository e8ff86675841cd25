"""Scheduled upkeep (issue 13): the job catalog, keen.run_maintenance_job and its record, due and
overdue, `keen-db jobs` (what is due, once), the doctor's check, and pg_cron running the jobs
in a cluster of the test's own (keen-db up loads and schedules it; the shared cluster is never
restarted)."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from click.testing import CliRunner

from keen_client import Keen, PoolSettings
from keen_client.errors import InvalidInput, PermissionDenied
from keen_db import cluster, config, jobs
from keen_db.cli import cli

from .conftest import assert_ledger_clean
from .embedded import new_cluster

JOBS = {
    "rollup_today",
    "rollup_yesterday",
    "event_partitions",
    "retention",
    "reap_connections",
    "metrics_snapshot",
    "reap_idle_transactions",
}
DAILY = {"rollup_yesterday", "event_partitions", "retention"}
WAIT = 180  # seconds pg_cron may take to run every job once (its schedule has minute steps)


@pytest.fixture
def maintenance(db):
    client = Keen(db.maintenance_url, PoolSettings(min_size=1, max_size=2))
    yield client
    client.close()


def db_settings(settings: config.Settings, db) -> config.Settings:
    return config.Settings(settings.home, settings.port, db.name, db.superuser_url)


def run_cli(db, *args: str):
    return CliRunner().invoke(cli, ["--database-url", db.superuser_url, *args])


def test_the_catalog_lists_every_job_with_a_cron_schedule(maintenance):
    with maintenance.transaction() as tx:
        status = tx.streaming.maintenance_job_status()
    assert {j.job_name for j in status} == JOBS
    schedules = {j.job_name: (j.cron_schedule, j.period) for j in status}
    assert schedules["rollup_today"] == ("*/5 * * * *", timedelta(minutes=5))
    assert schedules["metrics_snapshot"] == ("* * * * *", timedelta(minutes=1))
    assert schedules["reap_connections"] == ("* * * * *", timedelta(minutes=1))
    assert schedules["rollup_yesterday"] == ("10 0 * * *", timedelta(days=1))


def test_each_job_runs_as_the_maintenance_role_and_records_its_success(db, maintenance):
    for name in sorted(JOBS):
        with maintenance.transaction() as tx:
            assert tx.streaming.run_maintenance_job(name)
    with maintenance.transaction() as tx:
        status = {j.job_name: j for j in tx.streaming.maintenance_job_status()}
    assert all(j.runs == 1 and j.last_succeeded_at is not None and not j.due for j in status.values())
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.system_metrics").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM keen.daily_analytics").fetchone()[0] >= 1


def test_only_maintenance_or_an_admin_runs_jobs(keen, make_user, maintenance):
    user = make_user()
    with keen.as_user(user) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.run_maintenance_job("metrics_snapshot")
    with keen.as_user(user) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.maintenance_job_status()
    with maintenance.transaction() as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.run_maintenance_job("drop_everything")


def test_a_job_that_missed_its_slot_is_overdue_and_the_doctor_fails_it(db, settings, maintenance):
    s = db_settings(settings, db)
    with psycopg.connect(db.superuser_url) as conn:
        assert jobs.check_jobs(s, conn) == (
            True,
            "no upkeep scheduled in this database (keen-db up with pg_cron, or keen-db jobs from cron)",
        )
    with maintenance.transaction() as tx:
        tx.execute("SELECT keen.register_maintenance_jobs()")
    with maintenance.transaction() as tx:
        assert not any(j.overdue for j in tx.streaming.maintenance_job_status())  # registered just now
    with db.su() as conn:
        conn.execute("UPDATE keen.maintenance_jobs SET scheduled_at = now() - interval '3 days'")
    with maintenance.transaction() as tx:
        assert {j.job_name for j in tx.streaming.maintenance_job_status() if j.overdue} == JOBS
    with psycopg.connect(db.superuser_url) as conn:
        ok, detail = jobs.check_jobs(s, conn)
    assert not ok and detail.startswith("not run when due: ") and "metrics_snapshot" in detail
    assert run_cli(db, "jobs", "--all").exit_code == 0
    with psycopg.connect(db.superuser_url) as conn:
        ok, detail = jobs.check_jobs(s, conn)
    assert ok and detail.startswith("last success: ") and "never" not in detail


def test_keen_db_jobs_runs_what_is_due_once(db):
    first = run_cli(db, "jobs")
    assert first.exit_code == 0, first.output
    ran = {line.split()[1].rstrip(":") for line in first.output.splitlines() if line.startswith("ok ")}
    assert ran == JOBS and f"{len(JOBS)} job(s) run, 0 failed" in first.output
    second = run_cli(db, "jobs")
    assert second.exit_code == 0, second.output
    again = {line.split()[1].rstrip(":") for line in second.output.splitlines() if line.startswith("ok ")}
    assert again.isdisjoint(DAILY)  # done for today; only a job whose minute slot turned may run again
    one = run_cli(db, "jobs", "--job", "retention")
    assert one.exit_code == 0 and "ok   retention:" in one.output
    status = run_cli(db, "jobs", "--status")
    assert status.exit_code == 0 and all(name in status.output for name in JOBS)
    assert run_cli(db, "jobs", "--job", "nope").exit_code != 0


def test_keen_db_jobs_install_without_pg_cron_says_so(db, settings):
    with psycopg.connect(settings.superuser_url("postgres")) as conn:
        loaded = jobs.pg_cron_loaded(conn)
    if loaded:
        pytest.skip("pg_cron is loaded on this server (the other branch is test_pg_cron_runs_the_jobs)")
    res = run_cli(db, "jobs", "--install")
    assert res.exit_code == 0 and "pg_cron is not loaded" in res.output


# pg_cron in a cluster of the test's own ---------------------------------------------------------


@pytest.fixture(scope="module")
def cron_cluster():
    if not cluster.pg_cron_available():
        pytest.skip("postgresql-15-cron is not installed")
    e = new_cluster("jobs")
    res = e.cli("up")
    yield e, res
    e.destroy()


def test_keen_db_up_loads_pg_cron_and_schedules_the_jobs_as_maintenance(cron_cluster):
    e, res = cron_cluster
    assert f"pg_cron runs {len(JOBS)} upkeep jobs in 'keen' as keen_maintenance" in res.stdout
    with e.su("postgres") as conn:
        rows = conn.execute(
            "SELECT jobname, schedule, database, username, active FROM cron.job ORDER BY jobname"
        ).fetchall()
    assert {r[0] for r in rows} == {f"keen:keen:{n}" for n in JOBS}
    assert all(r[2] == "keen" and r[3] == "keen_maintenance" and r[4] for r in rows)
    again = e.cli("up")  # idempotent: the same jobs
    assert f"pg_cron runs {len(JOBS)} upkeep jobs" in again.stdout
    with e.su("postgres") as conn:
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone()[0] == len(JOBS)


def test_pg_cron_runs_the_jobs(cron_cluster):
    """Every job on a one-minute schedule (pg_cron 1.4 has no seconds schedule): each runs in
    the keen database as keen_maintenance and records its success; the doctor reports it."""
    e, _ = cron_cluster
    with e.su("postgres") as conn:
        conn.execute("SELECT cron.alter_job(jobid, schedule => '* * * * *') FROM cron.job")
    deadline = time.monotonic() + WAIT
    done: set[str] = set()
    while time.monotonic() < deadline and done != JOBS:
        time.sleep(2)
        with e.su("keen") as conn:
            done = {r[0] for r in conn.execute("SELECT job_name FROM keen.maintenance_jobs WHERE runs > 0").fetchall()}
    with e.su("postgres") as conn:
        details = conn.execute(
            "SELECT j.jobname, d.status, d.return_message FROM cron.job_run_details d JOIN cron.job j USING (jobid)"
        ).fetchall()
    assert done == JOBS, f"not run by pg_cron: {JOBS - done}; runs: {details}"
    assert all(r[1] == "succeeded" for r in details if r[1] != "running"), details
    with e.su("keen") as conn:
        assert conn.execute("SELECT count(*) FROM keen.system_metrics").fetchone()[0] >= 1
    doctor = e.cli("doctor", check=False)
    line = next(ln for ln in doctor.stdout.splitlines() if "upkeep jobs" in ln)
    assert line.startswith("ok") and "pg_cron succeeded" in line, doctor.stdout


def test_the_watchdog_ends_a_keen_app_session_that_turned_its_idle_timeout_off(db, keen, make_user, maintenance):
    """The attack of issue 16, with the timeout SET away: a keen_app session changes a limit (taking the
    account lock), turns idle_in_transaction_session_timeout off and sits idle. The watchdog
    ends it; its transaction rolls back, the lock goes, the user's next deduction proceeds."""
    user = make_user("idle")
    attacker = psycopg.connect(db.app_url)
    attacker.execute("SET idle_in_transaction_session_timeout = 0")
    attacker.execute("SET lock_timeout = 0")
    attacker.execute("SELECT keen.act_as(%s)", (user,))
    attacker.execute("SELECT keen.set_spending_limits(%s, 10, 100)", (user,))  # takes the account lock
    pid = attacker.info.backend_pid
    time.sleep(1.2)
    with maintenance.transaction() as tx:
        assert tx.scalar("SELECT keen.reap_idle_transactions(interval '1 second')") == 1
    with db.su() as conn:
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the idle session was not ended"
            time.sleep(0.05)
        entry = conn.execute(
            "SELECT event_data->>'role' FROM keen.audit_logs WHERE event_subtype = 'session_terminated'"
        ).fetchone()
        assert entry == ("keen_app",)
    with pytest.raises(psycopg.OperationalError):
        attacker.execute("SELECT 1")
    attacker.close()
    with keen.as_user(user) as tx:  # the lock is gone: the owner changes the limits at once
        tx.execute("SET LOCAL lock_timeout = '2s'")
        tx.credits.set_spending_limits(user, None, None)
    assert_ledger_clean(db)


def test_the_watchdog_is_for_maintenance_and_admins_and_takes_positive_intervals(keen, make_user, maintenance):
    user = make_user("nosy")
    with pytest.raises(PermissionDenied):
        with keen.as_user(user) as tx:
            tx.execute("SELECT keen.reap_idle_transactions()")
    with pytest.raises(InvalidInput):
        with maintenance.transaction() as tx:
            tx.execute("SELECT keen.reap_idle_transactions(interval '0')")
