-- 12_structure: the shape of isolation, read from the catalog: the policies of every tenant
-- table, each role's table and function privileges, definers and owners, the append-only
-- audit trigger, and data-driven rules that stay true as other areas add functions.
BEGIN;
SELECT plan(191);

-- Policies: one per tenant table, named as sentences; audit and bookkeeping tables as designed.
SELECT policies_are('keen', 'users', ARRAY['Users are visible to themselves and to admins']);
SELECT policies_are('keen', 'auth_tokens', ARRAY['API tokens are visible to their owner and to admins']);
SELECT policies_are('keen', 'credit_accounts', ARRAY['Credit accounts are visible to their owner and to admins']);
SELECT policies_are('keen', 'credit_transactions', ARRAY['Credit transactions are visible to their owner and to admins']);
SELECT policies_are('keen', 'credit_reservations', ARRAY['Credit reservations are visible to their owner and to admins']);
SELECT policies_are('keen', 'agent_sessions', ARRAY['Agent sessions are visible to their owner and to admins']);
SELECT policies_are('keen', 'phase_transitions', ARRAY['Phase transitions are visible to their owner and to admins']);
SELECT policies_are('keen', 'tool_executions', ARRAY['Tool executions are visible to their owner and to admins']);
SELECT policies_are('keen', 'git_operations', ARRAY['Git operations are visible to their owner and to admins']);
SELECT policies_are('keen', 'websocket_connections', ARRAY['Connections are visible to their owner and to admins']);
SELECT policies_are('keen', 'streaming_events', ARRAY['Events are visible to their owner and to admins']);
SELECT policies_are('keen', 'daily_usage_stats', ARRAY['Usage stats are visible to their owner and to admins']);
SELECT policies_are('keen', 'daily_analytics', ARRAY['Platform analytics are visible to admins only']);
SELECT policies_are('keen', 'audit_logs', ARRAY['Audit logs are visible to admins only',
                                                 'Audit entries are appended by keen functions in the actor''s name']);
SELECT policies_are('keen', 'login_attempts', ARRAY['Login attempts are kept by keen functions only']);
SELECT policies_are('keen', 'audit_chain_heads', ARRAY['Audit chain heads are kept by keen functions only']);
SELECT policies_are('keen', 'auth_secrets', ARRAY['Secrets are readable by keen_auth alone']);
SELECT policy_cmd_is('keen', 'audit_logs', 'Audit logs are visible to admins only', 'SELECT', 'audit entries are read by admins only');
SELECT policy_cmd_is('keen', 'audit_logs', 'Audit entries are appended by keen functions in the actor''s name', 'INSERT',
                     'audit entries are only ever inserted');
SELECT policy_roles_are('keen', 'audit_logs', 'Audit entries are appended by keen functions in the actor''s name', ARRAY['keen_owner']);
SELECT policy_roles_are('keen', 'login_attempts', 'Login attempts are kept by keen functions only', ARRAY['keen_owner']);
SELECT policy_roles_are('keen', 'audit_chain_heads', 'Audit chain heads are kept by keen functions only', ARRAY['keen_owner']);
SELECT is((SELECT count(*) FROM pg_policy p
            WHERE p.polrelid::regclass::text LIKE 'keen.%'
              AND (coalesce(pg_get_expr(p.polqual, p.polrelid), '') || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))
                  ~* 'current_setting|is_admin_user|set_config'),
          0::bigint, 'no policy reads a setting: admin status comes from keen.users only');
SELECT is((SELECT array_agg(p.polrelid::regclass::text || ': ' || p.polname ORDER BY 1) FROM pg_policy p
            WHERE p.polrelid::regclass::text LIKE 'keen.%'
              AND (coalesce(pg_get_expr(p.polqual, p.polrelid), '') || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))
                  ~ 'keen\.actor_id\(\)' AND
                  (coalesce(pg_get_expr(p.polqual, p.polrelid), '') || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), ''))
                  !~ '\( SELECT keen\.actor_id\(\) AS actor_id\)'),
          NULL, 'every policy wraps keen.actor_id() as (SELECT keen.actor_id()), evaluated once per query');

