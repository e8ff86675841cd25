-- 40_streaming: live connections, the event stream and its monthly partitions.
-- Users come from keen.register_user, sessions from keen.create_session (or, before it
-- exists, a direct insert by the superuser running this file).
BEGIN;
SELECT plan(118);
-- Audit entries are linked into keen.audit_logs at COMMIT (keen_private.audit_link); this file
-- reads them before its ROLLBACK, so it links them at once.
SET CONSTRAINTS keen.audit_link IMMEDIATE;

-- Alice and Bob, one session each; the seeded admin.
SELECT set_config('tests.alice', (SELECT id FROM keen.register_user('alice@example.com', 'alice', 'alice password'))::text, false);
SELECT set_config('tests.bob', (SELECT id FROM keen.register_user('bob@example.com', 'bob', 'bob password'))::text, false);
SELECT set_config('tests.admin', (SELECT id FROM keen.users WHERE role = 'super_admin')::text, false);
-- A root session of a user: through keen.create_session once it exists, else inserted directly.
CREATE FUNCTION pg_temp.new_session(p_user_id uuid, p_name text) RETURNS uuid
LANGUAGE plpgsql AS $fn$
DECLARE
    v_id uuid := gen_random_uuid();
BEGIN
    IF to_regprocedure('keen.create_session(uuid, text, text, text, text, uuid, jsonb)') IS NOT NULL THEN
        PERFORM keen_private.set_actor(p_user_id);  -- any user, the admin too (superuser test)
        EXECUTE $q$SELECT id FROM keen.create_session($1, $2, 'main', 'stream things', '/tmp/w')$q$
           INTO v_id USING p_user_id, p_name;
        PERFORM set_config('keen.actor_id', '', true);
    ELSIF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'keen.agent_sessions'::regclass AND attname = 'tree_path') THEN
        EXECUTE $q$INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory, tree_path)
                   VALUES ($1, $2, $3, 'main', 'stream things', '/tmp/w', '\x00'::bytea || uuid_send($1))$q$
          USING v_id, p_user_id, p_name;
    ELSE
        INSERT INTO keen.agent_sessions (id, user_id, session_id, git_branch, vision, working_directory)
        VALUES (v_id, p_user_id, p_name, 'main', 'stream things', '/tmp/w');
    END IF;
    RETURN v_id;
END
$fn$;
SELECT set_config('tests.session_a', pg_temp.new_session(current_setting('tests.alice')::uuid, 'alice-1')::text, false);
SELECT set_config('tests.session_b', pg_temp.new_session(current_setting('tests.bob')::uuid, 'bob-1')::text, false);

-- The API.
SELECT has_function('keen', f, 'keen.' || f || ' exists')
  FROM unnest(ARRAY['register_connection', 'ping_connection', 'close_connection', 'reap_stale_connections',
                    'emit_event', 'events_since', 'prepare_event_partitions', 'drop_old_event_partitions']) AS f;
SELECT ok(NOT has_function_privilege('keen_app', 'keen_private.secure_event_partition(regclass)', 'EXECUTE'),
          'keen_app cannot run the internal partition securing function');

-- register_connection ---------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT is((SELECT ROW(c.user_id, c.connection_status, c.client_type, c.admin_connection)::text
             FROM keen.register_connection('c1', '10.0.0.1', 'dashboard', current_setting('tests.session_a')::uuid,
                                           'pytest', ARRAY['phase_change']) c),
          ROW(current_setting('tests.alice')::uuid, 'active', 'dashboard', false)::text,
          'register_connection records a live connection of the actor');
SELECT is((SELECT websocket_connections FROM keen.agent_sessions WHERE id = current_setting('tests.session_a')::uuid),
          ARRAY['c1'], 'the session lists the new connection');
SELECT lives_ok($$SELECT keen.register_connection('c2', '10.0.0.2', 'cli', current_setting('tests.session_a')::uuid)$$,
                'a second connection on the same session');
SELECT lives_ok($$SELECT keen.register_connection('c3', '10.0.0.3', 'api')$$, 'a connection that follows no session');
SELECT is((SELECT websocket_connections FROM keen.agent_sessions WHERE id = current_setting('tests.session_a')::uuid),
          ARRAY['c1', 'c2'], 'the session lists both of its live connections');
SELECT throws_ok($$SELECT keen.register_connection('c1', '10.0.0.1', 'dashboard')$$, '23505', NULL,
                 'registering a live connection id again is 23505');
