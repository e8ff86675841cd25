"""Streaming: the event stream (notifications carry ids only, replay under RLS, the listener
that survives a dropped connection), live connections, and the monthly event partitions."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from keen_client import Keen, PoolSettings
from keen_client.errors import InvalidInput, KeenError, NotFound, PermissionDenied
from keen_client.streaming import EventNotice, StreamEvent
from keen_db import doctor

from .conftest import assert_ledger_clean

WAIT = 60  # seconds a helper thread may take before the test gives up (never asserted on)


def new_session(db, keen: Keen, user_id, name: str | None = None) -> uuid.UUID:
    """A root session of the user, through keen.create_session."""
    name = name or f"s-{uuid.uuid4().hex[:8]}"
    with keen.as_user(user_id) as tx:
        return tx.scalar("SELECT id FROM keen.create_session(%s, %s, 'main', 'watch it', '/tmp/w')", (user_id, name))


def emit(keen: Keen, user_id, session_id, n: int, event_type: str = "progress") -> list[int]:
    ids = []
    for i in range(n):
        with keen.as_user(user_id) as tx:
            ids.append(tx.streaming.emit_event(session_id, event_type, {"step": i}))
    return ids


def listener_pids(db) -> list[int]:
    with db.su() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'keen_listener'", (db.name,)
            ).fetchall()
        ]


def terminate_listeners(db) -> int:
    with db.su() as conn:
        return len(
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'keen_listener'",
                (db.name,),
            ).fetchall()
        )


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Collector(threading.Thread):
    """Runs a listener in a thread and keeps what it yields (or the error it raised)."""

    def __init__(self, keen: Keen, session_id, **options):
        super().__init__(daemon=True)
        self.gen = keen.listen(session_id, **options)
        self.events: list[StreamEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.gen:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc

    @property
    def ids(self) -> list[int]:
        return [e.event_id for e in self.events]


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


# The stream ----------------------------------------------------------------------------------


def test_notifications_carry_the_ids_only_never_the_event_data(db, keen, alice):
    session = new_session(db, keen, alice)
    with psycopg.connect(db.app_url, autocommit=True) as raw:
        raw.execute("LISTEN keen_events")
        with keen.as_user(alice) as tx:
            event_id = tx.streaming.emit_event(session, "secret_stuff", {"api_key": "sk-top-secret", "n": 42})
        notes = list(raw.notifies(timeout=WAIT, stop_after=1))
    assert len(notes) == 1 and notes[0].channel == "keen_events"
    payload = json.loads(notes[0].payload)
    assert set(payload) == {"event_id", "session_id", "user_id", "event_type"}
    assert payload == {
        "event_id": event_id,
        "session_id": str(session),
        "user_id": str(alice),
        "event_type": "secret_stuff",
    }
    assert "sk-top-secret" not in notes[0].payload and "api_key" not in notes[0].payload
    assert EventNotice.parse(notes[0].payload).event_id == event_id


def test_a_rolled_back_emit_notifies_nobody_and_leaves_no_event(db, keen, alice):
    session = new_session(db, keen, alice)
    with psycopg.connect(db.app_url, autocommit=True) as raw:
        raw.execute("LISTEN keen_events")
        with keen.pool.connection() as conn:
            conn.execute("SELECT keen.act_as(%s)", (alice,))
            conn.execute("SELECT keen.emit_event(%s, 'never')", (session,))
            conn.rollback()
        assert list(raw.notifies(timeout=0.5)) == []
    with keen.as_user(alice) as tx:
        assert tx.streaming.events_since(session) == []


def test_emit_event_returns_increasing_ids_and_events_since_replays_oldest_first(db, keen, alice):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 5)
    assert ids == sorted(ids) and len(set(ids)) == 5
    with keen.as_user(alice) as tx:
        events = tx.streaming.events_since(session)
        assert [e.event_id for e in events] == ids
        assert [e.event_data for e in events] == [{"step": i} for i in range(5)]
        assert all(e.session_id == session and e.event_source == "agent" for e in events)
        assert [e.event_id for e in tx.streaming.events_since(session, ids[1], limit=2)] == ids[2:4]
        with pytest.raises(InvalidInput):
            tx.streaming.emit_event(session, "x", event_source="mars")


def test_listener_follows_a_session_live_in_order(db, keen, alice):
    session = new_session(db, keen, alice)
    before = emit(keen, alice, session, 2)
    collector = Collector(keen, session, after_event_id=before[0], as_user=alice, max_events=6)
    collector.start()
    wait_until(lambda: len(collector.events) == 1, "the catch-up event")
    live = emit(keen, alice, session, 5)
    collector.join(WAIT)
    assert collector.error is None
    assert collector.ids == before[1:] + live
    assert [e.event_data["step"] for e in collector.events] == [1, 0, 1, 2, 3, 4]


def test_replay_after_a_dropped_connection_loses_and_repeats_nothing(db, keen, alice):
    session = new_session(db, keen, alice)
    first = emit(keen, alice, session, 6)
    gen = keen.listen(session, as_user=alice, batch_size=2, reconnect_delay=0.05, timeout=WAIT)
    seen = [next(gen).event_id for _ in range(3)]  # mid-stream: the second batch is half read
    (pid_before,) = listener_pids(db)
    assert terminate_listeners(db) == 1
    more = emit(keen, alice, session, 4)  # emitted while the listener is cut off
    seen += [next(gen).event_id for _ in range(7)]
    wait_until(lambda: pid_before not in listener_pids(db), "the old backend to go")
    assert len(listener_pids(db)) == 1  # it reconnected: a new backend
    gen.close()
    assert seen == first + more  # nothing lost, nothing repeated
    wait_until(lambda: listener_pids(db) == [], "closing the generator to close its connection")


def test_a_listener_that_never_connected_fails_at_once_instead_of_retrying(db, keen, alice):
    session = new_session(db, keen, alice)
    wrong = Keen(make_conninfo(db.app_url, password="wrong password"), open=False)
    with pytest.raises(psycopg.OperationalError):
        next(wrong.listen(session, as_user=alice, reconnect_delay=0.01))


def test_listener_survives_repeated_drops_while_events_stream_in(db, keen, alice):
    session = new_session(db, keen, alice)
    emitted: list[int] = []
    collector = Collector(keen, session, as_user=alice, reconnect_delay=0.01, max_events=60)
    collector.start()

    def emitter():
        for i in range(60):
            with keen.as_user(alice) as tx:
                emitted.append(tx.streaming.emit_event(session, "tick", {"i": i}))
            time.sleep(0.005)

    t = threading.Thread(target=emitter)
    t.start()
    drops = 0
    for threshold in (10, 25, 40):
        wait_until(lambda threshold=threshold: len(emitted) >= threshold or not t.is_alive(), "the emitter")
        drops += terminate_listeners(db)
    t.join(WAIT)
    collector.join(WAIT)
    assert collector.error is None
    assert drops >= 1
    assert collector.ids == emitted


def test_concurrent_emitters_on_one_session_never_leave_a_gap_a_listener_skips(db, keen, alice):
    """Ids come from a sequence: without emit_event's per-session lock, an emitter holding id 10
    could commit after one holding id 11 and a listener already past 11 would never see 10."""
    session = new_session(db, keen, alice)
    emitted: list[int] = []
    lock = threading.Lock()
    collector = Collector(keen, session, as_user=alice, max_events=8 * 15, poll_interval=0.05)
    collector.start()

    def emitter(seed: int):
        rnd = random.Random(seed)
        for _ in range(15):
            with keen.as_user(alice) as tx:
                event_id = tx.streaming.emit_event(session, "race", {"seed": seed})
                time.sleep(rnd.uniform(0, 0.01))  # commit late: widen the out-of-order window
            with lock:
                emitted.append(event_id)

    threads = [threading.Thread(target=emitter, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    collector.join(WAIT)
    assert collector.error is None
    assert collector.ids == sorted(emitted)  # every event, in id order, none skipped
    assert len(set(collector.ids)) == 8 * 15


# Tenants ---------------------------------------------------------------------------------------


def test_a_second_tenant_sees_nothing_of_the_stream(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    bobs_session = new_session(db, keen, bob)
    emit(keen, alice, session, 3)
    with keen.as_user(bob) as tx:
        with pytest.raises(NotFound):
            tx.streaming.events_since(session)
    with keen.as_user(bob) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.streaming_events") == 0
        with pytest.raises(NotFound):
            tx.streaming.emit_event(session, "intrusion")
    with pytest.raises(NotFound):
        next(keen.listen(session, as_user=bob, timeout=WAIT))
    # Bob following his own session hears nothing of Alice's events.
    collector = Collector(keen, bobs_session, as_user=bob, timeout=1.0, poll_interval=0.2)
    collector.start()
    wait_until(lambda: listener_pids(db) != [] or not collector.is_alive(), "Bob's listener")
    emit(keen, alice, session, 3)
    collector.join(WAIT)
    assert collector.error is None and collector.events == []


def test_an_admin_replays_any_session_and_a_listener_without_an_actor_sees_nothing(db, keen, alice, admin_id):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 2)
    with keen.as_user(admin_id) as tx:
        assert [e.event_id for e in tx.streaming.events_since(session)] == ids
    with pytest.raises(NotFound):
        next(keen.listen(session, timeout=WAIT))


# Connections -----------------------------------------------------------------------------------


def test_connections_register_ping_close_and_the_session_lists_the_live_ones(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        c = tx.streaming.register_connection("ws-1", "192.0.2.1", "dashboard", session, "pytest", ["phase_change"])
        tx.streaming.register_connection("ws-2", "192.0.2.2", "cli", session)
        tx.streaming.ping_connection("ws-1")
    assert (c.user_id, c.session_id, c.connection_status, c.subscribed_events) == (
        alice,
        session,
        "active",
        ["phase_change"],
    )
    with keen.as_user(bob) as tx:
        with pytest.raises(NotFound):
            tx.streaming.close_connection("ws-1")
    with keen.as_user(alice) as tx:
        tx.streaming.close_connection("ws-1")
        assert tx.scalar("SELECT websocket_connections FROM keen.agent_sessions WHERE id = %s", (session,)) == ["ws-2"]
        with pytest.raises(NotFound):
            tx.streaming.ping_connection("ws-1")


def test_concurrent_registrations_on_one_session_are_all_listed(db, keen, alice):
    session = new_session(db, keen, alice)

    def register(i: int):
        with keen.as_user(alice) as tx:
            tx.streaming.register_connection(f"ws-{i}", "192.0.2.1", "api", session)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    with keen.as_user(alice) as tx:
        listed = tx.scalar("SELECT websocket_connections FROM keen.agent_sessions WHERE id = %s", (session,))
    assert sorted(listed) == sorted(f"ws-{i}" for i in range(12))


def test_reaping_closes_stale_connections_of_every_tenant_and_only_them(db, keen, alice, bob):
    sa, sb = new_session(db, keen, alice), new_session(db, keen, bob)
    for user, session in ((alice, sa), (bob, sb)):
        with keen.as_user(user) as tx:
            tx.streaming.register_connection("stale", "192.0.2.1", "cli", session)
            tx.streaming.register_connection("fresh", "192.0.2.1", "cli", session)
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.websocket_connections SET last_ping_at = now() - interval '10 minutes' "
            "WHERE connection_id = 'stale'"
        )
    with keen.as_user(alice) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.reap_stale_connections(timedelta(minutes=2))
    maintenance = Keen(db.maintenance_url, PoolSettings(min_size=1, max_size=2))
    try:
        with maintenance.transaction() as tx:
            assert tx.streaming.reap_stale_connections(timedelta(minutes=2)) == 2
        with maintenance.transaction() as tx:
            assert tx.streaming.reap_stale_connections(timedelta(minutes=2)) == 0
    finally:
        maintenance.close()
    with db.su() as conn:
        rows = conn.execute(
            "SELECT connection_id, connection_status, count(*) FROM keen.websocket_connections GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
        lists = conn.execute(
            "SELECT websocket_connections FROM keen.agent_sessions WHERE id IN (%s, %s)", (sa, sb)
        ).fetchall()
    assert rows == [("fresh", "active", 2), ("stale", "closed", 2)]
    assert lists == [(["fresh"],), (["fresh"],)]


# Partitions ------------------------------------------------------------------------------------


def partitions(db) -> dict[str, tuple[bool, bool, int, bool]]:
    """name -> (RLS enabled, forced, policies equal to the parent's, keen_app may SELECT it)."""
    with db.su() as conn:
        return {
            r[0]: tuple(r[1:])
            for r in conn.execute("""
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   (SELECT count(*) FROM pg_policies p JOIN pg_policies q
                         ON q.schemaname = 'keen' AND q.tablename = 'streaming_events'
                        AND (q.policyname, q.cmd, q.qual, q.with_check) = (p.policyname, p.cmd, p.qual, p.with_check)
                     WHERE p.schemaname = 'keen' AND p.tablename = c.relname),
                   has_table_privilege('keen_app', c.oid, 'SELECT')
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'keen.streaming_events'::regclass""").fetchall()
        }


def month_name(d: datetime) -> str:
    return f"streaming_events_y{d.year:04d}m{d.month:02d}"


def month_ahead(n: int, day: int = 1, *rest: int) -> datetime:
    """Day `day` of the UTC month n months after this one (partitions go at most 24 ahead)."""
    now = datetime.now(UTC)
    y, m = divmod(now.month - 1 + n, 12)
    return datetime(now.year + y, m + 1, day, *rest, tzinfo=UTC)


def insert_at(db, user_id, session_id, created_at: datetime, event_type: str = "dated") -> tuple[int, str]:
    with db.su() as conn:
        return conn.execute(
            "INSERT INTO keen.streaming_events (session_id, user_id, event_type, created_at) "
            "VALUES (%s, %s, %s, %s) RETURNING event_id, tableoid::regclass::text",
            (session_id, user_id, event_type, created_at),
        ).fetchone()


def test_the_migration_prepared_this_month_and_next(db):
    now = datetime.now(UTC)
    nxt = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
    names = partitions(db)
    assert month_name(now) in names and month_name(nxt) in names and "streaming_events_default" in names


def test_an_insert_for_a_month_with_no_partition_lands_in_the_default_partition(db, keen, alice):
    session = new_session(db, keen, alice)
    _, where = insert_at(db, alice, session, month_ahead(20, 3))
    assert where == "keen.streaming_events_default"


def test_preparing_partitions_moves_rows_out_of_the_default_and_secures_every_partition(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    first = month_ahead(18)
    early, _ = insert_at(db, alice, session, first)
    late, _ = insert_at(db, alice, session, month_ahead(20) - timedelta(seconds=1))
    stays, _ = insert_at(db, alice, session, month_ahead(21))
    maintenance = Keen(db.maintenance_url, PoolSettings(min_size=1, max_size=2))
    try:
        with maintenance.transaction() as tx:
            made = tx.streaming.prepare_event_partitions(2, month_ahead(18, 15))
        with maintenance.transaction() as tx:
            assert tx.streaming.prepare_event_partitions(2, month_ahead(18, 15)) == []
    finally:
        maintenance.close()
    assert [(p.partition_name, p.rows_moved) for p in made] == [
        (month_name(month_ahead(18)), 1),
        (month_name(month_ahead(19)), 1),
        (month_name(month_ahead(20)), 0),
    ]
    assert made[0].range_start == first
    assert made[0].range_end == month_ahead(19)
    with db.su() as conn:
        where = dict(
            conn.execute(
                "SELECT event_id, tableoid::regclass::text FROM keen.streaming_events WHERE event_id = ANY(%s)",
                ([early, late, stays],),
            ).fetchall()
        )
    assert where == {
        early: f"keen.{month_name(month_ahead(18))}",
        late: f"keen.{month_name(month_ahead(19))}",
        stays: "keen.streaming_events_default",
    }
    # Every partition, the run-time ones included: RLS enabled and forced, exactly the
    # parent's policy, nothing for keen_app; and the doctor agrees.
    assert all(v == (True, True, 1, False) for v in partitions(db).values()), partitions(db)
    with db.su() as conn:
        assert doctor.check_app_cannot_write(None, conn) == (
            True,
            "keen_app holds no write privilege, no secret column, no partition",
        )
    with psycopg.connect(db.app_url) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(f"SELECT count(*) FROM keen.{month_name(first)}")
    with keen.as_user(bob) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.streaming_events") == 0
    with keen.as_user(alice) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.streaming_events") == 3


def test_only_maintenance_or_an_admin_manages_partitions(db, keen, alice, admin_id):
    with keen.as_user(alice) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.prepare_event_partitions()
    with keen.as_user(alice) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.drop_old_event_partitions(timedelta(days=365))
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.prepare_event_partitions(-1)
    with keen.as_user(admin_id) as tx:
        assert [p.partition_name for p in tx.streaming.prepare_event_partitions(0, month_ahead(22, 2))] == [
            month_name(month_ahead(22))
        ]


def test_dropping_old_partitions_removes_whole_months_and_keeps_the_rest(db, keen, alice, admin_id):
    session = new_session(db, keen, alice)
    with keen.as_user(admin_id) as tx:
        tx.streaming.prepare_event_partitions(1, datetime(2019, 11, 5, tzinfo=UTC))
    _old, where = insert_at(db, alice, session, datetime(2019, 11, 20, tzinfo=UTC))
    assert where == "keen.streaming_events_y2019m11"
    recent = emit(keen, alice, session, 2)
    with keen.as_user(admin_id) as tx:
        dropped = tx.streaming.drop_old_event_partitions(timedelta(days=365))
    assert [p.partition_name for p in dropped] == ["streaming_events_y2019m11", "streaming_events_y2019m12"]
    names = partitions(db)
    assert "streaming_events_y2019m11" not in names and "streaming_events_default" in names
    assert month_name(datetime.now(UTC)) in names
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.events_since(session)] == recent
    with keen.as_user(admin_id) as tx:
        assert tx.streaming.drop_old_event_partitions(timedelta(days=365)) == []


# Bounded, audited upkeep (issue 16) ----------------------------------------------------------


def audit_entries(db, subtype: str) -> list[dict]:
    with db.su() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT event_data FROM keen.audit_logs WHERE event_type = 'streaming' AND event_subtype = %s "
                "ORDER BY created_at",
                (subtype,),
            ).fetchall()
        ]


