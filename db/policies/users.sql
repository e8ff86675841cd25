-- Policies for identity tables: users, auth_tokens, audit_logs.
-- (SELECT keen.actor_id()) is wrapped so the planner evaluates it once per query.

DROP POLICY IF EXISTS "Users are visible to themselves and to admins" ON keen.users;
CREATE POLICY "Users are visible to themselves and to admins" ON keen.users
    FOR ALL
    USING (id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "API tokens are visible to their owner and to admins" ON keen.auth_tokens;
CREATE POLICY "API tokens are visible to their owner and to admins" ON keen.auth_tokens
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Audit logs are visible to admins only" ON keen.audit_logs;
CREATE POLICY "Audit logs are visible to admins only" ON keen.audit_logs
    FOR SELECT
    USING ((SELECT keen.actor_sees_all_tenants()));