SELECT throws_ok($$SELECT keen.register_connection('c9', '10.0.0.1', 'dashboard', current_setting('tests.session_b')::uuid)$$,
                 'P0002', 'session not found', 'another user''s session is P0002');
SELECT throws_ok($$SELECT keen.register_connection('c9', '10.0.0.1', 'dashboard', pg_catalog.gen_random_uuid())$$,
                 'P0002', 'session not found', 'an unknown session is P0002');
SELECT throws_ok($$SELECT keen.register_connection('c9', '10.0.0.1', 'telnet')$$, '22023', NULL,
                 'an unknown client type is 22023');
SELECT throws_ok($$SELECT keen.register_connection('', '10.0.0.1', 'cli')$$, '22023', NULL,
                 'an empty connection id is 22023');
SELECT throws_ok($$SELECT keen.register_connection('c9', NULL, 'cli')$$, '22023', NULL, 'a NULL ip is 22023');
SELECT throws_ok($$SELECT keen.register_connection('c9', '10.0.0.1', 'cli', NULL, NULL, NULL)$$, '22023', NULL,
                 'a NULL event list is 22023');
SELECT is((SELECT count(*) FROM keen.websocket_connections WHERE connection_id = 'c9'), 0::bigint,
          'refused registrations wrote nothing');
SELECT set_config('keen.actor_id', '', true);
SELECT throws_ok($$SELECT keen.register_connection('c9', '10.0.0.1', 'cli')$$, '28000', NULL,
                 'register_connection without an actor is 28000');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT is((SELECT c.admin_connection AND c.can_view_all_sessions FROM keen.register_connection('adm1', '10.0.0.9', 'dashboard') c),
          true, 'an admin''s connection is flagged as an admin connection');
SELECT is((SELECT ROW(c.user_id, c.session_id, c.session_filters)::text
             FROM keen.register_connection('adm2', '10.0.0.9', 'dashboard', current_setting('tests.session_a')::uuid) c),
          ROW(current_setting('tests.admin')::uuid, NULL::uuid, ARRAY[current_setting('tests.session_a')::uuid])::text,
          'an admin may follow any tenant''s session (kept in session_filters, the row stays the admin''s)');

-- ping_connection -------------------------------------------------------------------------
UPDATE keen.websocket_connections SET last_ping_at = now() - interval '1 hour' WHERE connection_id = 'c1';
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT lives_ok($$SELECT keen.ping_connection('c1')$$, 'ping_connection of an own live connection');
SELECT is((SELECT last_ping_at FROM keen.websocket_connections WHERE connection_id = 'c1'), now(),
          'the ping is recorded');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok($$SELECT keen.ping_connection('c1')$$, 'P0002', NULL, 'pinging another user''s connection is P0002');
SELECT throws_ok($$SELECT keen.ping_connection('nope')$$, 'P0002', NULL, 'pinging an unknown connection is P0002');
SELECT set_config('keen.actor_id', '', true);
SELECT throws_ok($$SELECT keen.ping_connection('c1')$$, '28000', NULL, 'ping_connection without an actor is 28000');

-- close_connection ------------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok($$SELECT keen.close_connection('c1')$$, 'P0002', NULL, 'closing another user''s connection is P0002');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT lives_ok($$SELECT keen.close_connection('c1')$$, 'close_connection of an own connection');
SELECT is((SELECT ROW(connection_status, disconnected_at IS NOT NULL)::text FROM keen.websocket_connections WHERE connection_id = 'c1'),
          ROW('closed', true)::text, 'the connection is closed');
SELECT is((SELECT websocket_connections FROM keen.agent_sessions WHERE id = current_setting('tests.session_a')::uuid),
          ARRAY['c2'], 'the session no longer lists it');
SELECT lives_ok($$SELECT keen.close_connection('c1')$$, 'closing a closed connection again changes nothing');
SELECT throws_ok($$SELECT keen.ping_connection('c1')$$, 'P0002', NULL, 'pinging a closed connection is P0002');
SELECT throws_ok($$SELECT keen.close_connection('nope')$$, 'P0002', NULL, 'closing an unknown connection is P0002');
SELECT is((SELECT c.connection_status FROM keen.register_connection('c1', '10.0.0.1', 'mobile', current_setting('tests.session_a')::uuid) c),
          'active', 'registering a closed connection id again opens it again');
