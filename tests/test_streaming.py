"""Streaming: the event stream (notifications carry ids only, replay under RLS, the listener
that survives a dropped connection), live connections, and the monthly event partitions."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from keen_client import Keen, PoolSettings
from keen_client.errors import InvalidInput, NotFound, PermissionDenied
from keen_client.streaming import EventNotice, StreamEvent
from keen_db import doctor

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
    _, where = insert_at(db, alice, session, datetime(2045, 3, 3, tzinfo=UTC))
    assert where == "keen.streaming_events_default"


def test_preparing_partitions_moves_rows_out_of_the_default_and_secures_every_partition(db, keen, alice, bob):
    session = new_session(db, keen, alice)
    early, _ = insert_at(db, alice, session, datetime(2045, 3, 1, tzinfo=UTC))
    late, _ = insert_at(db, alice, session, datetime(2045, 4, 30, 23, 59, 59, tzinfo=UTC))
    stays, _ = insert_at(db, alice, session, datetime(2045, 6, 1, tzinfo=UTC))
    maintenance = Keen(db.maintenance_url, PoolSettings(min_size=1, max_size=2))
    try:
        with maintenance.transaction() as tx:
            made = tx.streaming.prepare_event_partitions(2, datetime(2045, 3, 15, tzinfo=UTC))
        with maintenance.transaction() as tx:
            assert tx.streaming.prepare_event_partitions(2, datetime(2045, 3, 15, tzinfo=UTC)) == []
    finally:
        maintenance.close()
    assert [(p.partition_name, p.rows_moved) for p in made] == [
        ("streaming_events_y2045m03", 1),
        ("streaming_events_y2045m04", 1),
        ("streaming_events_y2045m05", 0),
    ]
    assert made[0].range_start == datetime(2045, 3, 1, tzinfo=UTC)
    assert made[0].range_end == datetime(2045, 4, 1, tzinfo=UTC)
    with db.su() as conn:
        where = dict(
            conn.execute(
                "SELECT event_id, tableoid::regclass::text FROM keen.streaming_events WHERE event_id = ANY(%s)",
                ([early, late, stays],),
            ).fetchall()
        )
    assert where == {
        early: "keen.streaming_events_y2045m03",
        late: "keen.streaming_events_y2045m04",
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
            app.execute("SELECT count(*) FROM keen.streaming_events_y2045m03")
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
        assert [
            p.partition_name for p in tx.streaming.prepare_event_partitions(0, datetime(2046, 1, 2, tzinfo=UTC))
        ] == ["streaming_events_y2046m01"]


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
