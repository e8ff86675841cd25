"""Analytics: the daily rollup against an independent computation over the raw rows (UTC day
boundaries included), its idempotency, who may run and read what, the 24-hour dashboard,
`keen-db rollup` and the demo step."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row
from rich.console import Console

from keen_client import errors
from keen_db.cli import cli

from .conftest import assert_ledger_clean

UTC = UTC
# Europe springs forward on this day: local days there are 23 hours long, UTC days are not.
DAY = date(2025, 3, 30)
BEFORE, AFTER = DAY - timedelta(days=1), DAY + timedelta(days=1)
MARKUP = Decimal("5.0")
PHASES = ("EXPLORE", "PLAN", "FOUND", "SUMMON", "COMPLETE")
TOOLS = ("read_file", "write_file", "run_tests", "grep", "git_diff")
# Far from UTC, with a 45-minute offset: a date cast or hour truncation in the session's zone
# would move rows across the day boundary.
FAR_TIME_ZONE = "Pacific/Chatham"


def at(d: date, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hour, minute, second, micro, tzinfo=UTC)


def day_range(d: date) -> tuple[datetime, datetime]:
    return at(d), at(d + timedelta(days=1))


def half_up(value: Decimal, places: str = "1") -> Decimal:
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)


def seconds(delta: timedelta) -> Decimal:
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000


@dataclass
class Raw:
    """The raw rows a test writes as the superuser, kept here for the independent computation.
    The ledger stays consistent: each account's balance is set to the sum of its amounts."""

    conn: psycopg.Connection
    users: dict[uuid.UUID, datetime] = field(default_factory=dict)  # id -> created_at
    sessions: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    gits: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    balances: dict[uuid.UUID, Decimal] = field(default_factory=dict)

    def user(self, user_id: uuid.UUID, created_at: datetime) -> uuid.UUID:
        self.conn.execute("UPDATE keen.users SET created_at = %s WHERE id = %s", (created_at, user_id))
        self.users[user_id] = created_at
        self.balances[user_id] = Decimal(0)
        return user_id

    def session(
        self,
        user_id,
        start,
        end=None,
        status="running",
        parent=None,
        tokens=0,
        context_tokens=0,
        files_modified=(),
        files_created=(),
        is_admin=False,
    ) -> dict:
        depth = 0 if parent is None else parent["session_depth"] + 1
        row = dict(
            id=uuid.uuid4(),
            user_id=user_id,
            session_id=f"s-{uuid.uuid4().hex[:12]}",
            parent_session_id=None if parent is None else parent["id"],
            session_depth=depth,
            start_time=start,
            end_time=end,
            execution_status=status,
            success=None if status == "running" else status == "completed",
            tokens_used=tokens,
            context_tokens_used=context_tokens,
            files_modified=list(files_modified),
            files_created=list(files_created),
            is_admin_session=is_admin,
        )
        row["git_branch"] = "main/" + row["session_id"]
        self.conn.execute(
            """
            INSERT INTO keen.agent_sessions (id, user_id, session_id, parent_session_id, session_depth,
                git_branch, vision, working_directory, start_time, end_time, execution_status, success,
                tokens_used, context_tokens_used, files_modified, files_created, is_admin_session)
            VALUES (%(id)s, %(user_id)s, %(session_id)s, %(parent_session_id)s, %(session_depth)s,
                %(git_branch)s, 'a vision', '/work', %(start_time)s, %(end_time)s,
                %(execution_status)s, %(success)s, %(tokens_used)s, %(context_tokens_used)s,
                %(files_modified)s, %(files_created)s, %(is_admin_session)s)""",
            row,
        )
        self.sessions.append(row)
        return row

    def phase(self, session, from_phase, to_phase, ts, duration_ms) -> None:
        row = dict(
            session_id=session["id"],
            user_id=session["user_id"],
            from_phase=from_phase,
            to_phase=to_phase,
            ts=ts,
            duration_ms=duration_ms,
        )
        self.conn.execute(
            """
            INSERT INTO keen.phase_transitions (session_id, user_id, from_phase, to_phase,
                transition_timestamp, duration_ms)
            VALUES (%(session_id)s, %(user_id)s, %(from_phase)s, %(to_phase)s, %(ts)s, %(duration_ms)s)""",
            row,
        )
        self.phases.append(row)

    def tool(self, session, name, ts) -> None:
        row = dict(session_id=session["id"], user_id=session["user_id"], tool_name=name, ts=ts)
        self.conn.execute(
            """
            INSERT INTO keen.tool_executions (session_id, user_id, tool_name, execution_timestamp,
                execution_time_ms, success)
            VALUES (%(session_id)s, %(user_id)s, %(tool_name)s, %(ts)s, 12, true)""",
            row,
        )
        self.tools.append(row)

    def git(self, session, ts) -> None:
        row = dict(session_id=session["id"], user_id=session["user_id"], ts=ts)
        self.conn.execute(
            """
            INSERT INTO keen.git_operations (session_id, user_id, operation_type, branch_name,
                operation_timestamp, success)
            VALUES (%(session_id)s, %(user_id)s, 'commit', 'main', %(ts)s, true)""",
            row,
        )
        self.gits.append(row)

    def money(self, user_id, kind, amount, ts, claude_cost=None, refund_of=None) -> dict:
        self.balances[user_id] += amount
        row = dict(
            id=uuid.uuid4(),
            user_id=user_id,
            transaction_type=kind,
            amount=amount,
            balance_after=self.balances[user_id],
            claude_cost_usd=claude_cost,
            markup_multiplier=None if claude_cost is None else MARKUP,
            is_admin_bypass=kind == "admin_bypass",
            created_at=ts,
            refund_of=refund_of,
        )
        self.conn.execute(
            """
            INSERT INTO keen.credit_transactions (id, user_id, account_id, transaction_type, amount,
                balance_after, claude_cost_usd, markup_multiplier, description, is_admin_bypass,
                created_at, refund_of)
            SELECT %(id)s, %(user_id)s, a.id, %(transaction_type)s, %(amount)s, %(balance_after)s,
                   %(claude_cost_usd)s, %(markup_multiplier)s, 'test row', %(is_admin_bypass)s,
                   %(created_at)s, %(refund_of)s
              FROM keen.credit_accounts a WHERE a.user_id = %(user_id)s""",
            row,
        )
        self.ledger.append(row)
        return row

    def usage(self, user_id, claude_cost: Decimal, ts) -> dict:
        return self.money(user_id, "usage", -half_up(claude_cost * MARKUP, "0.000001"), ts, claude_cost)

    def finish(self) -> None:
        for user_id, balance in self.balances.items():
            self.conn.execute(
                "UPDATE keen.credit_accounts SET current_balance = %s WHERE user_id = %s", (balance, user_id)
            )

    # The independent computation: plain Python over the rows above.

    def expected_user_rows(self, d: date) -> dict[uuid.UUID, dict[str, Any]]:
        lo, hi = day_range(d)
        inside = lambda ts: ts is not None and lo <= ts < hi  # noqa: E731
        rows: dict[uuid.UUID, dict[str, Any]] = {}

        def row(user_id):
            return rows.setdefault(
                user_id,
                dict(
                    sessions_started=0,
                    sessions_completed=0,
                    sessions_failed=0,
                    sessions_cancelled=0,
                    total_session_time_seconds=Decimal(0),
                    agents_spawned=0,
                    max_recursion_depth=0,
                    tool_executions=0,
                    unique_tools_used=set(),
                    total_tokens_consumed=0,
                    total_cost=Decimal(0),
                    total_claude_cost_usd=Decimal(0),
                    credits_purchased=Decimal(0),
                    credits_used=Decimal(0),
                    admin_bypass_transactions=0,
                    files_modified=0,
                    files_created=0,
                    git_operations=0,
                    **{f"{p.lower()}_phase_time_seconds": Decimal(0) for p in PHASES},
                ),
            )

        for s in self.sessions:
            if inside(s["start_time"]):
                r = row(s["user_id"])
                r["sessions_started"] += 1
                r["agents_spawned"] += s["session_depth"] > 0
                r["max_recursion_depth"] = max(r["max_recursion_depth"], s["session_depth"])
            if inside(s["end_time"]):
                r = row(s["user_id"])
                r[f"sessions_{s['execution_status']}"] += 1
                r["total_session_time_seconds"] += seconds(s["end_time"] - s["start_time"])
                r["total_tokens_consumed"] += s["tokens_used"]
                r["files_modified"] += len(s["files_modified"])
                r["files_created"] += len(s["files_created"])
        for p in self.phases:
            if inside(p["ts"]):
                r = row(p["user_id"])
                if p["duration_ms"] is not None:
                    r[f"{p['from_phase'].lower()}_phase_time_seconds"] += Decimal(p["duration_ms"]) / 1000
        for t in self.tools:
            if inside(t["ts"]):
                r = row(t["user_id"])
                r["tool_executions"] += 1
                r["unique_tools_used"].add(t["tool_name"])
        for g in self.gits:
            if inside(g["ts"]):
                row(g["user_id"])["git_operations"] += 1
        for c in self.ledger:
            if inside(c["created_at"]):
                r = row(c["user_id"])
                kind = c["transaction_type"]
                if kind == "purchase" or (kind == "refund" and c["amount"] < 0):
                    r["credits_purchased"] += c["amount"]
                if kind == "usage":
                    r["credits_used"] -= c["amount"]
                    r["total_cost"] -= c["amount"]
                if kind == "admin_bypass":
                    r["admin_bypass_transactions"] += 1
                    r["total_cost"] += half_up(c["claude_cost_usd"] * c["markup_multiplier"], "0.000001")
                if kind in ("usage", "admin_bypass"):
                    r["total_claude_cost_usd"] += c["claude_cost_usd"]
        for r in rows.values():
            r["total_session_time_seconds"] = int(half_up(r["total_session_time_seconds"]))
            for p in PHASES:
                key = f"{p.lower()}_phase_time_seconds"
                r[key] = int(half_up(r[key]))
            r["unique_tools_used"] = sorted(r["unique_tools_used"])
        return rows

    def expected_platform_row(self, d: date) -> dict[str, Any]:
        lo, hi = day_range(d)
        inside = lambda ts: ts is not None and lo <= ts < hi  # noqa: E731
        started = [s for s in self.sessions if inside(s["start_time"])]
        ended = [s for s in self.sessions if inside(s["end_time"])]
        money = [c for c in self.ledger if inside(c["created_at"])]
        phases = [p for p in self.phases if inside(p["ts"]) and p["duration_ms"] is not None]

        def total(kind):
            return sum((c["amount"] for c in money if c["transaction_type"] == kind), Decimal(0))

        exact_seconds = sum((seconds(s["end_time"] - s["start_time"]) for s in ended), Decimal(0))
        depth_sum = sum(s["session_depth"] for s in started)
        used = -total("usage")
        refunded = sum(
            (c["amount"] for c in money if c["transaction_type"] == "refund" and c["amount"] > 0), Decimal(0)
        )
        purchase_refunds = sum(
            (c["amount"] for c in money if c["transaction_type"] == "refund" and c["amount"] < 0), Decimal(0)
        )
        return dict(
            total_users=sum(created < hi for created in self.users.values()),
            active_users=len(self.expected_user_rows(d)),
            new_users=sum(lo <= created < hi for created in self.users.values()),
            total_sessions=len(started),
            successful_sessions=sum(s["execution_status"] == "completed" for s in ended),
            failed_sessions=sum(s["execution_status"] == "failed" for s in ended),
            cancelled_sessions=sum(s["execution_status"] == "cancelled" for s in ended),
            ended_sessions=len(ended),
            total_session_time_seconds=int(half_up(exact_seconds)),
            avg_session_duration_minutes=half_up(exact_seconds / len(ended) / 60, "0.01") if ended else None,
            total_claude_costs_usd=sum(
                (c["claude_cost_usd"] for c in money if c["transaction_type"] in ("usage", "admin_bypass")), Decimal(0)
            ),
            total_credit_revenue=used - refunded,
            total_credits_purchased=total("purchase") + purchase_refunds,
            total_credits_used=used,
            total_credits_refunded=refunded,
            total_tokens_consumed=sum(s["tokens_used"] for s in ended),
            context_tokens_used=sum(s["context_tokens_used"] for s in ended),
            total_agents_spawned=sum(s["session_depth"] > 0 for s in started),
            recursion_depth_sum=depth_sum,
            avg_recursion_depth=half_up(Decimal(depth_sum) / len(started), "0.01") if started else None,
            max_recursion_depth=max((s["session_depth"] for s in started), default=None),
            admin_sessions=sum(s["is_admin_session"] for s in started),
            admin_bypass_transactions=sum(c["transaction_type"] == "admin_bypass" for c in money),
            **{
                f"{p.lower()}_phase_time_seconds": int(
                    half_up(sum((Decimal(x["duration_ms"]) for x in phases if x["from_phase"] == p), Decimal(0)) / 1000)
                )
                for p in PHASES
            },
        )


