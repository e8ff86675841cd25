-- 10_users: every identity function, its success path and each of its error codes.
-- Runs as the superuser postgres; after keen.act_as RLS applies as for that actor.
-- Failed logins are recorded by the autonomous loopback, which sees only committed rows: the
-- lock-out tests therefore use an e-mail of their own.
BEGIN;
SELECT plan(123);
-- Audit entries are linked into keen.audit_logs at COMMIT; this file reads them before its ROLLBACK.
SET CONSTRAINTS keen.audit_link IMMEDIATE;

SELECT set_config('tests.admin', (SELECT id FROM keen.users WHERE role = 'super_admin')::text, false);
SELECT set_config('tests.alice', (SELECT id FROM keen.register_user('Alice@Example.com', 'alice', 'alice password', 'Alice'))::text, false);
SELECT set_config('tests.bob', (SELECT id FROM keen.register_user('bob@example.com', 'bob', 'bob password'))::text, false);

-- register_user ---------------------------------------------------------------------------------
SELECT is((SELECT email FROM keen.users WHERE id = current_setting('tests.alice')::uuid), 'alice@example.com',
          'register_user stores the e-mail in lower case');
SELECT is((SELECT current_balance FROM keen.credit_accounts WHERE user_id = current_setting('tests.alice')::uuid), 0::keen.credit_amount,
          'register_user creates a credit account with balance 0');
SELECT ok((SELECT password_hash ~ '^\$2[ab]\$04\$' FROM keen.users WHERE id = current_setting('tests.alice')::uuid),
          'register_user hashes with bcrypt at the configured cost (4 in the test template)');
SELECT is(keen.actor_id(), NULL, 'register_user leaves the caller without an actor');
SELECT throws_ok($$SELECT keen.register_user('ALICE@example.COM', 'alice2', 'some password')$$, '23505', NULL,
                 'an e-mail taken in another case is 23505');
SELECT throws_ok($$SELECT keen.register_user('alice2@example.com', 'ALICE', 'some password')$$, '23505', NULL,
                 'a username taken in another case is 23505');
SELECT throws_ok($$SELECT keen.register_user('not-an-email', 'carol', 'some password')$$, '22023', NULL, 'an invalid e-mail is 22023');
SELECT throws_ok($$SELECT keen.register_user('carol@example.com', 'c', 'some password')$$, '22023', NULL, 'a two-letter username is 22023');
SELECT throws_ok($$SELECT keen.register_user('carol@example.com', '_carol', 'some password')$$, '22023', NULL, 'a username starting with _ is 22023');
SELECT throws_ok($$SELECT keen.register_user('carol@example.com', 'carol', 'short')$$, '22023', NULL, 'a password under 8 characters is 22023');
SELECT throws_ok($$SELECT keen.register_user('carol@example.com', 'carol', repeat('x', 73))$$, '22023', NULL, 'a password over 72 bytes is 22023');
SELECT is((SELECT count(*) FROM keen.users WHERE email = 'carol@example.com'), 0::bigint, 'refused registrations write nothing');

-- login -----------------------------------------------------------------------------------------
SELECT is((SELECT user_id FROM keen.login('ALICE@example.com ', 'alice password', '10.1.2.3')), current_setting('tests.alice')::uuid,
          'login accepts the right password (e-mail in any case, trimmed)');
SELECT is((SELECT last_login_ip FROM keen.users WHERE id = current_setting('tests.alice')::uuid), '10.1.2.3'::inet,
          'login records last_login_ip');
SELECT isnt((SELECT last_login_at FROM keen.users WHERE id = current_setting('tests.alice')::uuid), NULL, 'login records last_login_at');
SELECT is(keen.actor_id(), NULL, 'login does not set the actor');
SELECT results_eq($$SELECT is_admin, role, admin_privileges ->> 'manage_users' FROM keen.login('ahiya.butman@gmail.com', '2con-creator')$$,
                  $$VALUES (true, 'super_admin'::text, 'true'::text)$$, 'the admin logs in with its role and privileges');
SELECT throws_ok($$SELECT keen.login('alice@example.com', 'wrong password')$$, '28P01', 'invalid e-mail or password',
                 'a wrong password is 28P01');