def test_partitions_are_prepared_at_most_24_months_ahead(db, keen, admin_id):
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.prepare_event_partitions(25)
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.prepare_event_partitions(2, month_ahead(23))  # the last would be 25 ahead
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.prepare_event_partitions(0, datetime(2300, 1, 1, tzinfo=UTC))
    with keen.as_user(admin_id) as tx:
        assert [p.partition_name for p in tx.streaming.prepare_event_partitions(0, month_ahead(24))] == [
            month_name(month_ahead(24))
        ]


def test_dropping_partitions_keeps_30_days_at_least_and_never_the_current_month(db, keen, admin_id):
    for keep in (timedelta(0), timedelta(days=29), None):
        with keen.as_user(admin_id) as tx:
            with pytest.raises(InvalidInput):
                tx.streaming.drop_old_event_partitions(keep)
    with keen.as_user(admin_id) as tx:
        tx.streaming.drop_old_event_partitions(timedelta(days=30))
    names = partitions(db)
    assert month_name(datetime.now(UTC)) in names


def test_partition_upkeep_is_audited_when_it_changes_something(db, keen, admin_id):
    with keen.as_user(admin_id) as tx:
        tx.streaming.prepare_event_partitions(1, datetime(2019, 11, 5, tzinfo=UTC))
    with keen.as_user(admin_id) as tx:
        assert tx.streaming.prepare_event_partitions(1, datetime(2019, 11, 5, tzinfo=UTC)) == []
    assert audit_entries(db, "partitions_created") == [
        {"partitions": ["streaming_events_y2019m11", "streaming_events_y2019m12"]}
    ]
    with keen.as_user(admin_id) as tx:
        tx.streaming.drop_old_event_partitions(timedelta(days=365))
    with keen.as_user(admin_id) as tx:
        assert tx.streaming.drop_old_event_partitions(timedelta(days=365)) == []
    [dropped] = audit_entries(db, "partitions_dropped")
    assert dropped["partitions"] == ["streaming_events_y2019m11", "streaming_events_y2019m12"]