def build_world(db, make_user, admin_id, seed: int = 6) -> Raw:
    """Four users and the admin, with sessions, phases, tools, git operations and money spread
    over the evening before DAY to the morning after, plus rows on the exact UTC midnights."""
    rng = random.Random(seed)
    conn = db.su()
    raw = Raw(conn)
    admin = raw.user(admin_id, at(DAY - timedelta(days=100)))
    alice = raw.user(make_user("alice"), at(DAY - timedelta(days=10)))
    bob = raw.user(make_user("bob"), at(BEFORE, 23, 59, 59, 999999))  # new the day before
    carol = raw.user(make_user("carol"), at(DAY))  # new on DAY, at 00:00:00
    dave = raw.user(make_user("dave"), at(AFTER))  # new the day after
    window = (at(BEFORE, 20), at(AFTER, 4))

    def moment():
        span = int((window[1] - window[0]).total_seconds() * 1_000_000)
        return window[0] + timedelta(microseconds=rng.randrange(span))

    for user in (alice, bob, carol):
        raw.money(user, "purchase", Decimal("10000.000000"), at(DAY - timedelta(days=3)))
    raw.money(dave, "purchase", Decimal("50.000000"), at(AFTER, 0, 0, 0, 1))
    # A purchase refunded on the day: it nets the purchases out and is no revenue.
    bought = raw.money(carol, "purchase", Decimal("20.000000"), at(DAY, 2))
    raw.money(carol, "refund", Decimal("-20.000000"), at(DAY, 3), refund_of=bought["id"])

    for user in (admin, alice, bob, carol):
        roots = []
        for _ in range(rng.randint(6, 10)):
            start = moment()
            status = rng.choice(["running", "completed", "completed", "failed", "cancelled"])
            end = (
                None
                if status == "running"
                else start + timedelta(seconds=rng.randint(0, 4 * 3600), microseconds=rng.randrange(1_000_000))
            )
            parent = rng.choice(roots) if roots and rng.random() < 0.5 else None
            s = raw.session(
                user,
                start,
                end,
                status,
                parent,
                tokens=rng.randint(0, 50_000),
                context_tokens=rng.randint(0, 20_000),
                files_modified=[f"f{i}.py" for i in range(rng.randint(0, 3))],
                files_created=[f"n{i}.py" for i in range(rng.randint(0, 2))],
                is_admin=user == admin,
            )
            roots.append(s)
            for _ in range(rng.randint(0, 3)):
                a, b = rng.sample(PHASES, 2)
                raw.phase(s, a, b, moment(), rng.choice([None, 500, 1499, rng.randint(0, 900_000)]))
            for _ in range(rng.randint(0, 3)):
                raw.tool(s, rng.choice(TOOLS), moment())
            if rng.random() < 0.5:
                raw.git(s, moment())
            cost = Decimal(rng.randint(1, 3_000_000)) / 1_000_000
            if user == admin:
                raw.money(admin, "admin_bypass", Decimal(0), moment(), cost)
            else:
                charge = raw.usage(user, cost, moment())
                if rng.random() < 0.2:
                    raw.money(user, "refund", -charge["amount"], moment(), refund_of=charge["id"])

    # The boundaries, to the microsecond.
    edge = raw.session(alice, at(DAY), at(AFTER), "completed", tokens=7, context_tokens=3)
    late = raw.session(alice, at(BEFORE, 23, 59, 59, 999999), at(DAY), "failed", tokens=11)
    raw.phase(late, "EXPLORE", "PLAN", at(BEFORE, 23, 59, 59, 999999), 2500)
    raw.phase(edge, "PLAN", "FOUND", at(DAY), 1500)
    raw.tool(edge, "grep", at(DAY, 23, 59, 59, 999999))
    raw.git(edge, at(AFTER))
    raw.usage(alice, Decimal("0.100001"), at(DAY, 23, 59, 59, 999999))
    raw.usage(alice, Decimal("0.200002"), at(AFTER))
    raw.usage(bob, Decimal("0.300003"), at(BEFORE, 23, 59, 59, 999999))
    raw.money(bob, "adjustment", Decimal("1.500000"), at(DAY))  # active, but neither bought nor used
    raw.usage(dave, Decimal("1.000000"), at(AFTER, 1))
    raw.finish()
    return raw