SELECT throws_ok($$SELECT keen.login('nobody@example.com', 'wrong password')$$, '28P01', 'invalid e-mail or password',
                 'an unknown e-mail is 28P01 with the same message');
SELECT throws_ok($$SELECT keen.login(NULL, NULL)$$, '28P01', 'invalid e-mail or password', 'NULL credentials are 28P01');

-- An unknown e-mail spends one bcrypt like a known one (counted, not timed).
SET LOCAL track_functions = 'all';
CREATE TEMPORARY TABLE crypt_calls (label text, calls bigint);
INSERT INTO crypt_calls VALUES ('before', COALESCE(pg_stat_get_xact_function_calls('keen_ext.crypt(text,text)'::regprocedure), 0));
SELECT throws_ok($$SELECT keen.login('bob@example.com', 'wrong password')$$, '28P01', NULL, 'known e-mail, wrong password');
INSERT INTO crypt_calls VALUES ('known', COALESCE(pg_stat_get_xact_function_calls('keen_ext.crypt(text,text)'::regprocedure), 0));
SELECT throws_ok($$SELECT keen.login('ghost@example.com', 'wrong password')$$, '28P01', NULL, 'unknown e-mail');
INSERT INTO crypt_calls VALUES ('unknown', COALESCE(pg_stat_get_xact_function_calls('keen_ext.crypt(text,text)'::regprocedure), 0));
SELECT is((SELECT calls FROM crypt_calls WHERE label = 'known') - (SELECT calls FROM crypt_calls WHERE label = 'before'), 1::bigint,
          'a wrong password costs one bcrypt');
SELECT is((SELECT calls FROM crypt_calls WHERE label = 'unknown') - (SELECT calls FROM crypt_calls WHERE label = 'known'), 1::bigint,
          'an unknown e-mail costs one bcrypt too');

-- Brute force: 10 failures within the window lock the e-mail (known or not) out.
SELECT set_config('tests.dave', (SELECT id FROM keen.register_user('dave@example.com', 'dave', 'dave password'))::text, false);
CREATE FUNCTION pg_temp.fail_logins(p_email text, p_times int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE v_failed int := 0;
BEGIN
    FOR i IN 1..p_times LOOP
        BEGIN
            PERFORM keen.login(p_email, 'not the password');
        EXCEPTION WHEN invalid_password THEN
            v_failed := v_failed + 1;
        END;
    END LOOP;
    RETURN v_failed;
END $$;
SELECT is(pg_temp.fail_logins('dave@example.com', 9), 9, 'nine wrong passwords are nine 28P01');
SELECT is((SELECT count(*) FROM keen.login_attempts WHERE email = 'dave@example.com'), 9::bigint,
          'the failures are committed by the recorder although each login rolled back');
SELECT is((SELECT user_id FROM keen.login('dave@example.com', 'dave password')), current_setting('tests.dave')::uuid,
          'after nine failures the right password still works');
SELECT is((SELECT count(*) FROM keen.login_attempts WHERE email = 'dave@example.com' AND NOT succeeded), 0::bigint,
          'a successful login clears the failures (and keeps itself, as a success: its source is now known)');
SELECT is(pg_temp.fail_logins('dave@example.com', 10), 10, 'ten more wrong passwords');
SELECT throws_ok($$SELECT keen.login('dave@example.com', 'dave password')$$, '28P01', 'invalid e-mail or password',
                 'after ten failures from one source even the right password is refused, as a wrong one (28P01)');
SELECT throws_ok($$SELECT keen.login('dave@example.com', 'not the password')$$, '28P01', 'invalid e-mail or password',
                 'and so is a wrong one');
SELECT is((SELECT count(*) FROM keen.login_attempts WHERE email = 'dave@example.com' AND NOT succeeded), 12::bigint,
          'refused attempts are counted too: a guesser never waits the lock out');
SELECT is((SELECT user_id FROM keen.login('dave@example.com', 'dave password', '198.51.100.99')), current_setting('tests.dave')::uuid,
          'the owner from another source is not locked out');
-- (The lock lifting as the failures age out is tests/test_users.py's: the recorder counts in its own
-- transaction, which cannot see rows this one ages without committing.)
SELECT is(pg_temp.fail_logins('nobody-at-all@example.com', 10), 10, 'ten failures for an unknown e-mail');
SELECT throws_ok($$SELECT keen.login('nobody-at-all@example.com', 'x')$$, '28P01', 'invalid e-mail or password',
                 'an unknown e-mail locks out exactly like a known one');

-- suspend_user / reactivate_user ----------------------------------------------------------------
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.bob')), '42501', NULL, 'suspend_user without an actor is 42501');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.bob')), '42501', NULL, 'suspend_user by a non-admin is 42501');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT lives_ok(format('SELECT keen.suspend_user(%L, %L)', current_setting('tests.bob'), 'spam'), 'an admin suspends a user');
SELECT is((SELECT account_status FROM keen.users WHERE id = current_setting('tests.bob')::uuid)::text, 'suspended', 'the user is suspended');
SELECT lives_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.bob')), 'suspending a suspended user does nothing more');
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.admin')), '22023', NULL, 'an admin cannot suspend themselves');
SELECT throws_ok($$SELECT keen.suspend_user('00000000-0000-0000-0000-000000000000')$$, 'P0002', NULL, 'suspending an unknown user is P0002');
SELECT throws_ok(format('SELECT keen.suspend_user(%L, %L)', current_setting('tests.alice'), repeat('x', 1001)), '22023', NULL,
                 'a reason over 1000 characters is 22023');
