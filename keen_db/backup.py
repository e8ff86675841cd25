"""Backup and recovery: `keen-db backup`, `keen-db restore`, `keen-db basebackup`, `keen-db pitr`.

Logical backups (backup / restore) are a directory:
    keen.dump      pg_dump custom format, taken as a superuser (row-level security never
                   shrinks it) inside one exported snapshot
    roles.sql      pg_dumpall --roles-only --no-role-passwords (login passwords are not kept:
                   `keen-db up` / `keen-db migrate` set them again from $KEEN_HOME/secrets)
    manifest.json  written last, from the same snapshot: SHA-256 of both files, per-table row
                   counts, per-account balance and ledger sum, yoyo migrations, time, version
`restore` checks the checksums before it creates anything, restores into a new database,
compares that database with the manifest and runs verify_ledger (and verify_audit_chain when
the schema has it); on any difference it drops the database again.

Point-in-time recovery (embedded cluster only): WAL segments are archived, compressed, into
$KEEN_HOME/wal_archive (see keen_db.cluster.archive_command); `basebackup` takes a verified
pg_basebackup into $KEEN_HOME/basebackups; `pitr` copies the newest base backup that ended
before the target time into a new KEEN_HOME-shaped directory, replays the archive up to the
target on another port, promotes the copy and verifies it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import cluster, config
from .sql import one, value

FORMAT = 1
ARCHIVE = "keen.dump"
ROLES = "roles.sql"
MANIFEST = "manifest.json"


class BackupError(RuntimeError):
    pass


# --- facts: what a backup promises and a restore must show -------------------------------


def _rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows of every ordinary table (partitions one by one) outside the system schemas."""
    tables = _rows(
        conn,
        """
        SELECT n.nspname, c.relname
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_toast'
         ORDER BY 1, 2""",
    )
    return {
        f"{schema}.{table}": value(
            conn, sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        )
        for schema, table in tables
    }


def ledger_totals(conn: psycopg.Connection) -> dict[str, dict[str, str | int]]:
    """Per account: balance, sum of its transactions' amounts, number of transactions."""
    if value(conn, "SELECT pg_catalog.to_regclass('keen.credit_accounts')") is None:
        return {}
    rows = _rows(
        conn,
        """
        SELECT a.user_id::text, a.current_balance::text,
               COALESCE(t.total, 0)::numeric(20,6)::text, COALESCE(t.entries, 0)
          FROM keen.credit_accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total, count(*) AS entries
                       FROM keen.credit_transactions GROUP BY account_id) t ON t.account_id = a.id
         ORDER BY a.user_id""",
    )
    return {r[0]: {"balance": r[1], "ledger_sum": r[2], "entries": r[3]} for r in rows}


def migrations(conn: psycopg.Connection) -> list[str]:
    if value(conn, "SELECT pg_catalog.to_regclass('public._yoyo_migration')") is None:
        return []
    return [
        r[0]
        for r in _rows(conn, "SELECT migration_id FROM public._yoyo_migration ORDER BY applied_at_utc, migration_id")
    ]


def facts(conn: psycopg.Connection) -> dict[str, Any]:
    return {"tables": table_counts(conn), "ledger": ledger_totals(conn), "migrations": migrations(conn)}


def integrity_checks(maintenance_url: str) -> list[str]:
    """verify_ledger() (and verify_audit_chain() when defined) as keen_maintenance: the
    problems found, empty when all is well."""
    problems = []
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        if value(conn, "SELECT pg_catalog.to_regprocedure('keen.verify_ledger()')"):
            bad = conn.execute("SELECT user_id, balance, ledger_sum FROM keen.verify_ledger() WHERE NOT ok").fetchall()
            problems += [f"verify_ledger: account of {u}: balance {b} but ledger sums to {s}" for u, b, s in bad[:10]]
        else:
            problems.append("keen.verify_ledger() is not defined")
        if value(conn, "SELECT pg_catalog.to_regprocedure('keen.verify_audit_chain()')"):
            problems += [f"verify_audit_chain: {p}" for p in _audit_chain_problems(conn)]
    return problems