@pytest.fixture
def world(db, make_user, admin_id):
    raw = build_world(db, make_user, admin_id)
    yield raw
    raw.conn.close()


def maintenance(db, time_zone: str = "UTC") -> psycopg.Connection:
    conn = psycopg.connect(db.maintenance_url, autocommit=True)
    conn.execute("SELECT pg_catalog.set_config('TimeZone', %s, false)", (time_zone,))
    return conn


def rollup(db, *days: date, time_zone: str = FAR_TIME_ZONE) -> None:
    with maintenance(db, time_zone) as conn:
        for d in days:
            conn.execute("SELECT keen.rollup_daily_analytics(%s)", (d,))


def usage_rows(db, d: date) -> dict[uuid.UUID, dict[str, Any]]:
    with db.su() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM keen.daily_usage_stats WHERE date_bucket = %s", (d,))
        return {r["user_id"]: r for r in cur.fetchall()}


def platform_row(db, d: date) -> dict[str, Any] | None:
    with db.su() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM keen.daily_analytics WHERE date_bucket = %s", (d,))
        return cur.fetchone()


def all_rollup_rows(db) -> tuple[list, list]:
    with db.su() as conn:
        return (
            conn.execute("SELECT * FROM keen.daily_usage_stats ORDER BY date_bucket, user_id").fetchall(),
            conn.execute("SELECT * FROM keen.daily_analytics ORDER BY date_bucket").fetchall(),
        )