SELECT throws_ok(format('SELECT keen.act_as(%L)', current_setting('tests.bob')), '28000', NULL, 'a suspended user cannot be acted as');
SELECT throws_ok($$SELECT keen.login('bob@example.com', 'bob password')$$, '28000', 'this account is suspended',
                 'a suspended user with the right password is 28000');
SELECT throws_ok($$SELECT keen.login('bob@example.com', 'wrong password')$$, '28P01', NULL,
                 'a suspended user with a wrong password is 28P01 (the status is not told)');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT lives_ok(format('SELECT keen.reactivate_user(%L)', current_setting('tests.bob')), 'an admin reactivates the user');
SELECT is((SELECT user_id FROM keen.login('bob@example.com', 'bob password')), current_setting('tests.bob')::uuid, 'the reactivated user logs in');
SELECT lives_ok(format('SELECT keen.reactivate_user(%L)', current_setting('tests.bob')), 'reactivating an active user does nothing');
UPDATE keen.users SET account_status = 'banned' WHERE id = current_setting('tests.dave')::uuid;
SELECT throws_ok(format('SELECT keen.reactivate_user(%L)', current_setting('tests.dave')), '22023', NULL, 'a banned account is not reactivated here');
SELECT throws_ok($$SELECT keen.reactivate_user('00000000-0000-0000-0000-000000000000')$$, 'P0002', NULL, 'reactivating an unknown user is P0002');
-- An admin who is not the super-admin: may suspend users, not admins; nobody suspends the super-admin.
UPDATE keen.users SET is_admin = true, role = 'admin' WHERE id = current_setting('tests.alice')::uuid;
SELECT set_config('tests.erin', (SELECT id FROM keen.register_user('erin@example.com', 'erin', 'erin password'))::text, false);
UPDATE keen.users SET is_admin = true, role = 'admin' WHERE id = current_setting('tests.erin')::uuid;
SELECT keen_private.set_actor(current_setting('tests.alice')::uuid);  -- an admin now: act_as would refuse her
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.admin')), '42501', NULL, 'nobody suspends the super-admin');
SELECT throws_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.erin')), '42501', NULL, 'an admin cannot suspend another admin');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT lives_ok(format('SELECT keen.suspend_user(%L)', current_setting('tests.erin')), 'the super-admin can suspend an admin');
UPDATE keen.users SET is_admin = false, role = 'user' WHERE id = current_setting('tests.alice')::uuid;

-- list_users ------------------------------------------------------------------------------------
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT is((SELECT count(*) FROM keen.list_users()), (SELECT count(*) FROM keen.users), 'an admin lists every user');
SELECT is((SELECT count(*) FROM keen.list_users(2, 1)), 2::bigint, 'list_users pages with limit and offset');
SELECT throws_ok($$SELECT keen.list_users(0)$$, '22023', NULL, 'a limit of 0 is 22023');
SELECT throws_ok($$SELECT keen.list_users(10, -1)$$, '22023', NULL, 'a negative offset is 22023');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT keen.list_users()$$, '42501', NULL, 'list_users by a user is 42501');
SELECT keen_private.set_actor(NULL);
SELECT throws_ok($$SELECT keen.list_users()$$, '42501', NULL, 'list_users without an actor is 42501');

