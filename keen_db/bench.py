"""`keen-db bench`: every figure of DESIGN.md "Performance", against one server, in one run.

Settings are pinned: synchronous_commit=on for every connection (PGOPTIONS for pgbench, the
pool's options for the client), pgbench -M prepared, -j 2 (-j 1 at one client), no vacuum
between runs. Throughput figures are the median of at least three interleaved rounds (five of
10 s by default; each round runs every figure once, in the same order, the two sides of a
ratio back to back), and each ratio is the median of its per-round ratios, so a slow minute
hurts both sides of a ratio alike.

Data (created fresh in the database keen_bench, migrated by keen_db.deploy; pgbench's own
tpcb-like tables in keen_bench_tpcb; both dropped at the end unless --keep):
  * 10,000 users with credits, inserted as superuser with their ledger consistent (one purchase
    each); user n has the id bench_uid(n) so scripts can pick one with pgbench's random().
  * the hot user is user 1; user 2 owns the session trees (10,000 and 100,000 nodes, fan-out 10).
  * the ledger grown to 1,000,000 rows over the past year and a year of daily rollups, for
    platform_metrics (the tenfold check adds 9,000,000 more rows; skipped with --quick).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql

from . import bench_auth, bench_client, bench_ledger, bench_streaming, cluster, config, deploy
from .sql import value

BENCH_DB = "keen_bench"
HOT_USER = 1
TREE_USER = 2
PINNED = "-c synchronous_commit=on"


def bench_uid(n: int) -> uuid.UUID:
    """The id of bench user n (the SQL function public.bench_uid gives the same)."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


# --- data: fast, as superuser, ledger always consistent --------------------------------------

SEED_USERS = """
WITH u AS (
    INSERT INTO keen.users (id, email, username, password_hash, display_name)
    SELECT ('00000000-0000-4000-8000-' || pg_catalog.lpad(g::text, 12, '0'))::uuid,
           'bench_user_' || g || '@example.com', 'bench_user_' || g, '!', 'bench user ' || g
      FROM pg_catalog.generate_series(%(first)s::int, %(last)s::int) g
    RETURNING id
), a AS (
    INSERT INTO keen.credit_accounts (user_id, current_balance, lifetime_purchased)
    SELECT id, %(balance)s, %(balance)s FROM u
    RETURNING id, user_id
)
INSERT INTO keen.credit_transactions (user_id, account_id, transaction_type, amount, balance_after, description)
SELECT user_id, id, 'purchase', %(balance)s, %(balance)s, 'bench seed' FROM a
"""


def seed_users(conn: psycopg.Connection, count: int, balance: Decimal = Decimal("1000000"), first: int = 1) -> None:
    """Users first..first+count-1 (ids bench_uid(n)) with one purchase of `balance` each."""
    conn.execute(SEED_USERS, {"first": first, "last": first + count - 1, "balance": balance})


SEED_LEDGER = """
-- %(per)s rows per account, alternating a purchase of 2 and a usage of 1 (cost 0.2 at 5x),
-- spread over the %(days)s days before today; the balance moves by the sum of the rows.
WITH acc AS (
    SELECT a.id, a.user_id, a.current_balance AS base
      FROM keen.credit_accounts a JOIN keen.users u ON u.id = a.user_id
     WHERE u.username LIKE 'bench\\_user\\_%%' AND NOT a.unlimited_credits
), ins AS (
    INSERT INTO keen.credit_transactions (user_id, account_id, transaction_type, amount, balance_after,
                                          claude_cost_usd, markup_multiplier, description, created_at)
    SELECT acc.user_id, acc.id,
           CASE WHEN i %% 2 = 1 THEN 'purchase' ELSE 'usage' END,
           CASE WHEN i %% 2 = 1 THEN 2 ELSE -1 END,
           acc.base + 2 * ((i + 1) / 2) - i / 2,
           CASE WHEN i %% 2 = 1 THEN NULL ELSE 0.2 END,
           CASE WHEN i %% 2 = 1 THEN NULL ELSE 5.0 END,
           'bench history',
           pg_catalog.date_trunc('day', pg_catalog.now()) - pg_catalog.make_interval(secs => 1)
             - pg_catalog.make_interval(secs => (86400.0 * %(days)s * (%(per)s - i) / %(per)s))
      FROM acc, pg_catalog.generate_series(1, %(per)s::int) i
    RETURNING 1
)
SELECT pg_catalog.count(*) FROM ins
"""

SEED_LEDGER_BALANCES = """
UPDATE keen.credit_accounts a
   SET current_balance = a.current_balance + 2 * ((%(per)s + 1) / 2) - %(per)s / 2,
       lifetime_purchased = a.lifetime_purchased + 2 * ((%(per)s + 1) / 2),
       lifetime_spent = a.lifetime_spent + %(per)s / 2
  FROM keen.users u
 WHERE u.id = a.user_id AND u.username LIKE 'bench\\_user\\_%%' AND NOT a.unlimited_credits
"""


