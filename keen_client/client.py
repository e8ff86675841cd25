"""The pooled client: a Keen holds a psycopg_pool; a Tx is one transaction on one connection,
optionally acting as one user. The area APIs (tx.users, tx.credits, ...) are defined once in
their modules (see keen_client._base) and run here synchronously, or by keen_client.aio."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from ._base import Begin, Query, Sync, no_row, one, row_factory, rows, scalar, void
from .analytics import AnalyticsApi
from .credits import CreditsApi
from .errors import AuthenticationFailed, KeenError, from_psycopg, mapped
from .sessions import SessionsApi
from .streaming import StreamingApi
from .users import UsersApi

if TYPE_CHECKING:
    from .streaming import StreamEvent

T = TypeVar("T")

POOLERS = ("pgbouncer",)


def _env(name: str, default: str, kind: Callable[[str], T]) -> Callable[[], T]:
    return lambda: kind(os.environ.get(name) or default)


def _env_pooler() -> str | None:
    value = (os.environ.get("KEEN_POOLER") or "").strip().lower()
    return value or None


@dataclass(frozen=True)
class PoolSettings:
    """Pool size and timeouts. Each field not given is read from the environment when the
    settings are made (Keen() makes them when it makes its pool), never at import."""

    min_size: int = field(default_factory=_env("KEEN_POOL_MIN_SIZE", "1", int))
    max_size: int = field(default_factory=_env("KEEN_POOL_MAX_SIZE", "10", int))
    timeout: float = field(default_factory=_env("KEEN_POOL_TIMEOUT", "30", float))  # wait for a connection
    max_lifetime: float = field(default_factory=_env("KEEN_POOL_MAX_LIFETIME", "3600", float))
    max_idle: float = field(default_factory=_env("KEEN_POOL_MAX_IDLE", "600", float))
    connect_timeout: int = field(default_factory=_env("KEEN_CONNECT_TIMEOUT", "10", int))
    statement_timeout_ms: int = field(default_factory=_env("KEEN_STATEMENT_TIMEOUT_MS", "30000", int))
    idle_in_transaction_timeout_ms: int = field(
        default_factory=_env("KEEN_IDLE_IN_TRANSACTION_TIMEOUT_MS", "60000", int)
    )
    # Checkout pings a connection that sat in the pool this long (s); 0 pings every checkout.
    check_after: float = field(default_factory=_env("KEEN_POOL_CHECK_AFTER", "1", float))
    # "pgbouncer" (KEEN_POOLER) when conninfo reaches PostgreSQL through PgBouncer in
    # transaction pooling: no startup `options`, no server-side prepared statements, timeouts
    # set per transaction (SET LOCAL), LISTEN on listen_conninfo (KEEN_LISTEN_URL).
    pooler: str | None = field(default_factory=_env_pooler)

    def __post_init__(self) -> None:
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ValueError(f"KEEN_POOLER must be one of {', '.join(POOLERS)} (or unset), not {self.pooler!r}")


class _HealthCheck:
    """The pool's checkout check: a connection idle in the pool for `after` seconds or more is
    pinged before use (a restart or a firewall may have cut it); one used moments ago just
    worked and skips the round trip (it cost about 11% of client throughput, keen-db bench).
    "Used" is the last checkout or the last return by a Keen transaction, whichever is later: a
    connection idle in the pool that long was checked out at least that long ago. (The pool has
    no reset callback to note returns: see Keen._make_pool.)"""

    def __init__(self, after: float):
        self.after = after
        self.returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def due(self, conn: Any) -> bool:
        last = self.returned.get(conn)
        return last is None or time.monotonic() - last >= self.after

    def check(self, conn: psycopg.Connection[Any]) -> None:
        if self.due(conn):
            ConnectionPool.check_connection(conn)
        self.back(conn)

    def back(self, conn: Any) -> None:
        self.returned[conn] = time.monotonic()


def default_url() -> str:
    """KEEN_APP_URL, else the keen_app URL of the local keen-db (what `keen-db url` prints)."""
    if os.environ.get("KEEN_APP_URL"):
        return os.environ["KEEN_APP_URL"]
    from keen_db import config

    return config.load().role_url("keen_app")


# A transaction's setup statement (ClientConfig.begin): the timeouts behind a pooler, the actor,
# or both, one SELECT each way.
SETUP_TIMEOUTS_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', %s, true),"
    " pg_catalog.set_config('idle_in_transaction_session_timeout', %s, true)"
)
SETUP_ACT_AS_SQL = "SELECT keen.act_as(p_user_id => %s)"
SETUP_TIMEOUTS_ACT_AS_SQL = SETUP_TIMEOUTS_SQL + ", keen.act_as(p_user_id => %s)"


class ClientConfig:
    """What Keen and AsyncKeen share: URLs, connection parameters, the first statement of a
    transaction. Behind a pooler the timeouts travel with each transaction (SET LOCAL through
    set_config(..., true), in the same round trip as act_as); direct, they are startup options."""

    def __init__(
        self,
        conninfo: str | None,
        settings: PoolSettings | None,
        read_conninfo: str | None,
        listen_conninfo: str | None,
    ):
        self.settings = settings or PoolSettings()
        self.conninfo = conninfo or default_url()
        self.read_conninfo = read_conninfo or os.environ.get("KEEN_READ_URL") or None
        self.listen_conninfo = listen_conninfo or os.environ.get("KEEN_LISTEN_URL") or None
        self.pooled = self.settings.pooler is not None

    def connect_kwargs(self, application_name: str = "keen_client") -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"connect_timeout": s.connect_timeout, "application_name": application_name}
        if self.pooled:
            # PgBouncer refuses `options`; and a statement psycopg prepares on one server
            # connection is not there on the next transaction's (PgBouncer 1.18 has no
            # prepared statement support): never prepare.
            kwargs["prepare_threshold"] = None
        else:
            kwargs["options"] = (
                f"-c statement_timeout={s.statement_timeout_ms}"
                f" -c idle_in_transaction_session_timeout={s.idle_in_transaction_timeout_ms}"
            )
        return kwargs

    def begin(self, user_id: UUID | str | None = None, read_only: bool = False) -> Begin:
        """How a transaction starts: BEGIN [READ ONLY], then the timeouts behind a pooler and
        act_as in one SELECT (no setup when there is neither)."""
        timeouts = [str(self.settings.statement_timeout_ms), str(self.settings.idle_in_transaction_timeout_ms)]
        setup = None
        if self.pooled and user_id is not None:
            setup = void(SETUP_TIMEOUTS_ACT_AS_SQL, [*timeouts, user_id])
        elif self.pooled:
            setup = void(SETUP_TIMEOUTS_SQL, timeouts)
        elif user_id is not None:
            setup = void(SETUP_ACT_AS_SQL, [user_id])
        return Begin("BEGIN READ ONLY" if read_only else "BEGIN", setup)

    def listen_url(self) -> str:
        """A direct connection for LISTEN (a transaction pooler cannot deliver notifications)."""
        if self.listen_conninfo:
            return self.listen_conninfo
        if self.pooled:
            raise KeenError(
                None, "LISTEN needs a direct connection: set KEEN_LISTEN_URL (or listen_conninfo) behind a pooler"
            )
        return self.conninfo


def read(cur: psycopg.Cursor[Any], q: Query[Any]) -> Any:
    """The answer of `q` from its executed cursor, in the query's shape."""
    if q.shape == "one":
        raw = cur.fetchone()
        if raw is None:
            raise no_row(q)
        return raw
    if q.shape == "all":
        return cur.fetchall()
    if q.shape == "scalar":
        row = cur.fetchone()
        return None if row is None else row[0]
    return None


