-- streaming.sql: live connections, the event stream and its retention.
-- The partition machinery began in migration 0006 (which called it before this file existed);
-- keen_private.secure_event_partition stays defined there (moved to keen_private by 0009);
-- keen_private.may_manage_event_partitions (0006, moved by 0009) and keen.prepare_event_partitions
-- are maintained here.
--
-- Ordering guarantee of the stream: for one user, an event with a higher event_id is never
-- visible (committed) before an event with a lower one; so also for one session. The one
-- emitter, keen_private.emit_session_event, takes a transaction-level advisory lock keyed on
-- the session's owner BEFORE it draws the id from the sequence, and holds it until its
-- transaction ends; so the next emitter for that user draws its id only after the previous one
-- has committed or rolled back. A listener that has seen id N of a user (or of a session) and
-- asks for ids > N (events_since, events_for_user, next_events) can therefore never skip one
-- that commits later. Across users ids are unique and drawn in increasing order, but may
-- commit out of order: an admin's all-tenant feed is gap-free per tenant, not across tenants
-- (docs/streaming.md). An emit that rolls back leaves a gap in the ids that is never filled.
-- The price: emitting transactions of ONE user wait for each other's commit, so an emitting
-- transaction should commit promptly. Every API function takes this lock last (after the
-- session row and the credit account), so one call never deadlocks with another; a
-- transaction of several calls should emit last.
--
-- The session and credit functions emit their own events through the same emitter, in their
-- own transaction (an action that rolls back emits nothing): phase_change, tool_execution,
-- git_operation, session_completed / session_failed, session_cancelled (db/functions/sessions.sql)
-- and credits_charged (the trigger on keen.credit_transactions below).

-- keen_private.partition_ddl: runs one statement of partition upkeep under a short lock_timeout
-- (1 s), trying again up to 5 times (0.2 s, 0.4 s, ... apart) when the lock is not had. An idle
-- reader of keen.streaming_events holds its ACCESS SHARE lock; DDL that needs ACCESS EXCLUSIVE
-- queues behind it, and every other reader queues behind the DDL: the short timeout bounds that
-- queue to a second at a time, and the retries give the upkeep its chance between readers.
-- Who: prepare_event_partitions, drop_old_event_partitions. Raises 55P03 (lock_not_available)
-- when the lock could not be had in 5 tries; the statement's own errors.
CREATE OR REPLACE FUNCTION keen_private.partition_ddl(p_sql text, p_value1 timestamptz DEFAULT NULL,
                                                      p_value2 timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    v_rows bigint;
BEGIN
    FOR v_try IN 1 .. 5 LOOP
        BEGIN
            IF p_value1 IS NULL AND p_value2 IS NULL THEN
                EXECUTE p_sql;
            ELSE
                EXECUTE p_sql USING p_value1, p_value2;
            END IF;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            RETURN v_rows;
        EXCEPTION WHEN lock_not_available THEN
            IF v_try = 5 THEN
                RAISE;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.2 * v_try);
        END;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION keen_private.partition_ddl(text, timestamptz, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.partition_ddl(text, timestamptz, timestamptz) IS 'Internal: partition DDL under a 1 s lock_timeout, 5 tries; 55P03.';

-- keen_private.may_manage_event_partitions: may the session create or drop event partitions?
-- A superuser session with no actor (migrations, an operator's psql: partitions are DDL, so
-- unlike data a superuser counts here; a superuser acting as a user is judged as that user), or
-- whoever keen_private.require_all_tenants lets act on every tenant: the maintenance role, or an
-- admin actor whose API key, if any, has no scope list (no scope covers upkeep). Same signature as
-- 0006's: returns true, or raises.
-- Who: prepare_event_partitions, drop_old_event_partitions. Raises 42501 for anyone else.
CREATE OR REPLACE FUNCTION keen_private.may_manage_event_partitions()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    -- Checked first and apart: a migration may run before db/functions (the actor functions)
    -- exists, and must not evaluate them.
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user)
       AND COALESCE(pg_catalog.current_setting('keen.actor_id', true), '') = '' THEN
        RETURN true;
    END IF;
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may manage event partitions');
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION keen_private.may_manage_event_partitions() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.may_manage_event_partitions() IS 'Internal: superuser session without an actor, maintenance role or unscoped admin actor; else 42501.';