def seed_ledger(conn: psycopg.Connection, per_account: int, days: int = 365) -> int:
    """Add `per_account` ledger rows to every bench account in one transaction (balances follow)."""
    with conn.transaction():
        n = value(conn, SEED_LEDGER, {"per": per_account, "days": days})
        conn.execute(SEED_LEDGER_BALANCES, {"per": per_account})
    return n


SEED_TREE_ROOT = """
INSERT INTO keen.agent_sessions (user_id, session_id, git_branch, vision, working_directory)
VALUES (%(user)s, %(prefix)s, 'main', 'bench tree', '/bench') RETURNING id
"""
SEED_TREE_LEVEL = """
INSERT INTO keen.agent_sessions (user_id, session_id, parent_session_id, git_branch, vision, working_directory)
SELECT %(user)s, %(prefix)s || '-' || %(depth)s || '-' || pg_catalog.row_number() OVER (), p.id,
       'b' || g, 'bench tree', '/bench'
  FROM (SELECT id FROM keen.agent_sessions
         WHERE user_id = %(user)s AND session_depth = %(depth)s - 1
           AND (session_id = %(prefix)s OR session_id LIKE %(prefix)s || '-%%')
         ORDER BY id LIMIT %(parents)s) p,
       pg_catalog.generate_series(1, %(fanout)s) g
 LIMIT %(limit)s
"""


