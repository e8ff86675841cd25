"""Demo step: a backup of the demo database and its verified restore into a new database,
then the restored copy is dropped again."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from keen_db import backup, config


def run(ctx) -> None:
    ctx.step("Operations: a verified backup and restore")
    s = ctx.settings
    work = Path(tempfile.mkdtemp(prefix="keen_demo_backup_"))
    path = work / "backup"
    target = f"{ctx.database}_restored"
    try:
        manifest = backup.take_backup(ctx.superuser_url(), path)
        archive = manifest["files"][backup.ARCHIVE]
        ctx.say(
            f"[bold]keen-db backup {path}[/] took a pg_dump of {ctx.database!r} as a superuser "
            f"(row-level security hides nothing from it), the roles it needs and a manifest:"
        )
        busy = sorted(((n, c) for n, c in manifest["tables"].items() if c), key=lambda nc: -nc[1])
        ctx.table("manifest: rows per table (non-empty tables)", ["table", "rows"], busy)
        ctx.table(
            "manifest: ledger per account",
            ["user", "balance", "ledger sum", "entries"],
            [
                [u[:8] + "...", v["balance"], v["ledger_sum"], v["entries"]]
                for u, v in list(manifest["ledger"].items())[:8]
            ],
        )
        ctx.say(
            f"archive {archive['bytes']:,} bytes, SHA-256 {archive['sha256'][:16]}..., "
            f"migrations {', '.join(manifest['migrations'])}"
        )

        server = config.Settings(s.home, s.port, ctx.database, None if s.embedded else ctx.superuser_url())
        backup.drop_database(server, target)  # a leftover of an interrupted demo
        summary = backup.restore_backup(server, path, target)
        ctx.say(
            f"[bold]keen-db restore {path} --target-db {target}[/] checked the SHA-256 first, "
            f"restored, then compared the new database with the manifest:"
        )
        ctx.table(
            "verified restore",
            ["check", "result"],
            [
                ["tables with the same row counts", summary["tables"]],
                ["rows", summary["rows"]],
                ["accounts with the same balance and ledger sum", summary["accounts"]],
                ["keen.verify_ledger() as keen_maintenance", "clean"],
                ["seconds", summary["seconds"]],
            ],
        )
        archive_path = path / backup.ARCHIVE
        data = bytearray(archive_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive_path.write_bytes(bytes(data))
        try:
            backup.restore_backup(server, path, f"{target}_corrupt")
        except backup.BackupError as exc:
            ctx.say(f"A corrupted copy of the archive is refused before anything is created:\n[red]{exc}")
    finally:
        backup.drop_database(
            config.Settings(s.home, s.port, ctx.database, None if s.embedded else ctx.superuser_url()), target
        )
        shutil.rmtree(work, ignore_errors=True)
    ctx.say(
        f"The restored copy {target!r} is dropped again. Point-in-time recovery of the whole cluster: "
        "[bold]keen-db basebackup[/] then [bold]keen-db pitr --to TIME --target-dir DIR[/] (docs/operations.md)."
    )