-- Table privileges: keen_app and keen_maintenance read tenant tables under RLS, write nothing.
SELECT table_privs_are('keen', t, 'keen_app', ARRAY['SELECT'], 'keen_app may only SELECT keen.' || t)
  FROM unnest(ARRAY['credit_accounts', 'credit_transactions', 'credit_reservations', 'agent_sessions',
                    'phase_transitions', 'tool_executions', 'git_operations', 'websocket_connections',
                    'streaming_events', 'daily_usage_stats', 'daily_analytics', 'audit_logs', 'settings']) t;
SELECT table_privs_are('keen', t, 'keen_maintenance', ARRAY['SELECT'], 'keen_maintenance may only SELECT keen.' || t)
  FROM unnest(ARRAY['credit_accounts', 'credit_transactions', 'credit_reservations', 'agent_sessions',
                    'phase_transitions', 'tool_executions', 'git_operations', 'websocket_connections',
                    'streaming_events', 'daily_usage_stats', 'daily_analytics', 'audit_logs', 'settings']) t;
SELECT table_privs_are('keen', t, r, ARRAY[]::text[], r || ' holds no table-wide privilege on keen.' || t)
  FROM unnest(ARRAY['users', 'auth_tokens', 'login_attempts', 'audit_chain_heads', 'auth_secrets']) t,
       unnest(ARRAY['keen_app', 'keen_maintenance']) r;
SELECT table_privs_are('keen', 'auth_secrets', 'keen_auth', ARRAY['SELECT'], 'keen_auth alone reads keen.auth_secrets');
SELECT column_privs_are('keen', 'users', c, 'keen_app', ARRAY[]::text[], 'keen_app cannot read users.' || c)
  FROM unnest(ARRAY['password_hash', 'mfa_secret', 'recovery_codes', 'email_verification_token']) c;
SELECT column_privs_are('keen', 'auth_tokens', 'token_hash', 'keen_app', ARRAY[]::text[], 'keen_app cannot read auth_tokens.token_hash');
SELECT column_privs_are('keen', 'users', c, 'keen_app', ARRAY['SELECT'], 'keen_app reads users.' || c)
  FROM unnest(ARRAY['id', 'email', 'username', 'role', 'is_admin', 'account_status', 'timezone', 'preferences']) c;
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
            WHERE a.attrelid = 'keen.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND has_column_privilege('keen_auth', 'keen.users', a.attname, 'SELECT')),
          ARRAY['account_status', 'email', 'id', 'is_admin', 'password_hash'],
          'keen_auth reads only the columns that decide who the actor is');
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
            WHERE a.attrelid = 'keen.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND (has_column_privilege('keen_auth', 'keen.users', a.attname, 'INSERT')
                   OR has_column_privilege('keen_auth', 'keen.users', a.attname, 'UPDATE'))),
          NULL, 'keen_auth cannot write keen.users');

-- Function privileges: the API to keen_app, internals to nobody.
SELECT function_privs_are('keen', f, a, 'keen_app', ARRAY['EXECUTE'], 'keen_app may call keen.' || f)
  FROM (VALUES ('register_user', ARRAY['text', 'text', 'text', 'text']),
               ('login', ARRAY['text', 'text', 'inet']),
               ('list_users', ARRAY['integer', 'integer']),
               ('create_api_key', ARRAY['text', 'text[]', 'timestamp with time zone', 'integer']),
               ('authenticate_api_key', ARRAY['text']),
               ('authenticate_api_key', ARRAY['text', 'inet']),
               ('revoke_api_key', ARRAY['uuid']),
               ('suspend_user', ARRAY['uuid', 'text']),
               ('reactivate_user', ARRAY['uuid']),
               ('change_password', ARRAY['text', 'text']),
               ('update_profile', ARRAY['text', 'text', 'jsonb']),
               ('verify_audit_chain', ARRAY[]::text[]),
               ('act_as', ARRAY['uuid']),
               ('actor_id', ARRAY[]::text[]),
               ('actor_is_admin', ARRAY[]::text[]),
               ('start_login_session', ARRAY['text', 'text', 'text', 'inet', 'text']),
               ('refresh_login_session', ARRAY['text', 'inet']),
               ('authenticate_access_token', ARRAY['text']),
               ('list_login_sessions', ARRAY[]::text[]),
               ('revoke_login_session', ARRAY['uuid']),
               ('revoke_all_login_sessions', ARRAY['uuid']),
               ('request_email_verification', ARRAY[]::text[]),
               ('verify_email', ARRAY['text']),
               ('request_password_reset', ARRAY['text']),
               ('reset_password', ARRAY['text', 'text']),
               ('enroll_totp', ARRAY[]::text[]),
               ('confirm_totp', ARRAY['text']),
               ('disable_totp', ARRAY['text']),
               ('totp_code', ARRAY['bytea', 'timestamp with time zone', 'integer', 'integer'])) AS api(f, a);