# The rollup against the raw rows.


def test_rollup_figures_equal_an_independent_computation_over_the_raw_rows_at_utc_midnights(db, world):
    rollup(db, BEFORE, DAY, AFTER)
    for d in (BEFORE, DAY, AFTER):
        expected = world.expected_user_rows(d)
        got = usage_rows(db, d)
        assert set(got) == set(expected), f"active users of {d}"
        for user_id, want in expected.items():
            have = {k: got[user_id][k] for k in want}
            assert have == want, f"{d} user {user_id}"
        want_platform = world.expected_platform_row(d)
        have_platform = platform_row(db, d)
        assert {k: have_platform[k] for k in want_platform} == want_platform, f"platform row of {d}"
    assert_ledger_clean(db)


def test_rows_one_microsecond_either_side_of_midnight_fall_on_their_own_utc_day(db, world):
    rollup(db, BEFORE, DAY, AFTER)
    alice = next(u for u, created in world.users.items() if created == at(DAY - timedelta(days=10)))
    # The session ending at exactly DAY 00:00 is DAY's; the one starting then ends on AFTER.
    assert usage_rows(db, DAY)[alice]["sessions_failed"] == world.expected_user_rows(DAY)[alice]["sessions_failed"] >= 1
    # carol was created at DAY 00:00:00 (new on DAY), bob one microsecond before (new on BEFORE).
    assert platform_row(db, DAY)["new_users"] == 1
    assert platform_row(db, BEFORE)["new_users"] == 1
    assert platform_row(db, AFTER)["new_users"] == 1
    assert platform_row(db, BEFORE)["total_users"] == 3
    assert platform_row(db, AFTER)["total_users"] == 5


