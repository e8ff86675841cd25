"""Runs every pgTAP file in db/tests through pg_prove, each in a fresh copy of the template
(with the pgtap extension added there only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from keen_db.config import DB_DIR

from .conftest import drop_database, fresh_database

PGTAP_FILES = sorted((DB_DIR / "tests").glob("*.sql"))


@pytest.mark.parametrize("path", PGTAP_FILES, ids=[p.name for p in PGTAP_FILES])
def test_pgtap_file_passes(path: Path, settings, template_db):
    database = fresh_database(settings, template_db)
    try:
        with database.su() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgtap")
        p = conninfo_to_dict(database.superuser_url)
        env = dict(os.environ, PGPASSWORD=p.get("password", ""))
        res = subprocess.run(
            [
                "pg_prove",
                "--failures",
                "-h",
                p.get("host", "127.0.0.1"),
                "-p",
                str(p.get("port", 5432)),
                "-U",
                p.get("user", "postgres"),
                "-d",
                database.name,
                str(path),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert res.returncode == 0, f"pg_prove {path.name} failed:\n{res.stdout}\n{res.stderr}"
    finally:
        drop_database(settings, database.name)
