"""`keen-db doctor`: the shell-first validation. Each check returns (name, ok, detail)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg

from . import cluster, deploy
from .config import DB_DIR, Settings
from .sql import one, value

Check = Callable[[Settings, psycopg.Connection], tuple[bool, str]]


def check_migrations(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    applied, pending = deploy.migration_status(s.superuser_url())
    if pending:
        return False, f"pending: {', '.join(pending)} (run keen-db migrate)"
    return True, f"{len(applied)} applied"


def check_repeatables(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    deployed: dict[str, str] = dict(conn.execute("SELECT path, sha256 FROM keen.deployed_files").fetchall())
    drift = []
    for path in deploy.repeatable_files():
        rel = str(path.relative_to(DB_DIR))
        if deployed.pop(rel, None) != deploy.file_sha256(path):
            drift.append(rel)
    drift += [f"{p} (no longer a file)" for p in deployed]
    if drift:
        return False, f"differs from the files: {', '.join(drift)} (run keen-db migrate)"
    return True, "functions and policies match db/functions and db/policies"


def check_rls(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    rows = conn.execute("""
        SELECT c.oid::regclass::text
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p')
           AND c.relname NOT IN ('settings', 'deployed_files')
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
         ORDER BY 1""").fetchall()
    if rows:
        return False, "not ENABLED+FORCED: " + ", ".join(r[0] for r in rows)
    return True, "enabled and forced on every data table"


def check_policies(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    rows = conn.execute("""
        SELECT c.oid::regclass::text
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'keen'::regnamespace AND c.relrowsecurity
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)
         ORDER BY 1""").fetchall()
    if rows:
        return False, "RLS on but no policy: " + ", ".join(r[0] for r in rows)
    spoof = conn.execute("""
        SELECT pol.polrelid::regclass::text || ': ' || pol.polname
          FROM pg_catalog.pg_policy pol
         WHERE pol.polrelid::regclass::text LIKE 'keen.%%'
           AND (pg_catalog.pg_get_expr(pol.polqual, pol.polrelid) ~* 'current_setting|is_admin_user'
                OR pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid) ~* 'current_setting|is_admin_user')
    """).fetchall()
    if spoof:
        return False, "policy trusts a setting: " + ", ".join(r[0] for r in spoof)
    return True, "every RLS table has a policy; none reads a setting"


def check_definer_search_path(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace) AND p.prosecdef
           AND NOT COALESCE(p.proconfig && ARRAY['search_path=pg_catalog, keen, pg_temp',
                                                 'search_path=pg_catalog, keen, keen_private, pg_temp'], false)
         ORDER BY 1""").fetchall()
    if rows:
        return False, "SECURITY DEFINER without the pinned search_path: " + ", ".join(r[0] for r in rows)
    return True, "every SECURITY DEFINER function pins search_path"


