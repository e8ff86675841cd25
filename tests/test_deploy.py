"""Migrations, repeatables and seeds: rollback to empty, two ways of building the schema give
the same result, deploys and seeds are idempotent, every PL/pgSQL function passes plpgsql_check."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from keen_db import deploy
from keen_db.cluster import pg_bin
from keen_db.config import ROOT

from .conftest import create_database, database_info, drop_database


@pytest.fixture
def empty_db(settings):
    name = f"keen_empty_{os.getpid()}"
    create_database(settings, name)
    yield database_info(settings, name)
    drop_database(settings, name)


@pytest.fixture
def second_empty_db(settings):
    name = f"keen_empty2_{os.getpid()}"
    create_database(settings, name)
    yield database_info(settings, name)
    drop_database(settings, name)


def schema_dump(url: str) -> str:
    p = conninfo_to_dict(url)
    res = subprocess.run(
        [
            pg_bin("pg_dump"),
            "--schema-only",
            "--schema=keen",
            "--schema=keen_ext",
            "-h",
            p["host"],
            "-p",
            str(p["port"]),
            "-U",
            p["user"],
            p["dbname"],
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PGPASSWORD=p["password"]),
    )
    # \restrict / \unrestrict carry a random key per dump (pg_dump's psql-injection guard).
    return "\n".join(line for line in res.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def keen_schema_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('keen', 'keen_ext')").fetchone()[0]


def test_rollback_all_empties_the_database_and_migrating_again_rebuilds_an_identical_schema(empty_db):
    deploy.migrate(empty_db.superuser_url)
    first = schema_dump(empty_db.superuser_url)
    rolled = deploy.rollback(empty_db.superuser_url, None)
    assert rolled[-1] == "0001_roles" and len(rolled) >= 2
    assert keen_schema_count(empty_db.superuser_url) == 0
    assert deploy.migration_status(empty_db.superuser_url)[0] == []
    deploy.migrate(empty_db.superuser_url)
    assert schema_dump(empty_db.superuser_url) == first


def test_plain_yoyo_apply_builds_the_same_schema_as_keen_db_migrate(empty_db, second_empty_db):
    deploy.migrate(empty_db.superuser_url)
    res = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "yoyo"),
            "apply",
            "--batch",
            "--database",
            deploy._yoyo_url(second_empty_db.superuser_url),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert schema_dump(second_empty_db.superuser_url) == schema_dump(empty_db.superuser_url)


def test_a_second_migrate_applies_nothing_and_changes_no_object(db):
    before = schema_dump(db.superuser_url)
    assert deploy.migrate(db.superuser_url) == []
    assert schema_dump(db.superuser_url) == before
    assert deploy.migration_status(db.superuser_url)[1] == []


def test_repeatable_files_are_recorded_with_their_checksums(db):
    with db.su() as conn:
        recorded = dict(conn.execute("SELECT path, sha256 FROM keen.deployed_files").fetchall())
    expected = {str(p.relative_to(ROOT / "db")): deploy.file_sha256(p) for p in deploy.repeatable_files()}
    assert recorded == expected


def admin_row(db):
    with db.su() as conn:
        return conn.execute("""
            SELECT u.*, a.unlimited_credits, a.bypass_billing, a.updated_at AS account_updated_at
              FROM keen.users u JOIN keen.credit_accounts a ON a.user_id = u.id
             WHERE u.role = 'super_admin'""").fetchall()


def test_seeding_twice_leaves_the_admin_exactly_as_it_was(db):
    before = admin_row(db)
    deploy.seed(db.superuser_url)
    after = admin_row(db)
    assert len(after) == 1 and after == before
    row = after[0]
    assert row[1] == "ahiya.butman@gmail.com"


def test_seeded_admin_matches_the_contract(db):
    with db.su() as conn:
        row = conn.execute("""
            SELECT u.username, u.display_name, u.role, u.is_admin, u.email_verified, u.account_status,
                   u.admin_privileges, a.unlimited_credits, a.bypass_billing,
                   u.password_hash = keen_ext.crypt('2con-creator', u.password_hash)
              FROM keen.users u JOIN keen.credit_accounts a ON a.user_id = u.id
             WHERE u.email = 'ahiya.butman@gmail.com'""").fetchone()
    assert row[:6] == ("ahiya_admin", "Ahiya Butman (Admin)", "super_admin", True, True, "active")
    assert row[6] == {
        k: True
        for k in (
            "unlimited_credits",
            "bypass_rate_limits",
            "view_all_analytics",
            "manage_users",
            "system_monitoring",
            "priority_execution",
            "user_impersonation",
            "system_diagnostics",
        )
    }
    assert row[7:] == (True, True, True)


def test_seed_takes_the_markup_multiplier_from_the_environment_and_refuses_a_bad_one(db, monkeypatch):
    monkeypatch.setenv("CREDIT_MARKUP_MULTIPLIER", "4.5")
    deploy.seed(db.superuser_url)
    with db.su() as conn:
        assert conn.execute("SELECT keen.setting_numeric('markup_multiplier')").fetchone()[0] == Decimal("4.5")
    for bad in ("abc", "0", "-1", "NaN", "Infinity"):
        monkeypatch.setenv("CREDIT_MARKUP_MULTIPLIER", bad)
        with pytest.raises(ValueError):
            deploy.seed(db.superuser_url)
    with db.su() as conn:
        assert conn.execute("SELECT keen.setting_numeric('markup_multiplier')").fetchone()[0] == Decimal("4.5")


def test_plpgsql_check_finds_no_error_in_any_keen_function(db):
    with db.su() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
        problems = conn.execute("""
            WITH fns AS (
                SELECT p.oid, p.prorettype = 'trigger'::regtype AS is_trigger
                  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                 WHERE p.pronamespace = 'keen'::regnamespace AND l.lanname = 'plpgsql'),
            targets AS (
                SELECT f.oid, 0::oid AS relid FROM fns f WHERE NOT f.is_trigger
                UNION ALL
                SELECT DISTINCT f.oid, t.tgrelid FROM fns f JOIN pg_trigger t ON t.tgfoid = f.oid
                 WHERE f.is_trigger)
            SELECT t.oid::regprocedure::text, c.message, c.lineno
              FROM targets t
             CROSS JOIN LATERAL plpgsql_check_function_tb(t.oid, t.relid) c
             WHERE c.level = 'error'""").fetchall()
    assert problems == []


def test_a_deploy_behind_an_idle_reader_waits_briefly_retries_and_never_queues_readers(db, monkeypatch):
    """An idle transaction that read keen.credit_accounts holds its ACCESS SHARE lock; replacing
    the table's policy needs ACCESS EXCLUSIVE. The deploy waits at most its lock_timeout, gives
    up, and tries again; meanwhile a new reader is never stuck behind it, and once the idle
    transaction ends the deploy goes through."""
    monkeypatch.setattr(deploy, "DEPLOY_LOCK_TIMEOUT", "300ms")
    idle = psycopg.connect(db.superuser_url)
    idle.execute("SELECT count(*) FROM keen.credit_accounts")  # and then sits idle in its transaction
    result: dict[str, object] = {}

    def run_deploy() -> None:
        try:
            result["attempts"] = deploy.apply_repeatables_retrying(db.superuser_url, attempts=40)
        except Exception as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=run_deploy)
    worker.start()
    with db.su() as watcher:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the deploy has asked for the table and been refused once
            refused = watcher.execute(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE '%%DROP POLICY%%' AND wait_event_type = 'Lock'"
            ).fetchone()
            if refused and refused[0]:
                break
            time.sleep(0.02)
        # A new reader while the deploy is waiting: it gets its rows (the deploy's wait is short).
        with psycopg.connect(db.superuser_url) as reader:
            reader.execute("SET statement_timeout = '20s'")
            assert reader.execute("SELECT count(*) FROM keen.credit_accounts").fetchone()[0] >= 1
        assert worker.is_alive(), "the deploy must still be retrying while the idle reader holds its lock"
    idle.rollback()
    idle.close()
    worker.join(60)
    assert "error" not in result, result
    assert isinstance(result["attempts"], int) and result["attempts"] > 1