SELECT function_privs_are(n, f, a, 'keen_app', ARRAY[]::text[], 'keen_app may not call ' || n || '.' || f)
  FROM (VALUES ('keen_private', 'write_audit', ARRAY['text', 'text', 'uuid', 'jsonb', 'text', 'inet', 'uuid']),
               ('keen_private', 'audit_row_hash', ARRAY['keen.audit_logs']),
               ('keen_private', 'set_actor', ARRAY['uuid']),
               ('keen_private', 'actor_proof', ARRAY['text', 'text', 'text']),
               ('keen_private', 'write_actor', ARRAY['uuid', 'text']),
               ('keen_private', 'auth_check_password', ARRAY['text', 'text', 'integer']),
               ('keen_private', 'auth_find_api_key', ARRAY['text']),
               ('keen_private', 'auth_recorder_query', ARRAY['text']),
               ('keen_private', 'set_actor_scoped', ARRAY['uuid', 'text[]']),
               ('keen_private', 'require_scope', ARRAY['text']),
               ('keen_private', 'auth_jwt_sign', ARRAY['jsonb']),
               ('keen_private', 'auth_totp_decrypt', ARRAY['bytea']),
               ('keen_private', 'check_second_factor', ARRAY['uuid', 'text']),
               ('keen', 'record_login_attempt', ARRAY['text', 'inet', 'uuid', 'text']),
               ('keen_private', 'counted_second_factor', ARRAY['uuid', 'text', 'text', 'inet']),
               ('keen_private', 'restore_actor', ARRAY['uuid', 'text']),
               ('keen_private', 'saved_scopes', ARRAY[]::text[]),
               ('keen', 'record_refresh_reuse', ARRAY['uuid', 'uuid', 'inet']),
               ('keen_private', 'auth_record_login_failure', ARRAY['text', 'uuid', 'inet', 'text', 'boolean']),
               ('keen', 'record_login_failure', ARRAY['text', 'uuid', 'inet', 'text', 'boolean']),
               ('keen_private', 'configure_login_recorder', ARRAY['text']),
               ('keen', 'login_recorder_status', ARRAY[]::text[]),
               ('keen_private', 'set_account_status', ARRAY['uuid', 'text', 'text', 'text']),
               ('keen_private', 'require_actor', ARRAY[]::text[]),
               ('keen_private', 'require_admin', ARRAY[]::text[]),
               ('keen_private', 'users_check_password', ARRAY['text'])) AS internal(n, f, a);
SELECT function_privs_are('keen', 'verify_audit_chain', ARRAY[]::text[], 'keen_maintenance', ARRAY['EXECUTE'],
                          'the maintenance role may verify the audit chain');
SELECT function_privs_are('keen', 'login_recorder_status', ARRAY[]::text[], 'keen_maintenance', ARRAY['EXECUTE'],
                          'the maintenance role may check the login recorder');
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) FROM pg_proc p
            WHERE p.pronamespace = 'keen'::regnamespace AND has_function_privilege('keen_recorder', p.oid, 'EXECUTE')),
          ARRAY['keen.record_login_attempt(text,inet,uuid,text)', 'keen.record_login_failure(text,uuid,inet,text,boolean)',
                'keen.record_refresh_reuse(uuid,uuid,inet)'],
          'keen_recorder may call the three recorder functions and nothing else');
