-- 01_structure: the tables of the schema, row-level security ENABLED and FORCED on every data
-- table, keen_app's privileges (read only, no secrets), definer functions pinned and private.
BEGIN;
SELECT plan(27);

SELECT has_table('keen', t, 'table keen.' || t || ' exists')
  FROM unnest(ARRAY['settings', 'users', 'auth_tokens', 'credit_accounts', 'credit_transactions',
                    'credit_reservations', 'agent_sessions', 'phase_transitions', 'tool_executions',
                    'git_operations', 'websocket_connections', 'streaming_events', 'daily_usage_stats',
                    'daily_analytics', 'audit_logs']) AS t;

SELECT is(
    (SELECT pg_catalog.array_agg(c.relname ORDER BY c.relname)
       FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p')
        AND c.relname NOT IN ('settings', 'deployed_files')
        AND NOT (c.relrowsecurity AND c.relforcerowsecurity)),
    NULL,
    'row-level security is enabled and forced on every data table (partitions included)');

SELECT is(
    (SELECT pg_catalog.array_agg(c.relname ORDER BY c.relname)
       FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p')
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
        AND NOT c.relforcerowsecurity),
    NULL,
    'every table with a user_id column forces row-level security');

SELECT is(
    (SELECT pg_catalog.array_agg(c.relname || ':' || p ORDER BY 1)
       FROM pg_catalog.pg_class c
      CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p
      WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
        AND pg_catalog.has_table_privilege('keen_app', c.oid, p)),
    NULL,
    'keen_app holds no write privilege on any keen table');

SELECT is(
    (SELECT pg_catalog.array_agg(col ORDER BY col)
       FROM unnest(ARRAY['password_hash', 'mfa_secret', 'recovery_codes', 'email_verification_token']) AS col
      WHERE pg_catalog.has_column_privilege('keen_app', 'keen.users', col, 'SELECT')),
    NULL,
    'keen_app cannot read password hashes, MFA secrets, recovery codes or verification tokens');

SELECT ok(pg_catalog.has_column_privilege('keen_app', 'keen.users', 'email', 'SELECT'),
          'keen_app can read the non-secret user columns');

SELECT is(
    (SELECT pg_catalog.array_agg(p.oid::regprocedure::text ORDER BY 1)
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace IN ('keen'::regnamespace, 'keen_private'::regnamespace) AND p.prosecdef
        AND NOT COALESCE(p.proconfig && ARRAY['search_path=pg_catalog, keen, pg_temp',
                                              'search_path=pg_catalog, keen, keen_private, pg_temp'], false)),
    NULL,
    'every SECURITY DEFINER function pins search_path = pg_catalog, keen (, keen_private), pg_temp');

SELECT is(
    (SELECT pg_catalog.array_agg(p.oid::regprocedure::text ORDER BY 1)
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'keen'::regnamespace
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                         WHERE r.rolcanlogin AND NOT r.rolsuper
                           AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE'))),
    NULL,
    'schema keen is the API: every function in it is executable by some login role');

SELECT is(
    (SELECT pg_catalog.array_agg(r.rolname::text ORDER BY 1)
       FROM pg_catalog.pg_roles r
      WHERE r.rolcanlogin AND NOT r.rolsuper
        AND pg_catalog.has_schema_privilege(r.oid, 'keen_private', 'USAGE')),
    NULL,
    'no login role may use the private schema keen_private');

SELECT is(
    (SELECT pg_catalog.array_agg(p.oid::regprocedure::text ORDER BY 1)
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'keen'::regnamespace
        AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')),
    NULL,
    'no keen function is executable by PUBLIC');

SELECT is(
    (SELECT pg_catalog.array_agg(p.oid::regprocedure::text ORDER BY 1)
       FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'keen'::regnamespace
        AND pg_catalog.pg_get_userbyid(p.proowner) NOT IN ('keen_owner', 'keen_auth', 'keen_ledger')),
    NULL,
    'every keen function belongs to keen_owner, keen_auth or keen_ledger (the ledger, db/tests/20_credits.sql)');

SELECT is(
    (SELECT pg_catalog.array_agg(c.relname ORDER BY 1)
       FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
        AND pg_catalog.pg_get_userbyid(c.relowner) <> 'keen_owner'),
    NULL,
    'every keen table, view and sequence belongs to keen_owner');

SELECT is(
    (SELECT pg_catalog.array_agg(i.inhrelid::regclass::text ORDER BY 1)
       FROM pg_catalog.pg_inherits i
      WHERE i.inhparent = 'keen.streaming_events'::regclass
        AND pg_catalog.has_table_privilege('keen_app', i.inhrelid, 'SELECT')),
    NULL,
    'no event partition is readable by keen_app around its parent');

SELECT * FROM finish();
ROLLBACK;
