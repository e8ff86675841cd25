-- streaming.sql: live connections, the event stream and its retention.
-- The partition machinery began in migration 0006 (which called it before this file existed);
-- keen_private.secure_event_partition and keen_private.may_manage_event_partitions stay defined
-- there (moved to keen_private by 0009), keen.prepare_event_partitions is maintained here.
--
-- Ordering guarantee of the stream: for one session, an event with a higher event_id is never
-- visible (committed) before an event with a lower one. keen.emit_event takes a
-- transaction-level advisory lock keyed on the session BEFORE it draws the id from the
-- sequence, and holds it until its transaction ends; so the next emitter of that session draws
-- its id only after the previous one has committed or rolled back. A listener that has seen
-- id N of a session and asks keen.events_since for ids > N can therefore never skip one that
-- commits later. Across sessions ids are unique and drawn in increasing order, but may commit
-- out of order (a listener follows one session, so that is harmless). An emit that rolls back
-- leaves a gap in the ids that is never filled. The price: emitters of ONE session wait for
-- each other's commit, so an emitting transaction should commit promptly; one transaction
-- emitting into two sessions locks them in the order it emits (emit in a fixed order).

-- keen.prepare_event_partitions: creates the monthly partitions (UTC months) of
-- keen.streaming_events for the month of p_from and the p_months_ahead months after it, each
-- named streaming_events_yYYYYmMM and secured like its parent. Rows of such a month that were
-- caught by the default partition are moved into the new partition first, so creating a
-- partition never fails. Months that already have a partition are skipped. Returns one row
-- per partition created.
-- Who: the maintenance role, an admin actor, or a superuser session (migrations, operators);
-- run it from cron (e.g. daily) so the coming months always exist ahead of time.
-- Raises 42501 for anyone else; 22023 for p_months_ahead outside 0..120 or a NULL or
-- infinite p_from.
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
BEGIN
    IF NOT keen_private.may_manage_event_partitions() THEN
        RAISE EXCEPTION 'only the maintenance role or an admin may prepare event partitions'
            USING ERRCODE = '42501';
    END IF;
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION 'p_months_ahead must be between 0 and 120' USING ERRCODE = '22023';
    END IF;
    IF p_from IS NULL OR NOT pg_catalog.isfinite(p_from) THEN
        RAISE EXCEPTION 'p_from must be a finite timestamp' USING ERRCODE = '22023';
    END IF;

    -- One partition maintainer at a time (prepare and drop take the same lock).
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.streaming_events partitions'));

    v_first := pg_catalog.date_trunc('month', p_from AT TIME ZONE 'UTC');
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
        ALTER TABLE keen.streaming_events_default NO FORCE ROW LEVEL SECURITY;
        EXECUTE pg_catalog.format(
            'CREATE TABLE keen.%I (LIKE keen.streaming_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM keen.streaming_events_default d
                             WHERE d.created_at >= $1 AND d.created_at < $2 RETURNING d.*)
             INSERT INTO keen.%I SELECT * FROM moved', v_name)
            USING range_start, range_end;
        GET DIAGNOSTICS v_moved = ROW_COUNT;
        ALTER TABLE keen.streaming_events_default FORCE ROW LEVEL SECURITY;
        -- Bounds written in UTC, independent of the session's TimeZone and DateStyle.
        EXECUTE pg_catalog.format(
            'ALTER TABLE keen.streaming_events ATTACH PARTITION keen.%I FOR VALUES FROM (%L) TO (%L)',
            v_name,
            pg_catalog.to_char(v_month, 'YYYY-MM-DD') || ' 00:00:00+00',
            pg_catalog.to_char(v_month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
        PERFORM keen_private.secure_event_partition(pg_catalog.format('keen.%I', v_name)::regclass);

        rows_moved := v_moved;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) IS 'Maintenance: creates the monthly event partitions ahead, moving rows out of the default partition; 42501, 22023.';

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
-- actor, optionally following one of the actor's sessions, whose websocket_connections array
-- then lists it. Registering again the id of a closed connection of the actor opens it again.
-- Who: keen_app acting as a user (admins included: the connection is the admin's own, and is
-- flagged admin_connection). The session must be the actor's own: the connection row lives
-- in the session's tenant (its foreign key says so), also for an admin.
-- Raises 28000 with no actor; 22023 for an empty or over-long connection id, a NULL ip, an
-- unknown client type (dashboard, cli, mobile, api) or a NULL event list; P0002 when the
-- session is not one of the actor's; 23505 when the actor already has a live connection with
-- this id.
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
BEGIN
    IF p_connection_id IS NULL OR pg_catalog.length(p_connection_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'connection id must be 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF p_client_ip IS NULL THEN
        RAISE EXCEPTION 'client ip is required' USING ERRCODE = '22023';
    END IF;
    IF p_client_type IS NULL OR p_client_type NOT IN ('dashboard', 'cli', 'mobile', 'api') THEN
        RAISE EXCEPTION 'client type must be dashboard, cli, mobile or api' USING ERRCODE = '22023';
    END IF;
    IF p_subscribed_events IS NULL OR pg_catalog.array_position(p_subscribed_events, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'subscribed events must be a list of event types' USING ERRCODE = '22023';
    END IF;
    IF p_session_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM keen.agent_sessions s WHERE s.id = p_session_id AND s.user_id = v_actor
    ) THEN
        RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
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
                    subscribed_events, admin_connection, can_view_all_sessions)
            VALUES (v_actor, p_session_id, p_connection_id, p_client_ip, p_user_agent, p_client_type,
                    p_subscribed_events, v_admin, v_admin)
            RETURNING * INTO v_row;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'connection % is already live', p_connection_id USING ERRCODE = '23505';
        END;
    ELSE
        UPDATE keen.websocket_connections c
           SET session_id = p_session_id, client_ip = p_client_ip, user_agent = p_user_agent,
               client_type = p_client_type, subscribed_events = p_subscribed_events,
               admin_connection = v_admin, can_view_all_sessions = v_admin,
               connected_at = pg_catalog.now(), last_ping_at = pg_catalog.now(),
               disconnected_at = NULL, connection_status = 'active', updated_at = pg_catalog.now()
         WHERE c.id = v_old.id
        RETURNING * INTO v_row;
    END IF;

    IF p_session_id IS NOT NULL THEN
        UPDATE keen.agent_sessions s
           SET websocket_connections = pg_catalog.array_append(s.websocket_connections, p_connection_id::text),
               updated_at = pg_catalog.now()
         WHERE s.id = p_session_id
           AND NOT (p_connection_id = ANY (s.websocket_connections));
    END IF;
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) TO keen_app;
COMMENT ON FUNCTION keen.register_connection(text, inet, text, uuid, text, text[]) IS 'Records a live connection of the actor (and lists it on its session); 28000, 22023, P0002, 23505.';