SELECT is((SELECT array_agg(c.relname::text ORDER BY 1) FROM pg_class c
            WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
              AND (has_table_privilege('keen_recorder', c.oid, 'SELECT') OR has_any_column_privilege('keen_recorder', c.oid, 'SELECT'))),
          NULL, 'keen_recorder reads no table');

-- Definers and owners.
SELECT is_definer('keen', f, a, 'keen.' || f || ' is SECURITY DEFINER')
  FROM (VALUES ('register_user', ARRAY['text', 'text', 'text', 'text']), ('login', ARRAY['text', 'text', 'inet']),
               ('list_users', ARRAY['integer', 'integer']), ('create_api_key', ARRAY['text', 'text[]', 'timestamp with time zone', 'integer']),
               ('authenticate_api_key', ARRAY['text']), ('authenticate_api_key', ARRAY['text', 'inet']),
               ('revoke_api_key', ARRAY['uuid']), ('suspend_user', ARRAY['uuid', 'text']), ('reactivate_user', ARRAY['uuid']),
               ('change_password', ARRAY['text', 'text']), ('update_profile', ARRAY['text', 'text', 'jsonb']),
               ('verify_audit_chain', ARRAY[]::text[]), ('actor_id', ARRAY[]::text[]), ('act_as', ARRAY['uuid'])) AS d(f, a);
SELECT is_definer('keen_private', f, a, 'keen_private.' || f || ' is SECURITY DEFINER')
  FROM (VALUES ('write_audit', ARRAY['text', 'text', 'uuid', 'jsonb', 'text', 'inet', 'uuid']),
               ('set_actor', ARRAY['uuid'])) AS d(f, a);
SELECT isnt_definer('keen_private', f, a, 'keen_private.' || f || ' runs as its caller')
  FROM (VALUES ('configure_login_recorder', ARRAY['text']), ('audit_row_hash', ARRAY['keen.audit_logs']),
               ('actor_proof', ARRAY['text', 'text', 'text']), ('write_actor', ARRAY['uuid', 'text']),
               ('audit_logs_append_only', ARRAY[]::text[])) AS i(f, a);
SELECT function_owner_is(n, f, a, 'keen_auth', n || '.' || f || ' belongs to keen_auth')
  FROM (VALUES ('keen', 'actor_id', ARRAY[]::text[]), ('keen', 'act_as', ARRAY['uuid']), ('keen_private', 'set_actor', ARRAY['uuid']),
               ('keen_private', 'actor_proof', ARRAY['text', 'text', 'text']), ('keen_private', 'write_actor', ARRAY['uuid', 'text']),
               ('keen', 'actor_is_admin', ARRAY[]::text[]),
               ('keen_private', 'auth_check_password', ARRAY['text', 'text', 'integer']), ('keen_private', 'auth_find_api_key', ARRAY['text']),
               ('keen_private', 'auth_recorder_query', ARRAY['text']), ('keen_private', 'auth_jwt_sign', ARRAY['jsonb']),
               ('keen_private', 'auth_check_access_token', ARRAY['text']), ('keen_private', 'auth_totp_encrypt', ARRAY['bytea']),
               ('keen_private', 'auth_totp_decrypt', ARRAY['bytea'])) AS o(n, f, a);
SELECT function_owner_is(n, f, a, 'keen_owner', n || '.' || f || ' belongs to keen_owner (runs under the policies)')
  FROM (VALUES ('keen', 'login', ARRAY['text', 'text', 'inet']), ('keen_private', 'write_audit', ARRAY['text', 'text', 'uuid', 'jsonb', 'text', 'inet', 'uuid']),
               ('keen', 'authenticate_api_key', ARRAY['text', 'inet']), ('keen', 'record_login_failure', ARRAY['text', 'uuid', 'inet', 'text', 'boolean'])) AS o(n, f, a);