def test_an_idle_reader_does_not_make_readers_queue_behind_the_partition_upkeep(db, keen, alice, admin_id):
    """An idle transaction that read streaming_events holds ACCESS SHARE; the upkeep's DROP waits
    for it at most 1 s a try (5 tries) and gives up with 55P03 instead of queueing every reader
    behind its ACCESS EXCLUSIVE request. Meanwhile another tenant's events_since still answers."""
    session = new_session(db, keen, alice)
    emit(keen, alice, session, 1)
    with keen.as_user(admin_id) as tx:
        tx.streaming.prepare_event_partitions(0, datetime(2019, 11, 5, tzinfo=UTC))
    idle = psycopg.connect(db.app_url)
    try:
        idle.execute("SELECT count(*) FROM keen.streaming_events")  # ACCESS SHARE, kept while idle
        errors: list[BaseException] = []

        def upkeep() -> None:
            try:
                with psycopg.connect(db.maintenance_url) as conn:
                    conn.execute("SELECT * FROM keen.drop_old_event_partitions('365 days')")
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=upkeep)
        t.start()
        # Readers keep being served while the upkeep waits and retries (each try waits 1 s).
        served = 0
        while t.is_alive():
            with keen.as_user(alice) as tx:
                tx.execute("SET LOCAL lock_timeout = '3s'")
                assert len(tx.streaming.events_since(session)) == 1
            served += 1
        t.join(WAIT)
        assert served > 0
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.LockNotAvailable)
    finally:
        idle.close()
    assert "streaming_events_y2019m11" in partitions(db)