ACCESS_TOKEN_SQL = "SELECT user_id FROM keen.authenticate_access_token(p_access_token => %s)"
API_KEY_SQL = "SELECT user_id FROM keen.authenticate_api_key(p_token => %s)"


class Tx:
    """One transaction on one connection. Use the area APIs (tx.credits.deduct_credits(...))
    or the typed helpers below; every database error surfaces as a keen_client.errors type.

    Keen opens it on a connection switched to autocommit for its duration (the pool's reset
    switches it back), so that psycopg sends no BEGIN of its own: the transaction's BEGIN and
    setup (keen_client._base.Begin) wait for the first call and leave with it in one pipeline,
    one round trip instead of three. `tx.conn` sends them first."""

    def __init__(self, conn: psycopg.Connection[Any], begin: Begin | None = None):
        self._conn = conn
        self._begin = begin

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection, for a statement of your own (BEGIN and act_as are sent first)."""
        self.flush()
        return self._conn

    def flush(self) -> None:
        """Send BEGIN and the setup if no call has carried them yet."""
        begin, self._begin = self._begin, None
        if begin is not None:
            with mapped(), self._conn.pipeline():
                self._start(begin)

    def end(self) -> None:
        """At the end of the block: a setup no call has sent is sent now (act_as still checks
        its actor, 28000, in an empty block); a bare BEGIN is dropped (nothing to commit)."""
        if self._begin is not None and self._begin.setup is None:
            self._begin = None
        self.flush()

    def _start(self, begin: Begin) -> None:
        self._conn.execute(begin.statement, prepare=False)
        if begin.setup is not None:
            self._conn.execute(begin.setup.sql, begin.setup.params)

    @cached_property
    def users(self) -> UsersApi[Sync]:
        return UsersApi(self)

    @cached_property
    def credits(self) -> CreditsApi[Sync]:
        return CreditsApi(self)

    @cached_property
    def sessions(self) -> SessionsApi[Sync]:
        return SessionsApi(self)

    @cached_property
    def streaming(self) -> StreamingApi[Sync]:
        return StreamingApi(self)

    @cached_property
    def analytics(self) -> AnalyticsApi[Sync]:
        return AnalyticsApi(self)

    def run(self, q: Query[T]) -> T:
        """Run one area query on this transaction's connection."""
        conn, begin, self._begin = self._conn, self._begin, None
        with mapped():
            if begin is None:
                cur = conn.cursor(row_factory=row_factory(q.row))
                cur.execute(q.sql, q.params)
            else:
                # One round trip; the first error in the pipeline (act_as's, say) is raised.
                with conn.pipeline():
                    self._start(begin)
                    cur = conn.cursor(row_factory=row_factory(q.row))
                    cur.execute(q.sql, q.params)
            with cur:
                return q.finish(read(cur, q))

    def one(self, query: str, params: Sequence[Any] | dict[str, Any] | None, cls: type[T]) -> T:
        """The single row of `query` as a `cls` (a frozen dataclass named like the columns);
        NotFound (a KeenError) when there is no row."""
        return self.run(one(query, params, cls))

    def all(self, query: str, params: Sequence[Any] | dict[str, Any] | None, cls: type[T]) -> list[T]:
        return self.run(rows(query, params, cls))

    def scalar(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        return self.run(scalar(query, params, object))

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> None:
        self.run(void(query, params))

    @property
    def actor_id(self) -> UUID | None:
        value: UUID | None = self.scalar("SELECT keen.actor_id()")
        return value


class Keen:
    """A pool of keen_app connections (and optionally a second pool for lag-tolerant reads).

    keen = Keen()                       # KEEN_APP_URL or the local keen-db
    with keen.as_user(user_id) as tx:   # one transaction acting as that user
        tx.credits.deduct_credits(user_id, Decimal("0.25"))

    read_conninfo (KEEN_READ_URL): a standby, or a multi-host URL preferring one. Keen.reading()
    and Keen.read_as_user() open read-only transactions there (on the primary pool when no read
    URL is set); docs/client.md lists the calls meant for them.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        settings: PoolSettings | None = None,
        read_conninfo: str | None = None,
        *,
        listen_conninfo: str | None = None,
        open: bool = True,
    ):
        self.config = ClientConfig(conninfo, settings, read_conninfo, listen_conninfo)
        # One checkout check for both pools: it notes connections, whichever pool holds them.
        self._health = _HealthCheck(self.config.settings.check_after)
        self.settings = self.config.settings
        self.conninfo = self.config.conninfo
        self.read_conninfo = self.config.read_conninfo
        self.pool = self._make_pool(self.conninfo, "keen", open)
        self.read_pool = self._make_pool(self.read_conninfo, "keen-read", open) if self.read_conninfo else None

    def _make_pool(self, conninfo: str, name: str, open: bool) -> ConnectionPool[Any]:
        s = self.settings
        # No `reset=`: with one, psycopg_pool hands every returned connection to a worker thread,
        # and the next checkout waits for that thread (about 150 us and a GIL hand-off per
        # transaction in a cProfile of a single-threaded deduction loop). _transaction puts its
        # connection back in shape itself, before putconn.
        return ConnectionPool(
            conninfo,
            min_size=s.min_size,
            max_size=s.max_size,
            timeout=s.timeout,
            max_lifetime=s.max_lifetime,
            max_idle=s.max_idle,
            kwargs=self.config.connect_kwargs(),
            check=self._health.check,  # a health check on checkout (see _HealthCheck)
            open=open,
            name=name,
        )

    def close(self) -> None:
        self.pool.close()
        if self.read_pool is not None:
            self.read_pool.close()

    def __enter__(self) -> Keen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(
        self, pool: ConnectionPool[Any], user_id: UUID | str | None = None, read_only: bool = False
    ) -> Iterator[Tx]:
        try:
            conn = pool.getconn()
            try:
                conn.autocommit = True  # BEGIN is Tx's, sent with the first call
                try:
                    tx = Tx(conn, self.config.begin(user_id, read_only))
                    yield tx
                    tx.end()
                    conn.commit()
                except BaseException:
                    if not conn.closed:
                        with suppress(psycopg.Error):
                            conn.rollback()
                    raise
                finally:
                    # Back to psycopg's transactions (no round trip) before the pool has it again;
                    # a broken connection is left as it is (the pool discards it).
                    if not conn.broken:
                        with suppress(psycopg.Error):
                            conn.autocommit = False
            finally:
                self._health.back(conn)
                pool.putconn(conn)
        except psycopg.Error as exc:  # commit-time failures too
            raise from_psycopg(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction with no actor (register, login, authenticate)."""
        with self._transaction(self.pool) as tx:
            yield tx

    @contextmanager
    def as_user(self, user_id: UUID | str) -> Iterator[Tx]:
        """Run a block of calls as one user, in one transaction (committed at the end)."""
        with self._transaction(self.pool, user_id) as tx:
            yield tx

    @contextmanager
    def with_api_key(self, token: str) -> Iterator[Tx]:
        """Run a block as the owner of an API key (AuthenticationFailed if it is not valid)."""
        with self.transaction() as tx:
            if tx.scalar(API_KEY_SQL, (token,)) is None:
                raise AuthenticationFailed("28000", "invalid API key")
            yield tx

    @contextmanager
    def with_access_token(self, token: str) -> Iterator[Tx]:
        """Run a block as the user of a login session's access token (AuthenticationFailed,
        28000, when it is not valid, expired, or its session or user is not live)."""
        with self.transaction() as tx:
            if tx.scalar(ACCESS_TOKEN_SQL, (token,)) is None:
                raise AuthenticationFailed("28000", "invalid access token")
            yield tx

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only transaction with no actor on the read pool (the primary without one)."""
        with self._transaction(self.read_pool or self.pool, None, read_only=True) as tx:
            yield tx

    @contextmanager
    def read_as_user(self, user_id: UUID | str) -> Iterator[Tx]:
        """A read-only transaction acting as one user on the read pool: for the lag-tolerant
        reads (analytics, event replays, credit history; docs/client.md)."""
        with self._transaction(self.read_pool or self.pool, user_id, read_only=True) as tx:
            yield tx

    def listen(self, session_id: UUID | str, after_event_id: int = 0, **options: Any) -> Iterator[StreamEvent]:
        """Follow a session's events live (see keen_client.streaming.listen)."""
        from .streaming import listen

        return listen(self, session_id, after_event_id=after_event_id, **options)