SELECT ok((SELECT rolbypassrls FROM pg_roles WHERE rolname = 'keen_auth') AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = 'keen_owner'),
          'keen_auth bypasses row-level security, keen_owner does not');
SELECT ok((SELECT rolcanlogin AND NOT rolsuper AND NOT rolbypassrls AND NOT rolinherit FROM pg_roles WHERE rolname = 'keen_recorder'),
          'keen_recorder logs in, with no other attribute');

-- The append-only audit log.
SELECT has_trigger('keen', 'audit_logs', 'audit_logs_append_only', 'keen.audit_logs has its append-only trigger');
SELECT trigger_is('keen', 'audit_logs', 'audit_logs_append_only', 'keen_private', 'audit_logs_append_only');
SELECT ok((SELECT tgtype & 1 = 0 AND tgtype & 2 = 2 AND tgtype & (8 | 16 | 32) = (8 | 16 | 32)
             FROM pg_trigger WHERE tgrelid = 'keen.audit_logs'::regclass AND tgname = 'audit_logs_append_only'),
          'it fires BEFORE each UPDATE, DELETE and TRUNCATE statement');
SELECT col_is_unique('keen', 'audit_logs', ARRAY['chain_name', 'chain_seq'], 'one entry per chain position');

-- Data-driven rules over every keen function, whoever adds it.
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
            WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace)
              AND has_function_privilege('public', p.oid, 'EXECUTE')),
          NULL, 'no keen or keen_private function is executable by PUBLIC');
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
            WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace) AND p.prosecdef
              AND NOT coalesce(p.proconfig && ARRAY['search_path=pg_catalog, keen, pg_temp',
                                                    'search_path=pg_catalog, keen, keen_private, pg_temp'], false)),
          NULL, 'every SECURITY DEFINER function pins search_path = pg_catalog, keen (, keen_private), pg_temp');
-- Except the invoker helpers of keen_private kept without SET so that they inline (or, for
-- PL/pgSQL, skip the GUC push per call) on the hot path: no login role may execute anything in
-- keen_private (checked above), so they only ever run under a definer caller's pinned path.
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
            WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace)
              AND NOT (p.pronamespace = 'keen_private'::regnamespace AND NOT p.prosecdef)
              AND NOT coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'), false)),
          NULL, 'every keen function, definer or not, pins a search_path (keen_private invoker helpers aside)');
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
            WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace) AND p.prosecdef
              AND pg_get_userbyid(p.proowner) = 'keen_auth'
              AND p.proname NOT IN ('actor_id', 'actor_is_admin', 'act_as', 'set_actor', 'set_actor_scoped', 'auth_check_password',
                                    'auth_find_api_key', 'auth_recorder_query', 'auth_record_login_failure',
                                    'login_recorder_status', 'auth_user_status', 'auth_find_email', 'auth_jwt_sign',
                                    'auth_check_access_token', 'auth_find_refresh_token', 'auth_totp_encrypt',
                                    'auth_totp_decrypt', 'auth_find_account_token')),
          NULL, 'keen_auth (BYPASSRLS) owns only the reviewed identity functions');
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
             JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dblink'
            WHERE has_function_privilege('public', p.oid, 'EXECUTE') OR has_function_privilege('keen_app', p.oid, 'EXECUTE')),
          NULL, 'no dblink function is executable by PUBLIC or keen_app');

-- The identity tables of this area.
SELECT has_table('keen', t, 'keen.' || t || ' exists') FROM unnest(ARRAY['login_attempts', 'audit_chain_heads', 'auth_secrets']) t;
SELECT has_role('keen_recorder');
SELECT has_column('keen', 'login_attempts', 'purpose', 'a login attempt says what it was for (sign-in, change_password, second factor)');
SELECT function_privs_are('keen', 'record_login_attempt', ARRAY['text', 'inet', 'uuid', 'text'], 'keen_recorder', ARRAY['EXECUTE'],
                          'the recorder counts the attempts of every purpose');
SELECT hasnt_function('keen_private', 'login_check', ARRAY['text', 'text', 'inet'], 'the login_check without a purpose is gone');

SELECT * FROM finish();
ROLLBACK;