SELECT is((SELECT websocket_connections FROM keen.agent_sessions WHERE id = current_setting('tests.session_a')::uuid),
          ARRAY['c2', 'c1'], 'the session lists it again, once');
SELECT set_config('keen.actor_id', '', true);
SELECT throws_ok($$SELECT keen.close_connection('c1')$$, '28000', NULL, 'close_connection without an actor is 28000');

-- reap_stale_connections -----------------------------------------------------------------
UPDATE keen.websocket_connections SET last_ping_at = now() - interval '1 hour' WHERE connection_id IN ('c2', 'c3');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT keen.reap_stale_connections('10 minutes')$$, '42501', NULL,
                 'a user may not reap connections');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT throws_ok($$SELECT keen.reap_stale_connections('-1 minute')$$, '22023', NULL, 'a negative age is 22023');
SELECT throws_ok($$SELECT keen.reap_stale_connections(NULL)$$, '22023', NULL, 'a NULL age is 22023');
SELECT is(keen.reap_stale_connections('10 minutes'), 2, 'reap_stale_connections closes the two stale connections');
SELECT is((SELECT array_agg(connection_id::text ORDER BY connection_id) FROM keen.websocket_connections WHERE connection_status = 'closed'),
          ARRAY['c2', 'c3'], 'exactly the stale ones are closed');
SELECT is((SELECT websocket_connections FROM keen.agent_sessions WHERE id = current_setting('tests.session_a')::uuid),
          ARRAY['c1'], 'the session keeps only its live connection');
SELECT is(keen.reap_stale_connections('10 minutes'), 0, 'reaping again closes nothing');

-- emit_event ------------------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT set_config('tests.e1', keen.emit_event(current_setting('tests.session_a')::uuid, 'phase_change', '{"to": "PLAN"}')::text, false);
SELECT set_config('tests.e2', keen.emit_event(current_setting('tests.session_a')::uuid, 'tool_execution', '{"tool": "grep"}', 'tool')::text, false);
SELECT cmp_ok(current_setting('tests.e2')::bigint, '>', current_setting('tests.e1')::bigint, 'event ids increase');
SELECT is((SELECT ROW(user_id, event_type, event_data, event_source)::text FROM keen.streaming_events
            WHERE event_id = current_setting('tests.e2')::bigint),
          ROW(current_setting('tests.alice')::uuid, 'tool_execution', '{"tool": "grep"}'::jsonb, 'tool')::text,
          'emit_event stores the event for the session''s owner');
SELECT is((SELECT tableoid::regclass::text FROM keen.streaming_events WHERE event_id = current_setting('tests.e1')::bigint),
          'keen.streaming_events_' || to_char(now() AT TIME ZONE 'UTC', '"y"YYYY"m"MM'),
          'a new event lands in the current month''s partition (migration 0006 prepared it)');
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_b')::uuid, 'x')$$, 'P0002', 'session not found',
                 'emitting into another user''s session is P0002');
SELECT throws_ok($$SELECT keen.emit_event(pg_catalog.gen_random_uuid(), 'x')$$, 'P0002', 'session not found',
                 'emitting into an unknown session is P0002');
SELECT throws_ok($$SELECT keen.emit_event(NULL, 'x')$$, '22023', NULL, 'a NULL session is 22023');
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_a')::uuid, '')$$, '22023', NULL,
                 'an empty event type is 22023');
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_a')::uuid, repeat('x', 51))$$, '22023', NULL,
                 'an event type over 50 characters is 22023');
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_a')::uuid, 'x', NULL)$$, '22023', NULL,
                 'NULL event data is 22023');
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_a')::uuid, 'x', '{}', 'mars')$$, '22023', NULL,
                 'an unknown event source is 22023');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT set_config('tests.e3', keen.emit_event(current_setting('tests.session_a')::uuid, 'admin_note', '{}', 'system')::text, false);
SELECT is((SELECT user_id FROM keen.streaming_events WHERE event_id = current_setting('tests.e3')::bigint),
          current_setting('tests.alice')::uuid, 'an admin may emit into any session; the event is the owner''s');

