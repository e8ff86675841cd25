-- Policies for the rollups: per-user stats to their owner and admins; platform rows to admins.

DROP POLICY IF EXISTS "Usage stats are visible to their owner and to admins" ON keen.daily_usage_stats;
CREATE POLICY "Usage stats are visible to their owner and to admins" ON keen.daily_usage_stats
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK ((SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Platform analytics are visible to admins only" ON keen.daily_analytics;
CREATE POLICY "Platform analytics are visible to admins only" ON keen.daily_analytics
    FOR ALL
    USING ((SELECT keen.actor_sees_all_tenants()))
    WITH CHECK ((SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Model usage rollups are visible to admins only" ON keen.daily_model_usage;
CREATE POLICY "Model usage rollups are visible to admins only" ON keen.daily_model_usage
    FOR ALL
    USING ((SELECT keen.actor_sees_all_tenants()))
    WITH CHECK ((SELECT keen.actor_sees_all_tenants()));
