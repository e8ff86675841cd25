-- 50_analytics: the rollup, platform_metrics, user_usage and the 24-hour dashboard: each
-- function's success path and each of its error codes.
BEGIN;
SELECT plan(40);

-- Structure and privileges.
SELECT has_function('keen', 'rollup_daily_analytics', ARRAY['date'], 'rollup_daily_analytics(date) exists');
SELECT has_function('keen', 'platform_metrics', ARRAY['date', 'date'], 'platform_metrics(date, date) exists');
SELECT has_function('keen', 'user_usage', ARRAY['uuid', 'date', 'date'], 'user_usage(uuid, date, date) exists');
SELECT has_function('keen', 'refresh_dashboard_metrics', ARRAY[]::text[], 'refresh_dashboard_metrics() exists');
SELECT has_function('keen', 'dashboard_metrics', ARRAY[]::text[], 'dashboard_metrics() exists');
SELECT is_definer('keen', 'rollup_daily_analytics', ARRAY['date'], 'rollup_daily_analytics is SECURITY DEFINER');
SELECT is_definer('keen', 'platform_metrics', ARRAY['date', 'date'], 'platform_metrics is SECURITY DEFINER');
SELECT is_definer('keen', 'user_usage', ARRAY['uuid', 'date', 'date'], 'user_usage is SECURITY DEFINER');
SELECT ok(pg_catalog.has_function_privilege('keen_maintenance', 'keen.rollup_daily_analytics(date)', 'EXECUTE')
          AND pg_catalog.has_function_privilege('keen_maintenance', 'keen.refresh_dashboard_metrics()', 'EXECUTE'),
          'the maintenance role may run the rollup and refresh the dashboard');
SELECT ok(NOT pg_catalog.has_function_privilege('keen_maintenance', 'keen.platform_metrics(date, date)', 'EXECUTE'),
          'platform_metrics is not granted to the maintenance role (admins only)');
SELECT has_materialized_view('keen', 'admin_dashboard_metrics', 'the 24-hour dashboard is a materialized view');
SELECT ok(EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   WHERE i.indrelid = 'keen.admin_dashboard_metrics'::regclass AND i.indisunique),
          'the dashboard view has the unique index a concurrent refresh needs');
SELECT ok(NOT pg_catalog.has_table_privilege('keen_app', 'keen.admin_dashboard_metrics', 'SELECT')
          AND NOT pg_catalog.has_table_privilege('keen_maintenance', 'keen.admin_dashboard_metrics', 'SELECT'),
          'nobody but its owner reads the dashboard view (it has no row-level security)');

-- Two users, one session of the first yesterday at noon UTC and one now.
CREATE TEMP TABLE t_ids ON COMMIT DROP AS
SELECT (SELECT id FROM keen.register_user('ana50@example.com', 'ana50', 'correct horse battery')) AS ana,
       (SELECT id FROM keen.register_user('ben50@example.com', 'ben50', 'correct horse battery')) AS ben,
       (SELECT id FROM keen.users WHERE role = 'super_admin') AS admin,
       (pg_catalog.now() AT TIME ZONE 'UTC')::date - 1 AS yesterday;
INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory,
                                 start_time)
SELECT v.id, t.ana, 's50-' || v.n, 'main', 'v', '/w', v.start_time
  FROM t_ids t,
       (VALUES (1, pg_catalog.gen_random_uuid(), (SELECT yesterday FROM t_ids)::timestamp AT TIME ZONE 'UTC' + interval '12 hours'),
               (2, pg_catalog.gen_random_uuid(), pg_catalog.now())) AS v (n, id, start_time);

-- rollup_daily_analytics
SELECT keen_private.set_actor((SELECT admin FROM t_ids));
SELECT lives_ok($$SELECT keen.rollup_daily_analytics((SELECT yesterday FROM t_ids))$$, 'an admin rolls up a day');
SELECT is((SELECT total_sessions FROM keen.daily_analytics WHERE date_bucket = (SELECT yesterday FROM t_ids)), 1,
          'the platform row counts the session started that day');
SELECT is((SELECT sessions_started FROM keen.daily_usage_stats
            WHERE user_id = (SELECT ana FROM t_ids) AND date_bucket = (SELECT yesterday FROM t_ids)), 1,
          'the user''s row counts it too');
SELECT lives_ok($$SELECT keen.rollup_daily_analytics()$$, 'the day defaults to today (UTC)');
SELECT is((SELECT count(*)::int FROM keen.daily_analytics), 2, 'one platform row per day rolled up');
SELECT lives_ok($$SELECT keen.rollup_daily_analytics(NULL)$$, 'a NULL day is today''s accounting day, like an omitted one');
SELECT throws_ok($$SELECT keen.rollup_daily_analytics((pg_catalog.now() AT TIME ZONE 'UTC')::date + 2)$$, '22023', NULL,
                 'a day after today is 22023');
