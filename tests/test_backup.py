"""keen-db backup / restore: a verified round trip, and every way a restore must refuse."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from keen_db import backup as bk
from keen_db.bench import seed_ledger, seed_users
from keen_db.cli import cli

from .conftest import assert_ledger_clean, drop_database


def _exists(settings, name: str) -> bool:
    with psycopg.connect(settings.superuser_url("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def populated(db):
    """A test database with 20 users, each with 11 ledger rows, balances consistent."""
    with db.su() as conn:
        seed_users(conn, 20, first=500)
        seed_ledger(conn, 10)
    return db


@pytest.fixture
def target(settings):
    name = f"keen_restored_{uuid.uuid4().hex[:8]}"
    yield name
    drop_database(settings, name)


def _run(db, *args: str):
    return CliRunner().invoke(cli, ["--database-url", db.superuser_url, *args], catch_exceptions=False)


def test_backup_and_restore_round_trip_matches_manifest_and_ledger(populated, settings, target, tmp_path):
    path = tmp_path / "b"
    res = _run(populated, "backup", str(path))
    assert res.exit_code == 0, res.output
    manifest = json.loads((path / bk.MANIFEST).read_text())
    assert manifest["tables"]["keen.credit_transactions"] == 20 * 11
    assert len(manifest["ledger"]) == 21  # the bench users and the admin
    assert manifest["migrations"][:2] == ["0001_roles", "0002_schema"]
    res = _run(populated, "restore", str(path), "--target-db", target)
    assert res.exit_code == 0, res.output
    assert "verified" in res.output
    with psycopg.connect(settings.superuser_url(target)) as conn:
        assert bk.compare(manifest, bk.facts(conn)) == []
    assert_ledger_clean(populated)


def test_backup_holds_every_tenant_whatever_row_level_security_shows(populated, tmp_path):
    with psycopg.connect(populated.app_url) as app:
        assert app.execute("SELECT count(*) FROM keen.credit_transactions").fetchone()[0] == 0
    manifest = bk.take_backup(populated.superuser_url, tmp_path / "b")
    with populated.su() as conn:
        assert manifest["tables"] == bk.table_counts(conn)
        assert manifest["tables"]["keen.users"] == conn.execute("SELECT count(*) FROM keen.users").fetchone()[0] == 21
    assert oct((tmp_path / "b").stat().st_mode & 0o777) == "0o700"


def test_backup_refuses_a_role_that_row_level_security_would_filter_and_leaves_nothing(populated, tmp_path):
    with pytest.raises(bk.BackupError, match="bypasses row-level security"):
        bk.take_backup(populated.maintenance_url, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_backup_refuses_a_non_empty_directory(populated, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    res = _run(populated, "backup", str(tmp_path / "b"))
    assert res.exit_code == 1 and "not an empty directory" in res.output


def test_restore_refuses_an_existing_database(populated, settings, tmp_path):
    bk.take_backup(populated.superuser_url, tmp_path / "b")
    res = _run(populated, "restore", str(tmp_path / "b"), "--target-db", populated.name)
    assert res.exit_code == 1 and "already exists" in res.output
    assert_ledger_clean(populated)  # the existing database is untouched


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_restore_refuses_a_damaged_archive_and_leaves_no_database(populated, settings, target, tmp_path, damage):
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)
    archive = path / bk.ARCHIVE
    data = bytearray(archive.read_bytes())
    if damage == "corrupted":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 100]
    archive.write_bytes(bytes(data))
    res = _run(populated, "restore", str(path), "--target-db", target)
    assert res.exit_code == 1
    assert f"is {damage}" in res.output and "nothing was restored" in res.output
    assert not _exists(settings, target)


def test_restore_refuses_a_backup_without_manifest(populated, settings, target, tmp_path):
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)
    (path / bk.MANIFEST).unlink()
    res = _run(populated, "restore", str(path), "--target-db", target)
    assert res.exit_code == 1 and "not a complete keen-db backup" in res.output
    assert not _exists(settings, target)


def test_restore_drops_the_database_when_counts_differ_from_the_manifest(populated, settings, target, tmp_path):
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)
    manifest = json.loads((path / bk.MANIFEST).read_text())
    manifest["tables"]["keen.credit_transactions"] += 1  # the archive no longer holds what it promises
    (path / bk.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(bk.BackupError, match=r"keen.credit_transactions: 221 row\(s\) in the backup, 220 restored"):
        bk.restore_backup(settings_for(populated, settings), path, target)
    assert not _exists(settings, target)


def test_restore_drops_the_database_when_the_ledger_does_not_balance(populated, settings, target, tmp_path):
    with populated.su() as conn:  # damage the source: a balance that its ledger does not explain
        conn.execute(
            "UPDATE keen.credit_accounts SET current_balance = current_balance + 1 "
            "WHERE user_id = (SELECT id FROM keen.users WHERE username = 'bench_user_500')"
        )
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)  # the manifest faithfully records the damage
    with pytest.raises(bk.BackupError, match="verify_ledger"):
        bk.restore_backup(settings_for(populated, settings), path, target)
    assert not _exists(settings, target)


def test_restore_creates_missing_roles_without_passwords(populated, settings, target, tmp_path):
    role = f"keen_gone_{uuid.uuid4().hex[:6]}"
    with populated.su() as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT SELECT ON keen.settings TO {role}")
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)
    assert "PASSWORD" not in (path / bk.ROLES).read_text().upper().replace("NO-ROLE-PASSWORDS", "")
    with populated.su() as conn:
        conn.execute(f"REVOKE ALL ON keen.settings FROM {role}")
        conn.execute(f"DROP ROLE {role}")
    try:
        summary = bk.restore_backup(settings_for(populated, settings), path, target)
        assert summary["roles_created"] == [role]
        with psycopg.connect(settings.superuser_url(target)) as conn:
            assert conn.execute("SELECT has_table_privilege(%s, 'keen.settings', 'SELECT')", (role,)).fetchone()[0]
    finally:
        drop_database(settings, target)
        with populated.su() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def settings_for(db, settings):
    """Settings that point at the test database's server (what --database-url gives)."""
    from keen_db import config

    return config.load(db.superuser_url)


def test_restore_drops_the_database_when_the_audit_chain_is_broken(populated, settings, target, tmp_path, make_user):
    make_user("audited")  # registration writes audit entries
    with populated.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.audit_logs").fetchone()[0] > 0
        with conn.transaction():  # tamper as an attacker with superuser rights would: triggers off
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "UPDATE keen.audit_logs SET event_data = '{\"tampered\": true}' "
                "WHERE id = (SELECT min(id) FROM keen.audit_logs)"
            )
    path = tmp_path / "b"
    bk.take_backup(populated.superuser_url, path)
    with pytest.raises(bk.BackupError, match="verify_audit_chain: chain main entry 1"):
        bk.restore_backup(settings_for(populated, settings), path, target)
    assert not _exists(settings, target)
