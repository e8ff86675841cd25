"""Streaming: live connections, the session event stream, its partitions, and the listener.

The rules live in db/functions/streaming.sql; this module calls them and maps the rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ._base import Area, M, Query, one, query, rows, scalar, void
from .errors import KeenError

if TYPE_CHECKING:
    from .client import Keen

CHANNEL = "keen_events"


@dataclass(frozen=True)
class WebsocketConnection:
    id: UUID
    user_id: UUID
    session_id: UUID | None
    connection_id: str
    client_ip: IPv4Address | IPv6Address
    user_agent: str | None
    client_type: str
    connected_at: datetime
    last_ping_at: datetime
    disconnected_at: datetime | None
    subscribed_events: list[str]
    admin_connection: bool
    can_view_all_sessions: bool
    connection_status: str
    session_filters: list[UUID] | None = None  # the session an admin follows in another tenant
    last_delivered_event_id: int = 0  # the connection's cursor (keen.next_events)


@dataclass(frozen=True)
class StreamEvent:
    event_id: int
    session_id: UUID
    event_type: str
    event_data: Any
    event_source: str
    created_at: datetime


@dataclass(frozen=True)
class EventPartition:
    partition_name: str
    range_start: datetime
    range_end: datetime
    rows_moved: int | None = None  # set by prepare_event_partitions only


@dataclass(frozen=True)
class SystemMetrics:
    id: UUID
    metric_timestamp: datetime
    active_users: int
    active_sessions: int
    active_websocket_connections: int
    sessions_in_explore: int
    sessions_in_plan: int
    sessions_in_found: int
    sessions_in_summon: int
    sessions_in_complete: int
    avg_response_time_ms: Decimal | None
    error_rate: Decimal | None
    database_connections: int | None
    credits_purchased_today: Decimal
    credits_consumed_today: Decimal
    created_at: datetime


@dataclass(frozen=True)
class Pruned:
    metrics_deleted: int
    connections_deleted: int


@dataclass(frozen=True)
class MaintenanceJob:
    job_name: str
    cron_schedule: str
    period: timedelta
    registered: bool
    scheduled_at: datetime | None
    last_succeeded_at: datetime | None
    last_result: str | None
    runs: int
    slot_start: datetime
    due: bool
    overdue: bool


@dataclass(frozen=True)
class EventNotice:
    """The payload of a keen_events notification: ids only, never the data."""

    event_id: int
    session_id: UUID
    user_id: UUID
    event_type: str

    @classmethod
    def parse(cls, payload: str) -> EventNotice:
        d = json.loads(payload)
        return cls(int(d["event_id"]), UUID(d["session_id"]), UUID(d["user_id"]), d["event_type"])


# Columns named explicitly: a column added to a table later must not break class_row.
CONNECTION = """id, user_id, session_id, connection_id, client_ip, user_agent, client_type, connected_at,
        last_ping_at, disconnected_at, subscribed_events, admin_connection, can_view_all_sessions,
        connection_status, session_filters, last_delivered_event_id"""
EVENT = "event_id, session_id, event_type, event_data, event_source, created_at"

REGISTER_SQL = (
    "SELECT "
    + CONNECTION
    + """ FROM keen.register_connection(p_connection_id => %s,
        p_client_ip => %s, p_client_type => %s, p_session_id => %s, p_user_agent => %s,
        p_subscribed_events => %s)"""
)
PING_SQL = "SELECT keen.ping_connection(p_connection_id => %s)"
CLOSE_SQL = "SELECT keen.close_connection(p_connection_id => %s)"
REAP_SQL = "SELECT keen.reap_stale_connections(p_older_than => %s)"
EMIT_SQL = """SELECT keen.emit_event(p_session_id => %s, p_event_type => %s, p_event_data => %s,
        p_event_source => %s)"""
EVENTS_SINCE_SQL = (
    "SELECT " + EVENT + " FROM keen.events_since(p_session_id => %s, p_after_event_id => %s, p_limit => %s)"
)
PREPARE_PARTITIONS_SQL = """SELECT partition_name, range_start, range_end, rows_moved
      FROM keen.prepare_event_partitions(p_months_ahead => %s, p_from => COALESCE(%s, pg_catalog.now()))"""
DROP_PARTITIONS_SQL = """SELECT partition_name, range_start, range_end
      FROM keen.drop_old_event_partitions(p_keep => %s)"""
EVENTS_FOR_USER_SQL = "SELECT " + EVENT + " FROM keen.events_for_user(p_after_event_id => %s, p_limit => %s)"
NEXT_EVENTS_SQL = "SELECT " + EVENT + " FROM keen.next_events(p_connection_id => %s, p_limit => %s)"
METRICS = """id, metric_timestamp, active_users, active_sessions, active_websocket_connections,
        sessions_in_explore, sessions_in_plan, sessions_in_found, sessions_in_summon, sessions_in_complete,
        avg_response_time_ms, error_rate, database_connections, credits_purchased_today,
        credits_consumed_today, created_at"""
SNAPSHOT_SQL = "SELECT " + METRICS + " FROM keen.snapshot_system_metrics()"
PRUNE_SQL = """SELECT metrics_deleted, connections_deleted
      FROM keen.prune_streaming_history(p_metrics_keep => %s, p_connections_keep => %s)"""
RUN_JOB_SQL = "SELECT keen.run_maintenance_job(p_job_name => %s)"
JOB_STATUS_SQL = """SELECT job_name, cron_schedule, period, registered, scheduled_at, last_succeeded_at,
        last_result, runs, slot_start, due, overdue FROM keen.maintenance_job_status(p_grace => %s)"""


class StreamingApi(Area[M]):
    """tx.streaming: each method is one call of the SQL API in the Tx's transaction."""

    @query
    def register_connection(
        self,
        connection_id: str,
        client_ip: str,
        client_type: str,
        session_id: UUID | str | None = None,
        user_agent: str | None = None,
        subscribed_events: Sequence[str] = (),
    ) -> Query[WebsocketConnection]:
        params = (connection_id, client_ip, client_type, session_id, user_agent, list(subscribed_events))
        return one(REGISTER_SQL, params, WebsocketConnection)

    @query
    def ping_connection(self, connection_id: str) -> Query[None]:
        return void(PING_SQL, (connection_id,))

    @query
    def close_connection(self, connection_id: str) -> Query[None]:
        return void(CLOSE_SQL, (connection_id,))

    @query
    def reap_stale_connections(self, older_than: timedelta) -> Query[int]:
        return scalar(REAP_SQL, (older_than,), int)

    @query
    def emit_event(
        self, session_id: UUID | str, event_type: str, event_data: Any = None, event_source: str = "agent"
    ) -> Query[int]:
        data = Jsonb({} if event_data is None else event_data)
        return scalar(EMIT_SQL, (session_id, event_type, data, event_source), int)

    @query
    def events_since(
        self, session_id: UUID | str, after_event_id: int = 0, limit: int = 1000
    ) -> Query[list[StreamEvent]]:
        """A session's events after an id, oldest first (a replay: a read pool may serve it)."""
        return rows(EVENTS_SINCE_SQL, (session_id, after_event_id, limit), StreamEvent)

    @query
    def prepare_event_partitions(
        self, months_ahead: int = 2, from_: datetime | None = None
    ) -> Query[list[EventPartition]]:
        return rows(PREPARE_PARTITIONS_SQL, (months_ahead, from_), EventPartition)

    @query
    def drop_old_event_partitions(self, keep: timedelta) -> Query[list[EventPartition]]:
        return rows(DROP_PARTITIONS_SQL, (keep,), EventPartition)

    @query
    def events_for_user(self, after_event_id: int = 0, limit: int = 1000) -> Query[list[StreamEvent]]:
        """Every session's events of the actor (every tenant's for an admin) after an id."""
        return rows(EVENTS_FOR_USER_SQL, (after_event_id, limit), StreamEvent)

    @query
    def next_events(self, connection_id: str, limit: int = 100) -> Query[list[StreamEvent]]:
        """The connection's next events; moves its cursor in this transaction (at-least-once)."""
        return rows(NEXT_EVENTS_SQL, (connection_id, limit), StreamEvent)

    @query
    def snapshot_system_metrics(self) -> Query[SystemMetrics]:
        return one(SNAPSHOT_SQL, (), SystemMetrics)

    @query
    def prune_streaming_history(
        self, metrics_keep: timedelta = timedelta(days=90), connections_keep: timedelta = timedelta(days=7)
    ) -> Query[Pruned]:
        return one(PRUNE_SQL, (metrics_keep, connections_keep), Pruned)

    @query
    def run_maintenance_job(self, job_name: str) -> Query[str]:
        return scalar(RUN_JOB_SQL, (job_name,), str)

    @query
    def maintenance_job_status(self, grace: timedelta = timedelta(minutes=2)) -> Query[list[MaintenanceJob]]:
        return rows(JOB_STATUS_SQL, (grace,), MaintenanceJob)