def test_the_session_time_zone_changes_no_figure(db, world):
    rollup(db, DAY, time_zone="UTC")
    in_utc = usage_rows(db, DAY), platform_row(db, DAY)
    for zone in ("Asia/Kolkata", "America/St_Johns", "Pacific/Kiritimati"):
        with db.su() as conn:
            conn.execute("DELETE FROM keen.daily_usage_stats")
            conn.execute("DELETE FROM keen.daily_analytics")
        rollup(db, DAY, time_zone=zone)
        strip = lambda r: {k: v for k, v in r.items() if k not in ("id", "created_at", "updated_at")}  # noqa: E731
        assert {u: strip(r) for u, r in usage_rows(db, DAY).items()} == {u: strip(r) for u, r in in_utc[0].items()}
        assert strip(platform_row(db, DAY)) == strip(in_utc[1])


def test_per_user_rows_add_up_to_the_platform_row(db, world):
    rollup(db, DAY)
    users = usage_rows(db, DAY).values()
    platform = platform_row(db, DAY)
    assert platform["active_users"] == len(users)
    assert platform["total_sessions"] == sum(u["sessions_started"] for u in users)
    assert platform["successful_sessions"] == sum(u["sessions_completed"] for u in users)
    assert platform["total_credits_used"] == sum(u["credits_used"] for u in users)
    assert platform["total_credits_purchased"] == sum(u["credits_purchased"] for u in users)
    assert platform["total_claude_costs_usd"] == sum(u["total_claude_cost_usd"] for u in users)
    assert platform["admin_bypass_transactions"] == sum(u["admin_bypass_transactions"] for u in users)
    assert platform["total_tokens_consumed"] == sum(u["total_tokens_consumed"] for u in users)


# Idempotency.


def test_rollup_twice_gives_identical_rows_down_to_ids_and_timestamps(db, world):
    rollup(db, BEFORE, DAY, AFTER)
    first = all_rollup_rows(db)
    rollup(db, BEFORE, DAY, AFTER, time_zone="UTC")
    assert all_rollup_rows(db) == first
    assert len(first[1]) == 3


def test_rerun_updates_changed_rows_and_deletes_rows_of_users_no_longer_active(db, world, make_user):
    rollup(db, DAY)
    before = usage_rows(db, DAY)
    stranger = make_user("stranger")
    alice = next(u for u, created in world.users.items() if created == at(DAY - timedelta(days=10)))
    with db.su() as conn:  # a row the raw data does not support (e.g. from a since-fixed bug)
        conn.execute(
            "INSERT INTO keen.daily_usage_stats (user_id, date_bucket, sessions_started) VALUES (%s, %s, 9)",
            (stranger, DAY),
        )
    world.session(alice, at(DAY, 12), None, "running")
    rollup(db, DAY)
    after = usage_rows(db, DAY)
    assert stranger not in after
    assert after[alice]["sessions_started"] == before[alice]["sessions_started"] + 1
    assert after[alice]["id"] == before[alice]["id"]
    assert after[alice]["updated_at"] > before[alice]["updated_at"]
    unchanged = [u for u in before if u != alice]
    assert all(after[u] == before[u] for u in unchanged)
    assert platform_row(db, DAY)["active_users"] == len(after)