# The feed of a user, the cursor of a connection (issue 13) ------------------------------------


def fund(keen: Keen, admin_id, user_id, amount: str = "100") -> None:
    with keen.as_user(admin_id) as tx:
        tx.credits.add_credits(user_id, Decimal(amount), "test purchase")


def test_events_for_user_is_the_actors_feed_and_an_admins_is_every_tenants(db, keen, alice, bob, admin_id):
    a1, a2, b1 = new_session(db, keen, alice), new_session(db, keen, alice), new_session(db, keen, bob)
    ids_a = emit(keen, alice, a1, 2) + emit(keen, alice, a2, 2)
    ids_b = emit(keen, bob, b1, 2)
    with keen.as_user(alice) as tx:
        feed = tx.streaming.events_for_user()
        assert [e.event_id for e in feed] == ids_a
        assert {e.session_id for e in feed} == {a1, a2}
        assert [e.event_id for e in tx.streaming.events_for_user(ids_a[1], 2)] == ids_a[2:4]
    with keen.as_user(bob) as tx:
        assert [e.event_id for e in tx.streaming.events_for_user()] == ids_b
    with keen.as_user(admin_id) as tx:
        assert [e.event_id for e in tx.streaming.events_for_user()] == sorted(ids_a + ids_b)
    with keen.transaction() as tx:
        with pytest.raises(KeenError) as err:
            tx.streaming.events_for_user()
        assert err.value.sqlstate == "28000"
    for bad in ((-1, 10), (0, 0), (0, 10001)):
        with keen.as_user(alice) as tx:
            with pytest.raises(InvalidInput):
                tx.streaming.events_for_user(*bad)