-- events_since ----------------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT is((SELECT array_agg(event_id ORDER BY ord) FROM keen.events_since(current_setting('tests.session_a')::uuid)
            WITH ORDINALITY AS e (event_id, session_id, event_type, event_data, event_source, created_at, ord)),
          ARRAY[current_setting('tests.e1')::bigint, current_setting('tests.e2')::bigint, current_setting('tests.e3')::bigint],
          'events_since replays the session oldest first');
SELECT is((SELECT array_agg(event_id) FROM keen.events_since(current_setting('tests.session_a')::uuid, current_setting('tests.e1')::bigint, 1)),
          ARRAY[current_setting('tests.e2')::bigint], 'events_since starts after the given id and stops at the limit');
SELECT throws_ok($$SELECT * FROM keen.events_since(current_setting('tests.session_b')::uuid)$$, 'P0002', 'session not found',
                 'replaying another user''s session is P0002');
SELECT throws_ok($$SELECT * FROM keen.events_since(pg_catalog.gen_random_uuid())$$, 'P0002', 'session not found',
                 'replaying an unknown session is P0002');
SELECT throws_ok($$SELECT * FROM keen.events_since(current_setting('tests.session_a')::uuid, 0, 0)$$, '22023', NULL,
                 'a limit of 0 is 22023');
SELECT throws_ok($$SELECT * FROM keen.events_since(current_setting('tests.session_a')::uuid, -1)$$, '22023', NULL,
                 'a negative event id is 22023');
SELECT throws_ok($$SELECT * FROM keen.events_since(NULL)$$, '22023', NULL, 'a NULL session is 22023');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SET LOCAL ROLE keen_app;
SELECT is((SELECT count(*) FROM keen.streaming_events), 0::bigint, 'another tenant reads no event of the session');
SELECT throws_ok($$SELECT count(*) FROM keen.streaming_events_default$$, '42501', NULL,
                 'keen_app cannot read a partition around its parent''s policy');
RESET ROLE;

-- Partitions ------------------------------------------------------------------------------
-- Months 18 and 19 after this one (partitions go at most 24 months ahead).
SELECT set_config('tests.m1', (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '18 months')::date::text, false);
SELECT set_config('tests.m2', (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '19 months')::date::text, false);
SELECT set_config('tests.m3', (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '20 months')::date::text, false);
CREATE FUNCTION pg_temp.pname(p_month text) RETURNS text LANGUAGE sql AS
    $fn$ SELECT 'streaming_events_' || to_char(current_setting(p_month)::date, '"y"YYYY"m"MM') $fn$;
CREATE FUNCTION pg_temp.mstart(p_month text) RETURNS timestamptz LANGUAGE sql AS
    $fn$ SELECT current_setting(p_month)::date::timestamp AT TIME ZONE 'UTC' $fn$;
-- A month nobody prepared: the default partition catches the insert.
INSERT INTO keen.streaming_events (session_id, user_id, event_type, created_at)
VALUES (current_setting('tests.session_a')::uuid, current_setting('tests.alice')::uuid, 'future', pg_temp.mstart('tests.m1') + interval '9 days 12 hours'),
       (current_setting('tests.session_a')::uuid, current_setting('tests.alice')::uuid, 'future', pg_temp.mstart('tests.m3') - interval '1 second');
SELECT is((SELECT array_agg(DISTINCT tableoid::regclass::text) FROM keen.streaming_events WHERE event_type = 'future'),
          ARRAY['keen.streaming_events_default'], 'an insert for a month with no partition lands in the default partition');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions()$$, '42501', NULL, 'a user may not prepare partitions');
SELECT throws_ok($$SELECT * FROM keen.drop_old_event_partitions('1 year')$$, '42501', NULL, 'a user may not drop partitions');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(-1)$$, '22023', NULL, 'a negative month count is 22023');
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(1, NULL)$$, '22023', NULL, 'a NULL start is 22023');
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(1, 'infinity')$$, '22023', NULL, 'an infinite start is 22023');
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(25)$$, '22023', NULL, 'more than 24 months ahead is 22023');
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(0, now() + interval '25 months')$$, '22023', NULL,
                 'a month past the 24th ahead is 22023');
SELECT is((SELECT array_agg(ROW(partition_name, range_start, range_end, rows_moved)::text ORDER BY range_start)
             FROM keen.prepare_event_partitions(1, pg_temp.mstart('tests.m1') + interval '14 days')),
          ARRAY[ROW(pg_temp.pname('tests.m1'), pg_temp.mstart('tests.m1'), pg_temp.mstart('tests.m2'), 1)::text,
                ROW(pg_temp.pname('tests.m2'), pg_temp.mstart('tests.m2'), pg_temp.mstart('tests.m3'), 1)::text],
          'prepare_event_partitions creates the months ahead, moving their rows out of the default partition');