def seed_tree(conn: psycopg.Connection, user_id: uuid.UUID, prefix: str, nodes: int, fanout: int = 10) -> uuid.UUID:
    """A session tree of `nodes` nodes (breadth first, `fanout` children each) as superuser;
    session_depth and tree_path come from the parent (the sessions' insert trigger)."""
    root = value(conn, SEED_TREE_ROOT, {"user": user_id, "prefix": prefix})
    made, depth, width = 1, 1, 1
    while made < nodes:
        # Fresh statistics (and so fresh cached plans: the foreign key check's and the
        # trigger's) before each level; a plan made while the table was tiny scans it whole
        # for every row once it is large.
        conn.execute("ANALYZE keen.agent_sessions")
        limit = min(nodes - made, width * fanout)
        conn.execute(
            SEED_TREE_LEVEL,
            {
                "user": user_id,
                "prefix": prefix,
                "depth": depth,
                "parents": -(-limit // fanout),
                "fanout": fanout,
                "limit": limit,
            },
        )
        made, depth, width = made + limit, depth + 1, limit
    return root


BENCH_OBJECTS = """
CREATE OR REPLACE FUNCTION public.bench_uid(p_n integer) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$ SELECT ('00000000-0000-4000-8000-' || pg_catalog.lpad(p_n::text, 12, '0'))::uuid $$;
GRANT EXECUTE ON FUNCTION public.bench_uid(integer) TO keen_app;
CREATE TABLE public.bench_hot (id integer PRIMARY KEY, balance numeric(20,6) NOT NULL);
INSERT INTO public.bench_hot VALUES (1, 1000000);
CREATE TABLE public.bench_events_twin (LIKE keen.streaming_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE public.bench_events_twin
    ADD FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id);
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
"""

# --- pgbench scripts: each figure is one file, run with -D users=N (and sid/uid where needed)

SCRIPTS = {
    # One round trip: the actor and the whole rule in one statement (act_as runs first: it is
    # the FROM item the select list is computed over).
    "deduct": """\\set n random(1, :users)
SELECT (keen.deduct_credits(public.bench_uid(:n), 0.01)).id FROM keen.act_as(public.bench_uid(:n));
""",
    "replay": """SELECT (keen.deduct_credits(public.bench_uid(1), 0.01, NULL, 'bench replay', 'bench-replay')).id
  FROM keen.act_as(public.bench_uid(1));
""",
    "update": """UPDATE public.bench_hot SET balance = balance - 0.01 WHERE id = 1 RETURNING balance;
""",
    "partitioned": """INSERT INTO keen.streaming_events (session_id, user_id, event_type, event_data)
VALUES (:sid, :uid, 'bench', '{"n": 1}');
""",
    "twin": """INSERT INTO public.bench_events_twin (session_id, user_id, event_type, event_data)
VALUES (:sid, :uid, 'bench', '{"n": 1}');
""",
}

# The same work as keen.deduct_credits, sent statement by statement under the same security:
# the same actor (keen.act_as) and the owner's forced row-level security (keen_app may not
# write, so the superuser connection switches to keen_owner): check the user, lock the
# account, read the markup, check holds and limits, move the balance and the usage counters,
# append the ledger row. Mirrors keen_private.credit_charge in db/functions/credits.sql.
# Usage metering (issue 12): one LLM call of user n's session, priced and charged, one round trip.
SCRIPTS["metered"] = """\\set n random(1, :users)
SELECT (keen.record_llm_usage(public.bench_sid(:n), 'claude-haiku-4-5', 1000, 100)).usage_id
  FROM keen.act_as(public.bench_uid(:n));
"""

# One running session per bench user, with the id bench_sid(n), for the metered figure.
SEED_METER_SESSIONS = """
CREATE OR REPLACE FUNCTION public.bench_sid(p_n integer) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$ SELECT ('00000000-0000-4000-9000-' || pg_catalog.lpad(p_n::text, 12, '0'))::uuid $$;
GRANT EXECUTE ON FUNCTION public.bench_sid(integer) TO keen_app;
"""
SEED_METER_ROWS = """
INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory)
SELECT public.bench_sid(g), public.bench_uid(g), 'metered', 'main', 'bench metering', '/bench'
  FROM pg_catalog.generate_series(1, %(users)s::int) g;
"""


def seed_meter_sessions(conn: psycopg.Connection, users: int) -> None:
    """One session per bench user (id bench_sid(n)) for the record_llm_usage figure."""
    conn.execute(SEED_METER_SESSIONS)
    conn.execute(SEED_METER_ROWS, {"users": users})


SCRIPTS["script"] = """\\set n random(1, :users)
BEGIN;
SELECT keen.act_as(public.bench_uid(:n));
SET LOCAL ROLE keen_owner;
SELECT account_status AS status FROM keen.users WHERE id = public.bench_uid(:n) \\gset
SELECT id AS acct, current_balance AS bal, COALESCE(daily_limit, -1) AS dl, COALESCE(monthly_limit, -1) AS ml,
       unlimited_credits AS unl, COALESCE(live_holds_until, '-infinity') AS holds_until
  FROM keen.credit_accounts WHERE user_id = public.bench_uid(:n) FOR UPDATE \\gset
SELECT (value #>> '{}')::numeric AS markup FROM keen.settings WHERE key = 'markup_multiplier' \\gset
SELECT pg_catalog.round(0.01 * (:markup)::numeric, 6) AS charge \\gset
SELECT COALESCE(pg_catalog.sum(held_credits), 0) AS held FROM keen.credit_reservations
 WHERE account_id = (:acct)::uuid AND status = 'held' AND expires_at > pg_catalog.now() \\gset
UPDATE keen.credit_accounts
   SET current_balance = current_balance - (:charge)::numeric,
       lifetime_spent = lifetime_spent + (:charge)::numeric,
       spent_day = (pg_catalog.now() AT TIME ZONE 'UTC')::date,
       spent_day_total = CASE WHEN spent_day = (pg_catalog.now() AT TIME ZONE 'UTC')::date THEN spent_day_total ELSE 0 END + (:charge)::numeric,
       spent_month = pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')::date,
       spent_month_total = CASE WHEN spent_month = pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')::date
                                THEN spent_month_total ELSE 0 END + (:charge)::numeric,
       updated_at = pg_catalog.now()
 WHERE id = (:acct)::uuid AND current_balance - (:held)::numeric >= (:charge)::numeric
RETURNING current_balance AS newbal \\gset
INSERT INTO keen.credit_transactions (user_id, account_id, transaction_type, amount, balance_after,
                                      claude_cost_usd, markup_multiplier, description)
VALUES (public.bench_uid(:n), (:acct)::uuid, 'usage', -(:charge)::numeric, (:newbal)::numeric, 0.01,
        (:markup)::numeric, 'Agent execution')
RETURNING id;
END;
"""


@dataclass
class Config:
    quick: bool = False
    rounds: int = 3
    seconds: float = 15.0
    clients: int = 8
    users: int = 10_000
    tpcb_scale: int = 10
    ledger_rows: int = 1_000_000
    tree_sizes: tuple[int, int] = (10_000, 100_000)
    tenfold: bool = True
    keep: bool = False
    database: str = BENCH_DB

    @classmethod
    def make(cls, quick: bool, **over: Any) -> Config:
        if quick:
            # The trees are 1k and 10k nodes here (the same tenfold growth; the sizes are in
            # the settings of the result): seeding 110k sessions alone takes most of a minute.
            base = cls(
                quick=True, rounds=3, seconds=2.0, ledger_rows=100_000, tree_sizes=(1_000, 10_000), tenfold=False
            )
        else:
            base = cls(rounds=5, seconds=10.0)
        return cls(**{**base.__dict__, **{k: v for k, v in over.items() if v is not None}})


GOALS: list[tuple[str, str, str, Callable[[float], bool]]] = [
    ("ratio_deduct_vs_tpcb", "deduct_credits (10k users, 8 clients) / pgbench tpcb-like", ">= 1.5", lambda v: v >= 1.5),
    (
        "ratio_deduct_vs_script",
        "deduct_credits / the same work as a multi-statement script",
        ">= 1.4",
        lambda v: v >= 1.4,
    ),
    (
        "ratio_metered_vs_deduct",
        "record_llm_usage (10k users, 8 clients) / deduct_credits",
        ">= 0.8",
        lambda v: v >= 0.8,
    ),
    ("ratio_hot_c8_vs_c1", "one hot user: 8 clients / 1 client", ">= 0.9", lambda v: v >= 0.9),
    ("ratio_hot_vs_update_ceiling", "hot user at 8 clients / bare UPDATE ... RETURNING", ">= 0.6", lambda v: v >= 0.6),
    ("ratio_replay_vs_fresh", "idempotent replay / fresh deduction (hot user, 8 clients)", ">= 2", lambda v: v >= 2),
    ("ratio_client_vs_sql", "Python client (pool, 8 threads) / pgbench deduct_credits", ">= 0.4", lambda v: v >= 0.4),
    ("partitioned_insert_ratio", "insert into partitioned events / unpartitioned twin", ">= 0.9", lambda v: v >= 0.9),
    ("ratio_session_tree_100k_vs_10k", "session_tree 100k nodes / 10k nodes", "<= 12", lambda v: v <= 12),
    ("subtree_vs_pk_ratio", "subtree (<= 100 nodes) / primary-key lookup", "<= 2", lambda v: v <= 2),
    ("platform_metrics_ms", "platform_metrics over a year of rollups (ms)", "< 50", lambda v: v < 50),
    (
        "ratio_platform_metrics_10x",
        "platform_metrics with a tenfold ledger / before",
        "flat (<= 1.5)",
        lambda v: v <= 1.5,
    ),
]

GOALS.extend(bench_client.GOALS)
GOALS.extend(bench_streaming.GOALS)
GOALS.extend(bench_auth.GOALS)


class Bench:
    def __init__(self, s: config.Settings, cfg: Config, echo: Callable[[str], None]):
        self.s, self.cfg, self.echo = s, cfg, echo
        self.db, self.tpcb_db = cfg.database, f"{cfg.database}_tpcb"
        self.tmp = Path(tempfile.mkdtemp(prefix="keen_bench_"))
        self.samples: dict[str, list[float]] = {}
        self.failures = 0
        self.results: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}

    # -- plumbing
    def su(self, database: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.s.superuser_url(database or self.db), autocommit=True, options=PINNED)

    def _pgbench(self, conninfo: str, args: list[str], seconds: float, clients: int) -> float:
        from .backup import _libpq

        dsn, env = _libpq(conninfo)
        cmd = [
            cluster.pg_bin("pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(2, clients)),
            "-T",
            str(max(1, round(seconds))),
            *args,
            dsn,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env, "PGOPTIONS": PINNED})
        # Exit 2 with failed transactions (serialization, deadlock) is counted; an aborted
        # client (an error in the script) makes the figure meaningless.
        if res.returncode not in (0, 2) or "tps = " not in res.stdout or " aborted" in res.stderr:
            raise click.ClickException(f"pgbench {' '.join(args)} failed: {(res.stderr or res.stdout).strip()[-2000:]}")
        failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
        self.failures += int(failed.group(1)) if failed else 0
        tps = re.search(r"tps = ([0-9.]+)", res.stdout)
        if tps is None:
            raise click.ClickException(f"pgbench {' '.join(args)} printed no tps: {res.stdout.strip()[-2000:]}")
        return float(tps.group(1))

    def script(self, name: str) -> str:
        path = self.tmp / f"{name}.sql"
        if not path.exists():
            path.write_text(SCRIPTS[name])
        return str(path)

    def sample(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def has_function(self, signature: str) -> bool:
        with self.su() as conn:
            return value(conn, "SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL", (signature,))

    # -- set-up
    def setup(self) -> None:
        cfg, t0 = self.cfg, time.monotonic()
        with psycopg.connect(self.s.superuser_url("postgres"), autocommit=True) as conn:
            for name in (self.db, self.tpcb_db):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.tpcb_db)))
        self.echo(f"pgbench -i -s {cfg.tpcb_scale} into {self.tpcb_db}")
        from .backup import _libpq

        dsn, env = _libpq(self.s.superuser_url(self.tpcb_db))
        subprocess.run(
            [cluster.pg_bin("pgbench"), "-i", "-q", "-s", str(cfg.tpcb_scale), dsn],
            check=True,
            capture_output=True,
            env={**os.environ, **env},
        )
        self.echo(
            f"{self.db}: migrate, {cfg.users} users, trees of {cfg.tree_sizes[0]} and {cfg.tree_sizes[1]} sessions"
        )
        deploy.deploy(self.s, self.db)
        with self.su() as conn:
            conn.execute(BENCH_OBJECTS)
            seed_users(conn, cfg.users)
            self.admin = value(conn, "SELECT id FROM keen.users WHERE role = 'super_admin' ORDER BY created_at LIMIT 1")
        self.sessions = self.has_function("keen.session_tree(uuid)")
        if self.sessions:
            self.seed_sessions()
        else:
            self.skipped["sessions"] = "keen.session_tree is not defined yet (no trees, no event figures)"
        per = max(1, cfg.ledger_rows // cfg.users)
        self.echo(f"ledger: {per * cfg.users:,} rows over the past year")
        with self.su() as conn:
            seed_ledger(conn, per)
        self.ledger_rows = per * cfg.users + cfg.users
        if self.has_function("keen.deduct_credits(uuid,numeric,uuid,text,text)"):
            with self.su() as conn:  # the key the replay figure repeats
                conn.execute(
                    "SELECT (keen.deduct_credits(%s, 0.01, NULL, 'bench replay', 'bench-replay')).id "
                    "FROM keen.act_as(%s)",
                    (bench_uid(HOT_USER), bench_uid(HOT_USER)),
                )
        with self.su() as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("SELECT pg_stat_statements_reset()")
        with psycopg.connect(self.s.superuser_url(self.tpcb_db), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        self.metered = self.has_function("keen.record_llm_usage(uuid,text,bigint,bigint,bigint,bigint,text,integer)")
        if self.metered:
            with self.su() as conn:
                seed_meter_sessions(conn, cfg.users)
                conn.execute("ANALYZE keen.agent_sessions")
        else:
            self.skipped["metered"] = "keen.record_llm_usage is not defined yet"
        self.deadlocks_before = self._deadlocks()
        self.results["setup_seconds"] = round(time.monotonic() - t0, 1)

    def seed_sessions(self) -> None:
        small, big = self.cfg.tree_sizes
        with self.su() as conn:
            self.trees = {size: seed_tree(conn, bench_uid(TREE_USER), f"tree{size}", size) for size in (small, big)}
            self.event_session = seed_tree(conn, bench_uid(HOT_USER), "events", 1)
            # A subtree of at most 100 nodes: the deepest node of the big tree that has children.
            self.subtree = value(
                conn,
                """
                SELECT p.id FROM keen.agent_sessions p
                 WHERE p.user_id = %s AND p.session_id LIKE %s || '-%%' AND p.session_depth > 0
                   AND EXISTS (SELECT 1 FROM keen.agent_sessions c WHERE c.parent_session_id = p.id)
                 ORDER BY p.session_depth DESC LIMIT 1""",
                (bench_uid(TREE_USER), f"tree{big}"),
            )
            self.subtree_size = (
                value(conn, "SELECT count(*) FROM keen.agent_sessions WHERE parent_session_id = %s", (self.subtree,))
                + 1
            )
            self.pk_probe = value(
                conn,
                "SELECT id FROM keen.agent_sessions WHERE user_id = %s AND session_id = %s",
                (bench_uid(TREE_USER), f"tree{small}-1-7"),
            )

    def _deadlocks(self) -> int:
        with self.su("postgres") as conn:
            return value(
                conn,
                "SELECT COALESCE(sum(deadlocks), 0)::int FROM pg_catalog.pg_stat_database WHERE datname IN (%s, %s)",
                (self.db, self.tpcb_db),
            )

    # -- figures
    def throughput_round(self) -> None:
        cfg, c, d = self.cfg, self.cfg.clients, self.cfg.seconds
        app, su = self.s.role_url("keen_app", self.db), self.s.superuser_url(self.db)
        users = ["-D", f"users={cfg.users}"]
        hot = ["-D", "users=1"]
        ev = ["-D", f"sid={getattr(self, 'event_session', '')}", "-D", f"uid={bench_uid(HOT_USER)}"]
        # Figures that are divided by each other run back to back, so a burst of other load
        # on the machine hits both sides of a ratio alike.
        deduct = self.has_function("keen.deduct_credits(uuid,numeric,uuid,text,text)")
        if not deduct:
            self.skipped["deduct"] = "keen.deduct_credits is not defined yet"
        self.sample("tpcb_tps", self._pgbench(self.s.superuser_url(self.tpcb_db), ["-b", "tpcb-like"], d, c))
        if deduct:
            self.sample("deduct_tps", self._pgbench(app, ["-f", self.script("deduct"), *users], d, c))
            if self.metered:
                self.sample("metered_tps", self._pgbench(app, ["-f", self.script("metered"), *users], d, c))
            client = self.client_round(d, c)
            if client is not None:
                self.sample("client_tps", client)
            self.sample("script_tps", self._pgbench(su, ["-f", self.script("script"), *users], d, c))
            self.sample("hot_tps_c1", self._pgbench(app, ["-f", self.script("deduct"), *hot], d, 1))
            self.sample("hot_tps_c8", self._pgbench(app, ["-f", self.script("deduct"), *hot], d, c))
        self.sample("update_ceiling_tps", self._pgbench(su, ["-f", self.script("update")], d, c))
        if deduct:
            self.sample("replay_tps", self._pgbench(app, ["-f", self.script("replay")], d, c))
        if self.sessions:
            self.sample("partitioned_tps", self._pgbench(su, ["-f", self.script("partitioned"), *ev], d, c))
            self.sample("twin_tps", self._pgbench(su, ["-f", self.script("twin"), *ev], d, c))

    def client_round(self, seconds: float, threads: int) -> float | None:
        """Deductions through keen_client (pool, one transaction per call) from `threads` threads."""
        try:
            from keen_client import Keen, PoolSettings
            from keen_client.credits import CreditsApi  # noqa: F401 - the area must exist
        except ImportError:
            self.skipped["client"] = "keen_client.credits is not there yet"
            return None
        import random

        done, errors = [0] * threads, [0] * threads
        keen = Keen(self.s.role_url("keen_app", self.db), PoolSettings(min_size=threads, max_size=threads, timeout=30))
        keen.pool.wait()
        stop_at = time.monotonic() + seconds

        def work(i: int) -> None:
            rnd = random.Random(i)
            while time.monotonic() < stop_at:
                user = bench_uid(rnd.randint(1, self.cfg.users))
                try:
                    with keen.as_user(user) as tx:
                        tx.credits.deduct_credits(user, Decimal("0.01"))
                    done[i] += 1
                except Exception:
                    errors[i] += 1

        t0 = time.monotonic()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        keen.close()
        self.failures += sum(errors)
        return sum(done) / elapsed

    def _timed(self, conn: psycopg.Connection, query: str, params: tuple) -> float:
        t0 = time.perf_counter()
        conn.execute(query, params, prepare=True).fetchall()
        return (time.perf_counter() - t0) * 1000

    def latency_figures(self) -> None:
        """session_tree and platform_metrics: medians of interleaved calls, in ms, as keen_app."""
        if self.sessions:
            small, big = self.cfg.tree_sizes
            with psycopg.connect(self.s.role_url("keen_app", self.db), options=PINNED) as conn:
                conn.execute("SELECT keen.act_as(%s)", (bench_uid(TREE_USER),))
                tree_q = "SELECT count(*) FROM keen.session_tree(%s)"
                for _ in range(2):  # warm the cache and the plans
                    self._timed(conn, tree_q, (self.trees[small],))
                    self._timed(conn, tree_q, (self.trees[big],))
                for _ in range(self.cfg.rounds * 2 + 1):
                    self.sample("session_tree_10k_ms", self._timed(conn, tree_q, (self.trees[small],)))
                    self.sample("session_tree_100k_ms", self._timed(conn, tree_q, (self.trees[big],)))
                pk_q = "SELECT * FROM keen.agent_sessions WHERE id = %s"
                sub_q = "SELECT * FROM keen.session_tree(%s)"
                for _ in range(20):
                    self._timed(conn, sub_q, (self.subtree,))
                    self._timed(conn, pk_q, (self.pk_probe,))
                for _ in range(300):
                    self.sample("subtree_ms", self._timed(conn, sub_q, (self.subtree,)))
                    self.sample("pk_lookup_ms", self._timed(conn, pk_q, (self.pk_probe,)))
                conn.rollback()
        if self.has_function("keen.platform_metrics(date,date)"):
            self.results["platform_metrics_ms"] = self._platform_metrics_ms()
        else:
            self.skipped["platform_metrics"] = "keen.platform_metrics is not defined yet"

    def rollups(self) -> None:
        """A year of daily rollups, as keen_maintenance (what `keen-db rollup` runs)."""
        if not self.has_function("keen.rollup_daily_analytics(date)"):
            return
        today = date.today()
        self.echo("rollups: 366 days")
        with psycopg.connect(self.s.role_url("keen_maintenance", self.db), autocommit=True) as conn:
            for back in range(365, -1, -1):
                conn.execute("SELECT keen.rollup_daily_analytics(%s)", (today - timedelta(days=back),))

    def _platform_metrics_ms(self) -> float:
        today = date.today()
        q = "SELECT keen.platform_metrics(%s, %s)"
        with psycopg.connect(self.s.role_url("keen_app", self.db), options=PINNED) as conn:
            conn.execute("SELECT keen.authenticate_access_token(%s)", (admin_access_token(self.s, self.db),))
            params = (today - timedelta(days=365), today)
            for _ in range(3):
                self._timed(conn, q, params)
            ms = statistics.median(self._timed(conn, q, params) for _ in range(15))
            conn.rollback()
        return round(ms, 3)

    def tenfold(self) -> None:
        if "platform_metrics_ms" not in self.results or not self.cfg.tenfold:
            return
        per = max(1, 9 * self.ledger_rows // self.cfg.users)
        self.echo(f"ledger x10: adding {per * self.cfg.users:,} rows")
        with self.su() as conn:
            seed_ledger(conn, per)
            conn.execute("ANALYZE keen.credit_transactions")
        self.results["platform_metrics_10x_ms"] = self._platform_metrics_ms()
        self.results["ratio_platform_metrics_10x"] = round(
            self.results["platform_metrics_10x_ms"] / max(self.results["platform_metrics_ms"], 1e-6), 3
        )

    def top_statements(self, limit: int = 8) -> list[dict[str, Any]]:
        with self.su() as conn:
            rows = conn.execute(
                """
                SELECT pg_catalog.left(pg_catalog.regexp_replace(query, '\\s+', ' ', 'g'), 90), calls,
                       pg_catalog.round(mean_exec_time::numeric, 3), pg_catalog.round(total_exec_time::numeric)
                  FROM public.pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                 ORDER BY total_exec_time DESC LIMIT %s""",
                (limit,),
            ).fetchall()
        return [{"query": r[0], "calls": r[1], "mean_ms": float(r[2]), "total_ms": float(r[3])} for r in rows]

    def finish(self) -> dict[str, Any]:
        r = self.results
        for key, values in self.samples.items():
            r[key] = round(statistics.median(values), 3)

        def ratio(a: str, b: str) -> float | None:
            """The median of the ratios of each round (or interleaved pair), not the ratio of
            the medians: each round's two sides ran moments apart, under the same load."""
            pairs = [x / y for x, y in zip(self.samples.get(a, []), self.samples.get(b, []), strict=True) if y]
            return round(statistics.median(pairs), 3) if pairs else None

        r["ratio_deduct_vs_tpcb"] = ratio("deduct_tps", "tpcb_tps")
        r["ratio_deduct_vs_script"] = ratio("deduct_tps", "script_tps")
        r["ratio_metered_vs_deduct"] = ratio("metered_tps", "deduct_tps")
        r["ratio_hot_c8_vs_c1"] = ratio("hot_tps_c8", "hot_tps_c1")
        r["ratio_hot_vs_update_ceiling"] = ratio("hot_tps_c8", "update_ceiling_tps")
        r["ratio_replay_vs_fresh"] = ratio("replay_tps", "hot_tps_c8")
        r["ratio_client_vs_sql"] = ratio("client_tps", "deduct_tps")
        r["partitioned_insert_ratio"] = ratio("partitioned_tps", "twin_tps")
        r["ratio_session_tree_100k_vs_10k"] = ratio("session_tree_100k_ms", "session_tree_10k_ms")
        r["subtree_vs_pk_ratio"] = ratio("subtree_ms", "pk_lookup_ms")
        r["subtree_nodes"] = getattr(self, "subtree_size", None)
        r["errors"] = self.failures + max(0, self._deadlocks() - self.deadlocks_before)
        r["settings"] = {
            "rounds": self.cfg.rounds,
            "seconds": self.cfg.seconds,
            "clients": self.cfg.clients,
            "users": self.cfg.users,
            "tpcb_scale": self.cfg.tpcb_scale,
            "tree_sizes": list(self.cfg.tree_sizes),
            "ledger_rows": getattr(self, "ledger_rows", None),
            "quick": self.cfg.quick,
            "pgbench": "-M prepared -j 2",
            "synchronous_commit": "on",
        }
        r["skipped"] = self.skipped
        r["goals_met"] = {key: check(r[key]) for key, _, _, check in GOALS if r.get(key) is not None}
        return r

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        if not self.cfg.keep:
            with psycopg.connect(self.s.superuser_url("postgres"), autocommit=True) as conn:
                for name in (self.db, self.tpcb_db):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run(s: config.Settings, cfg: Config, echo: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    b = Bench(s, cfg, echo)
    try:
        b.setup()
        b.rollups()
        with bench_ledger.checkpoints_held(b):  # issue 17: no checkpoint inside a measured round
            bench_ledger.before_round(b)  # one checkpoint, then none until the figures are in
            for i in range(cfg.rounds):
                echo(f"round {i + 1}/{cfg.rounds}")
                b.throughput_round()
            bench_ledger.measure(b)  # server CPU and WAL per deduction and per tpcb-like transaction
        bench_client.measure(b)  # issue 14: the client through PgBouncer, and AsyncKeen
        bench_streaming.measure(b)  # issue 13: update_session_progress with and without its event
        bench_auth.measure(b)  # issue 11: rate-limited API keys, access tokens vs act_as
        b.latency_figures()
        top = b.top_statements()
        b.tenfold()
        return b.finish() | {"top_statements": top}
    finally:
        b.teardown()


def report(results: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title="keen-db bench (medians; ratios against the same server in the same run)")
    for col in ("figure", "measured", "goal", ""):
        t.add_column(col)
    for key, label, goal, check in GOALS:
        v = results.get(key)
        t.add_row(
            label,
            "-" if v is None else str(v),
            goal,
            "-" if v is None else ("[green]met" if check(v) else "[red]missed"),
        )
    console.print(t)
    raw = Table(title="raw figures")
    raw.add_column("figure")
    raw.add_column("value")
    for key in (
        "tpcb_tps",
        "deduct_tps",
        "metered_tps",
        "script_tps",
        "hot_tps_c1",
        "hot_tps_c8",
        "update_ceiling_tps",
        "replay_tps",
        "client_tps",
        "partitioned_tps",
        "twin_tps",
        "session_tree_10k_ms",
        "session_tree_100k_ms",
        "subtree_ms",
        "subtree_nodes",
        "pk_lookup_ms",
        "platform_metrics_ms",
        "platform_metrics_10x_ms",
        "tpcb_cpu_us_per_tx",
        "deduct_cpu_us_per_tx",
        "tpcb_wal_bytes_per_tx",
        "deduct_wal_bytes_per_tx",
        "errors",
        "setup_seconds",
    ):
        if results.get(key) is not None:
            raw.add_row(key, str(results[key]))
    console.print(raw)
    for what, why in results.get("skipped", {}).items():
        console.print(f"[yellow]skipped {what}: {why}")
    if results.get("top_statements"):
        top = Table(title="where the time went (pg_stat_statements, keen_bench)")
        for col in ("query", "calls", "mean ms"):
            top.add_column(col)
        for row in results["top_statements"]:
            top.add_row(row["query"], str(row["calls"]), str(row["mean_ms"]))
        console.print(top)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="end with one JSON object on the last line")
@click.option("--quick", is_flag=True, help="short rounds and a smaller ledger: under two minutes")
@click.option("--rounds", type=int, default=None, help="interleaved rounds (at least 3)")
@click.option("--seconds", type=float, default=None, help="seconds per pgbench run")
@click.option("--users", type=int, default=None, help="users with credits (default 10,000)")
@click.option("--tpcb-scale", type=int, default=None, help="pgbench scale (default 10)")
@click.option("--ledger-rows", type=int, default=None, help="ledger rows for platform_metrics")
@click.option("--tree-sizes", type=(int, int), default=None, help="the two session trees (default 10000 100000)")
@click.option(
    "--tenfold/--no-tenfold",
    default=None,
    help="grow the ledger tenfold and time platform_metrics again (default: on, off with --quick)",
)
@click.option("--keep", is_flag=True, help="keep the bench databases afterwards")
@click.option("--database", default=None, help=f"bench database name (default {BENCH_DB}; pgbench's is NAME_tpcb)")
@click.pass_context
def bench(
    ctx: click.Context,
    as_json: bool,
    quick: bool,
    rounds: int | None,
    seconds: float | None,
    users: int | None,
    tpcb_scale: int | None,
    ledger_rows: int | None,
    tree_sizes: tuple[int, int] | None,
    tenfold: bool | None,
    keep: bool,
    database: str | None,
) -> None:
    """Measure the DESIGN.md performance figures; print each ratio beside its goal."""
    from rich.console import Console

    s: config.Settings = ctx.obj
    try:
        cluster.ensure_running(s)
    except cluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    if rounds is not None and rounds < 3:
        raise click.BadParameter("at least three rounds", param_hint="--rounds")
    cfg = Config.make(
        quick,
        rounds=rounds,
        seconds=seconds,
        users=users,
        tpcb_scale=tpcb_scale,
        ledger_rows=ledger_rows,
        tree_sizes=tree_sizes,
        tenfold=tenfold,
        keep=keep or None,
        database=database,
    )
    console = Console(stderr=as_json)
    results = run(s, cfg, echo=lambda m: console.print(f"[dim]{m}"))
    report(results, console)
    if as_json:
        click.echo(json.dumps(results, default=str))


COMMANDS = [bench]


def admin_access_token(s: config.Settings, database: str) -> str:
    """The admin acts only through a credential (keen.act_as refuses it): sign the seeded admin
    in with its password (ADMIN_EMAIL / ADMIN_PASSWORD, the seed's defaults) and return the
    access token (15 minutes)."""
    with psycopg.connect(s.role_url("keen_app", database)) as conn:
        row = conn.execute(
            "SELECT access_token FROM keen.start_login_session(%s, %s)",
            (os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com"), os.environ.get("ADMIN_PASSWORD", "2con-creator")),
        ).fetchone()
    assert row is not None
    return str(row[0])