-- change_password -------------------------------------------------------------------------------
SELECT throws_ok($$SELECT keen.change_password('alice password', 'new alice password')$$, '28000', NULL, 'change_password needs an actor');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT keen.change_password('not it', 'new alice password')$$, '28P01', NULL, 'a wrong current password is 28P01');
SELECT throws_ok($$SELECT keen.change_password('alice password', 'short')$$, '22023', NULL, 'an invalid new password is 22023');
SELECT throws_ok($$SELECT keen.change_password('alice password', 'alice password')$$, '22023', NULL, 'the same password again is 22023');
SELECT lives_ok($$SELECT keen.change_password('alice password', 'new alice password')$$, 'the actor changes its password');
SELECT is((SELECT user_id FROM keen.login('alice@example.com', 'new alice password')), current_setting('tests.alice')::uuid,
          'the new password logs in');
SELECT throws_ok($$SELECT keen.login('alice@example.com', 'alice password')$$, '28P01', NULL, 'the old one no longer does');

-- update_profile --------------------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT results_eq($$SELECT display_name, timezone, preferences FROM keen.update_profile('  Alice A. ', 'Europe/Paris', '{"theme": "dark"}')$$,
                  $$VALUES ('Alice A.'::text, 'Europe/Paris'::text, '{"theme": "dark"}'::jsonb)$$,
                  'update_profile sets display name (trimmed), time zone and preferences');
SELECT results_eq($$SELECT display_name, timezone FROM keen.update_profile(p_timezone => 'UTC')$$,
                  $$VALUES ('Alice A.'::text, 'UTC'::text)$$, 'a NULL argument leaves its field unchanged');
SELECT throws_ok($$SELECT keen.update_profile(p_timezone => 'Mars/Olympus')$$, '22023', NULL, 'an unknown time zone is 22023');
SELECT throws_ok($$SELECT keen.update_profile(p_preferences => '[1, 2]')$$, '22023', NULL, 'preferences that are not an object are 22023');
SELECT throws_ok($$SELECT keen.update_profile(p_display_name => '   ')$$, '22023', NULL, 'a blank display name is 22023');
SELECT keen_private.set_actor(NULL);
SELECT throws_ok($$SELECT keen.update_profile('x')$$, '28000', NULL, 'update_profile needs an actor');

-- create_api_key / authenticate_api_key / revoke_api_key ----------------------------------------
SELECT throws_ok($$SELECT keen.create_api_key('ci')$$, '28000', NULL, 'create_api_key needs an actor');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
CREATE TEMPORARY TABLE keys AS
    SELECT 'alice'::text AS owner, k.* FROM keen.create_api_key('ci', ARRAY['sessions:write', 'credits:read', 'credits:read']) k;
SELECT ok((SELECT token ~ '^keen_[A-Za-z0-9_-]{43}$' FROM keys), 'a token is keen_ + 43 URL-safe characters (32 random bytes)');
SELECT is((SELECT token_hash::text FROM keen.auth_tokens t JOIN keys k ON k.token_id = t.id),
          (SELECT encode(keen_ext.digest(token, 'sha256'), 'hex') FROM keys), 'only the SHA-256 of the token is stored');
SELECT is((SELECT scopes FROM keen.auth_tokens t JOIN keys k ON k.token_id = t.id), ARRAY['credits:read', 'sessions:write'],
          'scopes are stored sorted, without duplicates');
SELECT throws_ok($$SELECT keen.create_api_key('  ')$$, '22023', NULL, 'a blank key name is 22023');
SELECT throws_ok($$SELECT keen.create_api_key('ci', ARRAY['Bad Scope'])$$, '22023', NULL, 'an invalid scope is 22023');
SELECT throws_ok($$SELECT keen.create_api_key('ci', '{}', now() - interval '1 second')$$, '22023', NULL, 'an expiry in the past is 22023');
SELECT keen_private.set_actor(NULL);
SELECT results_eq(format('SELECT user_id, scopes, is_admin, bypass_limits FROM keen.authenticate_api_key(%L)', (SELECT token FROM keys)),
                  format($$VALUES (%L::uuid, ARRAY['credits:read', 'sessions:write'], false, false)$$, current_setting('tests.alice')),
                  'authenticate_api_key returns the key''s user and scopes');
