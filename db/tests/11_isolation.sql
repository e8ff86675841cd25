-- 11_isolation: no tenant sees another's rows; nothing but keen.users makes an admin.
--   1. The matrix: every tenant table x (own rows, another tenant's rows, no actor, admin),
--      SELECT through the table as keen_app, with the exact count expected.
--   2. What keen_app cannot reach at all (secrets, writes, internal functions).
--   3. The identity API across tenants.
--   4. Spoofing: settings set to 'true' or to another user's id grant nothing.
--   5. search_path hijack: shadowing objects never run inside an API function.
-- Rows of the other areas' tables are seeded directly by the superuser running this file.
BEGIN;
SELECT plan(104);
-- Audit entries are linked into keen.audit_logs at COMMIT; this file reads them before its ROLLBACK.
SET CONSTRAINTS keen.audit_link IMMEDIATE;

SELECT set_config('tests.admin', (SELECT id FROM keen.users WHERE role = 'super_admin')::text, false);
-- keen_app acts as the admin only through a credential: an API key made here (the superuser may set the actor).
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT set_config('tests.admin_key', (SELECT token FROM keen.create_api_key('pgtap: the admin')), false);
SELECT keen_private.set_actor(NULL);
SELECT set_config('tests.alice', (SELECT id FROM keen.register_user('alice@example.com', 'alice', 'alice password'))::text, false);
SELECT set_config('tests.bob', (SELECT id FROM keen.register_user('bob@example.com', 'bob', 'bob password'))::text, false);

-- One row of each tenant table for a user (users and credit_accounts come from register_user).
CREATE FUNCTION pg_temp.seed_tenant(p_user uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_account uuid := (SELECT id FROM keen.credit_accounts WHERE user_id = p_user);
    v_session uuid := gen_random_uuid();
    v_tx uuid := gen_random_uuid();
BEGIN
    INSERT INTO keen.auth_tokens (user_id, token_hash, token_name)
    VALUES (p_user, encode(keen_ext.gen_random_bytes(32), 'hex'), 'seeded');
    INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory)
    VALUES (v_session, p_user, 'seed-' || v_session, 'main', 'seeded', '/tmp/seed');
    INSERT INTO keen.credit_transactions (id, user_id, account_id, transaction_type, amount, balance_after, description)
    VALUES (v_tx, p_user, v_account, 'purchase', 10, 10, 'seeded');
    UPDATE keen.credit_accounts SET current_balance = 10, lifetime_purchased = 10 WHERE id = v_account;
    INSERT INTO keen.credit_reservations (user_id, account_id, estimated_claude_cost_usd, markup_multiplier, held_credits, expires_at)
    VALUES (p_user, v_account, 1, 5, 5, now() + interval '15 minutes');
    INSERT INTO keen.phase_transitions (session_id, user_id, from_phase, to_phase)
    VALUES (v_session, p_user, 'EXPLORE', 'PLAN');
    INSERT INTO keen.tool_executions (session_id, user_id, tool_name, execution_time_ms, success)
    VALUES (v_session, p_user, 'grep', 5, true);
    INSERT INTO keen.git_operations (session_id, user_id, operation_type, branch_name, success)
    VALUES (v_session, p_user, 'commit', 'main', true);
    INSERT INTO keen.websocket_connections (user_id, session_id, connection_id, client_ip, client_type)
    VALUES (p_user, v_session, 'seed-' || v_session, '10.0.0.1', 'cli');
    INSERT INTO keen.streaming_events (session_id, user_id, event_type)
    VALUES (v_session, p_user, 'seeded');
    INSERT INTO keen.daily_usage_stats (user_id, date_bucket) VALUES (p_user, current_date);
    PERFORM keen_private.write_audit('test', 'seeded', p_user);
END $$;
SELECT pg_temp.seed_tenant(current_setting('tests.alice')::uuid);
SELECT pg_temp.seed_tenant(current_setting('tests.bob')::uuid);

-- The tenant tables, the column naming the tenant, and how many of a tenant's own rows it may see.
CREATE TEMPORARY TABLE tenant_tables (name text, owner_column text, own_visible bigint);
INSERT INTO tenant_tables VALUES
    ('users', 'id', 1), ('auth_tokens', 'user_id', 1), ('credit_accounts', 'user_id', 1),
    ('credit_transactions', 'user_id', 1), ('credit_reservations', 'user_id', 1),
    ('agent_sessions', 'user_id', 1), ('phase_transitions', 'user_id', 1),
    ('tool_executions', 'user_id', 1), ('git_operations', 'user_id', 1),
    ('websocket_connections', 'user_id', 1), ('streaming_events', 'user_id', 1),
    ('daily_usage_stats', 'user_id', 1), ('audit_logs', 'user_id', 0);
GRANT SELECT ON tenant_tables TO keen_app;
-- Rows of p_table whose tenant is p_owner, as the current role and actor see them.
CREATE FUNCTION pg_temp.visible(p_table text, p_column text, p_owner uuid) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_count bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM keen.%I WHERE %I = $1', p_table, p_column) INTO v_count USING p_owner;
    RETURN v_count;
END $$;

SELECT is((SELECT count(*) FROM tenant_tables t
            WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = 'keen'::regnamespace AND c.relname = t.name)),
          0::bigint, 'every table of the matrix exists');
