-- Policies for live connections and the event stream (the parent and every partition: a
-- partition is never readable around its parent's policy).

DROP POLICY IF EXISTS "Connections are visible to their owner and to admins" ON keen.websocket_connections;
CREATE POLICY "Connections are visible to their owner and to admins" ON keen.websocket_connections
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Events are visible to their owner and to admins" ON keen.streaming_events;
CREATE POLICY "Events are visible to their owner and to admins" ON keen.streaming_events
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

-- Every partition (the default one, the monthly ones, those created at run time) gets
-- exactly the parent's policies, ENABLED + FORCED row-level security and no grants:
-- keen_private.secure_event_partition (migration 0006) copies them from the catalog, so the rule above
-- is the only place it is written.
DO $partitions$
DECLARE
    v_partition regclass;
BEGIN
    FOR v_partition IN
        SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'keen.streaming_events'::regclass
         ORDER BY 1
    LOOP
        PERFORM keen_private.secure_event_partition(v_partition);
    END LOOP;
END
$partitions$;

-- Platform-wide rows (no tenant): admins and the maintenance role only.
DROP POLICY IF EXISTS "System metrics are visible to admins and maintenance" ON keen.system_metrics;
CREATE POLICY "System metrics are visible to admins and maintenance" ON keen.system_metrics
    FOR ALL
    USING ((SELECT keen.actor_sees_all_tenants()))
    WITH CHECK ((SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Upkeep jobs are visible to admins and maintenance" ON keen.maintenance_jobs;
CREATE POLICY "Upkeep jobs are visible to admins and maintenance" ON keen.maintenance_jobs
    FOR ALL
    USING ((SELECT keen.actor_sees_all_tenants()))
    WITH CHECK ((SELECT keen.actor_sees_all_tenants()));
