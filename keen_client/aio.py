"""The asyncio front end: AsyncKeen on psycopg's AsyncConnectionPool, AsyncTx, the listener
as an async iterator. The area APIs are the same definitions as Keen's (keen_client._base):
on an AsyncTx each method returns an awaitable of the same dataclass.

    keen = AsyncKeen()
    await keen.open()
    async with keen.as_user(user_id) as tx:
        charge = await tx.credits.deduct_credits(user_id, Decimal("0.25"))
    async for event in keen.listen(session_id, as_user=user_id):
        ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ._base import Async, Begin, Query, no_row, row_factory
from .analytics import AnalyticsApi
from .client import ACCESS_TOKEN_SQL, API_KEY_SQL, ClientConfig, PoolSettings, _HealthCheck
from .credits import CreditsApi
from .errors import AuthenticationFailed, KeenError, from_psycopg
from .sessions import SessionsApi
from .streaming import CHANNEL, EventNotice, StreamEvent, StreamingApi
from .users import UsersApi

T = TypeVar("T")


class AsyncTx:
    """One transaction on one async connection: `await tx.credits.deduct_credits(...)`. As
    Tx: the first statement leaves with the first call, in one pipeline (one round trip)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], begin: Begin | None = None):
        self._conn = conn
        self._begin = begin

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]:
        """The connection, for a statement of your own, once `await tx.flush()` (or a call) has
        sent BEGIN and act_as: a property cannot await them."""
        if self._begin is not None:
            raise KeenError(None, "await tx.flush() before using tx.conn (BEGIN and act_as are not sent yet)")
        return self._conn

    async def flush(self) -> None:
        """Send BEGIN and the setup if no call has carried them yet."""
        begin, self._begin = self._begin, None
        if begin is not None:
            try:
                async with self._conn.pipeline():
                    await self._start(begin)
            except psycopg.Error as exc:
                raise from_psycopg(exc) from exc

    async def end(self) -> None:
        """As Tx.end: an unsent setup is sent (act_as checks its actor), a bare BEGIN dropped."""
        if self._begin is not None and self._begin.setup is None:
            self._begin = None
        await self.flush()

    async def _start(self, begin: Begin) -> None:
        await self._conn.execute(begin.statement, prepare=False)
        if begin.setup is not None:
            await self._conn.execute(begin.setup.sql, begin.setup.params)

    @cached_property
    def users(self) -> UsersApi[Async]:
        return UsersApi(self)

    @cached_property
    def credits(self) -> CreditsApi[Async]:
        return CreditsApi(self)

    @cached_property
    def sessions(self) -> SessionsApi[Async]:
        return SessionsApi(self)

    @cached_property
    def streaming(self) -> StreamingApi[Async]:
        return StreamingApi(self)

    @cached_property
    def analytics(self) -> AnalyticsApi[Async]:
        return AnalyticsApi(self)

    async def run(self, q: Query[T]) -> T:
        """Run one area query on this transaction's connection."""
        conn, begin, self._begin = self._conn, self._begin, None
        try:
            if begin is None:
                cur = conn.cursor(row_factory=row_factory(q.row))
                await cur.execute(q.sql, q.params)
            else:
                async with conn.pipeline():
                    await self._start(begin)
                    cur = conn.cursor(row_factory=row_factory(q.row))
                    await cur.execute(q.sql, q.params)
            async with cur:
                return q.finish(await _read(cur, q))
        except psycopg.Error as exc:
            raise from_psycopg(exc) from exc

    async def scalar(self, query: str, params: Any = None) -> Any:
        from ._base import scalar

        return await self.run(scalar(query, params, object))

    async def execute(self, query: str, params: Any = None) -> None:
        from ._base import void

        await self.run(void(query, params))


async def _read(cur: psycopg.AsyncCursor[Any], q: Query[Any]) -> Any:
    """The answer of `q` from its executed cursor, in the query's shape (as client.read)."""
    if q.shape == "one":
        raw = await cur.fetchone()
        if raw is None:
            raise no_row(q)
        return raw
    if q.shape == "all":
        return await cur.fetchall()
    if q.shape == "scalar":
        row = await cur.fetchone()
        return None if row is None else row[0]
    return None