-- Tables added later by other areas are held to the same rule, read from the catalog: every
-- table with a user_id has a policy that compares it with (SELECT keen.actor_id()), but the
-- audit log (admins only, whatever its user_id) and its pending entries (keen_owner's linker only).
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname)
             FROM pg_class c
            WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p') AND c.relname NOT IN ('audit_logs', 'audit_pending')
              AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
              AND NOT EXISTS (SELECT 1 FROM pg_policy p
                               WHERE p.polrelid = c.oid
                                 AND pg_get_expr(p.polqual, p.polrelid) LIKE '%user_id = ( SELECT keen.actor_id() AS actor_id)%')),
          NULL,
          'every table with a user_id (partitions included) has a policy on user_id = (SELECT keen.actor_id())');

-- 1. The matrix ------------------------------------------------------------------------------------
SET LOCAL ROLE keen_app;
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT is(pg_temp.visible(name, owner_column, current_setting('tests.alice')::uuid), own_visible,
          name || ': a tenant sees its own rows' || CASE WHEN own_visible = 0 THEN ' (none: admins only)' ELSE '' END)
  FROM tenant_tables ORDER BY name;
SELECT is(pg_temp.visible(name, owner_column, current_setting('tests.bob')::uuid), 0::bigint,
          name || ': a tenant sees none of another tenant''s rows')
  FROM tenant_tables ORDER BY name;
SELECT set_config('keen.actor_id', '', true);
SELECT is(pg_temp.visible(name, owner_column, current_setting('tests.alice')::uuid)
          + pg_temp.visible(name, owner_column, current_setting('tests.bob')::uuid), 0::bigint,
          name || ': without an actor nothing is visible')
  FROM tenant_tables ORDER BY name;
SELECT keen.authenticate_api_key(current_setting('tests.admin_key'));
SELECT is(pg_temp.visible(name, owner_column, current_setting('tests.alice')::uuid)
          + pg_temp.visible(name, owner_column, current_setting('tests.bob')::uuid),
          CASE WHEN name = 'audit_logs' THEN 4::bigint ELSE 2::bigint END,
          name || ': an admin sees every tenant''s rows')
  FROM tenant_tables ORDER BY name;
RESET ROLE;

-- 2. Out of keen_app's reach -------------------------------------------------------------------------
SET LOCAL ROLE keen_app;
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT password_hash FROM keen.users$$, '42501', NULL, 'keen_app cannot read password hashes, even its own');
SELECT throws_ok($$SELECT token_hash FROM keen.auth_tokens$$, '42501', NULL, 'keen_app cannot read token hashes');
SELECT throws_ok($$SELECT * FROM keen.auth_secrets$$, '42501', NULL, 'keen_app cannot read the secrets');
SELECT throws_ok($$SELECT * FROM keen.login_attempts$$, '42501', NULL, 'keen_app cannot read login attempts');
SELECT throws_ok($$SELECT * FROM keen.audit_chain_heads$$, '42501', NULL, 'keen_app cannot read the audit chain heads');
SELECT throws_ok($$UPDATE keen.users SET is_admin = true$$, '42501', NULL, 'keen_app cannot make itself admin by UPDATE');
SELECT throws_ok($$INSERT INTO keen.audit_logs (chain_seq, row_hash, event_type) VALUES (1, '\x00', 'x')$$, '42501', NULL,
                 'keen_app cannot insert audit entries');