def _fetch(
    conn: psycopg.Connection,
    session_id: UUID | str | None,
    after: int,
    limit: int,
    as_user: UUID | str | None,
    connection_id: str | None = None,
    api_key: str | None = None,
) -> list[StreamEvent]:
    """One short transaction: act as the user (or as the owner of `api_key`: the admin's
    way, since act_as refuses an admin), read the events after `after` (a session's, the
    user's feed, or the connection's cursor, which this transaction moves and commits)."""
    from .client import API_KEY_SQL, Tx

    with conn.transaction():
        tx = Tx(conn)
        if api_key is not None:
            tx.execute(API_KEY_SQL, (api_key,))
        elif as_user is not None:
            tx.execute("SELECT keen.act_as(%s)", (as_user,))
        if connection_id is not None:
            return tx.streaming.next_events(connection_id, min(limit, 1000))
        if session_id is None:
            return tx.streaming.events_for_user(after, limit)
        return tx.streaming.events_since(session_id, after, limit)


def _dropped(exc: BaseException, conn: psycopg.Connection | None) -> bool:
    """True when `exc` means the connection was lost (and a reconnect may resume)."""
    cause = exc.__cause__ if isinstance(exc, KeenError) else exc
    return isinstance(cause, (psycopg.OperationalError, psycopg.InterfaceError)) and (
        conn is None or conn.closed or conn.broken
    )