def test_a_day_without_activity_gets_a_platform_row_of_zeros(db, admin_id):
    rollup(db, date(2020, 1, 1))
    row = platform_row(db, date(2020, 1, 1))
    assert row["total_users"] == 0 and row["total_sessions"] == 0 and row["active_users"] == 0
    assert row["avg_session_duration_minutes"] is None and row["max_recursion_depth"] is None
    assert usage_rows(db, date(2020, 1, 1)) == {}


# Who may run and read what.


def test_rollup_is_for_admins_and_the_maintenance_role_only(db, keen, admin_id, make_user):
    user = make_user()
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(user) as tx:
            tx.analytics.rollup_daily_analytics(DAY)
    with pytest.raises(errors.PermissionDenied):
        with keen.transaction() as tx:
            tx.analytics.rollup_daily_analytics(DAY)
    with keen.as_user(admin_id) as tx:
        tx.analytics.rollup_daily_analytics(DAY)
        tx.analytics.rollup_daily_analytics()
    assert platform_row(db, DAY) is not None
    assert platform_row(db, datetime.now(UTC).date()) is not None


def test_rollup_refuses_a_future_day(keen, admin_id):
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(admin_id) as tx:
            tx.execute("SELECT keen.rollup_daily_analytics(%s::date)", (datetime.now(UTC).date() + timedelta(days=2),))


def test_a_null_day_is_todays_accounting_day_like_an_omitted_one(db, keen, admin_id):
    """The default is NULL, read as keen_private.accounting_day(now()) (UTC): a default expression
    would run with keen_app's privileges, which cannot call keen_private."""
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.rollup_daily_analytics(NULL)")
    assert platform_row(db, datetime.now(UTC).date()) is not None


def test_platform_metrics_is_admin_only(db, keen, admin_id, make_user):
    user = make_user()
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(user) as tx:
            tx.analytics.platform_metrics(BEFORE, AFTER)
    with pytest.raises(errors.PermissionDenied):
        with keen.transaction() as tx:
            tx.analytics.platform_metrics(BEFORE, AFTER)
    with maintenance(db) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT keen.platform_metrics(%s, %s)", (BEFORE, AFTER))
    with keen.as_user(admin_id) as tx:
        assert tx.analytics.platform_metrics(BEFORE, AFTER).days_rolled_up == 0


@pytest.mark.parametrize("from_, to", [(None, DAY), (DAY, None), (AFTER, BEFORE), (date(2000, 1, 1), date(2020, 1, 1))])
def test_platform_metrics_refuses_a_null_reversed_or_absurd_range(keen, admin_id, from_, to):
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(admin_id) as tx:
            tx.analytics.platform_metrics(from_, to)


def test_platform_metrics_over_several_days_combines_the_rollups_exactly(db, keen, admin_id, world):
    rollup(db, BEFORE, DAY, AFTER)
    days = [world.expected_platform_row(d) for d in (BEFORE, DAY, AFTER)]
    total = lambda key: sum(d[key] for d in days)  # noqa: E731
    with keen.as_user(admin_id) as tx:
        m = tx.analytics.platform_metrics(BEFORE, AFTER)
    assert (m.days_in_range, m.days_rolled_up) == (3, 3)
    assert m.total_users == days[-1]["total_users"] == 5
    assert m.active_users == max(d["active_users"] for d in days)
    assert m.active_user_days == total("active_users")
    assert m.new_users == total("new_users") == 3
    summed = {  # PlatformMetrics field: daily_analytics column it sums
        "total_sessions": "total_sessions",
        "successful_sessions": "successful_sessions",
        "failed_sessions": "failed_sessions",
        "cancelled_sessions": "cancelled_sessions",
        "total_claude_cost_usd": "total_claude_costs_usd",
        "total_credit_revenue": "total_credit_revenue",
        "credits_purchased": "total_credits_purchased",
        "credits_used": "total_credits_used",
        "credits_refunded": "total_credits_refunded",
        "total_tokens": "total_tokens_consumed",
        "context_tokens": "context_tokens_used",
        "agents_spawned": "total_agents_spawned",
    }
    assert {f: getattr(m, f) for f in summed} == {f: total(col) for f, col in summed.items()}
    assert m.admin_sessions == total("admin_sessions") > 0
    assert m.admin_bypass_transactions == total("admin_bypass_transactions") > 0
    assert m.max_recursion_depth == max(d["max_recursion_depth"] for d in days if d["max_recursion_depth"] is not None)
    assert m.avg_recursion_depth == half_up(Decimal(total("recursion_depth_sum")) / total("total_sessions"), "0.01")
    assert m.avg_session_duration_minutes == half_up(
        Decimal(total("total_session_time_seconds")) / total("ended_sessions") / 60, "0.01"
    )
    assert m.markup_effectiveness == half_up(m.total_credit_revenue / m.total_claude_cost_usd, "0.000001")
    assert m.phase_time_seconds == {p: total(f"{p.lower()}_phase_time_seconds") for p in PHASES}
    assert all(isinstance(v, Decimal) for v in (m.total_claude_cost_usd, m.credits_used, m.markup_effectiveness))
    assert_ledger_clean(db)