-- keen.ping_connection: the actor's live connection is still there (last_ping_at = now).
-- Who: keen_app acting as the connection's owner (an admin too pings only its own).
-- Raises 28000 with no actor; P0002 when the actor has no live connection with this id
-- (another user's, a closed or reaped one: register it again).
CREATE OR REPLACE FUNCTION keen.ping_connection(p_connection_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
BEGIN
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
-- Raises 28000 with no actor; P0002 when the actor has no connection with this id.
CREATE OR REPLACE FUNCTION keen.close_connection(p_connection_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_row keen.websocket_connections;
BEGIN
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
    IF NOT (keen.session_is_maintenance() OR keen.actor_is_admin()) THEN
        RAISE EXCEPTION 'only the maintenance role or an admin may reap connections' USING ERRCODE = '42501';
    END IF;
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

-- keen.emit_event: appends an event to a session's stream and returns its id, then NOTIFYs
-- channel keen_events with {event_id, session_id, user_id, event_type} only: the data never
-- travels in a notification (any role that can LISTEN could read it); subscribers fetch it
-- through keen.events_since, under row-level security. Emits of one session are serialized
-- (see the ordering guarantee at the top of this file); the notification is delivered when
-- the emitting transaction commits, and not at all if it rolls back.
-- Who: keen_app acting as the session's owner, or an admin (any session; the event belongs to
-- the session's owner); the maintenance role.
-- Raises P0002 when the session does not exist or is another user's; 22023 for a NULL
-- session, an empty or over-long (50) event type, NULL data, or a source other than agent,
-- git, tool, system.
CREATE OR REPLACE FUNCTION keen.emit_event(p_session_id uuid, p_event_type text,
                                           p_event_data jsonb DEFAULT '{}',
                                           p_event_source text DEFAULT 'agent')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_owner uuid;
    v_event_id bigint;
BEGIN
    IF p_session_id IS NULL THEN
        RAISE EXCEPTION 'session id is required' USING ERRCODE = '22023';
    END IF;
    IF p_event_type IS NULL OR pg_catalog.length(p_event_type) NOT BETWEEN 1 AND 50 THEN
        RAISE EXCEPTION 'event type must be 1 to 50 characters' USING ERRCODE = '22023';
    END IF;
    IF p_event_data IS NULL THEN
        RAISE EXCEPTION 'event data must not be NULL (use {})' USING ERRCODE = '22023';
    END IF;
    IF p_event_source IS NULL OR p_event_source NOT IN ('agent', 'git', 'tool', 'system') THEN
        RAISE EXCEPTION 'event source must be agent, git, tool or system' USING ERRCODE = '22023';
    END IF;

    -- Under RLS: only the actor's own sessions (an admin's or maintenance: all) are found.
    SELECT s.user_id INTO v_owner FROM keen.agent_sessions s WHERE s.id = p_session_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
    END IF;

    -- Serialize the emitters of this session BEFORE drawing the id (held to commit), so that
    -- ids of one session become visible in increasing order.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.emit_event'),
                                             pg_catalog.hashtext(p_session_id::text));
    v_event_id := pg_catalog.nextval('keen.streaming_events_event_id_seq');

    INSERT INTO keen.streaming_events (event_id, session_id, user_id, event_type, event_data, event_source)
    VALUES (v_event_id, p_session_id, v_owner, p_event_type, p_event_data, p_event_source);

    PERFORM pg_catalog.pg_notify('keen_events', pg_catalog.json_build_object(
        'event_id', v_event_id,
        'session_id', p_session_id,
        'user_id', v_owner,
        'event_type', p_event_type)::text);
    RETURN v_event_id;
END
$$;
REVOKE ALL ON FUNCTION keen.emit_event(uuid, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.emit_event(uuid, text, jsonb, text) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.emit_event(uuid, text, jsonb, text) IS 'Stores a session event and NOTIFYs keen_events with ids only; P0002, 22023.';

-- keen.events_since: the events of a session after p_after_event_id, oldest first, at most
-- p_limit; what a listener reads after each notification and after a reconnect.
-- Who: keen_app acting as the session's owner or an admin; the maintenance role.
-- Raises P0002 when the session does not exist or is another user's; 22023 for a NULL
-- session, a NULL or negative p_after_event_id, or p_limit outside 1..10000.
CREATE OR REPLACE FUNCTION keen.events_since(p_session_id uuid, p_after_event_id bigint DEFAULT 0,
                                             p_limit integer DEFAULT 1000)
RETURNS TABLE (event_id bigint, session_id uuid, event_type text, event_data jsonb,
               event_source text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
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
-- once keen.prepare_event_partitions(0, <that month>) has given them a partition). Returns the
-- partitions dropped.
-- Who: the maintenance role, an admin actor, or a superuser session.
-- Raises 42501 for anyone else; 22023 for a NULL or negative p_keep.
CREATE OR REPLACE FUNCTION keen.drop_old_event_partitions(p_keep interval)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_partition record;
BEGIN
    IF NOT keen_private.may_manage_event_partitions() THEN
        RAISE EXCEPTION 'only the maintenance role or an admin may drop event partitions'
            USING ERRCODE = '42501';
    END IF;
    IF p_keep IS NULL OR p_keep < interval '0' THEN
        RAISE EXCEPTION 'p_keep must be a non-negative interval' USING ERRCODE = '22023';
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
         ORDER BY m.month_start
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE keen.%I', v_partition.relname);
        partition_name := v_partition.relname;
        range_start := v_partition.month_start;
        range_end := v_partition.month_end;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION keen.drop_old_event_partitions(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.drop_old_event_partitions(interval) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.drop_old_event_partitions(interval) IS 'Retention: drops whole monthly event partitions older than p_keep; 42501, 22023.';