SELECT is(keen.actor_id(), current_setting('tests.alice')::uuid, 'and makes that user the actor');
SELECT is((SELECT usage_count FROM keen.auth_tokens t JOIN keys k ON k.token_id = t.id), 1, 'and counts the use');
SELECT lives_ok(format('SELECT keen.authenticate_api_key(%L, %L::inet)', (SELECT token FROM keys), '192.0.2.7'),
                'authenticate_api_key with the caller''s address');
SELECT is((SELECT last_used_ip FROM keen.auth_tokens t JOIN keys k ON k.token_id = t.id), '192.0.2.7'::inet, 'records last_used_ip');
SELECT throws_ok($$SELECT keen.authenticate_api_key('keen_' || repeat('A', 43))$$, '28000', 'invalid API key', 'an unknown key is 28000');
SELECT throws_ok($$SELECT keen.authenticate_api_key('garbage')$$, '28000', 'invalid API key', 'a malformed key is 28000');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM keys)), 'P0002', NULL,
                 'revoking another user''s key is P0002, as if absent');
SELECT throws_ok($$SELECT keen.revoke_api_key('00000000-0000-0000-0000-000000000000')$$, 'P0002', NULL, 'revoking an unknown key is P0002');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT lives_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM keys)), 'the owner revokes its key');
SELECT lives_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM keys)), 'revoking it again does nothing more');
SELECT throws_ok(format('SELECT keen.authenticate_api_key(%L)', (SELECT token FROM keys)), '28000', 'invalid API key',
                 'a revoked key fails like an unknown one');
INSERT INTO keys SELECT 'alice', k.* FROM keen.create_api_key('short-lived', '{}', now() + interval '1 hour') k;
UPDATE keen.auth_tokens SET expires_at = now() - interval '1 second' WHERE token_name = 'short-lived';
SELECT throws_ok(format('SELECT keen.authenticate_api_key(%L)', (SELECT token FROM keys WHERE token_id = (SELECT id FROM keen.auth_tokens WHERE token_name = 'short-lived'))),
                 '28000', 'invalid API key', 'an expired key fails like an unknown one');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
INSERT INTO keys SELECT 'bob', k.* FROM keen.create_api_key('bob key') k;
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT lives_ok(format('SELECT keen.revoke_api_key(%L)', (SELECT token_id FROM keys WHERE owner = 'bob')), 'an admin revokes anyone''s key');
SELECT ok((SELECT revoked_at IS NOT NULL AND NOT is_active FROM keen.auth_tokens t JOIN keys k ON k.token_id = t.id WHERE k.owner = 'bob'),
          'the key is marked revoked');

-- Identity completed (0010): the error codes of each new function; the flows are in
-- tests/test_login_sessions.py, test_totp.py, test_rate_limits.py (they need committed rows).
SELECT keen_private.set_actor(NULL);
SELECT is(keen.totp_code('12345678901234567890'::bytea, to_timestamp(59), 8, 30), '94287082', 'RFC 6238 vector at 59 s');
SELECT is(keen.totp_code('12345678901234567890'::bytea, to_timestamp(20000000000), 8, 30), '65353130', 'RFC 6238 vector at 20000000000 s');
SELECT throws_ok($$SELECT keen.totp_code(''::bytea, now())$$, '22023', NULL, 'totp_code of an empty secret is 22023');
SELECT throws_ok($$SELECT * FROM keen.start_login_session('nobody@example.com', 'whatever password')$$, '28P01', 'invalid e-mail or password',
                 'start_login_session of an unknown e-mail is 28P01');
SELECT throws_ok($$SELECT * FROM keen.refresh_login_session('keenr_' || repeat('A', 43))$$, '28000', NULL, 'an unknown refresh token is 28000');
SELECT throws_ok($$SELECT * FROM keen.authenticate_access_token('eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.' || repeat('A', 43))$$, '28000', NULL,
                 'an access token with a wrong signature is 28000');