def _audit_chain_problems(conn: psycopg.Connection) -> list[str]:
    """keen.verify_audit_chain() returns one row per broken link, none when the chain holds."""
    rows = conn.execute("SELECT chain_name, chain_seq, problem FROM keen.verify_audit_chain()").fetchall()
    return [f"chain {c} entry {seq}: {problem}" for c, seq, problem in rows[:10]]


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences between a manifest's facts and a database's, readable, at most 20."""
    diffs = []
    for name in sorted(set(expected["tables"]) | set(actual["tables"])):
        e, a = expected["tables"].get(name), actual["tables"].get(name)
        if e != a:
            diffs.append(f"table {name}: {e} row(s) in the backup, {a} restored")
    for user in sorted(set(expected["ledger"]) | set(actual["ledger"])):
        e, a = expected["ledger"].get(user), actual["ledger"].get(user)
        if (
            e is None
            or a is None
            or any(Decimal(str(e[k])) != Decimal(str(a[k])) for k in ("balance", "ledger_sum", "entries"))
        ):
            diffs.append(f"account of {user}: backup {e}, restored {a}")
    if expected["migrations"] != actual["migrations"]:
        diffs.append(f"migrations: backup {expected['migrations']}, restored {actual['migrations']}")
    return diffs[:20]


# --- libpq programs ------------------------------------------------------------------------


def _libpq(conninfo: str, **override: str) -> tuple[str, dict[str, str]]:
    """A conninfo without its password, and the environment that carries it (PGPASSWORD)."""
    params = conninfo_to_dict(conninfo)
    params.update(override)
    password = params.pop("password", None)
    return make_conninfo("", **params), ({"PGPASSWORD": str(password)} if password else {})


def _tool(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise BackupError(f"{Path(cmd[0]).name} failed: {(res.stderr or res.stdout).strip()}")
    return res


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- logical backup ------------------------------------------------------------------------


def take_backup(superuser_url: str, path: Path) -> dict[str, Any]:
    """Write a backup directory at `path` (which must not exist or be empty); returns the manifest."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackupError(f"{path} exists and is not an empty directory; choose a new path")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # a backup holds password hashes and every tenant's data
    try:
        return _write_backup(superuser_url, path)
    except BaseException:  # no half-written backup left behind
        for name in (ARCHIVE, ROLES, MANIFEST + ".part"):
            (path / name).unlink(missing_ok=True)
        if created:
            path.rmdir()
        raise


def _write_backup(superuser_url: str, path: Path) -> dict[str, Any]:
    started = time.monotonic()
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        if not value(conn, "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"):
            raise BackupError(
                "a backup needs a role that bypasses row-level security (a superuser): "
                "anything else would silently leave other tenants' rows out"
            )
        database = value(conn, "SELECT current_database()")
        # One snapshot for the dump and the manifest, so the counts describe exactly the archive.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = value(conn, "SELECT pg_catalog.pg_export_snapshot()")
        manifest_facts = facts(conn)
        server_version = value(conn, "SHOW server_version")
        taken_at = value(conn, "SELECT pg_catalog.now()")
        dsn, env = _libpq(superuser_url)
        _tool(
            [
                cluster.pg_bin("pg_dump"),
                "--format=custom",
                f"--snapshot={snapshot}",
                "--file",
                str(path / ARCHIVE),
                "--dbname",
                dsn,
            ],
            env,
        )
        conn.execute("COMMIT")
    dsn, env = _libpq(superuser_url, dbname="postgres")
    _tool(
        [
            cluster.pg_bin("pg_dumpall"),
            "--roles-only",
            "--no-role-passwords",
            "--file",
            str(path / ROLES),
            "--dbname",
            dsn,
        ],
        env,
    )
    _tool([cluster.pg_bin("pg_restore"), "--list", str(path / ARCHIVE)])  # the archive reads back
    for name in (ARCHIVE, ROLES):
        os.chmod(path / name, 0o600)
    manifest = {
        "format": FORMAT,
        "database": database,
        "taken_at": taken_at.isoformat(),
        "server_version": server_version,
        "files": {
            name: {"sha256": sha256_file(path / name), "bytes": (path / name).stat().st_size}
            for name in (ARCHIVE, ROLES)
        },
        "role_passwords": "not included: `keen-db up` or `keen-db migrate` sets the login roles' passwords",
        "seconds": round(time.monotonic() - started, 2),
        **manifest_facts,
    }
    part = path / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    part.rename(path / MANIFEST)  # the manifest appears last: its presence means complete
    return manifest