-- keen.prepare_event_partitions: creates the monthly partitions (UTC months) of
-- keen.streaming_events for the month of p_from and the p_months_ahead months after it, each
-- named streaming_events_yYYYYmMM and secured like its parent. Rows of such a month that were
-- caught by the default partition are moved into the new partition first, so creating a
-- partition never fails. Months that already have a partition are skipped. Returns one row
-- per partition created; when it created any, one audit entry (streaming / partitions_created).
-- Bounded: no partition past the 24th month after the current one. Each DDL statement waits at
-- most 1 s for its lock, 5 tries (keen_private.partition_ddl).
-- Who: the maintenance role, an admin actor, or a superuser session (migrations, operators);
-- the daily job event_partitions runs it (keen.run_maintenance_job).
-- Raises 42501 for anyone else (an admin's API key with a scope list included,
-- keen_private.may_manage_event_partitions); 22023 for p_months_ahead outside 0..24, a NULL or
-- infinite p_from, or a last month past 24 months ahead; 55P03 when a lock could not be had.
CREATE OR REPLACE FUNCTION keen.prepare_event_partitions(p_months_ahead integer DEFAULT 2,
                                                        p_from timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, rows_moved bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_first timestamp;
    v_month timestamp;
    v_name text;
    v_moved bigint;
    v_created text[] := '{}';
BEGIN
    PERFORM keen_private.may_manage_event_partitions();
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 24 THEN
        RAISE EXCEPTION 'p_months_ahead must be between 0 and 24' USING ERRCODE = '22023';
    END IF;
    IF p_from IS NULL OR NOT pg_catalog.isfinite(p_from) THEN
        RAISE EXCEPTION 'p_from must be a finite timestamp' USING ERRCODE = '22023';
    END IF;
    v_first := pg_catalog.date_trunc('month', p_from AT TIME ZONE 'UTC');
    IF v_first + pg_catalog.make_interval(months => p_months_ahead)
       > pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC') + interval '24 months' THEN
        RAISE EXCEPTION 'event partitions are prepared at most 24 months ahead' USING ERRCODE = '22023';
    END IF;

    -- One partition maintainer at a time (prepare and drop take the same lock).
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.streaming_events partitions'));

    FOR i IN 0 .. p_months_ahead LOOP
        v_month := v_first + pg_catalog.make_interval(months => i);
        v_name := 'streaming_events_' || pg_catalog.to_char(v_month, '"y"YYYY"m"MM');
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = 'keen'::regnamespace AND c.relname = v_name);

        partition_name := v_name;
        range_start := v_month AT TIME ZONE 'UTC';
        range_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';

        -- The owner reads the default partition around its policy for the move only, inside
        -- this transaction, which holds the default partition's ACCESS EXCLUSIVE lock from
        -- here to commit: nobody can write or read it in between.
        PERFORM keen_private.partition_ddl('ALTER TABLE keen.streaming_events_default NO FORCE ROW LEVEL SECURITY');
        EXECUTE pg_catalog.format(
            'CREATE TABLE keen.%I (LIKE keen.streaming_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        v_moved := keen_private.partition_ddl(pg_catalog.format(
            'WITH moved AS (DELETE FROM keen.streaming_events_default d
                             WHERE d.created_at >= $1 AND d.created_at < $2 RETURNING d.*)
             INSERT INTO keen.%I SELECT * FROM moved', v_name), range_start, range_end);
        PERFORM keen_private.partition_ddl('ALTER TABLE keen.streaming_events_default FORCE ROW LEVEL SECURITY');
        -- Bounds written in UTC, independent of the session's TimeZone and DateStyle.
        PERFORM keen_private.partition_ddl(pg_catalog.format(
            'ALTER TABLE keen.streaming_events ATTACH PARTITION keen.%I FOR VALUES FROM (%L) TO (%L)',
            v_name,
            pg_catalog.to_char(v_month, 'YYYY-MM-DD') || ' 00:00:00+00',
            pg_catalog.to_char(v_month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00'));
        PERFORM keen_private.secure_event_partition(pg_catalog.format('keen.%I', v_name)::regclass);

        rows_moved := v_moved;
        v_created := v_created || v_name;
        RETURN NEXT;
    END LOOP;
    IF pg_catalog.cardinality(v_created) > 0 THEN
        PERFORM keen_private.write_audit('streaming', 'partitions_created', NULL,
                                         pg_catalog.jsonb_build_object('partitions', v_created), 'low');
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) IS 'Maintenance: creates the monthly event partitions ahead (at most 24 months), moving rows out of the default partition, audited; 42501, 22023, 55P03.';

-- The actor check is core.sql's keen_private.require_actor (this file had its own copy).
DROP FUNCTION IF EXISTS keen.streaming_require_actor();

-- keen_private.session_connection_detach: takes closed connections off the websocket_connections
-- arrays of their sessions (the order of the others kept). p_session_ids[i] is the session
-- that p_connection_ids[i] followed: a session has one user, and connection ids are unique per
-- user, so the pair names one connection. Sessions are updated in id order, so two callers
-- never wait on each other in a cycle.
-- Who: internal (close_connection, reap_stale_connections). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.session_connection_detach(p_session_ids uuid[], p_connection_ids text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_session record;
BEGIN
    FOR v_session IN
        SELECT u.session_id, pg_catalog.array_agg(u.connection_id) AS connection_ids
          FROM unnest(p_session_ids, p_connection_ids) AS u (session_id, connection_id)
         WHERE u.session_id IS NOT NULL AND u.connection_id IS NOT NULL
         GROUP BY u.session_id
         ORDER BY u.session_id
    LOOP
        UPDATE keen.agent_sessions s
           SET websocket_connections = ARRAY(
                   SELECT w.connection_id
                     FROM unnest(s.websocket_connections) WITH ORDINALITY AS w (connection_id, n)
                    WHERE w.connection_id <> ALL (v_session.connection_ids)
                    ORDER BY w.n),
               updated_at = pg_catalog.now()
         WHERE s.id = v_session.session_id
           AND s.websocket_connections && v_session.connection_ids;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION keen_private.session_connection_detach(uuid[], text[]) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.session_connection_detach(uuid[], text[]) IS 'Internal: takes connection ids off their sessions'' websocket_connections.';

-- keen.register_connection: records a live connection (a websocket of the gateway) of the
-- actor, optionally following one session, whose websocket_connections array then lists it.
-- Registering again the id of a closed connection of the actor opens it again, keeping its
-- cursor (keen.next_events resumes where it left off). The connection row lives in its
-- owner's tenant: on the actor's own session it is session_id; an admin may follow any
-- tenant's session, which is then kept in session_filters (session_id stays NULL: the foreign
-- key binds session_id to the connection's own user) and not listed on that session.
-- Who: keen_app acting as a user (admins included: the connection is the admin's own, and is
-- flagged admin_connection).
-- Raises 28000 with no actor; 22023 for an empty connection id or one over its cap
-- (keen_private.size_cap('connection_id'), 255 bytes), a NULL ip, an unknown client type
-- (dashboard, cli, mobile, api), a NULL event list or a user agent over its cap (512 bytes);
-- P0002 when the session is not one the actor may see; 23505 when the actor already has a live
-- connection with this id; 42501 for an API key whose scopes do not cover it (sessions:write).
CREATE OR REPLACE FUNCTION keen.register_connection(p_connection_id text, p_client_ip inet, p_client_type text,
                                                    p_session_id uuid DEFAULT NULL,
                                                    p_user_agent text DEFAULT NULL,
                                                    p_subscribed_events text[] DEFAULT '{}')
RETURNS keen.websocket_connections
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_admin boolean := keen.actor_is_admin();
    v_old keen.websocket_connections;
    v_row keen.websocket_connections;
    v_session_owner uuid;
    v_own_session uuid;
    v_filters uuid[];
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_connection_id IS NULL OR p_connection_id = '' THEN
        RAISE EXCEPTION 'a connection id is required' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('connection_id', p_connection_id);
    IF p_client_ip IS NULL THEN
        RAISE EXCEPTION 'client ip is required' USING ERRCODE = '22023';
    END IF;
    IF p_client_type IS NULL OR p_client_type NOT IN ('dashboard', 'cli', 'mobile', 'api') THEN
        RAISE EXCEPTION 'client type must be dashboard, cli, mobile or api' USING ERRCODE = '22023';
    END IF;
    IF p_subscribed_events IS NULL OR pg_catalog.array_position(p_subscribed_events, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'subscribed events must be a list of event types' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('user_agent', p_user_agent);
    IF p_session_id IS NOT NULL THEN
        -- Under RLS: the actor's own sessions, or any for an admin.
        SELECT s.user_id INTO v_session_owner FROM keen.agent_sessions s WHERE s.id = p_session_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
        END IF;
        IF v_session_owner = v_actor THEN
            v_own_session := p_session_id;
        ELSE
            v_filters := ARRAY[p_session_id];
        END IF;
    END IF;

    SELECT * INTO v_old FROM keen.websocket_connections c
     WHERE c.user_id = v_actor AND c.connection_id = p_connection_id
       FOR UPDATE;
    IF FOUND AND v_old.connection_status <> 'closed' THEN
        RAISE EXCEPTION 'connection % is already live', p_connection_id USING ERRCODE = '23505';
    END IF;

    IF v_old.id IS NULL THEN
        BEGIN
            INSERT INTO keen.websocket_connections
                   (user_id, session_id, connection_id, client_ip, user_agent, client_type,
                    subscribed_events, session_filters, admin_connection, can_view_all_sessions)
            VALUES (v_actor, v_own_session, p_connection_id, p_client_ip, p_user_agent, p_client_type,
                    p_subscribed_events, v_filters, v_admin, v_admin)
            RETURNING * INTO v_row;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'connection % is already live', p_connection_id USING ERRCODE = '23505';
        END;
    ELSE
        UPDATE keen.websocket_connections c
           SET session_id = v_own_session, session_filters = v_filters, client_ip = p_client_ip,
               user_agent = p_user_agent, client_type = p_client_type, subscribed_events = p_subscribed_events,
               admin_connection = v_admin, can_view_all_sessions = v_admin,
               connected_at = pg_catalog.now(), last_ping_at = pg_catalog.now(),
               disconnected_at = NULL, connection_status = 'active', updated_at = pg_catalog.now()
         WHERE c.id = v_old.id
        RETURNING * INTO v_row;
    END IF;

    IF v_own_session IS NOT NULL THEN
        UPDATE keen.agent_sessions s
           SET websocket_connections = pg_catalog.array_append(s.websocket_connections, p_connection_id::text),
               updated_at = pg_catalog.now()
         WHERE s.id = v_own_session
           AND NOT (p_connection_id = ANY (s.websocket_connections));
    END IF;
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) TO keen_app;
COMMENT ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) IS 'Records a live connection of the actor (and lists it on its session; an admin may follow any session); 28000, 22023, P0002, 23505.';

-- keen.ping_connection: the actor's live connection is still there (last_ping_at = now).
-- Who: keen_app acting as the connection's owner (an admin too pings only its own).
-- Raises 28000 with no actor; P0002 when the actor has no live connection with this id
-- (another user's, a closed or reaped one: register it again); 42501 for an API key whose scopes do not cover it
-- (sessions:write).
CREATE OR REPLACE FUNCTION keen.ping_connection(p_connection_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    UPDATE keen.websocket_connections c
       SET last_ping_at = pg_catalog.now(), connection_status = 'active', updated_at = pg_catalog.now()
     WHERE c.user_id = v_actor AND c.connection_id = p_connection_id
       AND c.connection_status <> 'closed';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no live connection %', p_connection_id USING ERRCODE = 'P0002';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.ping_connection(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.ping_connection(text) TO keen_app;
COMMENT ON FUNCTION keen.ping_connection(text) IS 'Marks the actor''s live connection as alive now; 28000, P0002.';

-- keen.close_connection: closes the actor's connection and takes it off its session's
-- websocket_connections. Closing an already closed connection changes nothing.
-- Who: keen_app acting as the connection's owner (an admin too closes only its own; stale
-- connections of anyone are closed by keen.reap_stale_connections).
-- Raises 28000 with no actor; P0002 when the actor has no connection with this id; 42501 for an API key whose scopes do not cover it
-- (sessions:write).
CREATE OR REPLACE FUNCTION keen.close_connection(p_connection_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_row keen.websocket_connections;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    SELECT * INTO v_row FROM keen.websocket_connections c
     WHERE c.user_id = v_actor AND c.connection_id = p_connection_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no connection %', p_connection_id USING ERRCODE = 'P0002';
    END IF;
    IF v_row.connection_status = 'closed' THEN
        RETURN;
    END IF;
    UPDATE keen.websocket_connections c
       SET connection_status = 'closed', disconnected_at = pg_catalog.now(), updated_at = pg_catalog.now()
     WHERE c.id = v_row.id;
    PERFORM keen_private.session_connection_detach(ARRAY[v_row.session_id], ARRAY[v_row.connection_id::text]);
END
$$;
REVOKE ALL ON FUNCTION keen.close_connection(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.close_connection(text) TO keen_app;
COMMENT ON FUNCTION keen.close_connection(text) IS 'Closes the actor''s connection and takes it off its session; 28000, P0002.';

-- keen.reap_stale_connections: closes every live connection whose last ping is older than
-- p_older_than (as if its client had closed it) and takes it off its session. Returns how
-- many it closed. Run it from cron as keen_maintenance (e.g. every minute with '2 minutes').
-- Who: the maintenance role or an admin actor (every tenant).
-- Raises 42501 for anyone else; 22023 for a NULL or negative interval.
CREATE OR REPLACE FUNCTION keen.reap_stale_connections(p_older_than interval)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_sessions uuid[];
    v_connections text[];
    v_count integer;
BEGIN
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may reap connections');
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'p_older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    WITH reaped AS (
        UPDATE keen.websocket_connections c
           SET connection_status = 'closed', disconnected_at = pg_catalog.now(), updated_at = pg_catalog.now()
         WHERE c.connection_status <> 'closed'
           AND c.last_ping_at < pg_catalog.now() - p_older_than
        RETURNING c.session_id, c.connection_id
    )
    SELECT pg_catalog.array_agg(r.session_id), pg_catalog.array_agg(r.connection_id::text), pg_catalog.count(*)
      INTO v_sessions, v_connections, v_count
      FROM reaped r;
    PERFORM keen_private.session_connection_detach(v_sessions, v_connections);
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION keen.reap_stale_connections(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.reap_stale_connections(interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.reap_stale_connections(interval) IS 'Maintenance: closes connections not pinged for p_older_than; 42501, 22023.';

-- keen_private.emit_session_event: the one emitter. Appends an event to a session's stream and
-- returns its id, then NOTIFYs channel keen_events with {event_id, session_id, user_id,
-- event_type} only: the data never travels in a notification (any role that can LISTEN could
-- read it); subscribers fetch it through events_since / events_for_user / next_events, under
-- row-level security. Takes the owner's ordering lock before it draws the id (see the top of
-- this file); the notification is delivered when the transaction commits, not at all if it
-- rolls back.
-- Who: keen's functions, after they validated the input and found the session visible to the
-- actor (p_user_id is its owner). Raises: nothing of its own (the insert's row-level security
-- check if the actor may not see the session).
CREATE OR REPLACE FUNCTION keen_private.emit_session_event(p_session_id uuid, p_user_id uuid, p_event_type text,
                                                           p_event_data jsonb, p_event_source text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_event_id bigint;
BEGIN
    -- Serialize the emitters of this user BEFORE drawing the id (held to commit), so that ids
    -- of one user become visible in increasing order.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.emit_event'),
                                             pg_catalog.hashtext(p_user_id::text));
    v_event_id := pg_catalog.nextval('keen.streaming_events_event_id_seq');
    INSERT INTO keen.streaming_events (event_id, session_id, user_id, event_type, event_data, event_source)
    VALUES (v_event_id, p_session_id, p_user_id, p_event_type, p_event_data, p_event_source);
    PERFORM pg_catalog.pg_notify('keen_events', pg_catalog.json_build_object(
        'event_id', v_event_id,
        'session_id', p_session_id,
        'user_id', p_user_id,
        'event_type', p_event_type)::text);
    RETURN v_event_id;
END
$$;
REVOKE ALL ON FUNCTION keen_private.emit_session_event(uuid, uuid, text, jsonb, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.emit_session_event(uuid, uuid, text, jsonb, text) IS 'Internal: the one emitter (ordering lock, insert, NOTIFY with ids only).';

-- keen.emit_event: appends an event of the caller's choosing to a session's stream and returns
-- its id (keen_private.emit_session_event: ids-only NOTIFY, per-user ordering). The session and
-- credit functions emit their own events; this is for what only the agent knows.
-- Who: keen_app acting as the session's owner, or an admin (any session; the event belongs to
-- the session's owner); the maintenance role.
-- Raises P0002 when the session does not exist or is another user's; 22023 for a NULL
-- session, an empty event type or one over its cap (keen_private.size_cap('event_type'), 50
-- bytes), NULL data, data over the event_data cap (64 KiB), or a source other than agent, git,
-- tool, system; 42501 for an API key whose scopes do not cover it (sessions:write).
CREATE OR REPLACE FUNCTION keen.emit_event(p_session_id uuid, p_event_type text,
                                           p_event_data jsonb DEFAULT '{}',
                                           p_event_source text DEFAULT 'agent')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_owner uuid;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_session_id IS NULL THEN
        RAISE EXCEPTION 'session id is required' USING ERRCODE = '22023';
    END IF;
    IF p_event_type IS NULL OR p_event_type = '' THEN
        RAISE EXCEPTION 'an event type is required' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('event_type', p_event_type);
    IF p_event_data IS NULL THEN
        RAISE EXCEPTION 'event data must not be NULL (use {})' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('event_data', p_event_data);
    IF p_event_source IS NULL OR p_event_source NOT IN ('agent', 'git', 'tool', 'system') THEN
        RAISE EXCEPTION 'event source must be agent, git, tool or system' USING ERRCODE = '22023';
    END IF;

    -- Under RLS: only the actor's own sessions (an admin's or maintenance: all) are found.
    SELECT s.user_id INTO v_owner FROM keen.agent_sessions s WHERE s.id = p_session_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
    END IF;
    RETURN keen_private.emit_session_event(p_session_id, v_owner, p_event_type, p_event_data, p_event_source);
END
$$;
REVOKE ALL ON FUNCTION keen.emit_event(uuid, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.emit_event(uuid, text, jsonb, text) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.emit_event(uuid, text, jsonb, text) IS 'Stores a session event and NOTIFYs keen_events with ids only; P0002, 22023.';

-- keen_private.emit_credits_charged: the credits_charged event of a usage or admin_bypass ledger
-- row on a session, in the charging transaction. The ledger's one locked path,
-- keen_private.credit_charge, calls it for every such row it writes (its fast path, its general
-- path, an unlimited account's bypass row), so every charging function emits (deduct_credits with
-- p_session_id, capture_reservation of a hold on a session, complete_session, record_llm_usage);
-- a replayed idempotency key writes no row and emits nothing. (It used to be an AFTER INSERT
-- trigger on keen.credit_transactions: its WHEN clause was re-read and its queue set up in every
-- deduction, the ones without a session included, under the account lock.)
-- Who: keen_private.credit_charge (as keen_ledger), with a row it has just written.
-- Raises: nothing of its own.
CREATE OR REPLACE FUNCTION keen_private.emit_credits_charged(p_charge keen.credit_transactions)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM keen_private.emit_session_event(p_charge.session_id, p_charge.user_id, 'credits_charged',
        pg_catalog.jsonb_build_object(
            'transaction_id', p_charge.id,
            'transaction_type', p_charge.transaction_type,
            'credits', -p_charge.amount,
            'claude_cost_usd', p_charge.claude_cost_usd,
            'markup_multiplier', p_charge.markup_multiplier,
            'is_admin_bypass', p_charge.is_admin_bypass,
            'balance_after', p_charge.balance_after),
        'system');
END
$$;
REVOKE ALL ON FUNCTION keen_private.emit_credits_charged(keen.credit_transactions) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.emit_credits_charged(keen.credit_transactions),
                          keen_private.emit_session_event(uuid, uuid, text, jsonb, text)
    TO keen_ledger;
COMMENT ON FUNCTION keen_private.emit_credits_charged(keen.credit_transactions) IS
    'Internal: a usage charge on a session emits credits_charged (called by keen_private.credit_charge).';

-- The trigger that emitted it before, and its function.
DROP TRIGGER IF EXISTS credit_transactions_emit_charged ON keen.credit_transactions;
DROP FUNCTION IF EXISTS keen_private.emit_credits_charged();

-- keen.events_since: the events of a session after p_after_event_id, oldest first, at most
-- p_limit; what a listener reads after each notification and after a reconnect.
-- Who: keen_app acting as the session's owner or an admin; the maintenance role.
-- Raises P0002 when the session does not exist or is another user's; 22023 for a NULL
-- session, a NULL or negative p_after_event_id, or p_limit outside 1..10000; 42501 for an API key whose scopes do not cover it
-- (sessions:read).
CREATE OR REPLACE FUNCTION keen.events_since(p_session_id uuid, p_after_event_id bigint DEFAULT 0,
                                             p_limit integer DEFAULT 1000)
RETURNS TABLE (event_id bigint, session_id uuid, event_type text, event_data jsonb,
               event_source text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    IF p_session_id IS NULL THEN
        RAISE EXCEPTION 'session id is required' USING ERRCODE = '22023';
    END IF;
    IF p_after_event_id IS NULL OR p_after_event_id < 0 THEN
        RAISE EXCEPTION 'p_after_event_id must be 0 or more' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM keen.agent_sessions s WHERE s.id = p_session_id) THEN
        RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT e.event_id, e.session_id, e.event_type::text, e.event_data, e.event_source::text, e.created_at
          FROM keen.streaming_events e
         WHERE e.session_id = p_session_id AND e.event_id > p_after_event_id
         ORDER BY e.event_id
         LIMIT p_limit;
END
$$;
REVOKE ALL ON FUNCTION keen.events_since(uuid, bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.events_since(uuid, bigint, integer) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.events_since(uuid, bigint, integer) IS 'Replays a session''s events after an id, oldest first, under RLS; P0002, 22023.';

-- keen.drop_old_event_partitions: retention. Drops every monthly partition
-- (streaming_events_yYYYYmMM) whose whole month ended at least p_keep ago: whole partitions,
-- never a DELETE. The default partition is never dropped (rows it caught for an old month go
-- once keen.prepare_event_partitions(0, <that month>) has given them a partition), nor the
-- current month's. Returns the partitions dropped; when it dropped any, one audit entry
-- (streaming / partitions_dropped, risk medium). Bounded: p_keep is at least 30 days (reference
-- 004's retention). DROP takes the parent's ACCESS EXCLUSIVE lock: it waits at most 1 s for it,
-- 5 tries (keen_private.partition_ddl), so an idle reader cannot make every tenant's reads
-- queue behind the upkeep.
-- Who: the maintenance role, an admin actor, or a superuser session; the daily job retention.
-- Raises 42501 for anyone else (an admin's API key with a scope list included,
-- keen_private.may_manage_event_partitions); 22023 for a NULL p_keep or one under 30 days;
-- 55P03 when the lock could not be had.
CREATE OR REPLACE FUNCTION keen.drop_old_event_partitions(p_keep interval)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_partition record;
    v_dropped text[] := '{}';
BEGIN
    PERFORM keen_private.may_manage_event_partitions();
    IF p_keep IS NULL OR p_keep < interval '30 days' THEN
        RAISE EXCEPTION 'p_keep must be at least 30 days' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.streaming_events partitions'));
    FOR v_partition IN
        SELECT m.relname, m.month_start AT TIME ZONE 'UTC' AS month_start,
               (m.month_start + interval '1 month') AT TIME ZONE 'UTC' AS month_end
          FROM (SELECT c.relname,
                       pg_catalog.to_date(pg_catalog.substr(c.relname, 18), '"y"YYYY"m"MM')::timestamp AS month_start
                  FROM pg_catalog.pg_inherits i
                  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'keen.streaming_events'::regclass
                   AND c.relname ~ '^streaming_events_y[0-9]{4}m[0-9]{2}$') m
         WHERE (m.month_start + interval '1 month') AT TIME ZONE 'UTC' <= pg_catalog.now() - p_keep
           AND m.month_start < pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC')
         ORDER BY m.month_start
    LOOP
        PERFORM keen_private.partition_ddl(pg_catalog.format('DROP TABLE keen.%I', v_partition.relname));
        partition_name := v_partition.relname;
        range_start := v_partition.month_start;
        range_end := v_partition.month_end;
        v_dropped := v_dropped || v_partition.relname::text;
        RETURN NEXT;
    END LOOP;
    IF pg_catalog.cardinality(v_dropped) > 0 THEN
        PERFORM keen_private.write_audit('streaming', 'partitions_dropped', NULL,
                                         pg_catalog.jsonb_build_object('partitions', v_dropped, 'keep', p_keep::text),
                                         'medium');
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.drop_old_event_partitions(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.drop_old_event_partitions(interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.drop_old_event_partitions(interval) IS 'Retention: drops whole monthly event partitions older than p_keep (30 days at least, never the current month), audited; 42501, 22023, 55P03.';

-- keen.events_for_user: the feed of every session of the actor after p_after_event_id, oldest
-- first, at most p_limit; an admin's feed is every tenant's. Gap-free per user (see the top of
-- this file): a reader that asks again with the last id it saw never misses an event of that
-- user; an admin's all-tenant feed is gap-free per tenant.
-- Who: keen_app acting as a user.
-- Raises 28000 with no actor; 22023 for a NULL or negative p_after_event_id, or p_limit
-- outside 1..10000; 42501 for an API key whose scopes do not cover it (sessions:read).
CREATE OR REPLACE FUNCTION keen.events_for_user(p_after_event_id bigint DEFAULT 0, p_limit integer DEFAULT 1000)
RETURNS TABLE (event_id bigint, session_id uuid, event_type text, event_data jsonb,
               event_source text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    IF p_after_event_id IS NULL OR p_after_event_id < 0 THEN
        RAISE EXCEPTION 'p_after_event_id must be 0 or more' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 10000' USING ERRCODE = '22023';
    END IF;
    IF keen.actor_is_admin() THEN
        RETURN QUERY
            SELECT e.event_id, e.session_id, e.event_type::text, e.event_data, e.event_source::text, e.created_at
              FROM keen.streaming_events e
             WHERE e.event_id > p_after_event_id
             ORDER BY e.event_id
             LIMIT p_limit;
    ELSE
        -- The explicit user filter (row-level security says the same) lets the planner use the
        -- user's index.
        RETURN QUERY
            SELECT e.event_id, e.session_id, e.event_type::text, e.event_data, e.event_source::text, e.created_at
              FROM keen.streaming_events e
             WHERE e.user_id = v_actor AND e.event_id > p_after_event_id
             ORDER BY e.event_id
             LIMIT p_limit;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.events_for_user(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.events_for_user(bigint, integer) TO keen_app;
COMMENT ON FUNCTION keen.events_for_user(bigint, integer) IS 'The actor''s feed (every tenant''s for an admin) after an id, oldest first; 28000, 22023.';

-- keen.next_events: the connection's own cursor. Returns, oldest first and at most p_limit, the
-- events after the last one the connection delivered: of its session (or of the session an
-- admin follows, or of all its owner's sessions when it follows none), only the types in its
-- subscribed_events (empty: every type). Moves the cursor (last_delivered_event_id) in the
-- caller's transaction: a read whose transaction rolls back is delivered again (at least
-- once); a committed read is not delivered again. When fewer than p_limit events match, the
-- cursor moves past the events it skipped for their type too. The connection row is locked
-- (FOR NO KEY UPDATE): two readers of one connection take turns.
-- Who: keen_app acting as the connection's owner (an admin reads only its own connections).
-- Raises 28000 with no actor; 22023 for p_limit outside 1..1000; P0002 when the actor has no
-- live connection with this id (another tenant's, a closed or reaped one); 42501 for an API key whose scopes do not cover it
-- (sessions:read).
CREATE OR REPLACE FUNCTION keen.next_events(p_connection_id text, p_limit integer DEFAULT 100)
RETURNS TABLE (event_id bigint, session_id uuid, event_type text, event_data jsonb,
               event_source text, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_conn keen.websocket_connections;
    v_session uuid;
    v_types text[];
    v_ids bigint[];
    v_max bigint;
    v_cursor bigint;
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_conn FROM keen.websocket_connections c
     WHERE c.user_id = v_actor AND c.connection_id = p_connection_id AND c.connection_status <> 'closed'
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no live connection %', p_connection_id USING ERRCODE = 'P0002';
    END IF;
    v_session := COALESCE(v_conn.session_id, v_conn.session_filters[1]);
    v_types := CASE WHEN pg_catalog.cardinality(v_conn.subscribed_events) = 0 THEN NULL
                    ELSE v_conn.subscribed_events END;
    v_cursor := v_conn.last_delivered_event_id;

    -- One statement, so one snapshot: the events delivered and how far the cursor may move
    -- past those skipped for their type are judged on the same committed rows (a second
    -- statement could see an event committed in between and move the cursor past it).
    -- Under RLS: a session the owner can no longer see (an admin demoted) yields nothing.
    IF v_session IS NOT NULL THEN
        WITH scoped AS (
            SELECT e.event_id, e.event_type FROM keen.streaming_events e
             WHERE e.session_id = v_session AND e.event_id > v_cursor)
        SELECT (SELECT pg_catalog.array_agg(m.event_id ORDER BY m.event_id)
                  FROM (SELECT x.event_id FROM scoped x
                         WHERE v_types IS NULL OR x.event_type::text = ANY (v_types)
                         ORDER BY x.event_id LIMIT p_limit) m),
               (SELECT pg_catalog.max(x.event_id) FROM scoped x)
          INTO v_ids, v_max;
    ELSE
        WITH scoped AS (
            SELECT e.event_id, e.event_type FROM keen.streaming_events e
             WHERE e.user_id = v_actor AND e.event_id > v_cursor)
        SELECT (SELECT pg_catalog.array_agg(m.event_id ORDER BY m.event_id)
                  FROM (SELECT x.event_id FROM scoped x
                         WHERE v_types IS NULL OR x.event_type::text = ANY (v_types)
                         ORDER BY x.event_id LIMIT p_limit) m),
               (SELECT pg_catalog.max(x.event_id) FROM scoped x)
          INTO v_ids, v_max;
    END IF;
    IF COALESCE(pg_catalog.cardinality(v_ids), 0) < p_limit THEN
        v_cursor := GREATEST(v_cursor, COALESCE(v_max, v_cursor));
    ELSE
        v_cursor := v_ids[p_limit];
    END IF;

    IF v_cursor > v_conn.last_delivered_event_id THEN
        UPDATE keen.websocket_connections c
           SET last_delivered_event_id = v_cursor, updated_at = pg_catalog.now()
         WHERE c.id = v_conn.id;
    END IF;
    RETURN QUERY
        SELECT e.event_id, e.session_id, e.event_type::text, e.event_data, e.event_source::text, e.created_at
          FROM keen.streaming_events e
         WHERE e.event_id = ANY (COALESCE(v_ids, '{}'))
         ORDER BY e.event_id;
END
$$;
REVOKE ALL ON FUNCTION keen.next_events(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.next_events(text, integer) TO keen_app;
COMMENT ON FUNCTION keen.next_events(text, integer) IS 'The connection''s next events (its session or owner, its subscribed types), moving its cursor: at-least-once; 28000, 22023, P0002.';

-- keen.snapshot_system_metrics: one row of reference 004's system_metrics, now: users with a
-- running session or a live connection, running sessions, live connections, running sessions
-- per phase, the tool calls of the last 5 minutes (mean time, share failed), this database's
-- server connections, and the credits purchased and consumed (usage) today (UTC). The daily
-- job metrics_snapshot takes one a minute; keen.prune_streaming_history keeps 90 days.
-- Who: an admin actor or the maintenance role.
-- Raises 42501 for anyone else.
CREATE OR REPLACE FUNCTION keen.snapshot_system_metrics()
RETURNS keen.system_metrics
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_day_start timestamptz := keen_private.accounting_day_start(keen_private.accounting_day(pg_catalog.now()));
    v_row keen.system_metrics;
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may take system metrics');
    INSERT INTO keen.system_metrics
           (active_users, active_sessions, active_websocket_connections,
            sessions_in_explore, sessions_in_plan, sessions_in_found, sessions_in_summon, sessions_in_complete,
            avg_response_time_ms, error_rate, database_connections,
            credits_purchased_today, credits_consumed_today)
    SELECT (SELECT pg_catalog.count(*) FROM (
                SELECT s.user_id FROM keen.agent_sessions s WHERE s.execution_status = 'running'
                UNION
                SELECT c.user_id FROM keen.websocket_connections c WHERE c.connection_status <> 'closed') u),
           r.running, (SELECT pg_catalog.count(*) FROM keen.websocket_connections c WHERE c.connection_status <> 'closed'),
           r.explore, r.plan, r.found, r.summon, r.complete,
           t.avg_ms, t.error_rate,
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datname = pg_catalog.current_database()),
           (SELECT COALESCE(pg_catalog.sum(x.amount), 0) FROM keen.credit_transactions x
             WHERE x.transaction_type = 'purchase' AND x.created_at >= v_day_start),
           (SELECT COALESCE(-pg_catalog.sum(x.amount), 0) FROM keen.credit_transactions x
             WHERE x.transaction_type = 'usage' AND x.created_at >= v_day_start)
      FROM (SELECT pg_catalog.count(*) AS running,
                   pg_catalog.count(*) FILTER (WHERE s.current_phase = 'EXPLORE') AS explore,
                   pg_catalog.count(*) FILTER (WHERE s.current_phase = 'PLAN') AS plan,
                   pg_catalog.count(*) FILTER (WHERE s.current_phase = 'FOUND') AS found,
                   pg_catalog.count(*) FILTER (WHERE s.current_phase = 'SUMMON') AS summon,
                   pg_catalog.count(*) FILTER (WHERE s.current_phase = 'COMPLETE') AS complete
              FROM keen.agent_sessions s WHERE s.execution_status = 'running') r,
           (SELECT pg_catalog.round(pg_catalog.avg(te.execution_time_ms), 2) AS avg_ms,
                   pg_catalog.round((pg_catalog.count(*) FILTER (WHERE NOT te.success))::numeric
                                    / NULLIF(pg_catalog.count(*), 0), 4) AS error_rate
              FROM keen.tool_executions te
             WHERE te.created_at >= pg_catalog.now() - interval '5 minutes') t
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.snapshot_system_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.snapshot_system_metrics() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.snapshot_system_metrics() IS 'Admin or maintenance: records and returns a system_metrics row (reference 004); 42501.';

-- keen.prune_streaming_history: retention of what is not partitioned: system_metrics older
-- than p_metrics_keep (90 days, reference 004) and connections closed longer ago than
-- p_connections_keep (7 days). Returns how many rows of each it deleted.
-- Who: an admin actor or the maintenance role (the daily job retention).
-- Raises 42501 for anyone else; 22023 for a NULL keep or one under 1 day.
CREATE OR REPLACE FUNCTION keen.prune_streaming_history(p_metrics_keep interval DEFAULT '90 days',
                                                        p_connections_keep interval DEFAULT '7 days')
RETURNS TABLE (metrics_deleted bigint, connections_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may prune history');
    IF p_metrics_keep IS NULL OR p_metrics_keep < interval '1 day'
       OR p_connections_keep IS NULL OR p_connections_keep < interval '1 day' THEN
        RAISE EXCEPTION 'retention periods must be at least 1 day' USING ERRCODE = '22023';
    END IF;
    DELETE FROM keen.system_metrics m WHERE m.metric_timestamp < pg_catalog.now() - p_metrics_keep;
    GET DIAGNOSTICS metrics_deleted = ROW_COUNT;
    DELETE FROM keen.websocket_connections c
     WHERE c.connection_status = 'closed' AND c.disconnected_at < pg_catalog.now() - p_connections_keep;
    GET DIAGNOSTICS connections_deleted = ROW_COUNT;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION keen.prune_streaming_history(interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.prune_streaming_history(interval, interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.prune_streaming_history(interval, interval) IS 'Retention: system_metrics (90 days) and closed connections (7 days); 42501, 22023.';

-- keen.reap_idle_transactions: the watchdog of the login roles' timeouts. keen_app's and
-- keen_recorder's statement, idle-in-transaction and lock timeouts are role defaults (0010) that
-- a session may change with SET, so a leaked connection could hold the locks its calls took
-- (an account, a user's event order, the audit chain) for as long as it likes. This ends (with
-- pg_terminate_backend: its transaction rolls back, its locks go) every session of those roles
-- in this database that has sat idle in a transaction for longer than p_idle, or whose
-- transaction has run longer than p_transaction. A job every minute (keen.maintenance_job_catalog):
-- so no caller holds a lock much past p_idle plus a minute, whatever it SET. Returns how many
-- sessions it ended; each is audited (high).
-- Who: the maintenance role (pg_cron, keen-db jobs) or an admin actor.
-- Raises 42501 for anyone else; 22023 for a NULL or non-positive interval.
CREATE OR REPLACE FUNCTION keen.reap_idle_transactions(p_idle interval DEFAULT '60 seconds',
                                                      p_transaction interval DEFAULT '10 minutes')
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_backend record;
    v_ended integer := 0;
BEGIN
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may end sessions');
    IF p_idle IS NULL OR p_idle <= interval '0' OR p_transaction IS NULL OR p_transaction <= interval '0' THEN
        RAISE EXCEPTION 'p_idle and p_transaction must be positive intervals' USING ERRCODE = '22023';
    END IF;
    FOR v_backend IN
        SELECT a.pid, a.usename::text AS role_name, a.state, a.xact_start, a.state_change
          FROM pg_catalog.pg_stat_activity a
         WHERE a.datname = pg_catalog.current_database()
           AND a.usename IN ('keen_app', 'keen_recorder')
           AND a.pid <> pg_catalog.pg_backend_pid()
           AND ((a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                 AND a.state_change < pg_catalog.clock_timestamp() - p_idle)
                OR a.xact_start < pg_catalog.clock_timestamp() - p_transaction)
    LOOP
        IF pg_catalog.pg_terminate_backend(v_backend.pid) THEN
            v_ended := v_ended + 1;
            PERFORM keen_private.write_audit('watchdog', 'session_terminated', NULL,
                pg_catalog.jsonb_build_object('pid', v_backend.pid, 'role', v_backend.role_name,
                                              'state', v_backend.state, 'transaction_started', v_backend.xact_start,
                                              'state_since', v_backend.state_change), 'high');
        END IF;
    END LOOP;
    RETURN v_ended;
END
$$;
REVOKE ALL ON FUNCTION keen.reap_idle_transactions(interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.reap_idle_transactions(interval, interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.reap_idle_transactions(interval, interval) IS 'Watchdog: ends keen_app/keen_recorder sessions idle in a transaction past p_idle (or in one past p_transaction); 42501, 22023.';

-- Scheduled upkeep. keen.maintenance_job_catalog is the one list of jobs: pg_cron schedules
-- each as `SELECT keen.run_maintenance_job(name)` in this database as keen_maintenance
-- (keen-db up, keen_db/jobs.py), and `keen-db jobs` runs the ones that are due where pg_cron is
-- not installed. Both record every success in keen.maintenance_jobs, which the doctor reads.
-- A job is due once per period: its slots start at anchor + k * period (UTC); it is due when
-- it has not succeeded since the start of the current slot; the cron schedule says the same.

-- keen.maintenance_job_catalog: the jobs, their cron schedule and their period.
-- Who: anyone with EXECUTE (keen_app, keen_maintenance). Raises: nothing.
CREATE OR REPLACE FUNCTION keen.maintenance_job_catalog()
RETURNS TABLE (job_name text, cron_schedule text, period interval, anchor timestamptz, description text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
    VALUES ('rollup_today', '*/5 * * * *', interval '5 minutes', '2000-01-01 00:00:00+00'::timestamptz,
            'today''s analytics rollup and the dashboard refresh'),
           ('rollup_yesterday', '10 0 * * *', interval '1 day', '2000-01-01 00:10:00+00'::timestamptz,
            'yesterday''s rollup, once after midnight UTC'),
           ('event_partitions', '20 0 * * *', interval '1 day', '2000-01-01 00:20:00+00'::timestamptz,
            'event partitions for this month and the 2 ahead'),
           ('retention', '30 0 * * *', interval '1 day', '2000-01-01 00:30:00+00'::timestamptz,
            'event partitions older than 30 days, metrics older than 90 days, connections closed 7 days'),
           ('reap_connections', '* * * * *', interval '1 minute', '2000-01-01 00:00:00+00'::timestamptz,
            'connections not pinged for 2 minutes are closed'),
           ('metrics_snapshot', '* * * * *', interval '1 minute', '2000-01-01 00:00:00+00'::timestamptz,
            'a system_metrics snapshot'),
           ('reap_idle_transactions', '* * * * *', interval '1 minute', '2000-01-01 00:00:00+00'::timestamptz,
            'keen_app and keen_recorder sessions idle in a transaction for 60 s (or in one for 10 minutes) are ended')
$$;
REVOKE ALL ON FUNCTION keen.maintenance_job_catalog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.maintenance_job_catalog() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.maintenance_job_catalog() IS 'The scheduled upkeep jobs: name, cron schedule, period, anchor.';

-- keen.run_maintenance_job: runs one job now and records its success (keen.maintenance_jobs:
-- last_started_at, last_succeeded_at, duration, result, runs). A job that fails raises, and
-- its record is rolled back with it: its last success stays where it was. Returns a short
-- result (what the job did).
-- Who: the maintenance role (pg_cron, keen-db jobs) or an admin actor.
-- Raises 42501 for anyone else; 22023 for an unknown job; whatever the job raises.
CREATE OR REPLACE FUNCTION keen.run_maintenance_job(p_job_name text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_started timestamptz := pg_catalog.clock_timestamp();
    v_today date := keen_private.accounting_day(pg_catalog.now());
    v_result text;
    v_n bigint;
    v_m bigint;
BEGIN
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may run upkeep jobs');
    CASE p_job_name
        WHEN 'rollup_today' THEN
            PERFORM keen.rollup_daily_analytics(v_today);
            PERFORM keen.refresh_dashboard_metrics();
            v_result := 'rolled up ' || v_today || ', dashboard refreshed';
        WHEN 'rollup_yesterday' THEN
            PERFORM keen.rollup_daily_analytics(v_today - 1);
            v_result := 'rolled up ' || (v_today - 1);
        WHEN 'event_partitions' THEN
            SELECT pg_catalog.count(*) INTO v_n FROM keen.prepare_event_partitions(2);
            v_result := v_n || ' partition(s) created';
        WHEN 'retention' THEN
            SELECT pg_catalog.count(*) INTO v_n FROM keen.drop_old_event_partitions('30 days');
            v_result := v_n || ' event partition(s) dropped, ';
            SELECT p.metrics_deleted, p.connections_deleted INTO v_m, v_n FROM keen.prune_streaming_history() p;
            v_result := v_result || pg_catalog.format('%s metric(s), %s connection(s) deleted', v_m, v_n);
        WHEN 'reap_connections' THEN
            v_result := keen.reap_stale_connections('2 minutes') || ' connection(s) reaped';
        WHEN 'metrics_snapshot' THEN
            PERFORM keen.snapshot_system_metrics();
            v_result := 'snapshot taken';
        WHEN 'reap_idle_transactions' THEN
            v_result := keen.reap_idle_transactions() || ' idle transaction(s) ended';
        ELSE
            RAISE EXCEPTION 'unknown maintenance job %', p_job_name USING ERRCODE = '22023';
    END CASE;
    INSERT INTO keen.maintenance_jobs AS j (job_name, last_started_at, last_succeeded_at, last_duration_ms,
                                            last_result, runs, updated_at)
    VALUES (p_job_name, v_started, pg_catalog.clock_timestamp(),
            (EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - v_started) * 1000)::bigint, v_result, 1,
            pg_catalog.clock_timestamp())
    ON CONFLICT (job_name) DO UPDATE
       SET last_started_at = EXCLUDED.last_started_at, last_succeeded_at = EXCLUDED.last_succeeded_at,
           last_duration_ms = EXCLUDED.last_duration_ms, last_result = EXCLUDED.last_result,
           runs = j.runs + 1, updated_at = EXCLUDED.updated_at;
    RETURN v_result;
END
$$;
REVOKE ALL ON FUNCTION keen.run_maintenance_job(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.run_maintenance_job(text) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.run_maintenance_job(text) IS 'Runs one upkeep job and records its success; 42501, 22023.';

-- keen.register_maintenance_jobs: marks every job of the catalog as scheduled from now on
-- (a job never run is not overdue before its first slot after this). Idempotent: a job
-- already registered keeps its date. Returns the jobs newly registered.
-- Who: the maintenance role (keen-db up, keen-db jobs) or an admin actor.
-- Raises 42501 for anyone else.
CREATE OR REPLACE FUNCTION keen.register_maintenance_jobs()
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may register upkeep jobs');
    RETURN QUERY
        INSERT INTO keen.maintenance_jobs (job_name)
        SELECT c.job_name FROM keen.maintenance_job_catalog() c
        ON CONFLICT (job_name) DO NOTHING
        RETURNING maintenance_jobs.job_name;
END
$$;
REVOKE ALL ON FUNCTION keen.register_maintenance_jobs() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_maintenance_jobs() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.register_maintenance_jobs() IS 'Marks the catalog''s jobs as scheduled (idempotent); 42501.';

-- keen.maintenance_job_status: each job of the catalog with its record: when its current slot
-- began (slot_start), whether it is due (no success since then), and whether it is overdue:
-- registered before the previous slot (plus p_grace) and without a success since that slot
-- began, so it missed a run. A job never registered is neither.
-- Who: the maintenance role or an admin actor (the doctor, keen-db jobs).
-- Raises 42501 for anyone else; 22023 for a NULL or negative grace.
CREATE OR REPLACE FUNCTION keen.maintenance_job_status(p_grace interval DEFAULT '2 minutes')
RETURNS TABLE (job_name text, cron_schedule text, period interval, registered boolean,
               scheduled_at timestamptz, last_succeeded_at timestamptz, last_result text, runs bigint,
               slot_start timestamptz, due boolean, overdue boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_all_tenants('only the maintenance role or an admin may read upkeep jobs');
    IF p_grace IS NULL OR p_grace < interval '0' THEN
        RAISE EXCEPTION 'p_grace must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT c.job_name, c.cron_schedule, c.period, j.job_name IS NOT NULL, j.scheduled_at,
               j.last_succeeded_at, j.last_result, COALESCE(j.runs, 0),
               x.slot, j.last_succeeded_at IS NULL OR j.last_succeeded_at < x.slot,
               j.job_name IS NOT NULL
                 AND j.scheduled_at < x.missed
                 AND (j.last_succeeded_at IS NULL OR j.last_succeeded_at < x.missed)
          FROM keen.maintenance_job_catalog() c
          LEFT JOIN keen.maintenance_jobs j ON j.job_name = c.job_name
         CROSS JOIN LATERAL (SELECT pg_catalog.date_bin(c.period, pg_catalog.now(), c.anchor) AS slot,
                                    pg_catalog.date_bin(c.period, pg_catalog.now() - p_grace, c.anchor) AS missed) x
         ORDER BY c.job_name;
END
$$;
REVOKE ALL ON FUNCTION keen.maintenance_job_status(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.maintenance_job_status(interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.maintenance_job_status(interval) IS 'Each upkeep job: last success, due, overdue (missed a slot); 42501, 22023.';
