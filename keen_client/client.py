"""The pooled client: a Keen holds a psycopg_pool; a Tx is one transaction on one connection,
optionally acting as one user. Area APIs (tx.users, tx.credits, ...) live in their modules."""

from __future__ import annotations

import importlib
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from .errors import AuthenticationFailed, from_psycopg, mapped

T = TypeVar("T")

# tx.<name> -> the API class of that area's module.
AREAS = {
    "users": "keen_client.users:UsersApi",
    "credits": "keen_client.credits:CreditsApi",
    "sessions": "keen_client.sessions:SessionsApi",
    "streaming": "keen_client.streaming:StreamingApi",
    "analytics": "keen_client.analytics:AnalyticsApi",
}


@dataclass(frozen=True)
class PoolSettings:
    """Pool size and timeouts; each from the environment unless given."""

    min_size: int = int(os.environ.get("KEEN_POOL_MIN_SIZE", "1"))
    max_size: int = int(os.environ.get("KEEN_POOL_MAX_SIZE", "10"))
    timeout: float = float(os.environ.get("KEEN_POOL_TIMEOUT", "30"))  # wait for a connection
    max_lifetime: float = float(os.environ.get("KEEN_POOL_MAX_LIFETIME", "3600"))
    max_idle: float = float(os.environ.get("KEEN_POOL_MAX_IDLE", "600"))
    connect_timeout: int = int(os.environ.get("KEEN_CONNECT_TIMEOUT", "10"))
    statement_timeout_ms: int = int(os.environ.get("KEEN_STATEMENT_TIMEOUT_MS", "30000"))
    # Checkout pings a connection that sat in the pool this long (s); 0 pings every checkout.
    check_after: float = float(os.environ.get("KEEN_POOL_CHECK_AFTER", "1"))


class _HealthCheck:
    """The pool's checkout check: a connection idle in the pool for `after` seconds or more is
    pinged before use (a restart or a firewall may have cut it); one returned moments ago just
    worked and skips the round trip (it cost about 11% of client throughput, keen-db bench)."""

    def __init__(self, after: float):
        self.after = after
        self.returned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def check(self, conn: psycopg.Connection) -> None:
        last = self.returned.get(conn)
        if last is None or time.monotonic() - last >= self.after:
            ConnectionPool.check_connection(conn)

    def reset(self, conn: psycopg.Connection) -> None:
        self.returned[conn] = time.monotonic()


def default_url() -> str:
    """KEEN_APP_URL, else the keen_app URL of the local keen-db (what `keen-db url` prints)."""
    if os.environ.get("KEEN_APP_URL"):
        return os.environ["KEEN_APP_URL"]
    from keen_db import config

    return config.load().role_url("keen_app")


class Tx:
    """One transaction on one connection. Use the area APIs (tx.credits.deduct_credits(...))
    or the typed helpers below; every database error surfaces as a keen_client.errors type."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def __getattr__(self, name: str) -> Any:
        target = AREAS.get(name)
        if target is None:
            raise AttributeError(name)
        module, cls = target.split(":")
        api = getattr(importlib.import_module(module), cls)(self)
        setattr(self, name, api)
        return api

    def one(self, query: str, params: Sequence[Any] | dict | None, cls: type[T]) -> T:
        """The single row of `query` as a `cls` (a frozen dataclass named like the columns)."""
        with mapped(), self.conn.cursor(row_factory=class_row(cls)) as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        if row is None:
            raise LookupError(f"no row from {query!r}")
        return row

    def all(self, query: str, params: Sequence[Any] | dict | None, cls: type[T]) -> list[T]:
        with mapped(), self.conn.cursor(row_factory=class_row(cls)) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def scalar(self, query: str, params: Sequence[Any] | dict | None = None) -> Any:
        with mapped():
            row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def execute(self, query: str, params: Sequence[Any] | dict | None = None) -> None:
        with mapped():
            self.conn.execute(query, params)

    @property
    def actor_id(self) -> UUID | None:
        return self.scalar("SELECT keen.actor_id()")


class Keen:
    """A pool of keen_app connections.

    keen = Keen()                       # KEEN_APP_URL or the local keen-db
    with keen.as_user(user_id) as tx:   # one transaction acting as that user
        tx.credits.deduct_credits(user_id, Decimal("0.25"))
    """

    def __init__(self, conninfo: str | None = None, settings: PoolSettings | None = None, open: bool = True):
        self.settings = settings or PoolSettings()
        s = self.settings
        self.conninfo = conninfo or default_url()
        health = _HealthCheck(s.check_after)
        self.pool = ConnectionPool(
            self.conninfo,
            min_size=s.min_size,
            max_size=s.max_size,
            timeout=s.timeout,
            max_lifetime=s.max_lifetime,
            max_idle=s.max_idle,
            kwargs={
                "connect_timeout": s.connect_timeout,
                "options": f"-c statement_timeout={s.statement_timeout_ms}",
                "application_name": "keen_client",
            },
            check=health.check,  # a health check on checkout (see _HealthCheck)
            reset=health.reset,
            open=open,
            name="keen",
        )

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Keen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction with no actor (register, login, authenticate)."""
        try:
            with self.pool.connection() as conn:
                yield Tx(conn)
        except psycopg.Error as exc:  # commit-time failures too
            raise from_psycopg(exc) from exc

    @contextmanager
    def as_user(self, user_id: UUID | str) -> Iterator[Tx]:
        """Run a block of calls as one user, in one transaction (committed at the end)."""
        with self.transaction() as tx:
            tx.execute("SELECT keen.act_as(%s)", (user_id,))
            yield tx

    @contextmanager
    def with_api_key(self, token: str) -> Iterator[Tx]:
        """Run a block as the owner of an API key (AuthenticationFailed if it is not valid)."""
        with self.transaction() as tx:
            user_id = tx.scalar("SELECT user_id FROM keen.authenticate_api_key(%s)", (token,))
            if user_id is None:
                raise AuthenticationFailed("28000", "invalid API key")
            yield tx

    def listen(self, session_id: UUID | str, after_event_id: int = 0, **options: Any):
        """Follow a session's events live (see keen_client.streaming.listen)."""
        from .streaming import listen

        return listen(self, session_id, after_event_id=after_event_id, **options)
