"""Point-in-time recovery of the embedded cluster: base backup, WAL archive, a verified copy
brought back to a chosen moment. Runs in a cluster of its own under /var/tmp."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from keen_db import backup as bk
from keen_db.bench import seed_ledger, seed_users

from .embedded import Embedded, new_cluster


@pytest.fixture(scope="module")
def embedded():
    e = new_cluster("pitr")
    e.cli("up")
    with e.su() as conn:
        seed_users(conn, 10, balance=Decimal("100"))
    yield e
    e.destroy()


@pytest.fixture
def copy_dir(tmp_path_factory):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="keen_pitr_copy_", dir="/var/tmp"))
    d.rmdir()
    yield d
    port_file = d / "pgdata" / "keen.conf"
    port = 1
    if port_file.exists():
        port = int(next(line for line in port_file.read_text().splitlines() if line.startswith("port")).split("=")[1])
    Embedded(d, port).destroy()


def _now(e) -> str:
    with e.su() as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()


def test_wal_is_archived_only_from_the_first_base_backup_on(embedded):
    with embedded.su() as conn:
        before = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]
        conn.execute("SELECT txid_current()")
        conn.execute("SELECT pg_switch_wal()")
        while conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0] == before:
            time.sleep(0.1)
    assert list(embedded.settings.wal_archive_dir.iterdir()) == []  # nothing to replay it onto yet


def test_pitr_brings_a_copy_back_to_the_moment_before_later_writes(embedded, copy_dir):
    res = embedded.cli("basebackup")
    assert "verified by pg_verifybackup" in res.stdout
    with embedded.su() as conn:
        seed_ledger(conn, 4)  # after the base backup: must be replayed from the archive
        expected = bk.facts(conn)
    time.sleep(0.2)
    moment = _now(embedded)
    time.sleep(0.2)
    with embedded.su() as conn:
        seed_ledger(conn, 6)  # after the moment: must not be in the copy
        conn.execute("DELETE FROM keen.settings WHERE key = 'bcrypt_cost'")
    out = embedded.cli("pitr", "--to", moment, "--target-dir", str(copy_dir), "--json").stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["running"] and report["problems"] == []
    assert report["last_replayed_commit"] <= moment or report["last_replayed_commit"] is None
    copy = Embedded(copy_dir, report["port"])
    with copy.su() as conn:
        got = bk.facts(conn)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    # Same rows and the same ledger as at the moment; keen.deployed_files may differ only by
    # what `keen-db up` re-applied, which it does not do to a copy.
    assert bk.compare(expected, got) == []
    with copy.maintenance() as conn:
        assert conn.execute("SELECT count(*) FROM keen.verify_ledger() WHERE NOT ok").fetchone()[0] == 0
    # The source kept going: its later writes are there.
    with embedded.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.credit_transactions").fetchone()[0] == 10 * 11


def test_pitr_to_latest_recovers_every_committed_transaction_and_can_stop(embedded, copy_dir):
    embedded.cli("basebackup")
    with embedded.su() as conn:
        seed_ledger(conn, 2)
        expected = bk.facts(conn)
    report = json.loads(
        embedded.cli("pitr", "--to", "latest", "--target-dir", str(copy_dir), "--stop", "--json")
        .stdout.strip()
        .splitlines()[-1]
    )
    assert report["running"] is False and report["problems"] == []
    copy = Embedded(copy_dir, report["port"])
    copy.cli("up")  # a recovered copy is a KEEN_HOME like any other
    with copy.su() as conn:
        assert bk.compare(expected, bk.facts(conn)) == []


def test_pitr_refuses_a_time_before_every_base_backup(embedded, copy_dir):
    res = embedded.cli("pitr", "--to", "2001-01-01T00:00:00Z", "--target-dir", str(copy_dir), check=False)
    assert res.returncode == 1 and "no base backup finished before" in res.stderr
    assert not copy_dir.exists()


def test_pitr_refuses_a_time_in_the_future_and_a_non_time(embedded, copy_dir):
    res = embedded.cli("pitr", "--to", "2999-01-01", "--target-dir", str(copy_dir), check=False)
    assert res.returncode == 1 and "in the future" in res.stderr
    res = embedded.cli("pitr", "--to", "yesterday-ish", "--target-dir", str(copy_dir), check=False)
    assert res.returncode == 1 and "is not a time" in res.stderr


def test_pitr_refuses_a_non_empty_target_directory(embedded, copy_dir):
    copy_dir.mkdir()
    (copy_dir / "precious").write_text("x")
    res = embedded.cli("pitr", "--to", "latest", "--target-dir", str(copy_dir), check=False)
    assert res.returncode == 1 and "is not empty" in res.stderr
    assert (copy_dir / "precious").read_text() == "x"


def test_basebackup_keeps_the_newest_and_prunes_older_wal(embedded):
    for _ in range(3):
        embedded.cli("basebackup", "--keep", "2")
    backups = bk.list_basebackups(embedded.settings)
    assert len(backups) == 2
    oldest = backups[0][1]["start_wal"]
    archived = [f.name for f in embedded.settings.wal_archive_dir.iterdir() if len(f.name.split(".")[0]) == 24]
    assert archived and all(name.split(".")[0][8:] >= oldest[8:] for name in archived)


def test_archived_wal_is_compressed_and_archiving_never_failed(embedded):
    with embedded.su() as conn:
        conn.execute("SELECT pg_switch_wal()")
        time.sleep(1)
        failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]
    assert failed == 0
    names = [f.name for f in embedded.settings.wal_archive_dir.iterdir() if not f.name.startswith(".")]
    assert names and all(n.endswith(".gz") for n in names)
