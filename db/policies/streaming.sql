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

-- Every partition gets the same rule as its parent.
DO $partitions$
DECLARE
    v_partition regclass;
BEGIN
    FOR v_partition IN
        SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'keen.streaming_events'::regclass
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', v_partition);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', v_partition);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS "Events are visible to their owner and to admins" ON %s', v_partition);
        EXECUTE pg_catalog.format($p$CREATE POLICY "Events are visible to their owner and to admins" ON %s
            FOR ALL
            USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
            WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))$p$, v_partition);
    END LOOP;
END
$partitions$;