def test_markup_effectiveness_is_the_markup_when_all_usage_is_charged(db, keen, admin_id, make_user):
    user = make_user()
    with db.su() as conn:
        raw = Raw(conn)
        raw.user(user, at(DAY - timedelta(days=5)))
        raw.money(user, "purchase", Decimal("100"), at(DAY, 1))
        raw.usage(user, Decimal("1.234567"), at(DAY, 2))
        raw.usage(user, Decimal("0.000001"), at(DAY, 3))
        raw.finish()
    rollup(db, DAY)
    with keen.as_user(admin_id) as tx:
        m = tx.analytics.platform_metrics(DAY, DAY)
    assert m.markup_effectiveness == Decimal("5.000000")
    assert m.credits_purchased == Decimal("100") and m.credits_used == Decimal("6.172840")
    assert_ledger_clean(db)


def test_platform_metrics_reads_the_rollups_not_the_raw_rows(db, keen, admin_id, world):
    rollup(db, DAY)
    with keen.as_user(admin_id) as tx:
        before = tx.analytics.platform_metrics(DAY, DAY)
    alice = next(u for u, created in world.users.items() if created == at(DAY - timedelta(days=10)))
    world.usage(alice, Decimal("2.5"), at(DAY, 6))
    world.finish()
    with keen.as_user(admin_id) as tx:
        assert tx.analytics.platform_metrics(DAY, DAY) == before
    rollup(db, DAY)
    with keen.as_user(admin_id) as tx:
        assert tx.analytics.platform_metrics(DAY, DAY).credits_used == before.credits_used + Decimal("12.5")
    assert_ledger_clean(db)


def test_user_usage_shows_a_user_their_own_days_and_hides_other_tenants(db, keen, admin_id, world):
    rollup(db, BEFORE, DAY, AFTER)
    alice = next(u for u, created in world.users.items() if created == at(DAY - timedelta(days=10)))
    bob = next(u for u, created in world.users.items() if created == at(BEFORE, 23, 59, 59, 999999))
    with keen.as_user(alice) as tx:
        own = tx.analytics.user_usage(alice, BEFORE, AFTER)
    assert [r.date_bucket for r in own] == sorted(
        d for d in (BEFORE, DAY, AFTER) if alice in world.expected_user_rows(d)
    )
    assert all(r.user_id == alice for r in own)
    assert own[0].credits_used == usage_rows(db, own[0].date_bucket)[alice]["credits_used"]
    with pytest.raises(errors.NotFound):
        with keen.as_user(alice) as tx:
            tx.analytics.user_usage(bob, BEFORE, AFTER)
    with pytest.raises(errors.NotFound):
        with keen.as_user(alice) as tx:
            tx.analytics.user_usage(uuid.uuid4(), BEFORE, AFTER)
    with keen.as_user(admin_id) as tx:
        assert [r.user_id for r in tx.analytics.user_usage(bob, BEFORE, AFTER)] == [bob] * len(
            [d for d in (BEFORE, DAY, AFTER) if bob in world.expected_user_rows(d)]
        )
    with keen.as_user(alice) as tx:
        assert tx.analytics.user_usage(alice, date(2001, 1, 1), date(2001, 1, 2)) == []
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(alice) as tx:
            tx.analytics.user_usage(alice, AFTER, BEFORE)


# The 24-hour dashboard.


def test_dashboard_refresh_counts_every_tenants_sessions_by_utc_hour(db, keen, admin_id, make_user):
    now = datetime.now(UTC)
    users = [make_user(), make_user()]
    with db.su() as conn:
        raw = Raw(conn)
        for u in users:
            raw.user(u, now - timedelta(days=2))
        raw.session(users[0], now - timedelta(hours=1), now - timedelta(minutes=30), "completed", tokens=100)
        raw.session(users[1], now - timedelta(hours=1, minutes=1), now, "failed", tokens=50)
        raw.session(users[1], now - timedelta(hours=5), None, "running", tokens=7)
        raw.session(users[0], now - timedelta(hours=30), now - timedelta(hours=29), "completed")  # too old
    with keen.as_user(admin_id) as tx:
        refreshed = tx.analytics.refresh_dashboard_metrics()
        hours = tx.analytics.dashboard_metrics()
    top = refreshed.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    assert [h.hour_bucket for h in hours] == [top - timedelta(hours=23 - i) for i in range(24)]
    expected: dict[datetime, list[dict]] = {}
    for s in raw.sessions:
        bucket = s["start_time"].replace(minute=0, second=0, microsecond=0)
        if top - timedelta(hours=23) <= bucket <= top:
            expected.setdefault(bucket, []).append(s)
    for h in hours:
        ss = expected.get(h.hour_bucket, [])
        assert h.sessions_started == len(ss)
        assert h.sessions_completed == sum(s["execution_status"] == "completed" for s in ss)
        assert h.sessions_failed == sum(s["execution_status"] == "failed" for s in ss)
        assert h.total_tokens == sum(s["tokens_used"] for s in ss)
        assert h.refreshed_at == refreshed
    assert sum(h.sessions_started for h in hours) == 3


