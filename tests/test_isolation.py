"""Tenant isolation, proven through the real roles: the matrix of every tenant table x (own rows,
another tenant's, no actor, admin, maintenance), spoofed settings and actors, and search_path
hijacking by keen_app itself. See docs/users.md."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from keen_client.errors import AuthenticationFailed, NotFound, PermissionDenied

from .conftest import act_as_admin, assert_ledger_clean

# The tenant tables, the column naming the tenant, and how many of its own seeded rows a tenant
# sees (the audit log is for admins only).
TENANT_TABLES = {
    "users": ("id", 1),
    "auth_tokens": ("user_id", 1),
    "credit_accounts": ("user_id", 1),
    "credit_transactions": ("user_id", 1),
    "credit_reservations": ("user_id", 1),
    "agent_sessions": ("user_id", 1),
    "phase_transitions": ("user_id", 1),
    "tool_executions": ("user_id", 1),
    "git_operations": ("user_id", 1),
    "websocket_connections": ("user_id", 1),
    "streaming_events": ("user_id", 1),
    "daily_usage_stats": ("user_id", 1),
    "audit_logs": ("user_id", 0),
}

# One row in every tenant table for %(user)s, written by the superuser (the other areas' API
# functions are not what is under test here). The purchase keeps the ledger balanced.
SEED_TENANT = """
WITH account AS (
    UPDATE keen.credit_accounts SET current_balance = 10, lifetime_purchased = 10
     WHERE user_id = %(user)s RETURNING id
), token AS (
    INSERT INTO keen.auth_tokens (user_id, token_hash, token_name)
    VALUES (%(user)s, encode(keen_ext.gen_random_bytes(32), 'hex'), 'seeded') RETURNING 1
), purchase AS (
    INSERT INTO keen.credit_transactions (user_id, account_id, transaction_type, amount, balance_after, description)
    SELECT %(user)s, id, 'purchase', 10, 10, 'seeded' FROM account RETURNING 1
), hold AS (
    INSERT INTO keen.credit_reservations (user_id, account_id, estimated_claude_cost_usd, markup_multiplier,
                                          held_credits, expires_at)
    SELECT %(user)s, id, 1, 5, 5, now() + interval '15 minutes' FROM account RETURNING 1
)
SELECT (SELECT count(*) FROM token) + (SELECT count(*) FROM purchase) + (SELECT count(*) FROM hold);
INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory)
VALUES (%(session)s, %(user)s, 'seeded', 'main', 'seeded', '/tmp/seed');
INSERT INTO keen.phase_transitions (session_id, user_id, from_phase, to_phase) VALUES (%(session)s, %(user)s, 'EXPLORE', 'PLAN');
INSERT INTO keen.tool_executions (session_id, user_id, tool_name, execution_time_ms, success) VALUES (%(session)s, %(user)s, 'grep', 1, true);
INSERT INTO keen.git_operations (session_id, user_id, operation_type, branch_name, success) VALUES (%(session)s, %(user)s, 'commit', 'main', true);
INSERT INTO keen.websocket_connections (user_id, session_id, connection_id, client_ip, client_type)
VALUES (%(user)s, %(session)s, 'seeded', '10.0.0.1', 'cli');
INSERT INTO keen.streaming_events (session_id, user_id, event_type) VALUES (%(session)s, %(user)s, 'seeded');
INSERT INTO keen.daily_usage_stats (user_id, date_bucket) VALUES (%(user)s, current_date);
SELECT keen_private.write_audit('test', 'seeded', %(user)s);
"""


@pytest.fixture
def tenants(db, make_user):
    """Alice and Bob, one seeded row each in every tenant table."""
    alice, bob = make_user("alice"), make_user("bob")
    with db.su() as conn:
        for user in (alice, bob):
            params = {"user": user, "session": uuid.uuid4()}
            for statement in SEED_TENANT.split(";\n"):
                if statement.strip():
                    conn.execute(statement, params)
    return alice, bob


def visible(conn: psycopg.Connection, table: str, owner: uuid.UUID) -> int:
    column = TENANT_TABLES[table][0]
    return conn.execute(f"SELECT count(*) FROM keen.{table} WHERE {column} = %s", (owner,)).fetchone()[0]


@pytest.mark.parametrize("table", sorted(TENANT_TABLES))
def test_each_tenant_table_shows_a_tenant_its_own_rows_and_nobody_elses(table, tenants, db, admin_id):
    alice, bob = tenants
    own = TENANT_TABLES[table][1]
    seen = {}
    with psycopg.connect(db.app_url) as conn:
        for actor in (alice, None, admin_id):
            with conn.transaction():
                if actor == admin_id:
                    act_as_admin(conn)  # the admin acts only through a credential
                elif actor:
                    conn.execute("SELECT keen.act_as(%s)", (actor,))
                seen[actor] = (visible(conn, table, alice), visible(conn, table, bob))
    with psycopg.connect(db.maintenance_url) as conn:
        seen["maintenance"] = (visible(conn, table, alice), visible(conn, table, bob))
    audit = table == "audit_logs"
    assert seen == {
        alice: (own, 0),  # own rows yes, another tenant's never
        None: (0, 0),  # no actor, nothing
        admin_id: (2, 2) if audit else (1, 1),  # an admin sees every tenant
        "maintenance": (2, 2) if audit else (1, 1),  # so do the cross-tenant jobs
    }
    assert_ledger_clean(db)


def test_the_api_refuses_another_tenants_rows_as_not_found_or_not_allowed(keen, tenants, admin_id):
    alice, bob = tenants
    with keen.as_user(alice) as tx:
        key = tx.users.create_api_key("alice")
    with keen.as_user(bob) as tx:
        with pytest.raises(NotFound):
            tx.users.revoke_api_key(key.token_id)
    for call in (
        lambda u: u.list_users(),
        lambda u: u.suspend_user(alice),
        lambda u: u.reactivate_user(alice),
        lambda u: u.verify_audit_chain(),
    ):
        with pytest.raises(PermissionDenied), keen.as_user(bob) as tx:
            call(tx.users)
    with keen.as_user(bob) as tx:
        assert tx.users.update_profile("Bob").id == bob
    with keen.with_api_key(key.token) as tx:  # the key still works: bob could not revoke it
        assert tx.actor_id == alice


# Spoofing -------------------------------------------------------------------------------------

ADMIN_FLAGS = [
    "app.is_admin_user",
    "app.is_admin",
    "keen.is_admin",
    "keen.actor_is_admin",
    "keen.admin",
    "keen.bypass_rls",
    "keen.maintenance",
    "request.jwt.claim.is_admin",
    "app.bypass_billing",
]
ID_SETTINGS = ["app.current_user_id", "app.user_id", "keen.user_id", "request.jwt.claim.sub", "keen.admin_id"]


@pytest.mark.parametrize("local", [True, False], ids=["SET LOCAL", "SET"])
def test_no_setting_makes_an_actor_admin_or_changes_who_it_is(tenants, db, admin_id, local):
    alice, _ = tenants
    with psycopg.connect(db.app_url) as conn, conn.transaction():
        conn.execute("SELECT keen.act_as(%s)", (alice,))
        for name in ADMIN_FLAGS:
            conn.execute("SELECT set_config(%s, 'true', %s)", (name, local))
        for name in ID_SETTINGS:
            conn.execute("SELECT set_config(%s, %s, %s)", (name, str(admin_id), local))
        assert conn.execute("SELECT keen.actor_id(), keen.actor_is_admin()").fetchone() == (alice, False)
        assert conn.execute("SELECT count(*) FROM keen.users").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT keen.list_users()")


def test_setting_the_actor_by_hand_instead_of_act_as_is_no_actor(tenants, db, admin_id):
    alice, _ = tenants
    with psycopg.connect(db.app_url) as conn:
        for target in (alice, admin_id):
            with conn.transaction():
                conn.execute("SELECT set_config('keen.actor_id', %s, true)", (str(target),))
                assert conn.execute("SELECT keen.actor_id(), keen.actor_is_admin()").fetchone() == (None, False)
                assert conn.execute("SELECT count(*) FROM keen.credit_transactions").fetchone()[0] == 0


def test_a_proof_is_worthless_in_another_transaction_or_session(tenants, db):
    alice, bob = tenants
    with psycopg.connect(db.app_url) as first, psycopg.connect(db.app_url) as second:
        with first.transaction():
            first.execute("SELECT keen.act_as(%s)", (alice,))
            proof = first.execute("SELECT current_setting('keen_private.actor_proof')").fetchone()[0]
            with second.transaction():  # another session, copying the live proof
                second.execute(
                    "SELECT set_config('keen.actor_id', %s, true), set_config('keen_private.actor_proof', %s, true)",
                    (str(alice), proof),
                )
                assert second.execute("SELECT keen.actor_id()").fetchone()[0] is None
            # the same session, the proof moved to another user
            first.execute("SELECT set_config('keen.actor_id', %s, true)", (str(bob),))
            assert first.execute("SELECT keen.actor_id()").fetchone()[0] is None
        with first.transaction():  # the same session, a later transaction
            first.execute(
                "SELECT set_config('keen.actor_id', %s, true), set_config('keen_private.actor_proof', %s, true)",
                (str(alice), proof),
            )
            assert first.execute("SELECT keen.actor_id()").fetchone()[0] is None


def test_a_suspended_user_can_never_be_the_actor(keen, tenants, db, admin_id):
    alice, _ = tenants
    with keen.as_user(admin_id) as tx:
        tx.users.suspend_user(alice)
    with pytest.raises(AuthenticationFailed), keen.as_user(alice):
        pass
    with psycopg.connect(db.app_url) as conn, conn.transaction():
        conn.execute("SELECT set_config('keen.actor_id', %s, true)", (str(alice),))
        assert conn.execute("SELECT keen.actor_id()").fetchone()[0] is None
        assert visible(conn, "auth_tokens", alice) == 0


@pytest.mark.parametrize("role", ["keen_owner", "keen_auth", "keen_maintenance", "keen_recorder", "postgres"])
def test_keen_app_cannot_become_another_role(db, role):
    with psycopg.connect(db.app_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {role}")
    with psycopg.connect(db.app_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET SESSION AUTHORIZATION {role}")


# search_path hijack ---------------------------------------------------------------------------

HIJACK_SCHEMA = """
CREATE SCHEMA hijack;
CREATE FUNCTION hijack.boom() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
CREATE FUNCTION hijack.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.btrim(text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT hijack.boom()::timestamptz $$;
CREATE FUNCTION hijack.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.encode(bytea, text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.crypt(text, text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.digest(text, text) RETURNS bytea LANGUAGE sql AS $$ SELECT hijack.boom()::bytea $$;
CREATE FUNCTION hijack.hmac(text, text, text) RETURNS bytea LANGUAGE sql AS $$ SELECT hijack.boom()::bytea $$;
CREATE FUNCTION hijack.actor_id() RETURNS uuid LANGUAGE sql AS $$ SELECT hijack.boom()::uuid $$;
CREATE FUNCTION hijack.actor_is_admin() RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION hijack.text_eq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT hijack.boom()::boolean $$;
CREATE OPERATOR hijack.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hijack.text_eq);
GRANT USAGE ON SCHEMA hijack TO keen_app;
"""

# Created by keen_app itself: temporary tables and functions named like keen's.
HIJACK_TEMP = """
CREATE TEMPORARY TABLE users (id uuid, email text, password_hash text, account_status text, is_admin boolean);
CREATE TEMPORARY TABLE auth_tokens (id uuid, user_id uuid, token_hash text);
CREATE TEMPORARY TABLE audit_logs (id bigint);
CREATE TEMPORARY TABLE login_attempts (email text);
CREATE TEMPORARY TABLE settings (key text, value jsonb);
CREATE FUNCTION pg_temp.actor_id() RETURNS uuid LANGUAGE sql AS $$ SELECT NULL::uuid $$;
CREATE FUNCTION pg_temp.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
SET search_path = pg_temp, hijack, pg_catalog, public;
"""


def test_objects_shadowing_keens_in_the_callers_search_path_never_run(db, admin_id):
    with db.su() as conn:
        conn.execute(HIJACK_SCHEMA)
    with psycopg.connect(db.app_url, autocommit=True) as conn:
        conn.execute(HIJACK_TEMP)
        with pytest.raises(psycopg.errors.RaiseException):  # the trap is armed
            conn.execute("SELECT btrim('x')")
        user = conn.execute("SELECT id FROM keen.register_user('eve@example.com', 'eve', 'eve password')").fetchone()[0]
        assert conn.execute("SELECT user_id FROM keen.login('EVE@example.com ', 'eve password')").fetchone()[0] == user
        with pytest.raises(psycopg.errors.InvalidPassword):
            conn.execute("SELECT keen.login('eve@example.com', 'wrong password')")
        with conn.transaction():
            conn.execute("SELECT keen.act_as(%s)", (user,))
            token = conn.execute("SELECT token FROM keen.create_api_key('eve', ARRAY['credits:read'])").fetchone()[0]
            conn.execute("SELECT keen.update_profile('Eve', 'Europe/Paris', '{}')")
            conn.execute("SELECT keen.change_password('eve password', 'eve new password')")
            assert conn.execute("SELECT count(*) FROM keen.users").fetchone()[0] == 1
        with conn.transaction():
            assert conn.execute("SELECT user_id FROM keen.authenticate_api_key(%s)", (token,)).fetchone()[0] == user
        with conn.transaction():
            act_as_admin(conn)
            conn.execute("SELECT keen.suspend_user(%s)", (user,))
            conn.execute("SELECT keen.reactivate_user(%s)", (user,))
            assert conn.execute("SELECT count(*) FROM keen.list_users()").fetchone()[0] == 2
            assert conn.execute("SELECT count(*) FROM keen.verify_audit_chain()").fetchone()[0] == 0
        empty = conn.execute(
            "SELECT (SELECT count(*) FROM pg_temp.users) + (SELECT count(*) FROM pg_temp.auth_tokens)"
            " + (SELECT count(*) FROM pg_temp.audit_logs) + (SELECT count(*) FROM pg_temp.login_attempts)"
        ).fetchone()[0]
    assert empty == 0
    with db.su() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM keen.login_attempts WHERE email = 'eve@example.com' AND NOT succeeded"
            ).fetchone()[0]
            == 1
        )


# A function that makes another user the actor for a moment and then restores the caller's
# actor: each restored the actor with no scope list, so an admin key scoped to credits:read
# became full admin after it (the review's S1). Each entry: the call, made in the scoped key's
# transaction (%(email)s / %(token)s filled in per call).
ACTOR_SWITCHING_CALLS = {
    "register_user": "SELECT keen.register_user('scoped-new@example.com', 'scoped_new', 'correct horse battery')",
    "login": "SELECT keen.login(%(email)s, 'correct horse battery', '198.51.100.40')",
    "verify_email": "SELECT keen.verify_email(%(token)s)",
    "reset_password": "SELECT keen.reset_password(%(token)s, 'a brand new password')",
    "request_password_reset": "SELECT keen.request_password_reset(%(email)s)",
}
ADMIN_ONLY_CALLS = {
    "add_credits": "SELECT keen.add_credits(%(user)s, 10, 'escalated')",
    "set_setting": "SELECT keen.set_setting('markup_multiplier', '1')",
    "refund_credits": "SELECT keen.refund_credits(%(tx)s, 'escalated')",
    "list_users": "SELECT keen.list_users()",
}


@pytest.mark.parametrize("switch", sorted(ACTOR_SWITCHING_CALLS))
def test_attack_a_scoped_admin_key_stays_scoped_after_a_call_that_switches_the_actor(db, keen, make_user, switch):
    user = make_user("victim")
    with db.su() as conn:
        email = conn.execute("SELECT email FROM keen.users WHERE id = %s", (user,)).fetchone()[0]
    with psycopg.connect(db.app_url) as conn:
        act_as_admin(conn)
        scoped = conn.execute("SELECT token FROM keen.create_api_key('read only', '{credits:read}')").fetchone()[0]
        purchase = conn.execute("SELECT id FROM keen.add_credits(%s, 5, 'seed')", (user,)).fetchone()[0]
    token = None
    if switch == "verify_email":
        with keen.as_user(user) as tx:
            token = tx.scalar("SELECT keen.request_email_verification()")
    elif switch == "reset_password":
        with keen.transaction() as tx:
            token = tx.scalar("SELECT keen.request_password_reset(%s)", (email,))
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.authenticate_api_key(%s)", (scoped,))
        conn.execute(ACTOR_SWITCHING_CALLS[switch], {"email": email, "token": token})
        assert conn.execute("SELECT keen.actor_is_admin()").fetchone()[0]  # still the admin...
        assert conn.execute("SELECT current_balance FROM keen.get_balance(%s)", (user,)).fetchone()  # credits:read
        for call in ADMIN_ONLY_CALLS.values():  # ...and still limited to its scopes (a savepoint each)
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(call, {"user": user, "tx": purchase})
    assert_ledger_clean(db)