SELECT is((SELECT array_agg(tableoid::regclass::text ORDER BY created_at) FROM keen.streaming_events WHERE event_type = 'future'),
          ARRAY['keen.' || pg_temp.pname('tests.m1'), 'keen.' || pg_temp.pname('tests.m2')], 'the moved rows live in their month''s partition');
SELECT is((SELECT count(*) FROM keen.prepare_event_partitions(1, pg_temp.mstart('tests.m1') + interval '14 days')), 0::bigint,
          'preparing the same months again creates nothing');
SELECT is((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c
            WHERE c.relname IN (pg_temp.pname('tests.m1'), pg_temp.pname('tests.m2'))
              AND c.relrowsecurity AND c.relforcerowsecurity
              AND (SELECT count(*) FROM pg_policies p WHERE p.tablename = c.relname
                      AND p.qual = (SELECT q.qual FROM pg_policies q WHERE q.tablename = 'streaming_events')
                      AND p.with_check = (SELECT q.with_check FROM pg_policies q WHERE q.tablename = 'streaming_events')) = 1
              AND NOT has_table_privilege('keen_app', c.oid, 'SELECT')),
          ARRAY[pg_temp.pname('tests.m1'), pg_temp.pname('tests.m2')],
          'partitions created at run time have forced RLS, the parent''s policy and no keen_app privilege');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SET LOCAL ROLE keen_app;
SELECT is((SELECT count(*) FROM keen.streaming_events WHERE event_type = 'future'), 0::bigint,
          'another tenant still reads nothing from the new partitions');
RESET ROLE;

-- Retention: whole partitions, never rows.
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT is((SELECT array_agg(partition_name) FROM keen.prepare_event_partitions(0, '2020-01-15 00:00:00+00')),
          ARRAY['streaming_events_y2020m01'], 'a past month can be prepared too');
INSERT INTO keen.streaming_events (session_id, user_id, event_type, created_at)
VALUES (current_setting('tests.session_a')::uuid, current_setting('tests.alice')::uuid, 'old', '2020-01-20 00:00:00+00');
SELECT throws_ok($$SELECT * FROM keen.drop_old_event_partitions(NULL)$$, '22023', NULL, 'a NULL retention is 22023');
SELECT throws_ok($$SELECT * FROM keen.drop_old_event_partitions('-1 day')$$, '22023', NULL, 'a negative retention is 22023');
SELECT throws_ok($$SELECT * FROM keen.drop_old_event_partitions('0')$$, '22023', NULL,
                 'a retention under 30 days is 22023 (it would drop every past month)');
SELECT is((SELECT array_agg(ROW(partition_name, range_start, range_end)::text)
             FROM keen.drop_old_event_partitions('1 year')),
          ARRAY[ROW('streaming_events_y2020m01', '2020-01-01 00:00:00+00'::timestamptz, '2020-02-01 00:00:00+00'::timestamptz)::text],
          'drop_old_event_partitions drops the partitions older than the retention');
SELECT hasnt_table('keen', 'streaming_events_y2020m01', 'the old partition is gone');
SELECT is((SELECT count(*) FROM keen.streaming_events WHERE event_id IN (current_setting('tests.e1')::bigint, current_setting('tests.e2')::bigint)),
          2::bigint, 'recent events are kept');
SELECT has_table('keen', 'streaming_events_default', 'the default partition is never dropped');
-- Audit entries wait in keen.audit_pending until the transaction commits (then they are linked).
SELECT is((SELECT array_agg(a.event_subtype::text ORDER BY a.created_at)
             FROM (SELECT event_subtype, created_at FROM keen.audit_logs WHERE event_type = 'streaming'
                   UNION ALL
                   SELECT event_subtype, created_at FROM keen.audit_pending WHERE event_type = 'streaming') a),
          ARRAY['partitions_created', 'partitions_created', 'partitions_dropped'],
          'partition upkeep that changed something is audited, a no-op is not');