class AsyncKeen:
    """Keen for asyncio: the same transactions, areas and dataclasses, on AsyncConnectionPool.
    Open it with `await keen.open()` or `async with AsyncKeen(...) as keen:`."""

    def __init__(
        self,
        conninfo: str | None = None,
        settings: PoolSettings | None = None,
        read_conninfo: str | None = None,
        *,
        listen_conninfo: str | None = None,
    ):
        self.config = ClientConfig(conninfo, settings, read_conninfo, listen_conninfo)
        # One checkout check for both pools (as Keen's).
        self._health = _HealthCheck(self.config.settings.check_after)
        self.settings = self.config.settings
        self.conninfo = self.config.conninfo
        self.read_conninfo = self.config.read_conninfo
        self.pool = self._make_pool(self.conninfo, "keen-async")
        self.read_pool = self._make_pool(self.read_conninfo, "keen-async-read") if self.read_conninfo else None

    def _make_pool(self, conninfo: str, name: str) -> AsyncConnectionPool[Any]:
        s = self.settings

        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            # As Keen's: ping only a connection that sat idle in the pool check_after or more.
            if self._health.due(conn):
                await AsyncConnectionPool.check_connection(conn)
            self._health.back(conn)

        # No `reset=` (as Keen's): with one, every returned connection waits for a pool worker
        # before the next checkout; _transaction puts it back in shape itself.
        return AsyncConnectionPool(
            conninfo,
            min_size=s.min_size,
            max_size=s.max_size,
            timeout=s.timeout,
            max_lifetime=s.max_lifetime,
            max_idle=s.max_idle,
            kwargs=self.config.connect_kwargs("keen_client"),
            check=check,
            open=False,
            name=name,
        )

    async def open(self, wait: bool = False) -> None:
        await self.pool.open(wait=wait)
        if self.read_pool is not None:
            await self.read_pool.open(wait=wait)

    async def close(self) -> None:
        await self.pool.close()
        if self.read_pool is not None:
            await self.read_pool.close()

    async def __aenter__(self) -> AsyncKeen:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _transaction(
        self, pool: AsyncConnectionPool[Any], user_id: UUID | str | None = None, read_only: bool = False
    ) -> AsyncIterator[AsyncTx]:
        try:
            conn = await pool.getconn()
            try:
                await conn.set_autocommit(True)  # BEGIN is AsyncTx's (no round trip)
                try:
                    tx = AsyncTx(conn, self.config.begin(user_id, read_only))
                    yield tx
                    await tx.end()
                    await conn.commit()
                except BaseException:
                    if not conn.closed:
                        with suppress(psycopg.Error):
                            await conn.rollback()
                    raise
                finally:
                    # Back to psycopg's transactions before the pool has it again (Keen's order).
                    if not conn.broken:
                        with suppress(psycopg.Error):
                            await conn.set_autocommit(False)
            finally:
                self._health.back(conn)
                await pool.putconn(conn)
        except psycopg.Error as exc:  # commit-time failures too
            raise from_psycopg(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTx]:
        """A transaction with no actor (register, login, authenticate)."""
        async with self._transaction(self.pool) as tx:
            yield tx

    @asynccontextmanager
    async def as_user(self, user_id: UUID | str) -> AsyncIterator[AsyncTx]:
        """A block of calls as one user, in one transaction (committed at the end)."""
        async with self._transaction(self.pool, user_id) as tx:
            yield tx

    @asynccontextmanager
    async def with_api_key(self, token: str) -> AsyncIterator[AsyncTx]:
        """A block as the owner of an API key (AuthenticationFailed if it is not valid)."""
        async with self.transaction() as tx:
            if await tx.scalar(API_KEY_SQL, (token,)) is None:
                raise AuthenticationFailed("28000", "invalid API key")
            yield tx

    @asynccontextmanager
    async def with_access_token(self, token: str) -> AsyncIterator[AsyncTx]:
        """A block as the user of a login session's access token (AuthenticationFailed)."""
        async with self.transaction() as tx:
            if await tx.scalar(ACCESS_TOKEN_SQL, (token,)) is None:
                raise AuthenticationFailed("28000", "invalid access token")
            yield tx

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncTx]:
        """A read-only transaction with no actor on the read pool (the primary without one)."""
        async with self._transaction(self.read_pool or self.pool, None, read_only=True) as tx:
            yield tx

    @asynccontextmanager
    async def read_as_user(self, user_id: UUID | str) -> AsyncIterator[AsyncTx]:
        """A read-only transaction as one user on the read pool (docs/client.md: which calls)."""
        async with self._transaction(self.read_pool or self.pool, user_id, read_only=True) as tx:
            yield tx

    def listen(
        self,
        session_id: UUID | str,
        after_event_id: int = 0,
        *,
        as_user: UUID | str | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        max_events: int | None = None,
        batch_size: int = 500,
        poll_interval: float = 5.0,
        reconnect_delay: float = 0.2,
        max_reconnects: int | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Follow one session's events live, as keen_client.streaming.listen does (same
        options, same guarantees: each event once, oldest first, resumed after a reconnect)."""
        return _alisten(
            self,
            session_id,
            after_event_id,
            as_user=as_user,
            timeout=timeout,
            idle_timeout=idle_timeout,
            max_events=max_events,
            batch_size=batch_size,
            poll_interval=poll_interval,
            reconnect_delay=reconnect_delay,
            max_reconnects=max_reconnects,
        )


async def _fetch(
    conn: psycopg.AsyncConnection[Any], session_id: UUID | str, after: int, limit: int, as_user: UUID | str | None
) -> list[StreamEvent]:
    """One short transaction: act as the user, read the events after `after`."""
    async with conn.transaction():
        tx = AsyncTx(conn)
        if as_user is not None:
            await tx.execute("SELECT keen.act_as(p_user_id => %s)", (as_user,))
        return await tx.streaming.events_since(session_id, after, limit)


def _dropped(exc: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    cause = exc.__cause__ if isinstance(exc, KeenError) else exc
    return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError)) and (
        conn is None or conn.closed or conn.broken
    )


async def _alisten(
    keen: AsyncKeen,
    session_id: UUID | str,
    after_event_id: int,
    *,
    as_user: UUID | str | None,
    timeout: float | None,
    idle_timeout: float | None,
    max_events: int | None,
    batch_size: int,
    poll_interval: float,
    reconnect_delay: float,
    max_reconnects: int | None,
) -> AsyncIterator[StreamEvent]:
    started = time.monotonic()
    last_event_at = started
    last = after_event_id
    count = 0
    failures = 0
    connected = False
    target = str(session_id)

    def remaining() -> float | None:
        limits = [
            t
            for t in (
                (started + timeout) if timeout is not None else None,
                (last_event_at + idle_timeout) if idle_timeout is not None else None,
            )
            if t is not None
        ]
        return None if not limits else max(0.0, min(limits) - time.monotonic())

    while True:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                keen.config.listen_url(),
                autocommit=True,
                connect_timeout=keen.settings.connect_timeout,
                application_name="keen_listener",
            )
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            connected = True
            failures = 0
            while True:
                # Catch up first: events committed before LISTEN, or while reconnecting.
                batch = await _fetch(conn, session_id, last, batch_size, as_user)
                for event in batch:
                    last = event.event_id
                    last_event_at = time.monotonic()
                    count += 1
                    yield event
                    if max_events is not None and count >= max_events:
                        return
                if len(batch) == batch_size:
                    continue
                left = remaining()
                if left is not None and left <= 0:
                    return
                wait = poll_interval if left is None else min(left, poll_interval)
                async for notice in conn.notifies(timeout=wait):
                    try:
                        parsed = EventNotice.parse(notice.payload)
                    except (ValueError, KeyError, TypeError):
                        continue
                    if str(parsed.session_id) == target and parsed.event_id > last:
                        break
        except (psycopg.Error, KeenError) as exc:
            if not connected or not _dropped(exc, conn):
                raise  # a first connection that fails (bad URL, password) is not a drop
            failures += 1
            if max_reconnects is not None and failures > max_reconnects:
                raise
            left = remaining()
            if left is not None and left <= 0:
                return
            delay = min(reconnect_delay * (2 ** (failures - 1)), 5.0)
            await asyncio.sleep(delay if left is None else min(delay, left))
        finally:
            if conn is not None and not conn.closed:
                await conn.close()
