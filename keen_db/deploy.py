"""Migrations (yoyo), the repeatable files (functions, policies), role passwords and seeds."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .config import DB_DIR, Settings

SCHEMA_DIR = DB_DIR / "schema"
# Each lock the deploy waits for, at most (KEEN_DEPLOY_LOCK_TIMEOUT), and how often it tries.
DEPLOY_LOCK_TIMEOUT = os.environ.get("KEEN_DEPLOY_LOCK_TIMEOUT", "2s")
DEPLOY_ATTEMPTS = int(os.environ.get("KEEN_DEPLOY_ATTEMPTS", "10"))
LOGIN_ROLES = ("keen_app", "keen_maintenance")


def repeatable_files() -> list[Path]:
    """db/functions (core.sql first, then by name), then db/policies by name."""
    functions = sorted((DB_DIR / "functions").glob("*.sql"), key=lambda p: (p.name != "core.sql", p.name))
    policies = sorted((DB_DIR / "policies").glob("*.sql"))
    return functions + policies


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply_repeatables(conn) -> list[str]:
    """Re-apply every function and policy file in one transaction, record their checksums and
    hand ownership of new functions to keen_owner (keen_auth keeps the ones given to it).
    `conn` is a psycopg connection (yoyo passes its own)."""
    applied = []
    cur = conn.cursor()
    # Bodies are checked by plpgsql_check in tests/test_deploy.py, so files need no particular order.
    cur.execute("SET LOCAL check_function_bodies = off")
    # A policy is replaced under an ACCESS EXCLUSIVE lock: queued behind an idle reader, it would
    # make every later reader of the table queue behind it. Wait briefly instead; migrate retries.
    cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (DEPLOY_LOCK_TIMEOUT,))
    for path in repeatable_files():
        rel = str(path.relative_to(DB_DIR))
        cur.execute(path.read_text())
        cur.execute(
            "INSERT INTO keen.deployed_files (path, sha256) VALUES (%s, %s) "
            "ON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = pg_catalog.now()",
            (rel, file_sha256(path)),
        )
        applied.append(rel)
    cur.execute("DELETE FROM keen.deployed_files WHERE NOT (path = ANY (%s))", (applied,))
    cur.execute("""
        DO $own$
        DECLARE v_fn regprocedure;
        BEGIN
            FOR v_fn IN
                SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
                 WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace)
                   AND pg_catalog.pg_get_userbyid(p.proowner) NOT IN ('keen_owner', 'keen_auth', 'keen_ledger')
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                    WHERE d.objid = p.oid AND d.deptype = 'e')
            LOOP
                EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO keen_owner', v_fn);
            END LOOP;
        END
        $own$""")
    return applied


def _yoyo_url(conninfo: str) -> str:
    from urllib.parse import quote

    p = conninfo_to_dict(conninfo)
    auth = quote(str(p.get("user", "")), safe="")
    if p.get("password"):
        auth += ":" + quote(str(p["password"]), safe="")
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql+psycopg://{auth}@{p.get('host', '')}{port}/{p.get('dbname', '')}"


@contextmanager
def _backend(conninfo: str) -> Iterator[tuple]:
    """A yoyo backend and the migrations; its connection is closed at the end (an open one
    would keep a template database busy)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(conninfo))
    try:
        yield backend, read_migrations(str(SCHEMA_DIR))
    finally:
        backend.connection.close()


def migrate(superuser_conninfo: str) -> list[str]:
    """Apply pending migrations, then the repeatables, always (yoyo only runs post-apply hooks
    when something is pending). Returns the ids of the migrations applied."""
    with _backend(superuser_conninfo) as (backend, migrations), backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations_only(pending)
        applied = [m.id for m in pending]
    apply_repeatables_retrying(superuser_conninfo)
    return applied


def apply_repeatables_retrying(superuser_conninfo: str, attempts: int = DEPLOY_ATTEMPTS) -> int:
    """apply_repeatables in its own transaction, again after a lock wait that ran out (55P03:
    some transaction holds a table the policies are replaced on), with a growing pause; each
    wait is bounded by DEPLOY_LOCK_TIMEOUT, so readers queue behind the deploy for at most that.
    Returns the attempts it took; raises the last LockNotAvailable when none succeeded."""
    for attempt in range(1, attempts + 1):
        try:
            with psycopg.connect(superuser_conninfo) as conn:
                apply_repeatables(conn)
            return attempt
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise
            time.sleep(min(0.5 * attempt, 3.0))
    raise AssertionError("unreachable")