def test_next_events_moves_the_connection_cursor_and_delivers_each_event_once(db, keen, alice):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 5)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-1", "10.0.0.1", "dashboard", session)
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1", 3)] == ids[:3]
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1", 3)] == ids[3:]
    with keen.as_user(alice) as tx:
        assert tx.streaming.next_events("ws-1") == []
    more = emit(keen, alice, session, 1)
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1")] == more


def test_a_next_events_read_that_rolls_back_is_delivered_again(db, keen, alice):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 3)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-1", "10.0.0.1", "dashboard", session)

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        with keen.as_user(alice) as tx:
            assert [e.event_id for e in tx.streaming.next_events("ws-1")] == ids
            raise Crash  # the gateway died before it could push them: the read rolls back
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1")] == ids
    with keen.as_user(alice) as tx:
        assert tx.streaming.next_events("ws-1") == []


def test_next_events_honours_subscribed_events_and_moves_past_the_others(db, keen, alice):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-1", "10.0.0.1", "cli", session, None, ["wanted"])
    wanted = emit(keen, alice, session, 2, "wanted")
    emit(keen, alice, session, 3, "noise")
    with keen.as_user(alice) as tx:
        got = tx.streaming.next_events("ws-1")
    assert [e.event_id for e in got] == wanted and {e.event_type for e in got} == {"wanted"}
    with db.su() as conn:
        cursor = conn.execute("SELECT last_delivered_event_id FROM keen.websocket_connections").fetchone()[0]
    with keen.as_user(alice) as tx:
        assert cursor == max(e.event_id for e in tx.streaming.events_since(session))  # past the noise