def check_api_schema(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Schema keen is the API: each function in it is executable by a login role, and no login
    role may use keen_private, where the helpers live."""
    internal = conn.execute("""
        SELECT p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'keen'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                            WHERE r.rolcanlogin AND NOT r.rolsuper
                              AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE'))
         ORDER BY 1""").fetchall()
    if internal:
        return False, "functions in keen no login role may execute (move them to keen_private): " + ", ".join(
            r[0] for r in internal
        )
    users = conn.execute("""
        SELECT r.rolname FROM pg_catalog.pg_roles r
         WHERE r.rolcanlogin AND NOT r.rolsuper AND pg_catalog.has_schema_privilege(r.oid, 'keen_private', 'USAGE')
         ORDER BY 1""").fetchall()
    if users:
        return False, "login roles that may use keen_private: " + ", ".join(r[0] for r in users)
    return True, "every function in keen is executable by a login role; keen_private is closed to them"


def check_public_execute(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    rows = conn.execute("""
        SELECT p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'keen'::regnamespace
           AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
         ORDER BY 1""").fetchall()
    if rows:
        return False, "EXECUTE granted to PUBLIC: " + ", ".join(r[0] for r in rows)
    return True, "no keen function is executable by PUBLIC"


def check_app_cannot_write(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    rows = conn.execute("""
        SELECT c.oid::regclass::text || ' ' || priv
          FROM pg_catalog.pg_class c
         CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS priv
         WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p')
           AND pg_catalog.has_table_privilege('keen_app', c.oid, priv)
         ORDER BY 1""").fetchall()
    secrets = conn.execute("""
        SELECT col FROM unnest(ARRAY['password_hash', 'mfa_secret', 'recovery_codes', 'email_verification_token']) col
         WHERE pg_catalog.has_column_privilege('keen_app', 'keen.users', col, 'SELECT')""").fetchall()
    partitions = conn.execute("""
        SELECT i.inhrelid::regclass::text FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'keen.streaming_events'::regclass
           AND pg_catalog.has_table_privilege('keen_app', i.inhrelid, 'SELECT')""").fetchall()
    problems = (
        [r[0] for r in rows]
        + [f"can read users.{r[0]}" for r in secrets]
        + [f"can read partition {r[0]} directly" for r in partitions]
    )
    if problems:
        return False, ", ".join(problems)
    return True, "keen_app holds no write privilege, no secret column, no partition"


def check_admin(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    row = conn.execute("""
        SELECT u.email, u.is_admin, u.role, a.unlimited_credits
          FROM keen.users u LEFT JOIN keen.credit_accounts a ON a.user_id = u.id
         WHERE u.is_admin AND u.role = 'super_admin'
         ORDER BY u.created_at LIMIT 1""").fetchone()
    if row is None:
        return False, "no super_admin user (run keen-db seed)"
    if not row[3]:
        return False, f"{row[0]} has no unlimited credit account"
    return True, f"{row[0]} is super_admin with unlimited credits"


def check_ledger(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    if not value(conn, "SELECT pg_catalog.to_regprocedure('keen.verify_ledger()')"):
        return False, "keen.verify_ledger() is not defined"
    with psycopg.connect(s.role_url("keen_maintenance")) as mconn:
        rows = mconn.execute("SELECT user_id, balance, ledger_sum FROM keen.verify_ledger() WHERE NOT ok").fetchall()
        total = value(mconn, "SELECT count(*) FROM keen.verify_ledger()")
    if rows:
        return False, "; ".join(f"{r[0]}: balance {r[1]} but ledger sums to {r[2]}" for r in rows[:5])
    return True, f"{total} account(s), every balance equals its ledger"


def check_connections(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Server health: connections in use against max_connections, the client pool's share,
    and sessions left idle inside a transaction (they hold locks and snapshots)."""
    used, limit, reserved, pooled, idle_tx, oldest_idle_tx = one(
        conn,
        """
        SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'),
               pg_catalog.current_setting('max_connections')::int,
               pg_catalog.current_setting('superuser_reserved_connections')::int,
               (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'keen_client'),
               (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE state LIKE 'idle in transaction%%'),
               (SELECT COALESCE(EXTRACT(EPOCH FROM pg_catalog.max(pg_catalog.now() - state_change)), 0)::int
                  FROM pg_catalog.pg_stat_activity WHERE state LIKE 'idle in transaction%%')""",
    )
    available = limit - reserved
    detail = (
        f"{used} of {available} connections in use ({pooled} from keen_client pools), {idle_tx} idle in a transaction"
    )
    if used > 0.9 * available:
        return (
            False,
            detail
            + ": the server is close to refusing connections (lower KEEN_POOL_MAX_SIZE or raise max_connections)",
        )
    if oldest_idle_tx > 300:
        return False, detail + f": one has been idle in its transaction for {oldest_idle_tx}s (it holds its locks)"
    return True, detail


def check_wal_archiving(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """WAL archiving (what point-in-time recovery replays): on, not failing, not falling behind."""
    mode = value(conn, "SELECT pg_catalog.current_setting('archive_mode')")
    if mode == "off":
        if s.embedded:
            return False, "archive_mode is off: point-in-time recovery is impossible (restart with keen-db up)"
        return True, "archive_mode off on this server (point-in-time recovery is its operator's business)"
    archived, last_wal, last_age, failed, last_failed, failing = one(
        conn,
        """
        SELECT archived_count, last_archived_wal,
               EXTRACT(EPOCH FROM pg_catalog.now() - last_archived_time)::int,
               failed_count, last_failed_wal,
               COALESCE(last_failed_time > COALESCE(last_archived_time, '-infinity'), false)
          FROM pg_catalog.pg_stat_archiver""",
    )
    waiting = value(conn, "SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%%.ready'")
    detail = (
        f"{archived} segment(s) archived, last {last_wal or 'none'}"
        + (f" {last_age}s ago" if last_age is not None else "")
        + f", {waiting} waiting, {failed} failure(s) since stats reset"
    )
    if s.embedded:
        if not (s.wal_archive_dir / cluster.ARCHIVE_MARKER).exists():
            return True, (
                "no base backup yet, so WAL is not kept (nothing to replay it onto); "
                "run keen-db basebackup to make point-in-time recovery possible"
            )
        backups = sorted((s.home / "basebackups").glob("*.json")) if (s.home / "basebackups").exists() else []
        detail += f"; {len(backups)} base backup(s)" + (f", newest {backups[-1].stem}" if backups else "")
    if failing:
        return False, f"archiving {last_failed} fails (see the server log): " + detail
    if waiting > 8:
        return False, "archiving falls behind: " + detail
    return True, detail


def check_holds(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Credit holds: the oldest live one (a hold counts against the balance until captured,
    released or expired; expiry needs no job, so this is information, not a failure)."""
    live, oldest, expired = one(
        conn,
        """
        SELECT count(*) FILTER (WHERE expires_at > pg_catalog.now()),
               EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.min(created_at) FILTER (WHERE expires_at > pg_catalog.now()))::int,
               count(*) FILTER (WHERE expires_at <= pg_catalog.now())
          FROM keen.credit_reservations WHERE status = 'held'""",
    )
    if not live:
        return True, f"no live hold ({expired} expired without capture or release)"
    return True, f"{live} live hold(s), the oldest placed {oldest}s ago; {expired} expired without capture or release"


def check_event_partitions(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """The monthly partitions of keen.streaming_events for this UTC month and the next exist
    (keen.prepare_event_partitions, run daily, keeps them ahead); the default partition is empty."""
    if not value(conn, "SELECT pg_catalog.to_regprocedure('keen.prepare_event_partitions(integer,timestamptz)')"):
        return True, "no partition maintenance defined (keen.prepare_event_partitions)"
    missing, ahead, in_default = one(
        conn,
        """
        WITH months AS (
            SELECT 'streaming_events_' || pg_catalog.to_char(m, '"y"YYYY"m"MM') AS name
              FROM pg_catalog.generate_series(pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC'),
                                              pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC') + interval '1 month',
                                              interval '1 month') m)
        SELECT pg_catalog.array_agg(m.name) FILTER (WHERE c.oid IS NULL),
               (SELECT count(*) FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhrelid
                 WHERE i.inhparent = 'keen.streaming_events'::regclass
                   AND p.relname > 'streaming_events_' || pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', '"y"YYYY"m"MM')),
               (SELECT count(*) FROM keen.streaming_events_default)
          FROM months m
          LEFT JOIN pg_catalog.pg_class c ON c.relname = m.name AND c.relnamespace = 'keen'::regnamespace""",
    )
    if missing:
        return False, f"missing partition(s) {', '.join(missing)} (run SELECT keen.prepare_event_partitions())"
    return True, f"this month's partition and {ahead} ahead; {in_default} row(s) in the default partition"


def check_audit_chain(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """keen.verify_audit_chain() finds no broken link (docs/users.md)."""
    with psycopg.connect(s.role_url("keen_maintenance")) as mconn:
        broken = mconn.execute("SELECT chain_name, chain_seq, problem FROM keen.verify_audit_chain()").fetchall()
        total = value(mconn, "SELECT count(*) FROM keen.audit_logs")
    if broken:
        return False, "; ".join(f"chain {r[0]} broken at entry {r[1]}: {r[2]}" for r in broken)
    return True, f"{total} entries, every hash links to the one before"


def check_login_recorder(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """The loopback that counts failed logins connects (else lock-out is off; docs/users.md)."""
    problem = value(conn, "SELECT keen.login_recorder_status()")
    if problem:
        return False, f"failed logins are not counted: {problem}"
    return True, "failed logins are counted and audited"


ROLE_LIMITS = ("statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout")


def check_role_limits(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Every login role has a statement, idle-in-transaction and lock timeout and a connection
    limit, and the limits leave room below max_connections (docs/security.md)."""
    rows = conn.execute(
        "SELECT r.rolname, r.rolconnlimit, COALESCE(s.setconfig, '{}') FROM pg_catalog.pg_roles r"
        " LEFT JOIN pg_catalog.pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0"
        " WHERE r.rolname IN ('keen_app', 'keen_maintenance', 'keen_recorder') ORDER BY 1"
    ).fetchall()
    problems, total = [], 0
    for name, limit, config in rows:
        missing = [k for k in ROLE_LIMITS if not any(c.startswith(k + "=") and c != k + "=0" for c in config)]
        if missing:
            problems.append(f"{name} has no {', '.join(missing)}")
        if limit < 0:
            problems.append(f"{name} has no CONNECTION LIMIT")
        total += max(limit, 0)
    room = int(
        value(
            conn,
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int",
        )
    )
    if total >= room:
        problems.append(f"the login roles may open {total} connections, max_connections leaves {room}")
    if problems:
        return False, "; ".join(problems)
    return True, ", ".join(f"{n} {lim}" for n, lim, _ in rows) + f" connections of {room}; timeouts set"


def check_default_admin_password(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """The published default admin password is for the embedded cluster only: FAIL while it
    works on a server given by KEEN_DATABASE_URL."""
    from .deploy import DEFAULT_ADMIN_PASSWORD

    in_use = value(
        conn,
        "SELECT COALESCE(bool_or(keen_ext.crypt(%s, u.password_hash) = u.password_hash), false)"
        " FROM keen.users u WHERE u.is_admin",
        (DEFAULT_ADMIN_PASSWORD,),
    )
    if not in_use:
        return True, "not the published default"
    if s.on_embedded_server:
        return True, "the published default (allowed on the embedded cluster only)"
    return False, "an admin's password is the published default: set ADMIN_PASSWORD and run keen-db seed"


def check_replication(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Streaming replication (keen-db ha): on a primary each standby's state, sync state and lag,
    and whether synchronous replication is in force; on a standby how far replay is behind.
    A pg_auto_failover standby that streams asynchronously fails: an acknowledged commit is then
    on one node only (the monitor turned synchronous replication off: the standby is lost or
    catching up)."""
    if value(conn, "SELECT pg_catalog.pg_is_in_recovery()"):
        receiver = conn.execute("SELECT status, sender_port FROM pg_catalog.pg_stat_wal_receiver").fetchone()
        behind, age = one(
            conn,
            "SELECT COALESCE(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), "
            "pg_catalog.pg_last_wal_replay_lsn()), 0)::bigint, "
            "EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())::int",
        )
        if receiver is None:
            return False, "a standby with no WAL receiver: it streams from no primary"
        return True, (
            f"standby, {receiver[0]} from the primary on port {receiver[1]}; replay {behind} bytes behind what it "
            f"received, last replayed commit {age}s old"
        )
    names = value(conn, "SELECT pg_catalog.current_setting('synchronous_standby_names')")
    rows = conn.execute("""
        SELECT application_name, state, sync_state,
               COALESCE(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn), 0)::bigint
          FROM pg_catalog.pg_stat_replication ORDER BY application_name""").fetchall()
    if not rows and not names:
        return True, "a single server: no standby, no synchronous replication"
    detail = "; ".join(f"{r[0]} {r[1]} ({r[2]}), {r[3]} bytes behind" for r in rows) or "no standby connected"
    detail += f"; synchronous_standby_names = {names!r}" if names else "; synchronous_standby_names is empty"
    in_sync = [r for r in rows if r[1] == "streaming" and r[2] in ("sync", "quorum")]
    if names and not in_sync:
        return False, "no synchronous standby streams, commits wait for one: " + detail
    if not names and any(r[0].startswith("pgautofailover_standby_") for r in rows):
        return False, "synchronous replication is off, a commit is on this node only: " + detail
    if any(r[3] > 64 * 1024 * 1024 for r in rows):
        return False, "a standby is more than 64 MB behind: " + detail
    return True, ("synchronous: " if in_sync else "asynchronous: ") + detail


def check_upkeep_jobs(s: Settings, conn: psycopg.Connection) -> tuple[bool, str]:
    """Each scheduled upkeep job's last success (and pg_cron's last run); FAIL when one missed a
    run it was due for (keen_db/jobs.py)."""
    from .jobs import check_jobs

    return check_jobs(s, conn)


CHECKS: list[tuple[str, Check]] = [
    ("migrations current", check_migrations),
    ("functions and policies deployed", check_repeatables),
    ("row-level security", check_rls),
    ("policies", check_policies),
    ("security definer search_path", check_definer_search_path),
    ("api schema", check_api_schema),
    ("execute revoked from PUBLIC", check_public_execute),
    ("keen_app privileges", check_app_cannot_write),
    ("admin user", check_admin),
    ("ledger", check_ledger),
    ("connections", check_connections),
    ("WAL archiving", check_wal_archiving),
    ("credit holds", check_holds),
    ("event partitions", check_event_partitions),
    ("audit chain", check_audit_chain),
    ("login recorder", check_login_recorder),
    ("upkeep jobs", check_upkeep_jobs),
    ("login role limits", check_role_limits),
    ("default admin password", check_default_admin_password),
    ("replication", check_replication),
]


def run_checks(s: Settings) -> Iterator[tuple[str, bool, str]]:
    if s.embedded and not cluster.running(s):
        yield "server", False, f"the embedded cluster in {s.home} is not running (run keen-db up)"
        return
    try:
        conn = psycopg.connect(s.superuser_url(), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        yield "connection", False, str(exc).strip()
        return
    with conn:
        version = value(conn, "SHOW server_version")
        yield "connection", True, f"PostgreSQL {version}"
        try:
            with psycopg.connect(s.role_url("keen_app"), connect_timeout=5) as app:
                app.execute("SELECT keen.actor_id()")
            yield "keen_app login", True, ""
        except psycopg.Error as exc:
            yield "keen_app login", False, str(exc).strip()
        for name, check in CHECKS:
            try:
                ok, detail = check(s, conn)
            except (psycopg.Error, OSError) as exc:
                ok, detail = False, str(exc).strip().splitlines()[0]
            yield name, ok, detail