def rollback(superuser_conninfo: str, count: int | None = 1) -> list[str]:
    """Roll back the last `count` migrations (all of them when None)."""
    with _backend(superuser_conninfo) as (backend, migrations), backend.lock():
        todo = backend.to_rollback(migrations)
        if count is not None:
            todo = todo[:count]
        backend.rollback_migrations(todo)
        return [m.id for m in todo]


def migration_status(superuser_conninfo: str) -> tuple[list[str], list[str]]:
    """(applied ids, pending ids)."""
    with _backend(superuser_conninfo) as (backend, migrations):
        pending = {m.id for m in backend.to_apply(migrations)}
        return [m.id for m in migrations if m.id not in pending], sorted(pending)


def set_role_passwords(s: Settings, superuser_conninfo: str) -> None:
    with psycopg.connect(superuser_conninfo, autocommit=True) as conn:
        for role in LOGIN_ROLES:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(s.secret(role, env=f"{role.upper()}_PASSWORD"))
                )
            )
        # The failed-login recorder's loopback login (db/functions/users.sql), kept in the database.
        recorder = s.secret("keen_recorder", env="KEEN_RECORDER_PASSWORD")
        conn.execute(sql.SQL("ALTER ROLE keen_recorder WITH LOGIN PASSWORD {}").format(sql.Literal(recorder)))
        conn.execute("SELECT keen_private.configure_login_recorder(%s)", (recorder,))


DEFAULT_ADMIN_PASSWORD = "2con-creator"  # published in CONTRACT.md: for the embedded cluster only
ALLOW_DEFAULT_ENV = "KEEN_ALLOW_DEFAULT_ADMIN_PASSWORD"


def default_password_allowed(s: Settings) -> bool:
    """The published admin password is for the embedded cluster (make demo); on a server given by
    KEEN_DATABASE_URL only when KEEN_ALLOW_DEFAULT_ADMIN_PASSWORD=1 asks for it explicitly."""
    return s.embedded or os.environ.get(ALLOW_DEFAULT_ENV, "") == "1"


def seed(superuser_conninfo: str, allow_default_password: bool = True) -> None:
    """The admin user and its unlimited account, idempotently (db/seeds/*.sql). Refuses
    (ValueError) to set the published default password unless allow_default_password."""
    markup_env = os.environ.get("CREDIT_MARKUP_MULTIPLIER")
    markup = None
    if markup_env:
        try:
            markup = Decimal(markup_env)
        except InvalidOperation:
            raise ValueError(f"CREDIT_MARKUP_MULTIPLIER={markup_env!r} is not a number") from None
        if not markup.is_finite() or markup <= 0:
            raise ValueError(f"CREDIT_MARKUP_MULTIPLIER={markup_env!r} must be a positive number")
    params = {
        "email": os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com"),
        "username": os.environ.get("ADMIN_USERNAME", "ahiya_admin"),
        "password": os.environ.get("ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD),
        "markup": markup,
    }
    if params["password"] == DEFAULT_ADMIN_PASSWORD and not allow_default_password:
        raise ValueError(
            "refusing to give the admin the published default password on a server given by KEEN_DATABASE_URL: "
            f"set ADMIN_PASSWORD (or {ALLOW_DEFAULT_ENV}=1 to allow the default explicitly)"
        )
    with psycopg.connect(superuser_conninfo) as conn:
        # Never promote an account somebody registered with the admin's e-mail: it would turn
        # their sessions and API keys into admin ones.
        taken = conn.execute(
            "SELECT is_admin FROM keen.users WHERE email = pg_catalog.lower(%s)", (params["email"],)
        ).fetchone()
        if taken is not None and not taken[0]:
            raise ValueError(
                f"{params['email']} belongs to a registered user who is not an admin: "
                f"refusing to make it the admin (choose another ADMIN_EMAIL)"
            )
        for path in sorted((DB_DIR / "seeds").glob("*.sql")):
            conn.execute(path.read_text(), params)


def deploy(s: Settings, database: str | None = None) -> list[str]:
    """Everything `keen-db up` does after the server runs: database, migrations, roles, seed."""
    from . import cluster

    cluster.ensure_database(s, database)
    url = s.superuser_url(database)
    applied = migrate(url)
    set_role_passwords(s, url)
    seed(url, default_password_allowed(s))
    return applied
