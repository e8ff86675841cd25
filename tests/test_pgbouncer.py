"""The client through a real PgBouncer (Debian's package) in transaction pooling, in front of
the test cluster: no startup parameter PgBouncer refuses, the statement timeout still in force,
no server-side prepared statement shared between clients, LISTEN on a direct connection, and a
concurrent deduction load that all succeeds with the ledger clean (issue 14)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D

import psycopg
import pytest

from keen_client import AsyncKeen, Keen, PoolSettings
from keen_client.errors import AuthenticationFailed, InsufficientCredits, KeenError
from keen_db import cluster

from .conftest import assert_ledger_clean

pytestmark = pytest.mark.skipif(cluster.pgbouncer_bin() is None, reason="the pgbouncer package is not installed")

SERVER_POOL = 4  # fewer server connections than client threads: each is shared by many clients


@pytest.fixture(scope="module")
def bouncer(settings):
    b = cluster.start_pgbouncer(settings, pool_size=SERVER_POOL)
    yield b
    b.stop()


def pooled(bouncer, db, **kw) -> PoolSettings:
    return PoolSettings(pooler="pgbouncer", min_size=1, max_size=16, timeout=20, connect_timeout=5, **kw)


@pytest.fixture
def bkeen(bouncer, db):
    """A Keen through PgBouncer (KEEN_POOLER=pgbouncer), LISTEN on a direct URL."""
    k = Keen(bouncer.url(db.app_url), pooled(bouncer, db), listen_conninfo=db.app_url)
    yield k
    k.close()


def admin_key(db) -> str:
    """An API key of the seeded admin (an admin acts only through a credential), made by the
    superuser acting as the admin through keen's own actor helper."""
    with psycopg.connect(db.superuser_url) as conn:
        admin = conn.execute("SELECT id FROM keen.users WHERE role = 'super_admin'").fetchone()[0]
        conn.execute("SELECT keen_private.set_actor(%s)", (admin,))
        return conn.execute("SELECT token FROM keen.create_api_key('tests')").fetchone()[0]


def grant(keen: Keen, db, user_id: uuid.UUID, amount: int) -> None:
    with keen.with_api_key(admin_key(db)) as tx:
        tx.credits.add_credits(user_id, D(amount), "test purchase")


def register(keen: Keen, prefix: str = "pgb") -> uuid.UUID:
    tag = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with keen.transaction() as tx:
        return tx.users.register(f"{tag}@example.com", tag, "correct horse battery").id


def test_pgbouncer_refuses_the_options_startup_parameter_so_the_pooled_client_sends_none(bouncer, db, bkeen):
    # The failure of issue 14: the direct client's `options` (statement_timeout) is refused.
    with pytest.raises(psycopg.OperationalError, match="options"):
        psycopg.connect(bouncer.url(db.app_url), options="-c statement_timeout=1000", connect_timeout=5).close()
    assert "options" not in bkeen.config.connect_kwargs()
    with bkeen.transaction() as tx:
        assert tx.scalar("SELECT current_user") == "keen_app"


def test_the_statement_timeout_is_in_force_in_every_pooled_transaction(bouncer, db):
    k = Keen(
        bouncer.url(db.app_url),
        pooled(bouncer, db, statement_timeout_ms=250, idle_in_transaction_timeout_ms=4000),
    )
    try:
        for _ in range(SERVER_POOL * 2):  # whichever server connection the transaction lands on
            with k.transaction() as tx:
                assert tx.scalar("SHOW statement_timeout") == "250ms"
                assert tx.scalar("SHOW idle_in_transaction_session_timeout") == "4s"
        user = register(k)
        with k.as_user(user) as tx:  # the timeouts travel with act_as, in the same round trip
            assert tx.scalar("SHOW statement_timeout") == "250ms"
            assert tx.actor_id == user
        with pytest.raises(KeenError) as info:
            with k.transaction() as tx:
                tx.scalar("SELECT pg_catalog.pg_sleep(5)")
        assert info.value.sqlstate == "57014"  # canceled by statement timeout
    finally:
        k.close()


def test_no_pooled_connection_prepares_statements_behind_pgbouncer(bkeen):
    with bkeen.pool.connection() as conn:
        assert conn.prepare_threshold is None
    direct = Keen("host=127.0.0.1 dbname=x", PoolSettings(), open=False)
    assert direct.config.connect_kwargs().get("prepare_threshold", 5) is not None