def test_a_connection_without_a_session_follows_all_its_owners_sessions_only(db, keen, alice, bob):
    a1, a2, b1 = new_session(db, keen, alice), new_session(db, keen, alice), new_session(db, keen, bob)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("feed", "10.0.0.1", "dashboard")
    ids = emit(keen, alice, a1, 1) + emit(keen, bob, b1, 1) + emit(keen, alice, a2, 1)
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("feed")] == [ids[0], ids[2]]


def test_next_events_on_another_tenants_connection_is_not_found(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-a", "10.0.0.1", "dashboard", session)
    emit(keen, alice, session, 1)
    with keen.as_user(bob) as tx:
        with pytest.raises(NotFound):
            tx.streaming.next_events("ws-a")
    with keen.as_user(alice) as tx:
        tx.streaming.close_connection("ws-a")
    with keen.as_user(alice) as tx:
        with pytest.raises(NotFound):
            tx.streaming.next_events("ws-a")  # closed: register it again


def test_a_reconnected_connection_resumes_from_its_cursor(db, keen, alice):
    session = new_session(db, keen, alice)
    first = emit(keen, alice, session, 2)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-1", "10.0.0.1", "dashboard", session)
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1")] == first
    with keen.as_user(alice) as tx:
        tx.streaming.close_connection("ws-1")
    later = emit(keen, alice, session, 2)
    with keen.as_user(alice) as tx:
        again = tx.streaming.register_connection("ws-1", "10.0.0.2", "dashboard", session)
        assert again.last_delivered_event_id == first[-1]
    with keen.as_user(alice) as tx:
        assert [e.event_id for e in tx.streaming.next_events("ws-1")] == later


def test_an_admin_may_follow_and_replay_any_session(db, keen, alice, admin_id):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 2)
    with keen.as_user(admin_id) as tx:
        conn = tx.streaming.register_connection("watch", "10.0.0.9", "dashboard", session)
        assert conn.user_id == admin_id and conn.admin_connection and conn.session_filters == [session]
    with keen.as_user(admin_id) as tx:
        assert [e.event_id for e in tx.streaming.next_events("watch")] == ids
        assert [e.event_id for e in tx.streaming.events_since(session)] == ids
    with keen.as_user(alice) as tx:
        assert "watch" not in tx.sessions.get_session(session).websocket_connections
    with keen.as_user(admin_id) as tx:
        tx.streaming.close_connection("watch")