def test_dashboard_view_is_readable_only_through_the_admin_function(db, keen, admin_id, make_user):
    user = make_user()
    with pytest.raises(errors.PermissionDenied):
        with keen.as_user(admin_id) as tx:
            tx.scalar("SELECT count(*) FROM keen.admin_dashboard_metrics")
    for actor in (user, None):
        with pytest.raises(errors.PermissionDenied):
            with keen.as_user(actor) if actor else keen.transaction() as tx:
                tx.analytics.dashboard_metrics()
        with pytest.raises(errors.PermissionDenied):
            with keen.as_user(actor) if actor else keen.transaction() as tx:
                tx.analytics.refresh_dashboard_metrics()


def test_maintenance_refreshes_the_dashboard_concurrently_and_sees_every_tenant(db, keen, admin_id, make_user):
    user = make_user()
    now = datetime.now(UTC)
    with db.su() as conn:
        Raw(conn).session(user, now - timedelta(minutes=10))
    with maintenance(db) as conn:
        conn.execute("SELECT keen.refresh_dashboard_metrics()")
        conn.execute("SELECT keen.refresh_dashboard_metrics()")  # concurrently, again: same keys
    with keen.as_user(admin_id) as tx:
        assert sum(h.sessions_started for h in tx.analytics.dashboard_metrics()) == 1


# keen-db rollup and the demo step.


def invoke(db, *args: str):
    return CliRunner().invoke(cli, ["--database-url", db.superuser_url, "rollup", *args])


def test_cli_rolls_up_one_day_or_a_backfill_as_the_maintenance_role(db, world):
    result = invoke(db, "--day", DAY.isoformat(), "--no-dashboard")
    assert result.exit_code == 0, result.output
    assert f"rolled up {DAY}" in result.output
    assert platform_row(db, DAY)["total_sessions"] == world.expected_platform_row(DAY)["total_sessions"]
    result = invoke(db, "--from", BEFORE.isoformat(), "--to", AFTER.isoformat())
    assert result.exit_code == 0, result.output
    assert "3 day(s) rolled up" in result.output and "refreshed the 24-hour dashboard" in result.output
    assert all(platform_row(db, d) is not None for d in (BEFORE, DAY, AFTER))
    result = invoke(db)
    assert result.exit_code == 0 and platform_row(db, datetime.now(UTC).date()) is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--day", "2025-02-30"], "not a date in the form YYYY-MM-DD"),
        (["--day", "yesterday"], "not a date in the form YYYY-MM-DD"),
        (["--from", "2025-03-02", "--to", "2025-03-01"], "is after --to"),
        (["--day", "2025-03-01", "--from", "2025-03-01"], "either --day or --from/--to"),
        (["--to", "2025-03-01"], "--to needs --from"),
        (["--day", "2999-01-01"], "after today"),
    ],
)
def test_cli_refuses_bad_dates_with_a_clear_message(db, args, message):
    result = invoke(db, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert platform_row(db, date(2025, 3, 1)) is None


def test_demo_step_rolls_up_today_and_prints_the_platform_metrics(db, keen, settings):
    from keen_db.demo import DemoContext
    from keen_db.demo import analytics as demo_analytics

    console = Console(record=True, width=120)
    ctx = DemoContext(settings, db.name, keen, console)
    demo_analytics.run(ctx)
    out = console.export_text()
    assert "platform_metrics" in out and "markup effectiveness" in out
    assert ctx.state["admin_id"]
    assert platform_row(db, datetime.now(UTC).date()) is not None


def test_user_usage_through_a_scoped_key_needs_credits_read(db, keen, make_user):
    """user_usage reports the account's usage and spend, like usage_by_model: credits:read."""
    user = make_user()
    with keen.as_user(user) as tx:
        read_sessions = tx.scalar("SELECT token FROM keen.create_api_key('s', '{sessions:read}')")
        read_credits = tx.scalar("SELECT token FROM keen.create_api_key('c', '{credits:read}')")
    with pytest.raises(errors.PermissionDenied), keen.with_api_key(read_sessions) as tx:
        tx.analytics.user_usage(user, BEFORE, AFTER)
    with keen.with_api_key(read_credits) as tx:
        assert tx.analytics.user_usage(user, BEFORE, AFTER) == []