def listen(
    keen: Keen,
    session_id: UUID | str | None,
    after_event_id: int = 0,
    *,
    connection_id: str | None = None,
    as_user: UUID | str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    max_events: int | None = None,
    batch_size: int = 500,
    poll_interval: float = 5.0,
    reconnect_delay: float = 0.2,
    max_reconnects: int | None = None,
) -> Iterator[StreamEvent]:
    """Follow one session's events live: yields StreamEvent, oldest first, each exactly once.

    A dedicated autocommit connection (not the pool: keen's listen URL, KEEN_LISTEN_URL, which
    must be direct behind a transaction pooler) LISTENs on keen_events;
    every event is read through keen.events_since in a short transaction acting as `as_user`
    (None: no actor, for a maintenance-role Keen), or as the owner of `api_key` (each read is one
    request of the key; how an admin listens), so row-level security guards the stream:
    another tenant's session raises NotFound. After LISTEN it first catches up, then waits for
    notifications of this session (and reads anyway every `poll_interval` seconds).

    If the connection drops once it was up, it reconnects (after `reconnect_delay`, doubling up to 5 s;
    at most `max_reconnects` times in a row, None: forever) and resumes after the last event
    it yielded: nothing is lost or repeated.

    Stops after `max_events` events, after `timeout` seconds in all, after `idle_timeout`
    seconds without a new event, or when the generator is closed (its connection closes too).

    session_id None: the user's feed (keen.events_for_user: every session of `as_user`, every
    tenant's for an admin); `connection_id`: that connection's server-side cursor
    (keen.next_events, its session and subscribed types): each read is committed before its
    events are yielded (no lock is held while the caller works), and after a reconnect the
    cursor resumes where the database says. listen_feed and listen_connection name the two.
    """
    started = time.monotonic()
    last_event_at = started
    last = after_event_id
    count = 0
    failures = 0
    connected = False
    target = None if session_id is None or connection_id is not None else str(session_id)

    def remaining() -> float | None:
        now = time.monotonic()
        limits = [
            t
            for t in (
                (started + timeout) if timeout is not None else None,
                (last_event_at + idle_timeout) if idle_timeout is not None else None,
            )
            if t is not None
        ]
        return None if not limits else max(0.0, min(limits) - now)

    while True:
        conn: psycopg.Connection | None = None
        try:
            conn = psycopg.connect(
                keen.config.listen_url(),
                autocommit=True,
                connect_timeout=keen.settings.connect_timeout,
                application_name="keen_listener",
            )
            with conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                connected = True
                failures = 0
                while True:
                    # Catch up first: events committed before LISTEN, or while reconnecting.
                    batch = _fetch(conn, session_id, last, batch_size, as_user, connection_id, api_key)
                    for event in batch:
                        last = event.event_id
                        last_event_at = time.monotonic()
                        count += 1
                        yield event
                        if max_events is not None and count >= max_events:
                            return
                    if len(batch) == (batch_size if connection_id is None else min(batch_size, 1000)):
                        continue
                    left = remaining()
                    if left is not None and left <= 0:
                        return
                    wait = poll_interval if left is None else min(left, poll_interval)
                    for notice in conn.notifies(timeout=wait):
                        try:
                            parsed = EventNotice.parse(notice.payload)
                        except (ValueError, KeyError, TypeError):
                            continue
                        if (target is None or str(parsed.session_id) == target) and parsed.event_id > last:
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
            time.sleep(delay if left is None else min(delay, left))
        finally:
            if conn is not None and not conn.closed:
                conn.close()


def listen_feed(keen: Keen, after_event_id: int = 0, **options: Any) -> Iterator[StreamEvent]:
    """Follow the user's feed live (keen.events_for_user): every session of `as_user`, oldest
    first, each once; the options of listen."""
    return listen(keen, None, after_event_id, **options)


def listen_connection(keen: Keen, connection_id: str, **options: Any) -> Iterator[StreamEvent]:
    """Follow a registered connection's server-side cursor live (keen.next_events): its
    session (or its owner's sessions), its subscribed types; the options of listen."""
    return listen(keen, None, 0, connection_id=connection_id, **options)