def test_a_user_may_not_follow_another_tenants_session(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    with keen.as_user(bob) as tx:
        with pytest.raises(NotFound):
            tx.streaming.register_connection("peek", "10.0.0.1", "dashboard", session)


def emit_slowly(keen: Keen, user_id, session_id, committed: list[int], lock: threading.Lock) -> None:
    """25 events, each committed a random moment after its id was drawn."""
    for i in range(25):
        with keen.as_user(user_id) as tx:
            event_id = tx.streaming.emit_event(session_id, "tick", {"i": i})
            time.sleep(random.random() / 500)
        with lock:
            committed.append(event_id)


def test_the_user_feed_never_skips_an_event_while_its_sessions_emit_concurrently(db, keen, alice):
    """Per-user ordering: a follower that asks for ids after the last it saw, while four
    threads emit into four sessions of the user, ends with every committed event. Repeated."""
    for _round in range(3):
        sessions = [new_session(db, keen, alice) for _ in range(4)]
        with keen.as_user(alice) as tx:
            start = max([e.event_id for e in tx.streaming.events_for_user(0, 10000)], default=0)
        committed: list[int] = []
        lock = threading.Lock()

        threads = [threading.Thread(target=emit_slowly, args=(keen, alice, s, committed, lock)) for s in sessions]
        for t in threads:
            t.start()
        seen: list[int] = []
        last = start
        while any(t.is_alive() for t in threads) or last < max(committed, default=start):
            with keen.as_user(alice) as tx:
                batch = tx.streaming.events_for_user(last, 7)
            seen += [e.event_id for e in batch]
            last = batch[-1].event_id if batch else last
        for t in threads:
            t.join(WAIT)
        assert seen == sorted(committed) and len(seen) == 100


def test_event_data_and_user_agents_have_size_caps(db, keen, alice):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.streaming.emit_event(session, "fits", {"blob": "x" * 60000})
    with keen.as_user(alice) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.emit_event(session, "too_big", {"blob": "x" * 70000})
    with keen.as_user(alice) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.register_connection("ws", "10.0.0.1", "cli", None, "u" * 600)


# System metrics and retention -------------------------------------------------------------------


def test_snapshot_system_metrics_is_for_admins_and_maintenance(db, keen, alice, admin_id):
    fund(keen, admin_id, alice, "40")
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.sessions.update_session_progress(session, "PLAN")
        tx.streaming.register_connection("ws", "10.0.0.1", "cli", session)
        tx.credits.deduct_credits(alice, Decimal("0.5"))
    new_session(db, keen, alice)
    with keen.as_user(admin_id) as tx:
        m = tx.streaming.snapshot_system_metrics()
    assert (m.active_users, m.active_sessions, m.active_websocket_connections) == (1, 2, 1)
    assert (m.sessions_in_explore, m.sessions_in_plan, m.sessions_in_found) == (1, 1, 0)
    assert m.credits_purchased_today == 40 and m.credits_consumed_today == Decimal("2.5")
    maintenance = Keen(db.maintenance_url, PoolSettings(min_size=1, max_size=2))
    try:
        with maintenance.transaction() as tx:
            assert tx.streaming.snapshot_system_metrics().active_sessions == 2
    finally:
        maintenance.close()
    with keen.as_user(alice) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.snapshot_system_metrics()
    with keen.as_user(alice) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.system_metrics") == 0  # not a tenant's rows
    with keen.as_user(admin_id) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.system_metrics") == 2
    assert_ledger_clean(db)


def test_metrics_are_kept_90_days_and_closed_connections_7(db, keen, alice, admin_id):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("old", "10.0.0.1", "cli", session)
        tx.streaming.register_connection("recent", "10.0.0.1", "cli", session)
        tx.streaming.register_connection("live", "10.0.0.1", "cli", session)
    with keen.as_user(alice) as tx:
        tx.streaming.close_connection("old")
        tx.streaming.close_connection("recent")
    with keen.as_user(admin_id) as tx:
        tx.streaming.snapshot_system_metrics()
        tx.streaming.snapshot_system_metrics()
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.websocket_connections SET disconnected_at = now() - interval '8 days' "
            "WHERE connection_id = 'old'"
        )
        conn.execute(
            "UPDATE keen.system_metrics SET metric_timestamp = now() - interval '91 days' "
            "WHERE id = (SELECT min(id::text)::uuid FROM keen.system_metrics)"
        )
    with keen.as_user(alice) as tx:
        with pytest.raises(PermissionDenied):
            tx.streaming.prune_streaming_history()
    with keen.as_user(admin_id) as tx:
        with pytest.raises(InvalidInput):
            tx.streaming.prune_streaming_history(timedelta(hours=1))
    with keen.as_user(admin_id) as tx:
        pruned = tx.streaming.prune_streaming_history()
    assert (pruned.metrics_deleted, pruned.connections_deleted) == (1, 1)
    with db.su() as conn:
        left = {r[0] for r in conn.execute("SELECT connection_id FROM keen.websocket_connections").fetchall()}
        assert left == {"recent", "live"}
        assert conn.execute("SELECT count(*) FROM keen.system_metrics").fetchone()[0] == 1


# The listener on a user feed and on a connection cursor ---------------------------------------


