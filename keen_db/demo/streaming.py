"""Demo step: a live listener prints a session's events as they are emitted, survives a dropped
connection without losing or repeating one, and a second tenant sees nothing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import psycopg

from keen_client.errors import NotFound
from keen_db.sql import value

SCRIPT = [  # (event_type, source, data): a short agent run
    ("phase_change", "agent", {"from": "EXPLORE", "to": "PLAN"}),
    ("tool_execution", "tool", {"tool": "read_file", "path": "src/app.py"}),
    ("tool_execution", "tool", {"tool": "run_tests", "passed": 41, "failed": 1}),
    ("git_operation", "git", {"op": "commit", "message": "fix the flaky test"}),
    ("tool_execution", "tool", {"tool": "run_tests", "passed": 42, "failed": 0}),
    ("phase_change", "agent", {"from": "PLAN", "to": "COMPLETE"}),
]


def _user_id(ctx):
    if ctx.state.get("user_id"):
        return ctx.state["user_id"]
    tag = uuid.uuid4().hex[:6]
    with ctx.keen.transaction() as tx:
        user_id = tx.scalar(
            "SELECT id FROM keen.register_user(%s, %s, %s, %s)",
            (f"streamer_{tag}@example.com", f"streamer_{tag}", "stream password", "Streamer"),
        )
    ctx.state["user_id"] = user_id
    return user_id


def _session_id(ctx, user_id):
    """The session of the earlier steps (its uuid), else a new one through keen.create_session."""
    known = ctx.state.get("session_id")
    if known is not None:
        try:
            candidate = uuid.UUID(str(known))
            with ctx.keen.as_user(user_id) as tx:
                if tx.scalar("SELECT count(*) FROM keen.agent_sessions WHERE id = %s", (candidate,)):
                    return candidate
        except ValueError:
            pass
    with ctx.keen.as_user(user_id) as tx:
        session_id = tx.scalar(
            "SELECT id FROM keen.create_session(%s, %s, %s, %s, %s)",
            (
                user_id,
                f"stream-demo-{uuid.uuid4().hex[:6]}",
                "demo/streaming",
                "show a live event stream",
                "/work/demo",
            ),
        )
    ctx.state["session_id"] = session_id
    return session_id


def _terminate_listener(ctx) -> int:
    with psycopg.connect(ctx.superuser_url(), autocommit=True) as conn:
        return len(
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'keen_listener'"
            ).fetchall()
        )


def run(ctx) -> None:
    ctx.step("Streaming: a live listener follows a session")
    keen = ctx.keen
    user_id = _user_id(ctx)
    session_id = _session_id(ctx, user_id)

    with keen.as_user(user_id) as tx:
        tx.streaming.register_connection(
            "demo-dashboard-1",
            "203.0.113.7",
            "dashboard",
            session_id,
            "keen-db demo",
            ["phase_change", "tool_execution"],
        )
        listed = tx.scalar("SELECT websocket_connections FROM keen.agent_sessions WHERE id = %s", (session_id,))
    ctx.say(f"Registered a dashboard connection; the session's websocket_connections: {listed}")

    received = []
    listener = keen.listen(session_id, as_user=user_id, max_events=len(SCRIPT), timeout=60, reconnect_delay=0.2)

    def follow():
        for event in listener:
            received.append(event.event_id)
            ctx.say(f"  [green]listener[/] #{event.event_id} {event.event_type:<15} {json.dumps(event.event_data)}")

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)
    emitted = []
    for i, (event_type, source, data) in enumerate(SCRIPT):
        with keen.as_user(user_id) as tx:
            emitted.append(tx.streaming.emit_event(session_id, event_type, data, source))
        ctx.say(f"[cyan]agent[/]    emitted #{emitted[-1]} {event_type}")
        time.sleep(0.3)
        if i == 2:
            dropped = _terminate_listener(ctx)
            ctx.say(
                f"[red]dropped the listener's connection[/] ({dropped} backend terminated); "
                "it reconnects and resumes after the last event it printed"
            )
    thread.join(30)
    ctx.say(
        f"Emitted {len(emitted)}, the listener printed {len(received)}: "
        f"{'each exactly once, in order' if received == emitted else 'MISMATCH'}."
    )

    with psycopg.connect(ctx.settings.role_url("keen_app", ctx.database), autocommit=True) as raw:
        raw.execute("LISTEN keen_events")
        with keen.as_user(user_id) as tx:
            tx.streaming.emit_event(session_id, "secret_note", {"api_key": "sk-never-in-a-notification"}, "system")
        payload = next(raw.notifies(timeout=10, stop_after=1)).payload
    ctx.say(f"A raw LISTEN keen_events sees ids only: {payload}")

    ctx.step("Streaming: a second tenant sees nothing")
    tag = uuid.uuid4().hex[:6]
    with keen.transaction() as tx:
        eve = tx.scalar(
            "SELECT id FROM keen.register_user(%s, %s, %s)", (f"eve_{tag}@example.com", f"eve_{tag}", "eve password")
        )
    with keen.as_user(eve) as tx:
        rows = tx.scalar("SELECT count(*) FROM keen.streaming_events")
    try:
        next(keen.listen(session_id, as_user=eve, timeout=5))
        outcome = "an event (WRONG)"
    except NotFound as exc:
        outcome = f"NotFound [{exc.sqlstate}], as for a session that does not exist"
    ctx.table(
        "What another user gets",
        ["attempt", "result"],
        [
            ["SELECT count(*) FROM keen.streaming_events", rows],
            ["keen.listen(the session) as her", outcome],
        ],
    )

    ctx.step("Streaming: connections and partitions")
    with keen.as_user(user_id) as tx:
        tx.streaming.close_connection("demo-dashboard-1")
        listed = tx.scalar("SELECT websocket_connections FROM keen.agent_sessions WHERE id = %s", (session_id,))
    ctx.say(f"Closed the connection; the session's websocket_connections: {listed}")
    with psycopg.connect(ctx.maintenance_url()) as conn:
        reaped = value(conn, "SELECT keen.reap_stale_connections(%s)", (timedelta(minutes=2),))
        made = value(conn, "SELECT count(*) FROM keen.prepare_event_partitions(2)")
    with psycopg.connect(ctx.superuser_url()) as conn:
        parts = conn.execute("""
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.relrowsecurity AND c.relforcerowsecurity,
                   (SELECT count(*) FROM keen.streaming_events e WHERE e.tableoid = c.oid)
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'keen.streaming_events'::regclass ORDER BY 1""").fetchall()
    ctx.say(f"keen_maintenance (cron): reaped {reaped} stale connection(s); prepared {made} partition(s) ahead.")
    ctx.table(
        "keen.streaming_events partitions (by UTC month; the default catches any other month)",
        ["partition", "range", "RLS forced", "rows"],
        [[p[0], p[1].replace("FOR VALUES ", "").replace(" 00:00:00+00", ""), p[2], p[3]] for p in parts],
    )

    run_self_emitted(ctx, user_id)


def run_self_emitted(ctx, user_id) -> None:
    """The session functions emit their own events: a listener follows a new session while the
    agent only reports progress, tools, git and completion; no emit_event call. Then a
    connection's cursor (a read that rolls back is delivered again) and the user's feed."""
    ctx.step("Streaming: the session functions emit their own events (no emit_event call)")
    keen = ctx.keen
    with keen.as_user(user_id) as tx:
        session = tx.sessions.create_session(
            user_id, f"self-emit-{uuid.uuid4().hex[:6]}", "demo/self-emit", "events without emit_event", "/work/demo"
        )
        tx.streaming.register_connection("demo-cursor", "203.0.113.8", "cli", session.id, "keen-db demo")
    calls = [
        ("update_session_progress(PLAN)", lambda tx: tx.sessions.update_session_progress(session.id, "PLAN", 1)),
        (
            "record_tool_execution(read_file)",
            lambda tx: tx.sessions.record_tool_execution(session.id, "read_file", 12, True),
        ),
        (
            "record_git_operation(commit)",
            lambda tx: tx.sessions.record_git_operation(session.id, "commit", "demo/self-emit", True, "1a2b3c4d"),
        ),
        ("complete_session(success)", lambda tx: tx.sessions.complete_session(session.id, True)),
    ]
    expected = 5  # the four calls, and the COMPLETE phase change that completion enters
    received = []
    listener = keen.listen(session.id, as_user=user_id, max_events=expected, timeout=60)

    def follow():
        for event in listener:
            received.append(event)
            ctx.say(f"  [green]listener[/] #{event.event_id} {event.event_type:<18} {json.dumps(event.event_data)}")

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)
    for label, call in calls:
        with keen.as_user(user_id) as tx:
            call(tx)
        ctx.say(f"[cyan]agent[/]    keen.{label}")
        time.sleep(0.3)
    thread.join(30)
    ctx.say(f"The listener printed {len(received)} events; nobody called emit_event.")

    class Crash(Exception):
        pass

    try:
        with keen.as_user(user_id) as tx:
            first = tx.streaming.next_events("demo-cursor")
            raise Crash
    except Crash:
        pass
    with keen.as_user(user_id) as tx:
        again = tx.streaming.next_events("demo-cursor")
    with keen.as_user(user_id) as tx:
        after = tx.streaming.next_events("demo-cursor")
        feed = tx.streaming.events_for_user()
        tx.streaming.close_connection("demo-cursor")
    ctx.table(
        "keen.next_events('demo-cursor'): the connection's cursor lives in the database",
        ["read", "events"],
        [
            ["first read, its transaction rolled back", len(first)],
            ["the next read: delivered again (at least once)", len(again)],
            ["after that committed read", len(after)],
            ["keen.events_for_user(): the user's feed, every session", len(feed)],
        ],
    )

    ctx.step("Streaming: platform metrics and scheduled upkeep (keen_maintenance)")
    with psycopg.connect(ctx.maintenance_url()) as conn:
        m = conn.execute(
            "SELECT active_users, active_sessions, active_websocket_connections, sessions_in_explore,"
            " credits_purchased_today, credits_consumed_today FROM keen.snapshot_system_metrics()"
        ).fetchone()
        jobs = conn.execute(
            "SELECT job_name, cron_schedule, registered, last_succeeded_at FROM keen.maintenance_job_status()"
        ).fetchall()
    if m is not None:
        ctx.say(
            f"snapshot_system_metrics(): {m[0]} active user(s), {m[1]} running session(s) ({m[3]} exploring), "
            f"{m[2]} live connection(s), {m[4]} credits purchased and {m[5]} consumed today"
        )
    ctx.table(
        "Upkeep jobs (pg_cron where loaded, else `keen-db jobs` from cron)",
        ["job", "schedule", "scheduled here", "last success"],
        [[j[0], j[1], j[2], j[3] or "never"] for j in jobs],
    )