def read_verified_manifest(path: Path) -> dict[str, Any]:
    """The manifest, after checking that every file it lists is there with its checksum."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{path / MANIFEST} is missing: {path} is not a complete keen-db backup") from None
    except json.JSONDecodeError as exc:
        raise BackupError(f"{path / MANIFEST} is not valid JSON ({exc}): the backup is damaged") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format')!r} (this keen-db reads {FORMAT})")
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.exists():
            raise BackupError(f"{f} is missing: the backup is incomplete; nothing was restored")
        size, digest = f.stat().st_size, sha256_file(f)
        if size != meta["bytes"] or digest != meta["sha256"]:
            what = "truncated" if size < meta["bytes"] else "corrupted"
            raise BackupError(
                f"{f} is {what}: {size} bytes with SHA-256 {digest[:16]}..., the manifest "
                f"says {meta['bytes']} bytes with {meta['sha256'][:16]}...; nothing was restored"
            )
    return manifest


_ROLE_LINE = re.compile(r'^(?:CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)')


def _ensure_roles(conn: psycopg.Connection, roles_sql: str) -> list[str]:
    """Create the roles of the backup that this server lacks (without passwords); existing
    roles are left exactly as they are. Returns the roles created."""
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
    created = []
    for line in roles_sql.splitlines():
        m = _ROLE_LINE.match(line)
        if not m:
            continue
        name = m.group(1)
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name
        if name in existing and name not in created:
            continue
        conn.execute(line)
        if line.startswith("CREATE") and name not in created:
            created.append(name)
    for line in roles_sql.splitlines():
        if line.startswith("GRANT ") and any(r in line for r in created):
            conn.execute(line)
    return created


# Materialized views are rebuilt after a restore by their own refresh functions, as the
# maintenance role that sees every tenant (the REFRESH inside pg_restore saw none).
VIEW_REFRESHERS = ("keen.refresh_dashboard_metrics()",)


def _refresh_views(maintenance_url: str) -> None:
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        for fn in VIEW_REFRESHERS:
            if value(conn, "SELECT pg_catalog.to_regprocedure(%s)", (fn,)):
                conn.execute(sql.SQL("SELECT {}").format(sql.SQL(fn)))


def _database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop_database(s: config.Settings, name: str) -> None:
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def restore_backup(s: config.Settings, path: Path, target: str, jobs: int = 2) -> dict[str, Any]:
    """Restore the backup at `path` into a new database `target` on the server of `s` and
    verify it; on any failure the database is dropped and BackupError raised. Returns a
    summary (tables, rows, accounts, seconds)."""
    started = time.monotonic()
    manifest = read_verified_manifest(path)
    path = Path(path)
    _tool([cluster.pg_bin("pg_restore"), "--list", str(path / ARCHIVE)])
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        if _database_exists(conn, target):
            raise BackupError(f"database {target!r} already exists; restore only creates a new database")
        roles_created = _ensure_roles(conn, (path / ROLES).read_text())
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target)))
    try:
        dsn, env = _libpq(s.superuser_url(target))
        # Row security stays on: the superuser's COPY bypasses it anyway, while a materialized
        # view's REFRESH runs as its owner under FORCED policies (off, it would be an error).
        _tool(
            [
                cluster.pg_bin("pg_restore"),
                "--exit-on-error",
                "--enable-row-security",
                f"--jobs={jobs}",
                "--dbname",
                dsn,
                str(path / ARCHIVE),
            ],
            env,
        )
        _refresh_views(s.role_url("keen_maintenance", target))
        with psycopg.connect(s.superuser_url(target), autocommit=True) as conn:
            conn.execute("ANALYZE")
            diffs = compare(manifest, facts(conn))
        if diffs:
            raise BackupError("the restored database differs from the manifest:\n  " + "\n  ".join(diffs))
        problems = integrity_checks(s.role_url("keen_maintenance", target))
        if problems:
            raise BackupError("the restored database fails its integrity checks:\n  " + "\n  ".join(problems))
    except BaseException:
        drop_database(s, target)
        raise
    return {
        "database": target,
        "tables": len(manifest["tables"]),
        "rows": sum(manifest["tables"].values()),
        "accounts": len(manifest["ledger"]),
        "migrations": len(manifest["migrations"]),
        "roles_created": roles_created,
        "taken_at": manifest["taken_at"],
        "seconds": round(time.monotonic() - started, 2),
    }


# --- point-in-time recovery ----------------------------------------------------------------


def basebackups_dir(s: config.Settings) -> Path:
    return s.home / "basebackups"


def list_basebackups(s: config.Settings) -> list[tuple[Path, dict[str, Any]]]:
    """Verified base backups, oldest first, each with the <name>.json written beside it."""
    root = basebackups_dir(s)
    infos = sorted(root.glob("*.json")) if root.exists() else []
    return [(info.with_suffix(""), json.loads(info.read_text())) for info in infos if info.with_suffix("").is_dir()]


def _require_embedded(s: config.Settings) -> None:
    if not s.embedded:
        raise BackupError(
            "point-in-time recovery manages the embedded cluster only "
            "(KEEN_DATABASE_URL is set); use your server's own tools"
        )
    if not cluster.running(s):
        raise BackupError(f"the embedded cluster in {s.home} is not running (run keen-db up)")


def take_basebackup(s: config.Settings, keep: int = 2) -> tuple[Path, dict[str, Any]]:
    """pg_basebackup (plain, WAL streamed, SHA-256 manifest) into $KEEN_HOME/basebackups,
    checked with pg_verifybackup; then only the newest `keep` are kept and archived WAL older
    than the oldest kept one is removed."""
    _require_embedded(s)
    root = basebackups_dir(s)
    cluster._owned_dir(root, 0o700)
    # WAL is archived from the first base backup on (see cluster.archive_command): switch it
    # on before the backup starts, so every segment from its start point on is kept.
    marker = s.wal_archive_dir / cluster.ARCHIVE_MARKER
    if not marker.exists():
        marker.touch()
    started_at = dt.datetime.now(dt.UTC)
    dest = root / started_at.strftime("%Y%m%dT%H%M%S%fZ")
    dsn, env = _libpq(s.superuser_url("postgres"))
    t0 = time.monotonic()
    cluster._run(
        [
            cluster.pg_bin("pg_basebackup"),
            "--pgdata",
            str(dest),
            "--format=plain",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--manifest-checksums=SHA256",
            f"--label=keen-db {started_at.isoformat()}",
            "--dbname",
            dsn,
        ],
        env=env,
    )
    ended_at = dt.datetime.now(dt.UTC)
    res = cluster._run([cluster.pg_bin("pg_verifybackup"), str(dest)], check=False)
    if res.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise BackupError(f"pg_verifybackup rejected the new base backup: {(res.stderr or res.stdout).strip()}")
    label = (dest / "backup_label").read_text()
    found = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", label)
    if found is None:
        raise BackupError(f"no START WAL LOCATION in the backup_label of {dest}")
    start_wal = found.group(1)
    info = {
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),  # a recovery target must not be earlier than this
        "start_wal": start_wal,
        "seconds": round(time.monotonic() - t0, 2),
        "bytes": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()),
        "verified": "pg_verifybackup",
    }
    # Beside the backup, not in it (pg_verifybackup refuses files its manifest does not list);
    # written only once the backup is verified.
    dest.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    _prune(s, keep)
    return dest, info


def _prune(s: config.Settings, keep: int) -> None:
    backups = list_basebackups(s)
    for d, _ in backups[:-keep] if keep > 0 else []:
        d.with_suffix(".json").unlink()
        shutil.rmtree(d)
    kept = list_basebackups(s)
    if kept:
        oldest = kept[0][1]["start_wal"]
        for ext in (".gz", None):
            cluster._run(
                [cluster.pg_bin("pg_archivecleanup"), *(["-x", ext] if ext else []), str(s.wal_archive_dir), oldest]
            )
        # pg_archivecleanup leaves the older backups' label files (NAME.OFFSET.backup).
        for f in s.wal_archive_dir.glob("*.backup*"):
            if f.name[8:24] < oldest[8:]:
                f.unlink()


def parse_time(text: str) -> dt.datetime | None:
    """An ISO 8601 time (UTC when no zone is given), or None for 'latest'."""
    if text.lower() == "latest":
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(f"{text!r} is not a time: use ISO 8601 like 2025-01-31T14:05:00Z, or 'latest'") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def archive_current_wal(s: config.Settings, timeout: float = 60) -> None:
    """Close the current WAL segment and wait until the archiver has stored it, so the archive
    holds every transaction committed until now."""
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        # A commit stamped now: recovery to a time stops at the first commit after it, and
        # fails when the WAL ends before one (nothing may have committed since the target).
        conn.execute("SELECT pg_catalog.txid_current()")
        segment = value(conn, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while True:
            last, failed = one(conn, "SELECT last_archived_wal, last_failed_wal FROM pg_catalog.pg_stat_archiver")
            if last and last[8:] >= segment[8:]:
                return
            if time.monotonic() > deadline:
                raise BackupError(
                    f"WAL segment {segment} was not archived within {timeout:.0f}s "
                    f"(last archived {last}, last failure {failed}); see {s.log_file}"
                )
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_in_time_recovery(
    s: config.Settings,
    target_time: dt.datetime | None,
    target_dir: Path,
    port: int | None = None,
    stop: bool = False,
    log=lambda _msg: None,
) -> dict[str, Any]:
    """Bring a copy of the embedded cluster back to `target_time` (None: as far as the archive
    goes) in `target_dir` (a new KEEN_HOME) on `port`, promote it and verify it. The copy is
    left running unless `stop`. Returns a report."""
    _require_embedded(s)
    t0 = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    if target_time and target_time > now:
        raise BackupError(f"{target_time.isoformat()} is in the future")
    target_dir = Path(target_dir).resolve()
    if target_dir.exists() and any(target_dir.iterdir()):
        raise BackupError(f"{target_dir} exists and is not empty; the copy needs a new directory")
    candidates = [
        (d, i)
        for d, i in list_basebackups(s)
        if target_time is None or dt.datetime.fromisoformat(i["ended_at"]) <= target_time
    ]
    if not candidates:
        raise BackupError(
            "no base backup finished before "
            + (target_time.isoformat() if target_time else "now")
            + " (run keen-db basebackup; a recovery can only start from one)"
        )
    base, info = candidates[-1]
    log(f"base backup {base.name} (ended {info['ended_at']})")
    res = cluster._run([cluster.pg_bin("pg_verifybackup"), str(base)], check=False)
    if res.returncode != 0:
        raise BackupError(f"pg_verifybackup rejected {base}: {(res.stderr or res.stdout).strip()}")
    archive_current_wal(s)
    log("current WAL segment archived")

    copy = replace(s, home=target_dir, port=port or free_port())
    target_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(target_dir, 0o711)
    cluster._check_reachable(target_dir)
    subprocess.run(["cp", "-a", str(base), str(copy.data_dir)], check=True)
    (copy.data_dir / "backup_manifest").unlink()
    shutil.copytree(s.secrets_dir, copy.secrets_dir)  # the copy's roles have the same passwords
    for d, mode in ((copy.run_dir, 0o755), (copy.log_file.parent, 0o755), (copy.wal_archive_dir, 0o700)):
        cluster._owned_dir(d, mode)
    lines = [
        f"restore_command = '{cluster.restore_command(s.wal_archive_dir)}'",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
    ]
    if target_time:
        lines += [f"recovery_target_time = '{target_time.isoformat()}'", "recovery_target_inclusive = true"]
    uid, gid = cluster._server_uid_gid()
    for name, text in (("keen.recovery.conf", "\n".join(lines) + "\n"), ("recovery.signal", "")):
        (copy.data_dir / name).write_text(text)
        os.chown(copy.data_dir / name, uid, gid)
    log(f"replaying the archive into {copy.data_dir} on port {copy.port}")
    try:
        cluster.start(copy, timeout=3600)
        with psycopg.connect(copy.superuser_url("postgres"), autocommit=True) as conn:
            while value(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
                time.sleep(0.2)
            replayed = value(conn, "SELECT pg_catalog.pg_last_xact_replay_timestamp()")
    except (cluster.ClusterError, psycopg.OperationalError) as exc:
        tail = "\n".join(copy.log_file.read_text(errors="replace").splitlines()[-8:]) if copy.log_file.exists() else ""
        cluster.stop(copy, mode="immediate")
        raise BackupError(f"recovery failed: {exc}\n{tail}") from None
    (copy.data_dir / "keen.recovery.conf").unlink(missing_ok=True)
    recovered_seconds = time.monotonic() - t0
    with psycopg.connect(copy.superuser_url(), autocommit=True) as conn:
        counts = table_counts(conn)
        accounts = len(ledger_totals(conn))
    problems = integrity_checks(copy.role_url("keen_maintenance"))
    if stop:
        cluster.stop(copy)
    report = {
        "target_time": target_time.isoformat() if target_time else "latest",
        "last_replayed_commit": replayed.isoformat() if replayed else None,
        "base_backup": base.name,
        "home": str(copy.home),
        "port": copy.port,
        "running": not stop,
        "database": copy.database,
        "rows": sum(counts.values()),
        "accounts": accounts,
        "problems": problems,
        "recovery_seconds": round(recovered_seconds, 2),
        "seconds": round(time.monotonic() - t0, 2),
    }
    if problems:
        raise BackupError(
            "the recovered copy fails its integrity checks:\n  "
            + "\n  ".join(problems)
            + f"\n(the copy is in {copy.home}, port {copy.port})"
        )
    return report


# --- commands ------------------------------------------------------------------------------


def _fail(message: str) -> None:
    click.echo(f"keen-db: {message}", err=True)
    sys.exit(1)


def _ensure(s: config.Settings) -> None:
    try:
        cluster.ensure_running(s)
    except cluster.ClusterError as exc:
        _fail(str(exc))


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_context
def backup(ctx: click.Context, path: Path) -> None:
    """Write a verified backup of the database into directory PATH."""
    s: config.Settings = ctx.obj
    _ensure(s)
    try:
        m = take_backup(s.superuser_url(), path)
    except (BackupError, psycopg.Error) as exc:
        _fail(str(exc).strip())
    click.echo(
        f"backup of {m['database']!r} written to {path}: {len(m['tables'])} tables, "
        f"{sum(m['tables'].values())} rows, {len(m['ledger'])} accounts, "
        f"{m['files'][ARCHIVE]['bytes']} bytes, sha256 {m['files'][ARCHIVE]['sha256'][:16]}..., "
        f"{m['seconds']}s"
    )


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--target-db", required=True, help="the new database to restore into (must not exist)")
@click.option("--jobs", default=2, show_default=True, help="pg_restore parallel jobs")
@click.pass_context
def restore(ctx: click.Context, path: Path, target_db: str, jobs: int) -> None:
    """Restore backup PATH into a new database and verify it against its manifest."""
    s: config.Settings = ctx.obj
    _ensure(s)
    try:
        r = restore_backup(s, path, target_db, jobs)
    except (BackupError, psycopg.Error) as exc:
        _fail(str(exc).strip())
    click.echo(
        f"restored {path} into {r['database']!r} and verified it: {r['tables']} tables and "
        f"{r['rows']} rows match the manifest, {r['accounts']} accounts match their ledger totals, "
        f"verify_ledger clean; {r['seconds']}s"
    )


@click.command()
@click.option(
    "--keep", default=2, show_default=True, help="base backups to keep (older ones and their WAL are removed)"
)
@click.pass_context
def basebackup(ctx: click.Context, keep: int) -> None:
    """Take a verified base backup of the embedded cluster (for keen-db pitr)."""
    s: config.Settings = ctx.obj
    _ensure(s)
    try:
        dest, info = take_basebackup(s, keep)
    except (BackupError, cluster.ClusterError, psycopg.Error) as exc:
        _fail(str(exc).strip())
    click.echo(
        f"base backup {dest} verified by pg_verifybackup: {info['bytes']} bytes in {info['seconds']}s; "
        f"recovery possible to any time after {info['ended_at']}"
    )


@click.command()
@click.option("--to", "to", required=True, help="ISO 8601 time (UTC unless a zone is given) or 'latest'")
@click.option(
    "--target-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="new directory for the recovered copy (a KEEN_HOME of its own)",
)
@click.option("--port", type=int, default=None, help="port of the copy (default: a free one)")
@click.option("--stop", is_flag=True, help="stop the copy once it is verified")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON line")
@click.pass_context
def pitr(ctx: click.Context, to: str, target_dir: Path, port: int | None, stop: bool, as_json: bool) -> None:
    """Recover a copy of the embedded cluster to a point in time and verify it."""
    s: config.Settings = ctx.obj
    _ensure(s)
    try:
        report = point_in_time_recovery(
            s, parse_time(to), target_dir, port, stop, log=(lambda m: None) if as_json else click.echo
        )
    except (BackupError, cluster.ClusterError, psycopg.Error) as exc:
        _fail(str(exc).strip())
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"recovered to {report['target_time']} (last replayed commit {report['last_replayed_commit']}) "
        f"in {report['recovery_seconds']}s; verified: {report['rows']} rows, {report['accounts']} accounts, "
        f"verify_ledger clean"
    )
    if report["running"]:
        click.echo(
            f"the copy runs on port {report['port']}: KEEN_HOME={report['home']} KEEN_PORT={report['port']} "
            f"keen-db url --superuser; stop it with KEEN_HOME={report['home']} KEEN_PORT={report['port']} keen-db down"
        )
    else:
        click.echo(
            f"the copy is stopped in {report['home']} (start it with KEEN_HOME={report['home']} "
            f"KEEN_PORT={report['port']} keen-db up)"
        )


COMMANDS = [backup, restore, basebackup, pitr]