class FeedCollector(threading.Thread):
    def __init__(self, gen):
        super().__init__(daemon=True)
        self.gen = gen
        self.events: list[StreamEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.gen:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc


def test_the_listener_follows_a_user_feed_across_sessions_and_a_dropped_connection(db, keen, alice, bob):
    from keen_client.streaming import listen_feed

    a1, a2, b1 = new_session(db, keen, alice), new_session(db, keen, alice), new_session(db, keen, bob)
    before = emit(keen, alice, a1, 1)
    collector = FeedCollector(listen_feed(keen, as_user=alice, max_events=5, timeout=WAIT, reconnect_delay=0.05))
    collector.start()
    wait_until(lambda: len(collector.events) >= 1 or not collector.is_alive(), "the catch-up")
    live = emit(keen, alice, a2, 1)
    emit(keen, bob, b1, 1)  # another tenant's: not in alice's feed
    wait_until(lambda: len(collector.events) >= 2 or not collector.is_alive(), "a live event")
    terminate_listeners(db)
    live += emit(keen, alice, a1, 2) + emit(keen, alice, a2, 1)
    collector.join(WAIT)
    assert collector.error is None
    assert [e.event_id for e in collector.events] == before + live
    assert {e.session_id for e in collector.events} == {a1, a2}


def test_the_listener_follows_a_connection_cursor_and_its_subscription(db, keen, alice):
    from keen_client.streaming import listen_connection

    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.streaming.register_connection("ws-live", "10.0.0.1", "dashboard", session, None, ["wanted"])
    first = emit(keen, alice, session, 2, "wanted")
    emit(keen, alice, session, 2, "noise")
    collector = FeedCollector(listen_connection(keen, "ws-live", as_user=alice, max_events=4, timeout=WAIT))
    collector.start()
    wait_until(lambda: len(collector.events) >= 2 or not collector.is_alive(), "the catch-up")
    terminate_listeners(db)  # the cursor is in the database: the reconnect resumes there
    later = emit(keen, alice, session, 1, "noise") + emit(keen, alice, session, 2, "wanted")
    collector.join(WAIT)
    assert collector.error is None
    assert [e.event_id for e in collector.events] == first + later[1:]
    with keen.as_user(alice) as tx:
        assert tx.streaming.next_events("ws-live") == []  # the cursor moved with every read


def read_cursor(keen: Keen, user_id, connection_id: str, got: list[int], lock: threading.Lock, stop) -> None:
    while not stop.is_set():
        with keen.as_user(user_id) as tx:
            batch = [e.event_id for e in tx.streaming.next_events(connection_id, 3)]
        with lock:
            got.extend(batch)


def test_concurrent_readers_of_one_connection_deliver_each_event_once(db, keen, alice):
    """Four readers take turns on the connection's row: together they deliver every event
    exactly once while a writer emits. Repeated."""
    for round_ in range(3):
        session = new_session(db, keen, alice)
        with keen.as_user(alice) as tx:
            tx.streaming.register_connection(f"shared-{round_}", "10.0.0.1", "dashboard", session)
        got: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()
        readers = [
            threading.Thread(target=read_cursor, args=(keen, alice, f"shared-{round_}", got, lock, stop))
            for _ in range(4)
        ]
        for t in readers:
            t.start()
        emitted = emit(keen, alice, session, 40)
        wait_until(lambda got=got, emitted=emitted: len(got) >= len(emitted), "the readers")
        stop.set()
        for t in readers:
            t.join(WAIT)
        assert sorted(got) == emitted


def test_an_admin_listens_to_any_tenants_session_through_its_api_key(db, keen, alice, admin_key):
    session = new_session(db, keen, alice)
    ids = emit(keen, alice, session, 3)
    got = [e.event_id for e in keen.listen(session, api_key=admin_key, max_events=3, timeout=WAIT)]
    assert got == ids


def test_an_admin_key_with_a_scope_list_cannot_prepare_or_drop_event_partitions(db, keen, admin_id):
    """Upkeep is no scope's: keen_private.may_manage_event_partitions goes through
    keen_private.require_all_tenants, which refuses an admin's scoped key (the unscoped key may)."""
    with keen.as_user(admin_id) as tx:
        token = tx.scalar("SELECT token FROM keen.create_api_key('scoped admin', '{sessions:read,sessions:write}')")
    with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
        tx.streaming.drop_old_event_partitions(timedelta(days=365))
    with pytest.raises(PermissionDenied), keen.with_api_key(token) as tx:
        tx.streaming.prepare_event_partitions(0, month_ahead(21, 2))
    with keen.as_user(admin_id) as tx:
        assert tx.streaming.drop_old_event_partitions(timedelta(days=3650)) == []


def test_a_connection_id_and_an_event_type_are_capped_by_their_size_cap_kinds(db, keen, alice):
    session = new_session(db, keen, alice)
    with keen.as_user(alice) as tx:
        tx.execute("SELECT keen.register_connection(%s, '127.0.0.1', 'cli')", ("c" * 255,))
    for connection_id in ("", "c" * 256, "é" * 128):  # 256 bytes: the cap is in bytes
        with pytest.raises(InvalidInput), keen.as_user(alice) as tx:
            tx.execute("SELECT keen.register_connection(%s, '127.0.0.1', 'cli')", (connection_id,))
    with keen.as_user(alice) as tx:
        assert tx.streaming.emit_event(session, "t" * 50, {}) > 0
    for event_type in ("", "t" * 51):
        with pytest.raises(InvalidInput), keen.as_user(alice) as tx:
            tx.streaming.emit_event(session, event_type, {})