def test_the_main_paths_work_through_pgbouncer(db, bkeen):
    with bkeen.transaction() as tx:
        reg = tx.users.register(
            f"main_{uuid.uuid4().hex[:8]}@example.com", f"main_{uuid.uuid4().hex[:8]}", "pw long enough"
        )
    with pytest.raises(AuthenticationFailed):
        with bkeen.transaction() as tx:
            tx.users.login(reg.email, "wrong password")
    with bkeen.transaction() as tx:
        assert tx.users.login(reg.email, "pw long enough").user_id == reg.id
    grant(bkeen, db, reg.id, 10)
    with bkeen.as_user(reg.id) as tx:
        key = tx.users.create_api_key("gateway")
        session = tx.sessions.create_session(reg.id, "s-1", "main", "vision", "/tmp")
        event_id = tx.streaming.emit_event(session.id, "note", {"n": 1})
    with bkeen.with_api_key(key.token) as tx:
        charge = tx.credits.deduct_credits(reg.id, D("0.1"), session.id, idempotency_key="pgb-1")
        assert charge.amount == D("-0.500000")
    with bkeen.as_user(reg.id) as tx:
        done = tx.sessions.complete_session(session.id, True, D("0.2"))
        assert done.execution_status == "completed" and done.keen_cost_credits == D("1.000000")
    with pytest.raises(InsufficientCredits):
        with bkeen.as_user(reg.id) as tx:
            tx.credits.deduct_credits(reg.id, D(1000))
    with bkeen.read_as_user(reg.id) as tx:  # no read URL: the read pool is the primary's
        assert tx.credits.get_balance(reg.id).current_balance == D("8.500000")
        history = tx.credits.credit_history(reg.id)
        assert [t.transaction_type for t in history][-1] == "purchase"
        assert tx.streaming.events_since(session.id)[0].event_id == event_id
    assert_ledger_clean(db)


def test_160_concurrent_deductions_over_16_threads_through_pgbouncer_all_succeed(db, bkeen):
    users = [register(bkeen, f"load{i}") for i in range(4)]
    for u in users:
        grant(bkeen, db, u, 1000)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        user = users[n % len(users)]
        try:
            with bkeen.as_user(user) as tx:
                tx.credits.deduct_credits(user, D("0.01"), idempotency_key=f"load-{n}")
                tx.credits.get_balance(user)  # a second statement on the same server connection
        except BaseException as exc:
            with lock:
                errors.append(exc)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(160)))
    assert errors == []
    with db.su() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM keen.credit_transactions WHERE idempotency_key LIKE 'load-%'"
            ).fetchone()[0]
            == 160
        )
    assert_ledger_clean(db)


def test_listen_goes_to_its_own_direct_url_behind_a_pooler(bouncer, db, bkeen):
    user = register(bkeen)
    with bkeen.as_user(user) as tx:
        session = tx.sessions.create_session(user, "s-listen", "main", "v", "/tmp")
    no_direct = Keen(bouncer.url(db.app_url), pooled(bouncer, db), open=False)
    with pytest.raises(KeenError, match="KEEN_LISTEN_URL"):
        next(no_direct.listen(session.id, as_user=user, timeout=1))

    def emit() -> None:
        for i in range(3):
            with bkeen.as_user(user) as tx:
                tx.streaming.emit_event(session.id, "note", {"i": i})

    emitter = threading.Timer(0.3, emit)
    emitter.start()
    got = list(bkeen.listen(session.id, as_user=user, max_events=3, timeout=30, poll_interval=10))
    emitter.join()
    assert [e.event_data["i"] for e in got] == [0, 1, 2]


def test_async_keen_deducts_through_pgbouncer(bouncer, db, bkeen):
    user = register(bkeen)
    grant(bkeen, db, user, 100)

    async def main() -> list[D]:
        async with AsyncKeen(bouncer.url(db.app_url), pooled(bouncer, db)) as akeen:

            async def one(n: int) -> D:
                async with akeen.as_user(user) as tx:
                    return (await tx.credits.deduct_credits(user, D("0.01"), idempotency_key=f"a-{n}")).amount

            return await asyncio.gather(*(one(n) for n in range(40)))

    assert asyncio.run(main()) == [D("-0.050000")] * 40
    assert_ledger_clean(db)