SELECT throws_ok($$SELECT keen_private.write_audit('x', NULL, NULL)$$, '42501', NULL, 'keen_app cannot call write_audit');
SELECT throws_ok(format('SELECT keen_private.set_actor(%L)', current_setting('tests.bob')), '42501', NULL, 'keen_app cannot call set_actor');
SELECT throws_ok(format('SELECT keen_private.actor_proof(%L, %L, %L)', current_setting('tests.bob'), '', 'guess'), '42501', NULL,
                 'keen_app cannot compute an actor proof');
SELECT throws_ok(format('SELECT keen_private.write_actor(%L, %L)', current_setting('tests.bob'), ''), '42501', NULL,
                 'keen_app cannot write an actor');
SELECT throws_ok($$SELECT * FROM keen_private.auth_check_password('alice@example.com', 'x', 4)$$, '42501', NULL,
                 'keen_app cannot call the keen_auth password check');
SELECT throws_ok($$SELECT keen.record_login_failure('alice@example.com', NULL, NULL, 'bad_credentials', false)$$, '42501', NULL,
                 'keen_app cannot record login failures itself');
SELECT throws_ok($$SELECT * FROM keen_ext.dblink('dbname=postgres', 'SELECT 1') AS t(x int)$$, '42501', NULL,
                 'keen_app cannot open dblink connections');
RESET ROLE;

-- 3. The identity API across tenants -----------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.alice')::uuid);
CREATE TEMPORARY TABLE alice_key AS SELECT * FROM keen.create_api_key('alice key');
GRANT SELECT ON alice_key TO keen_app;
SET LOCAL ROLE keen_app;
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM alice_key)), 'P0002', 'API key not found',
                 'revoke_api_key: another tenant''s key is not found');
SELECT throws_ok($$SELECT keen.list_users()$$, '42501', NULL, 'list_users: a tenant may not list users');
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.alice')), '42501', NULL,
                 'suspend_user: a tenant may not suspend another');
SELECT throws_ok(format('SELECT keen.reactivate_user(%L)', current_setting('tests.alice')), '42501', NULL,
                 'reactivate_user: a tenant may not reactivate another');
SELECT throws_ok($$SELECT * FROM keen.verify_audit_chain()$$, '42501', NULL, 'verify_audit_chain: a tenant may not');
SELECT is((SELECT id FROM keen.update_profile('Bob B.')), current_setting('tests.bob')::uuid,
          'update_profile changes the actor''s own profile');
SELECT lives_ok($$SELECT keen.change_password('bob password', 'bob new password')$$, 'change_password changes the actor''s own password');
RESET ROLE;
SELECT is((SELECT display_name::text FROM keen.users WHERE id = current_setting('tests.alice')::uuid), NULL,
          'another tenant''s profile is untouched');
SELECT ok((SELECT password_hash = keen_ext.crypt('alice password', password_hash) FROM keen.users WHERE id = current_setting('tests.alice')::uuid),
          'another tenant''s password is untouched');
SET LOCAL ROLE keen_app;
SELECT is((SELECT user_id FROM keen.authenticate_api_key((SELECT token FROM alice_key))), current_setting('tests.alice')::uuid,
          'authenticate_api_key: a key authenticates its own owner only, whoever the previous actor');
SELECT is((SELECT count(*) FROM keen.users), 1::bigint, 'and the new actor sees its own user row only');
SELECT set_config('keen.actor_id', '', true);
SELECT throws_ok($$SELECT keen.create_api_key('x')$$, '28000', NULL, 'create_api_key: no actor, no key');
SELECT throws_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM alice_key)), '28000', NULL,
                 'revoke_api_key: no actor is not authenticated');
RESET ROLE;

-- 4. Spoofing ----------------------------------------------------------------------------------------
SET LOCAL ROLE keen_app;
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT set_config(s, 'true', true)
  FROM unnest(ARRAY['app.is_admin_user', 'app.is_admin', 'keen.is_admin', 'keen.actor_is_admin', 'keen.admin',
                    'request.jwt.claim.is_admin', 'app.bypass_rls', 'keen.maintenance']) s;
