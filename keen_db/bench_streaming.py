"""keen-db bench, the streaming figure (issue 13), in interleaved rounds on the bench database:
keen.update_session_progress with a phase change, which now emits its phase_change event in the
same transaction, against a twin of the same two functions (update_session_progress and
record_phase_transition, copied from the database's own definitions) with only the emit left
out, and a third twin whose emit is replaced by a bare NOTIFY: it shows what the notification
alone costs (PostgreSQL serializes the commits of notifying transactions on one lock, held
through the commit's WAL flush). Same server, same run, same sessions and users; ratios are
medians of per-round ratios."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any

GOALS: list[tuple[str, str, str, Callable[[float], bool]]] = [
    (
        "ratio_progress_event_vs_without",
        "update_session_progress with its phase_change event / the same without the event",
        ">= 0.8",
        lambda v: v >= 0.8,
    ),
]

SEED = [
    """CREATE OR REPLACE FUNCTION public.bench_psid(p_n integer) RETURNS uuid
       LANGUAGE sql IMMUTABLE
       AS $$ SELECT ('00000000-0000-4000-a000-' || pg_catalog.lpad(p_n::text, 12, '0'))::uuid $$""",
    "GRANT EXECUTE ON FUNCTION public.bench_psid(integer) TO keen_app",
    """INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory)
       SELECT public.bench_psid(g), public.bench_uid(g), 'progress-bench', 'main', 'bench progress', '/bench'
         FROM pg_catalog.generate_series(1, %(users)s::int) g
       ON CONFLICT DO NOTHING""",
    "CREATE SCHEMA IF NOT EXISTS bench_twin AUTHORIZATION keen_owner",
    "GRANT USAGE ON SCHEMA bench_twin TO keen_app",
]

# One phase change of user n's session (PLAN <-> FOUND), acting as the user, one round trip.
SCRIPT = """\\set n random(1, :users)
SELECT ({fn}(public.bench_psid(:n),
        CASE WHEN (SELECT s.current_phase FROM keen.agent_sessions s WHERE s.id = public.bench_psid(:n)) = 'PLAN'
             THEN 'FOUND' ELSE 'PLAN' END)).id
  FROM keen.act_as(public.bench_uid(:n));
"""

EMIT = re.compile(r"\n\s*PERFORM keen_private\.emit_session_event\(.*?\);", re.DOTALL)


NOTIFY_ONLY = "\n    PERFORM pg_catalog.pg_notify('keen_events', v_transition.id::text);"


def make_twin(conn: Any, name: str = "", replacement: str = "") -> None:
    """bench_twin.record_phase_transition<name> and bench_twin.update_session_progress<name>: the
    database's own definitions with the phase_change emit replaced by `replacement` (nothing:
    removed), owned by keen_owner like the real ones."""
    record = conn.execute(
        "SELECT pg_catalog.pg_get_functiondef('keen.record_phase_transition(uuid,text,text,text[],text[],numeric,text,jsonb)'::regprocedure)"
    ).fetchone()[0]
    progress = conn.execute(
        "SELECT pg_catalog.pg_get_functiondef('keen.update_session_progress(uuid,text,integer,integer,bigint,bigint)'::regprocedure)"
    ).fetchone()[0]
    twin_record, removed = EMIT.subn(lambda _m: replacement, record)
    if removed != 1:
        raise RuntimeError("keen.record_phase_transition does not emit exactly once: nothing to compare")
    twin_record = twin_record.replace(
        "FUNCTION keen.record_phase_transition(", f"FUNCTION bench_twin.record_phase_transition{name}("
    )
    twin_progress = progress.replace(
        "FUNCTION keen.update_session_progress(", f"FUNCTION bench_twin.update_session_progress{name}("
    ).replace("keen.record_phase_transition(", f"bench_twin.record_phase_transition{name}(")
    conn.execute("SET ROLE keen_owner")
    conn.execute(twin_record)
    conn.execute(twin_progress)
    conn.execute("RESET ROLE")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA bench_twin TO keen_app")


def measure(b: Any) -> None:
    """Run on a keen_db.bench.Bench after its throughput rounds; adds progress_event_tps,
    progress_no_event_tps and their ratio to b.results."""
    with b.su() as conn:
        if (
            conn.execute("SELECT pg_catalog.to_regprocedure('keen.events_for_user(bigint,integer)')").fetchone()[0]
            is None
        ):
            b.skipped["progress_event"] = "the session functions do not emit events yet"
            return
        for statement in SEED:
            conn.execute(statement, {"users": b.cfg.users} if "%(users)s" in statement else None)
        make_twin(conn)
        make_twin(conn, "_notify_only", NOTIFY_ONLY)
        conn.execute("ANALYZE keen.agent_sessions")
    (b.tmp / "progress_event.sql").write_text(SCRIPT.format(fn="keen.update_session_progress"))
    (b.tmp / "progress_twin.sql").write_text(SCRIPT.format(fn="bench_twin.update_session_progress"))
    (b.tmp / "progress_notify.sql").write_text(SCRIPT.format(fn="bench_twin.update_session_progress_notify_only"))
    app = b.s.role_url("keen_app", b.db)
    users = ["-D", f"users={b.cfg.users}"]
    keys = {
        "progress_event": "progress_event_tps",
        "progress_twin": "progress_no_event_tps",
        "progress_notify": "progress_notify_only_tps",
    }
    samples: dict[str, list[float]] = {
        key: [] for key in [*keys.values(), "progress_event_tps_c1", "progress_no_event_tps_c1"]
    }
    d, c = b.cfg.seconds, b.cfg.clients
    for i in range(b.cfg.rounds):
        b.echo(f"progress with and without its event {i + 1}/{b.cfg.rounds}")
        # Alternate the order, so that none always runs on a warmer cache.
        names = list(keys) if i % 2 == 0 else list(reversed(keys))
        for name in names:
            samples[keys[name]].append(b._pgbench(app, ["-f", str(b.tmp / f"{name}.sql"), *users], d, c))
        # One client: no other transaction's commit to wait for, so what is left is the work.
        for name in ("progress_event", "progress_twin"):
            samples[keys[name] + "_c1"].append(b._pgbench(app, ["-f", str(b.tmp / f"{name}.sql"), *users], d, 1))

    def ratio(a: str, base: str) -> float | None:
        pairs = [x / y for x, y in zip(samples[a], samples[base], strict=False) if y]
        return round(statistics.median(pairs), 3) if pairs else None

    for key, values in samples.items():
        if values:
            b.results[key] = round(statistics.median(values), 1)
    b.results["ratio_progress_event_vs_without"] = ratio("progress_event_tps", "progress_no_event_tps")
    b.results["ratio_progress_notify_only_vs_without"] = ratio("progress_notify_only_tps", "progress_no_event_tps")
    b.results["ratio_progress_event_vs_without_c1"] = ratio("progress_event_tps_c1", "progress_no_event_tps_c1")