-- The feed and the connection cursor (issue 13) ------------------------------------------
SELECT has_function('keen', f, 'keen.' || f || ' exists')
  FROM unnest(ARRAY['events_for_user', 'next_events', 'snapshot_system_metrics', 'prune_streaming_history',
                    'maintenance_job_catalog', 'run_maintenance_job', 'register_maintenance_jobs',
                    'maintenance_job_status']) AS f;
SELECT has_table('keen', 'system_metrics', 'reference 004''s system_metrics');
SELECT has_column('keen', 'websocket_connections', 'last_delivered_event_id', 'a connection has its cursor');
SELECT ok(NOT has_function_privilege('keen_app', 'keen_private.emit_session_event(uuid, uuid, text, jsonb, text)', 'EXECUTE'),
          'keen_app cannot call the internal emitter');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT set_config('tests.alice_events', (SELECT array_agg(event_id ORDER BY event_id) FROM keen.streaming_events
                                           WHERE user_id = current_setting('tests.alice')::uuid)::text, false);
SELECT is((SELECT array_agg(event_id) FROM keen.events_for_user()), current_setting('tests.alice_events')::bigint[],
          'events_for_user: every event of the actor''s sessions, oldest first');
SELECT is((SELECT array_agg(event_id) FROM keen.next_events('c1')), current_setting('tests.alice_events')::bigint[],
          'next_events delivers the connection''s session''s events');
SELECT is((SELECT last_delivered_event_id FROM keen.websocket_connections WHERE connection_id = 'c1'),
          (SELECT max(e) FROM unnest(current_setting('tests.alice_events')::bigint[]) e), 'and moves its cursor');
SELECT is((SELECT count(*) FROM keen.next_events('c1')), 0::bigint, 'a delivered event is not delivered again');
SELECT throws_ok($$SELECT * FROM keen.next_events('c1', 0)$$, '22023', NULL, 'a limit of 0 is 22023');
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT throws_ok($$SELECT * FROM keen.next_events('c1')$$, 'P0002', NULL, 'another tenant''s connection is P0002');
SELECT is((SELECT count(*) FROM keen.events_for_user()), 0::bigint, 'another tenant''s feed holds none of them');
SELECT set_config('keen.actor_id', '', true);
SELECT throws_ok($$SELECT * FROM keen.events_for_user()$$, '28000', NULL, 'events_for_user without an actor is 28000');
SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT throws_ok($$SELECT keen.emit_event(current_setting('tests.session_a')::uuid, 'x', jsonb_build_object('b', repeat('x', 70000)))$$,
                 '22023', NULL, 'event data over 64 KiB is 22023');

-- System metrics --------------------------------------------------------------------------
SELECT throws_ok($$SELECT keen.snapshot_system_metrics()$$, '42501', NULL, 'a user may not take system metrics');
SELECT throws_ok($$SELECT keen.run_maintenance_job('metrics_snapshot')$$, '42501', NULL, 'a user may not run upkeep jobs');
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT is((SELECT active_websocket_connections FROM keen.snapshot_system_metrics()),
          (SELECT count(*) FROM keen.websocket_connections WHERE connection_status <> 'closed'),
          'a snapshot counts the live connections');
SELECT is(keen.run_maintenance_job('metrics_snapshot'), 'snapshot taken', 'run_maintenance_job runs a job');
SELECT is((SELECT runs FROM keen.maintenance_jobs WHERE job_name = 'metrics_snapshot'), 1::bigint, 'and records its success');
SELECT throws_ok($$SELECT keen.run_maintenance_job('nope')$$, '22023', NULL, 'an unknown job is 22023');
SELECT throws_ok($$SELECT * FROM keen.prune_streaming_history('1 hour')$$, '22023', NULL, 'a retention under a day is 22023');

-- An admin's API key with a scope list does no upkeep (keen_private.may_manage_event_partitions
-- goes through keen_private.require_all_tenants).
SELECT keen_private.set_actor_scoped(current_setting('tests.admin')::uuid, ARRAY['sessions:read', 'sessions:write']);
SELECT throws_ok($$SELECT * FROM keen.drop_old_event_partitions('365 days')$$, '42501', NULL,
                 'event_partitions_need_an_unscoped_admin: a scoped admin key cannot drop partitions');
SELECT throws_ok($$SELECT * FROM keen.prepare_event_partitions(0)$$, '42501', NULL,
                 'event_partitions_need_an_unscoped_admin: nor prepare them');
SELECT keen_private.set_actor(NULL);

SELECT * FROM finish();
ROLLBACK;