SELECT set_config(s, current_setting('tests.admin'), true)
  FROM unnest(ARRAY['app.current_user_id', 'app.user_id', 'request.jwt.claim.sub', 'keen.user_id', 'keen.admin_id']) s;
SELECT ok(NOT keen.actor_is_admin(), 'settings set to true or to the admin''s id do not make the actor admin');
SELECT is(keen.actor_id(), current_setting('tests.bob')::uuid, 'nor change who the actor is');
SELECT is((SELECT count(*) FROM keen.users), 1::bigint, 'the actor still sees its own user row only');
SELECT throws_ok($$SELECT keen.list_users()$$, '42501', NULL, 'and admin functions still refuse it');
SELECT set_config('keen.actor_id', current_setting('tests.admin'), true);
SELECT is(keen.actor_id(), NULL, 'keen.actor_id set to the admin''s id by hand (no act_as) is no actor');
SELECT ok(NOT keen.actor_is_admin(), 'and not admin');
SELECT is((SELECT count(*) FROM keen.users), 0::bigint, 'and sees no user');
SELECT is((SELECT count(*) FROM keen.credit_transactions), 0::bigint, 'and no ledger row');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT set_config('keen.actor_id', current_setting('tests.bob'), true);
SELECT is(keen.actor_id(), NULL, 'another user''s id under a valid proof for someone else is no actor');
SELECT set_config('keen.actor_id', current_setting('tests.alice'), true);
SELECT is(keen.actor_id(), current_setting('tests.alice')::uuid, 'the proof still holds for the user it was made for');
SELECT set_config('keen_private.actor_proof', repeat('0', 64), true);
SELECT is(keen.actor_id(), NULL, 'a forged proof is no actor');
SELECT set_config('keen.actor_id', 'not-a-uuid', true);
SELECT is(keen.actor_id(), NULL, 'a malformed id reads as no actor (no error)');
RESET ROLE;
-- A suspended user can never be the actor: not by act_as, not by hand.
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT keen.suspend_user(current_setting('tests.bob')::uuid, 'isolation test');
SET LOCAL ROLE keen_app;
SELECT throws_ok(format('SELECT keen.act_as(%L)', current_setting('tests.bob')), '28000', NULL, 'act_as a suspended user is 28000');
SELECT set_config('keen.actor_id', current_setting('tests.bob'), true);
SELECT is(keen.actor_id(), NULL, 'SET LOCAL keen.actor_id to a suspended user is no actor');
SELECT is((SELECT count(*) FROM keen.auth_tokens), 0::bigint, 'and sees none of its rows');
RESET ROLE;
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT keen.reactivate_user(current_setting('tests.bob')::uuid);
SELECT set_config('keen.actor_id', '', true);

