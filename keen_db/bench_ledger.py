"""The ledger's own bench figures (issue 17): server CPU and WAL per deduction beside the TPS
ratios, with checkpoints held out of the measured rounds.

* Checkpoints: for the rounds, max_wal_size and checkpoint_timeout are raised (ALTER SYSTEM,
  reloaded) and one CHECKPOINT runs before the first round, so no checkpoint (its I/O, and the
  full-page images after it) falls inside a measured round; the previous values are put back
  afterwards, also when the run fails.
* CPU per transaction: the user+system CPU of the pgbench backends (read from /proc while the
  run lasts: the cluster is local), divided by the transactions pgbench made.
* WAL per transaction: pg_stat_statements' wal_bytes of the run's statements in that database
  (nested work included; the commit record, some 50 bytes, is not), divided likewise.
Measured on tpcb-like and on deduct_credits over 10,000 users, 8 clients, in one extra round.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HELD = {"max_wal_size": "16GB", "checkpoint_timeout": "1h"}


def _auto_conf_values(conn: psycopg.Connection) -> dict[str, str | None]:
    """The values ALTER SYSTEM set for our settings (None: not set there)."""
    rows = conn.execute(
        "SELECT name, setting FROM pg_catalog.pg_file_settings"
        " WHERE name = ANY(%s) AND sourcefile LIKE '%%postgresql.auto.conf' AND applied IS NOT NULL",
        (list(HELD),),
    ).fetchall()
    found: dict[str, str] = {str(name): str(value) for name, value in rows}
    return {name: found.get(name) for name in HELD}


@contextmanager
def checkpoints_held(b: Any) -> Iterator[None]:
    """Raise max_wal_size and checkpoint_timeout for the block; restore what was there."""
    with psycopg.connect(b.s.superuser_url("postgres"), autocommit=True) as conn:
        before = _auto_conf_values(conn)
        for name, value in HELD.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    b.results["checkpoints_held"] = HELD
    try:
        yield
    finally:
        with psycopg.connect(b.s.superuser_url("postgres"), autocommit=True) as conn:
            for key, old in before.items():
                if old is None:
                    conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(key)))
                else:
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(old)))
            conn.execute("SELECT pg_catalog.pg_reload_conf()")


def before_round(b: Any) -> None:
    """A checkpoint now, so that none is due during the rounds that follow."""
    with psycopg.connect(b.s.superuser_url("postgres"), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _backend_cpu(b: Any, database: str, seen: dict[int, float]) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(b.s.superuser_url("postgres"), autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = %s AND application_name = 'pgbench'",
                (database,),
            )
        ]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen[pid] = max(seen.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / ticks)


def _wal_bytes(b: Any, database: str) -> int:
    with psycopg.connect(b.s.superuser_url(database), autocommit=True) as conn:
        row = conn.execute(
            "SELECT COALESCE(pg_catalog.sum(wal_bytes), 0) FROM public.pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"
            " AND toplevel"
        ).fetchone()
        return int(row[0]) if row else 0


def _reset_statements(b: Any, database: str) -> None:
    with psycopg.connect(b.s.superuser_url(database), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(
            "SELECT public.pg_stat_statements_reset(0, (SELECT oid FROM pg_catalog.pg_database"
            " WHERE datname = current_database()), 0)"
        )


def _measured(b: Any, conninfo: str, database: str, args: list[str]) -> tuple[float, float, float]:
    """(tps, server CPU us per transaction, WAL bytes per transaction) of one pgbench run."""
    _reset_statements(b, database)
    seen: dict[int, float] = {}
    done = threading.Event()
    result: list[float] = []

    def run() -> None:
        try:
            result.append(b._pgbench(conninfo, args, b.cfg.seconds, b.cfg.clients))
        finally:
            done.set()

    t0 = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    while not done.wait(0.2):
        _backend_cpu(b, database, seen)
    worker.join()
    elapsed = time.monotonic() - t0
    if not result:
        raise RuntimeError("pgbench failed")
    tps = result[0]
    transactions = max(tps * min(elapsed, max(1, round(b.cfg.seconds))), 1.0)
    return tps, sum(seen.values()) * 1e6 / transactions, _wal_bytes(b, database) / transactions


def measure(b: Any) -> None:
    """CPU and WAL per transaction of tpcb-like and of deduct_credits (10,000 users, 8 clients)."""
    if not b.has_function("keen.deduct_credits(uuid,numeric,uuid,text,text)"):
        return
    users = ["-D", f"users={b.cfg.users}"]
    tpcb = _measured(b, b.s.superuser_url(b.tpcb_db), b.tpcb_db, ["-b", "tpcb-like"])
    deduct = _measured(b, b.s.role_url("keen_app", b.db), b.db, ["-f", b.script("deduct"), *users])
    r = b.results
    r["tpcb_cpu_us_per_tx"], r["tpcb_wal_bytes_per_tx"] = round(tpcb[1], 1), round(tpcb[2])
    r["deduct_cpu_us_per_tx"], r["deduct_wal_bytes_per_tx"] = round(deduct[1], 1), round(deduct[2])
    r["cpu_profile_tps"] = {"tpcb": round(tpcb[0], 1), "deduct": round(deduct[0], 1)}