SELECT is((SELECT count(*)::int FROM keen.daily_analytics), 2, 'and rolls up no other day');
SELECT keen.act_as((SELECT ana FROM t_ids));
SELECT throws_ok($$SELECT keen.rollup_daily_analytics((SELECT yesterday FROM t_ids))$$, '42501', NULL,
                 'a plain user may not run the rollup');
SELECT keen_private.set_actor_scoped((SELECT ana FROM t_ids), ARRAY['sessions:read']);
SELECT throws_ok($$SELECT * FROM keen.user_usage((SELECT ana FROM t_ids), (SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))$$,
                 '42501', NULL, 'user_usage_needs_credits_read: a sessions:read key cannot read the usage');
SELECT keen.act_as((SELECT ana FROM t_ids));

-- platform_metrics
SELECT throws_ok($$SELECT keen.platform_metrics((SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))$$,
                 '42501', NULL, 'platform_metrics is 42501 for a non-admin');
SELECT keen_private.set_actor((SELECT admin FROM t_ids));
SELECT ok(keen.platform_metrics((SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))
          ?& ARRAY['total_users', 'active_users', 'new_users', 'total_sessions', 'successful_sessions',
                   'failed_sessions', 'total_claude_cost_usd', 'total_credit_revenue', 'credits_purchased',
                   'credits_used', 'total_tokens', 'admin_sessions', 'admin_bypass_transactions',
                   'avg_recursion_depth', 'max_recursion_depth', 'markup_effectiveness'],
          'platform_metrics has every key of the contract and markup_effectiveness');
SELECT is((keen.platform_metrics((SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids)) ->> 'total_sessions')::int, 1,
          'platform_metrics sums the rollup rows of the range');
SELECT throws_ok($$SELECT keen.platform_metrics(NULL, (SELECT yesterday FROM t_ids))$$, '22023', NULL,
                 'a NULL bound is 22023');
SELECT throws_ok($$SELECT keen.platform_metrics((SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids) - 1)$$,
                 '22023', NULL, 'a reversed range is 22023');
SELECT throws_ok($$SELECT keen.platform_metrics(DATE '1990-01-01', DATE '2030-01-01')$$, '22023', NULL,
                 'a range of forty years is 22023');

-- user_usage
SELECT is((SELECT count(*)::int FROM keen.user_usage((SELECT ana FROM t_ids), (SELECT yesterday FROM t_ids),
                                                      (SELECT yesterday FROM t_ids))), 1,
          'an admin reads any user''s usage');
SELECT keen.act_as((SELECT ana FROM t_ids));
SELECT is((SELECT sessions_started FROM keen.user_usage((SELECT ana FROM t_ids), (SELECT yesterday FROM t_ids),
                                                         (SELECT yesterday FROM t_ids))), 1,
          'a user reads their own usage');
SELECT throws_ok($$SELECT * FROM keen.user_usage((SELECT ben FROM t_ids), (SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))$$,
                 'P0002', NULL, 'another tenant''s user is P0002');
SELECT throws_ok($$SELECT * FROM keen.user_usage(pg_catalog.gen_random_uuid(), (SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))$$,
                 'P0002', NULL, 'an unknown user is P0002 as well');
SELECT throws_ok($$SELECT * FROM keen.user_usage(NULL, (SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids))$$,
                 '22023', NULL, 'a NULL user is 22023');
SELECT throws_ok($$SELECT * FROM keen.user_usage((SELECT ana FROM t_ids), (SELECT yesterday FROM t_ids), (SELECT yesterday FROM t_ids) - 1)$$,
                 '22023', NULL, 'a reversed range is 22023');

-- refresh_dashboard_metrics and dashboard_metrics
SELECT throws_ok($$SELECT keen.refresh_dashboard_metrics()$$, '42501', NULL, 'a plain user may not refresh the dashboard');
SELECT throws_ok($$SELECT * FROM keen.dashboard_metrics()$$, '42501', NULL, 'a plain user may not read the dashboard');
SELECT keen_private.set_actor((SELECT admin FROM t_ids));
SELECT lives_ok($$SELECT keen.refresh_dashboard_metrics()$$, 'an admin refreshes the dashboard concurrently');
SELECT is((SELECT count(*)::int FROM keen.dashboard_metrics()), 24, 'the dashboard has one row per hour of the last 24');
SELECT is((SELECT sum(sessions_started)::int FROM keen.dashboard_metrics()),
          (SELECT count(*)::int FROM keen.agent_sessions
            WHERE start_time >= pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC') - interval '23 hours'),
          'the dashboard counts the sessions of the last 24 hours');

SELECT * FROM finish();
ROLLBACK;