-- 5. search_path hijack ----------------------------------------------------------------------------
-- A schema placed before pg_catalog and temporary views named like keen's tables: if any API
-- function resolved a name through the caller's search_path, it would run these and fail.
CREATE SCHEMA hijack;
CREATE FUNCTION hijack.boom() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
CREATE FUNCTION hijack.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.btrim(text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT hijack.boom()::timestamptz $$;
CREATE FUNCTION hijack.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT hijack.boom()::timestamptz $$;
CREATE FUNCTION hijack.gen_random_uuid() RETURNS uuid LANGUAGE sql AS $$ SELECT hijack.boom()::uuid $$;
CREATE FUNCTION hijack.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.crypt(text, text) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.gen_salt(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT hijack.boom() $$;
CREATE FUNCTION hijack.digest(text, text) RETURNS bytea LANGUAGE sql AS $$ SELECT hijack.boom()::bytea $$;
CREATE FUNCTION hijack.hmac(text, text, text) RETURNS bytea LANGUAGE sql AS $$ SELECT hijack.boom()::bytea $$;
CREATE FUNCTION hijack.gen_random_bytes(integer) RETURNS bytea LANGUAGE sql AS $$ SELECT hijack.boom()::bytea $$;
CREATE FUNCTION hijack.actor_id() RETURNS uuid LANGUAGE sql AS $$ SELECT hijack.boom()::uuid $$;
CREATE FUNCTION hijack.actor_is_admin() RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION hijack.write_audit(text, text, uuid, jsonb, text, inet, uuid) RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM hijack.boom(); END $$;
CREATE FUNCTION hijack.uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT hijack.boom()::boolean $$;
CREATE OPERATOR hijack.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = hijack.uuid_eq);
CREATE TABLE hijack.users (id uuid, email text, password_hash text, account_status text, is_admin boolean);
INSERT INTO hijack.users SELECT id, email, password_hash, 'active', true FROM keen.users;
GRANT USAGE ON SCHEMA hijack TO keen_app;
GRANT SELECT ON hijack.users TO keen_app;
DO $$
DECLARE v_table text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['users', 'auth_tokens', 'audit_logs', 'audit_chain_heads', 'login_attempts',
                                   'auth_secrets', 'settings', 'credit_accounts']
    LOOP
        EXECUTE format('CREATE TEMPORARY VIEW %I AS SELECT hijack.boom() AS boom', v_table);
    END LOOP;
END $$;
-- The calls, made by keen_app with the hostile search_path (a pg_temp function: its SET clause
-- applies to its own body, which names nothing but keen's functions and literals).
CREATE FUNCTION pg_temp.hijacked_calls(p_admin uuid) RETURNS text
LANGUAGE plpgsql SET search_path = pg_temp, hijack, pg_catalog AS $$
DECLARE
    v_user uuid;
    v_token text;
    v_token_id uuid;
BEGIN
    SELECT r.id INTO v_user FROM keen.register_user('mallory@example.com', 'mallory', 'mallory password') r;
    PERFORM keen.login('mallory@example.com', 'mallory password', '10.9.9.9');
    BEGIN
        PERFORM keen.login('mallory@example.com', 'wrong password');
    EXCEPTION WHEN invalid_password THEN NULL;
    END;
    PERFORM keen.act_as(v_user);
    SELECT k.token_id, k.token INTO v_token_id, v_token FROM keen.create_api_key('hijack', ARRAY['keys:manage']) k;
    PERFORM keen.update_profile('Mallory', 'Europe/Paris', '{"a": 1}');
    PERFORM keen.change_password('mallory password', 'mallory new password');
    PERFORM keen.authenticate_api_key(v_token);
    PERFORM keen.revoke_api_key(v_token_id);
    PERFORM keen.authenticate_api_key(current_setting('tests.admin_key'));
    PERFORM keen.list_users();
    PERFORM keen.suspend_user(v_user);
    PERFORM keen.reactivate_user(v_user);
    PERFORM keen.verify_audit_chain();
    RETURN 'all calls ran';
END $$;
SET LOCAL ROLE keen_app;
SELECT is(pg_temp.hijacked_calls(current_setting('tests.admin')::uuid), 'all calls ran',
          'no API function runs a function, operator or table that shadows keen''s in the caller''s search_path');
RESET ROLE;
SELECT is((SELECT count(*) FROM hijack.users WHERE email = 'mallory@example.com'), 0::bigint,
          'the shadowing users table was not written');
SELECT is((SELECT account_status::text FROM keen.users WHERE email = 'mallory@example.com'), 'active',
          'the calls reached keen''s own tables');

-- 6. A scoped admin key stays scoped after a call that switches the actor (review S1: the
-- previous actor came back with no scope list, so {credits:read} became full admin).
SELECT keen_private.set_actor_scoped(current_setting('tests.admin')::uuid, ARRAY['credits:read']);
SELECT lives_ok($$SELECT keen.register_user('scoped-new@example.com', 'scoped_new', 'scoped password')$$,
                'register_user under a credits:read admin key');
SELECT is(current_setting('keen_private.actor_scopes'), 'credits:read', 'register_user gives the actor back with its scopes');
SELECT throws_ok($$SELECT * FROM keen.list_users()$$, '42501', NULL, 'so the key still cannot list users (42501)');
SELECT lives_ok($$SELECT keen.request_password_reset('alice@example.com')$$, 'request_password_reset under the same key');
SELECT throws_ok($$SELECT keen.set_setting('markup_multiplier', '5')$$, '42501', NULL, 'nor then change a setting (42501)');
SELECT keen_private.set_actor(NULL);

SELECT * FROM finish();
ROLLBACK;
