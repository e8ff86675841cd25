"""keen-db doctor: one line per check, exit 1 when any fails; the operations checks
(connections, WAL archiving, holds, event partitions) next to the schema and ledger ones."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import psycopg
import pytest
from click.testing import CliRunner

from keen_db.bench import bench_uid, seed_users
from keen_db.cli import cli

from .conftest import assert_ledger_clean
from .embedded import new_cluster


def _doctor(db) -> tuple[int, dict[str, str]]:
    res = CliRunner().invoke(cli, ["--database-url", db.superuser_url, "doctor"], catch_exceptions=False)
    lines = {}
    for line in res.stdout.splitlines():
        status, rest = line[:4].strip(), line[5:]
        lines[rest.split(":")[0]] = f"{status} {rest}"
    return res.exit_code, lines


def test_doctor_passes_on_a_fresh_database_and_reports_operations(db):
    code, lines = _doctor(db)
    assert code == 0, lines
    for check in ("connections", "WAL archiving", "credit holds", "event partitions", "ledger"):
        assert lines[check].startswith("ok "), lines[check]
    assert "connections in use" in lines["connections"]


def test_doctor_fails_when_next_months_event_partition_is_missing(db):
    with db.su() as conn:
        nxt = conn.execute(
            "SELECT 'keen.streaming_events_' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') "
            "+ interval '1 month', '\"y\"YYYY\"m\"MM')"
        ).fetchone()[0]
        conn.execute(f"DROP TABLE {nxt}")
    code, lines = _doctor(db)
    assert code == 1
    assert lines["event partitions"].startswith("FAIL") and nxt.split(".")[1] in lines["event partitions"]
    with db.su() as conn:
        conn.execute("SELECT keen.prepare_event_partitions()")
    assert _doctor(db)[0] == 0


def test_doctor_reports_the_oldest_live_hold(db):
    with db.su() as conn:
        seed_users(conn, 1, balance=Decimal("50"), first=900)
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.act_as(%s)", (bench_uid(900),))
        conn.execute("SELECT * FROM keen.reserve_credits(%s, 1.0)", (bench_uid(900),))
    code, lines = _doctor(db)
    assert code == 0
    assert "1 live hold(s), the oldest placed" in lines["credit holds"]
    assert_ledger_clean(db)


def test_doctor_fails_when_a_balance_does_not_match_its_ledger(db):
    with db.su() as conn:
        seed_users(conn, 1, balance=Decimal("50"), first=901)
        conn.execute("UPDATE keen.credit_accounts SET current_balance = 49 WHERE user_id = %s", (bench_uid(901),))
    code, lines = _doctor(db)
    assert code == 1
    assert lines["ledger"].startswith("FAIL") and "balance 49.000000 but ledger sums to 50.000000" in lines["ledger"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take the archive away from the postgres user")
def test_doctor_fails_while_wal_archiving_fails():
    e = new_cluster("doctor")
    try:
        e.cli("up")
        e.cli("basebackup")  # archiving starts with the first base backup
        assert e.cli("doctor").returncode == 0
        os.chmod(e.settings.wal_archive_dir, 0o500)  # the server can no longer write its archive
        with e.su() as conn:
            conn.execute("SELECT txid_current()")
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        res = e.cli("doctor", check=False)
        assert res.returncode == 1
        assert "FAIL WAL archiving: archiving 0000000" in res.stdout and "fails" in res.stdout
        os.chmod(e.settings.wal_archive_dir, 0o700)
        with e.su() as conn:
            deadline = time.monotonic() + 90  # the archiver retries after a pause of its own
            while conn.execute(
                "SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver"
            ).fetchone()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert e.cli("doctor").returncode == 0
    finally:
        os.chmod(e.settings.wal_archive_dir, 0o700) if e.settings.wal_archive_dir.exists() else None
        e.destroy()