SELECT throws_ok($$SELECT keen.verify_email('keenv_nothing')$$, '28000', NULL, 'an unknown verification token is 28000');
SELECT throws_ok($$SELECT keen.reset_password('keenp_nothing', 'a fine new password')$$, '28000', NULL, 'an unknown reset token is 28000');
SELECT is(keen.request_password_reset('nobody@example.com'), NULL, 'a reset for an unknown e-mail is NULL');
SELECT throws_ok($$SELECT * FROM keen.list_login_sessions()$$, '28000', NULL, 'list_login_sessions needs an actor');
SELECT throws_ok($$SELECT * FROM keen.enroll_totp()$$, '28000', NULL, 'enroll_totp needs an actor');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok($$SELECT * FROM keen.create_api_key('k', ARRAY['admin:*'])$$, '22023', NULL, 'a scope outside the contract''s list is 22023');
SELECT throws_ok($$SELECT * FROM keen.create_api_key('k', '{}', NULL, 0)$$, '22023', NULL, 'a rate limit under 1 is 22023');
SELECT throws_ok($$SELECT * FROM keen.confirm_totp('123456')$$, 'KN006', NULL, 'confirm_totp with no pending secret is KN006');
SELECT throws_ok($$SELECT keen.disable_totp('123456')$$, 'KN006', NULL, 'disable_totp with no second factor is KN006');
SELECT throws_ok(format('SELECT keen.revoke_login_session(%L)', gen_random_uuid()), 'P0002', NULL, 'an unknown login session is P0002');
SELECT throws_ok(format('SELECT keen.revoke_all_login_sessions(%L)', current_setting('tests.admin')), '42501', NULL,
                 'revoking another user''s sessions is for admins (42501)');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT throws_ok($$SELECT keen.set_setting('markup_multiplier', '0.0001')$$, '22023', NULL, 'a markup below its bound is 22023');
SELECT throws_ok($$SELECT keen.set_setting('bcrypt_cost', '32')$$, '22023', NULL, 'a bcrypt cost above its bound is 22023');
SELECT lives_ok($$SELECT keen.set_setting('markup_multiplier', '5.0')$$, 'a markup within its bounds is accepted');
-- The caps of review S4 (rotating p_ip) and the size caps now written once (core.sql's size_cap).
SELECT is(keen.setting_numeric('login_max_failures_per_email'), 100::numeric,
          'one e-mail''s failed sign-ins from all sources are capped at 100 in the window by default');
SELECT is(keen.setting_numeric('second_factor_max_failures'), 10::numeric, 'one user''s wrong second-factor codes at 10');
SELECT throws_ok($$SELECT keen.set_setting('login_max_failures_per_email', '5')$$, '22023', NULL,
                 'the per-e-mail cap has bounds like the others');
SELECT throws_ok($$SELECT keen.record_login_attempt('x@example.com', NULL, gen_random_uuid(), 'guessing')$$, '22023', NULL,
                 'an attempt of an unknown purpose is 22023');
SELECT throws_ok($$SELECT * FROM keen.register_user('erin@example.com', 'erin', 'erin password', repeat('x', 256))$$,
                 '22023', 'label is 256 bytes; at most 255 are accepted', 'a display name over 255 bytes is 22023 (require_size)');
SELECT throws_ok(format('SELECT keen.suspend_user(%L, %L)', current_setting('tests.bob'), repeat('x', 1001)),
                 '22023', 'reason is 1001 bytes; at most 1000 are accepted', 'a suspension reason over 1000 bytes is 22023');
SELECT throws_ok(format('SELECT * FROM keen.login(%L, %L)', repeat('x', 250) || '@example.com', 'whatever password'),
                 '22023', NULL, 'a sign-in e-mail over 255 bytes is 22023 (require_size), before the recorder counts it');
SELECT is((SELECT event_data ->> 'old_value' FROM keen.audit_logs WHERE event_subtype = 'setting_changed' ORDER BY chain_seq DESC LIMIT 1),
          '5.0', 'the change is audited with its old value');

SELECT * FROM finish();
ROLLBACK;
