"""AsyncKeen: the same area definitions and dataclasses as Keen on psycopg's async pool,
`async with` transactions that commit or roll back as one, the contract's exceptions, and the
listener as an async iterator that resumes after its connection is cut (issue 14)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal as D

import psycopg
import pytest

from keen_client import AsyncKeen, PoolSettings
from keen_client.credits import CreditTransaction
from keen_client.errors import AuthenticationFailed, InsufficientCredits, KeenError, NotFound

from .conftest import assert_ledger_clean
from .test_pgbouncer import grant, register


def run(coro):
    return asyncio.run(coro)


def settings() -> PoolSettings:
    return PoolSettings(min_size=1, max_size=8, timeout=20)


def test_async_transactions_return_the_same_dataclasses_and_commit_at_the_end(db, keen):
    user = register(keen)
    grant(keen, db, user, 10)

    async def main() -> CreditTransaction:
        async with AsyncKeen(db.app_url, settings()) as akeen:
            async with akeen.as_user(user) as tx:
                assert await tx.scalar("SELECT keen.actor_id()") == user
                charge = await tx.credits.deduct_credits(user, D("0.1"), idempotency_key="async-1")
            async with akeen.as_user(user) as tx:
                balance = await tx.credits.get_balance(user)
                assert balance.current_balance == D("9.500000")
            return charge

    charge = run(main())
    assert isinstance(charge, CreditTransaction) and charge.amount == D("-0.500000")
    assert_ledger_clean(db)


def test_an_async_block_that_fails_rolls_back_and_raises_the_contract_exception(db, keen):
    user = register(keen)
    grant(keen, db, user, 1)

    async def main() -> None:
        async with AsyncKeen(db.app_url, settings()) as akeen:
            with pytest.raises(InsufficientCredits):
                async with akeen.as_user(user) as tx:
                    await tx.credits.deduct_credits(user, D(1))
            with pytest.raises(ZeroDivisionError):
                async with akeen.as_user(user) as tx:
                    await tx.credits.deduct_credits(user, D("0.01"))
                    raise ZeroDivisionError
            with pytest.raises(AuthenticationFailed):
                async with akeen.with_api_key("keen_not_a_key"):
                    pass
            with pytest.raises(NotFound):
                async with akeen.as_user(user) as tx:
                    await tx.sessions.get_session(uuid.uuid4())

    run(main())
    with db.su() as conn:
        assert (
            conn.execute("SELECT count(*) FROM keen.credit_transactions WHERE user_id = %s", (user,)).fetchone()[0] == 1
        )  # only the purchase
    assert_ledger_clean(db)


def test_concurrent_async_deductions_on_one_loop_all_succeed(db, keen):
    users = [register(keen) for _ in range(2)]
    for u in users:
        grant(keen, db, u, 100)

    async def main() -> int:
        async with AsyncKeen(db.app_url, settings()) as akeen:

            async def one(n: int) -> None:
                u = users[n % 2]
                async with akeen.as_user(u) as tx:
                    await tx.credits.deduct_credits(u, D("0.01"), idempotency_key=f"c-{n}")

            await asyncio.gather(*(one(n) for n in range(80)))
            async with akeen.as_user(users[0]) as tx:
                return len(await tx.credits.credit_history(users[0], 200))

    assert run(main()) == 41  # 40 usage rows and the purchase
    assert_ledger_clean(db)


def test_the_async_listener_resumes_after_its_connection_is_cut(db, keen):
    user = register(keen)
    with keen.as_user(user) as tx:
        session = tx.sessions.create_session(user, "s-async", "main", "v", "/tmp")

    def emit(i: int) -> None:
        with keen.as_user(user) as tx:
            tx.streaming.emit_event(session.id, "note", {"i": i})

    async def main() -> list[int]:
        got: list[int] = []
        async with AsyncKeen(db.app_url, settings()) as akeen:
            emit(0)
            stream = akeen.listen(session.id, as_user=user, timeout=60, poll_interval=1, reconnect_delay=0.05)
            async for event in stream:
                got.append(event.event_data["i"])
                if len(got) == 1:
                    with psycopg.connect(db.superuser_url, autocommit=True) as su:  # cut the listener
                        su.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'keen_listener' AND datname = current_database()"
                        )
                    await asyncio.to_thread(emit, 1)
                    await asyncio.to_thread(emit, 2)
                if len(got) == 3:
                    break
        return got

    assert run(main()) == [0, 1, 2]  # nothing lost, nothing repeated across the reconnect


def test_an_async_tx_conn_is_given_once_begin_and_act_as_are_sent(db, keen):
    user = register(keen)

    async def main() -> None:
        async with AsyncKeen(db.app_url, settings()) as akeen:
            async with akeen.as_user(user) as tx:
                with pytest.raises(KeenError):
                    tx.conn  # noqa: B018 - act_as is not sent yet
                await tx.flush()
                cur = await tx.conn.execute("SELECT keen.actor_id()")
                assert await cur.fetchone() == (user,)
            with pytest.raises(AuthenticationFailed):
                async with akeen.as_user(uuid.uuid4()):
                    pass  # an empty block still checks its actor
            async with akeen.pool.connection() as conn:
                assert conn.autocommit is False  # back to psycopg's transactions

    run(main())
