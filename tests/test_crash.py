"""Crash safety: concurrent deductions, SIGKILL of the postmaster, restart through `keen-db up`;
every acknowledged charge survives, nothing but the in-flight ones is added, the ledger
balances. Runs in a cluster of its own (the shared one is never killed); synchronous_commit on."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from keen_db.bench import bench_uid, seed_users

from .embedded import new_cluster

USERS = 4  # few accounts, so the deductions also contend for the same account rows
THREADS = 8
ROUNDS = 4
DEDUCT = "SELECT (keen.deduct_credits(%(u)s, 0.01, NULL, 'crash test', %(key)s)).id FROM keen.act_as(%(u)s)"


@pytest.fixture(scope="module")
def embedded():
    e = new_cluster("crash")
    e.cli("up")
    with e.su() as conn:
        seed_users(conn, USERS, balance=Decimal("1000000"))
    yield e
    e.destroy()


def _deduct_until_the_server_dies(url: str, n: int, attempted: set, acked: set, lock: threading.Lock) -> None:
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError:
        return
    i = 0
    with conn:
        while True:
            key = f"crash-{uuid.uuid4()}"
            user = bench_uid(1 + (n + i) % USERS)
            i += 1
            with lock:
                attempted.add(key)
            try:
                conn.execute(DEDUCT, {"u": user, "key": key})
            except psycopg.Error:
                return  # the server went away mid-call: this key is in flight
            with lock:
                acked.add(key)


def _ledger_keys(e) -> set[str]:
    with e.su() as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT idempotency_key FROM keen.credit_transactions WHERE idempotency_key LIKE 'crash-%'"
            )
        }


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_every_acknowledged_charge_survives_a_killed_postmaster(embedded, round_):
    with embedded.su() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
    before = _ledger_keys(embedded)
    url = embedded.settings.role_url("keen_app")
    attempted: set[str] = set()
    acked: set[str] = set()
    lock = threading.Lock()
    workers = [
        threading.Thread(target=_deduct_until_the_server_dies, args=(url, n, attempted, acked, lock))
        for n in range(THREADS)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 10
    while len(acked) < 50 * (round_ + 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = embedded.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)

    embedded.cli("up")  # stale postmaster.pid, orphaned backends, crash recovery

    after = _ledger_keys(embedded) - before
    in_flight = attempted - acked
    assert acked, "the postmaster was killed before any charge was acknowledged"
    assert acked <= after, f"{len(acked - after)} acknowledged charge(s) lost"
    assert after <= attempted, "a charge nobody asked for appeared"
    assert after - acked <= in_flight and len(after - acked) <= THREADS
    with embedded.maintenance() as conn:
        bad = conn.execute("SELECT user_id, balance, ledger_sum FROM keen.verify_ledger() WHERE NOT ok").fetchall()
        assert bad == []
    with embedded.su() as conn:  # each committed deduction took exactly 0.05 credits from its account
        total = conn.execute(
            "SELECT sum(current_balance) FROM keen.credit_accounts a JOIN keen.users u "
            "ON u.id = a.user_id WHERE u.username LIKE 'bench_user_%'"
        ).fetchone()[0]
        charged = conn.execute(
            "SELECT count(*) FROM keen.credit_transactions WHERE idempotency_key LIKE 'crash-%'"
        ).fetchone()[0]
        assert total == USERS * Decimal("1000000") - charged * Decimal("0.05")


def test_the_pool_replaces_connections_a_crash_broke(embedded):
    from keen_client import Keen, PoolSettings

    keen = Keen(embedded.settings.role_url("keen_app"), PoolSettings(min_size=4, max_size=4, check_after=0.2))
    try:
        keen.pool.wait()
        user = bench_uid(1)
        with keen.as_user(user) as tx:
            tx.credits.deduct_credits(user, Decimal("0.01"))
        pid = embedded.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        embedded.cli("up")
        time.sleep(0.3)  # idle longer than check_after: every checkout is pinged first
        for _ in range(8):  # more than the pool holds: each broken connection is replaced
            with keen.as_user(user) as tx:
                tx.credits.deduct_credits(user, Decimal("0.01"))
    finally:
        keen.close()
    with embedded.maintenance() as conn:
        assert conn.execute("SELECT count(*) FROM keen.verify_ledger() WHERE NOT ok").fetchone()[0] == 0


def test_up_right_after_a_kill_restarts_every_time_even_while_the_postmaster_is_a_zombie(embedded):
    """Issue 14: `keen-db up` at once after `kill -9` (no wait for the dead postmaster to be
    reaped): a zombie or dead postmaster is not "running", so up starts the server, five times
    in a row, and acknowledged charges survive each time."""
    user = bench_uid(1)
    for n in range(5):
        with psycopg.connect(embedded.settings.role_url("keen_app"), autocommit=True) as conn:
            conn.execute(DEDUCT, {"u": user, "key": f"crash-again-{n}"})
        pid = embedded.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        embedded.cli("up")  # immediately: the killed postmaster may still be a zombie
        with embedded.su() as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM keen.credit_transactions WHERE idempotency_key LIKE 'crash-again-%'"
                ).fetchone()[0]
                == n + 1
            )
    with embedded.maintenance() as conn:
        assert conn.execute("SELECT count(*) FROM keen.verify_ledger() WHERE NOT ok").fetchone()[0] == 0


def test_a_zombie_postmaster_is_not_running(tmp_path):
    """The check up relies on: a pid file naming a zombie (killed, not yet reaped by its
    parent: here we are the parent and do not wait) is not a running server."""
    import subprocess

    from keen_db import cluster, config

    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    child = subprocess.Popen(["sleep", "60"], cwd=data)
    (data / "postmaster.pid").write_text(f"{child.pid}\n{data}\n")
    s = config.Settings(tmp_path, 1, "keen", None)
    assert not cluster.running(s)  # alive, but not a postgres postmaster
    child.kill()
    deadline = time.monotonic() + 10
    while cluster._process_state(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cluster._process_state(child.pid) == "Z"  # a zombie: its parent (us) has not reaped it
    assert not cluster.running(s)
    child.wait()
