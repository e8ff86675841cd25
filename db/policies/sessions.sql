-- Policies for agent sessions and their child tables.

DROP POLICY IF EXISTS "Agent sessions are visible to their owner and to admins" ON keen.agent_sessions;
CREATE POLICY "Agent sessions are visible to their owner and to admins" ON keen.agent_sessions
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Phase transitions are visible to their owner and to admins" ON keen.phase_transitions;
CREATE POLICY "Phase transitions are visible to their owner and to admins" ON keen.phase_transitions
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Tool executions are visible to their owner and to admins" ON keen.tool_executions;
CREATE POLICY "Tool executions are visible to their owner and to admins" ON keen.tool_executions
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Git operations are visible to their owner and to admins" ON keen.git_operations;
CREATE POLICY "Git operations are visible to their owner and to admins" ON keen.git_operations
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));
