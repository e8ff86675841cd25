-- Policies for identity tables: users, auth_tokens, audit_logs, and the bookkeeping tables of
-- db/functions/users.sql (login_attempts, audit_chain_heads, auth_secrets).
-- (SELECT keen.actor_id()) is wrapped so the planner evaluates it once per query. Admin status
-- comes from keen.actor_is_admin(), which reads keen.users only: no setting takes part.

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

-- keen_private.write_audit (owned by keen_owner) appends; keen_app holds no INSERT privilege at all, and
-- no policy allows UPDATE or DELETE (a trigger refuses them for superusers too).
DROP POLICY IF EXISTS "Audit entries are appended by keen functions in the actor's name" ON keen.audit_logs;
CREATE POLICY "Audit entries are appended by keen functions in the actor's name" ON keen.audit_logs
    FOR INSERT TO keen_owner
    WITH CHECK (true);  -- the linker copies entries whose actor keen.audit_pending's policy checked

DROP POLICY IF EXISTS "Pending audit entries are recorded in the actor's name and linked at commit" ON keen.audit_pending;
CREATE POLICY "Pending audit entries are recorded in the actor's name and linked at commit" ON keen.audit_pending
    FOR ALL TO keen_owner
    USING (true)
    WITH CHECK (actor_id IS NOT DISTINCT FROM (SELECT keen.actor_id()));

-- Bookkeeping without a tenant: only keen_owner's functions touch it (keen_app has no grant).
DROP POLICY IF EXISTS "Login attempts are kept by keen functions only" ON keen.login_attempts;
CREATE POLICY "Login attempts are kept by keen functions only" ON keen.login_attempts
    FOR ALL TO keen_owner
    USING (true)
    WITH CHECK (true);

DROP POLICY IF EXISTS "Audit chain heads are kept by keen functions only" ON keen.audit_chain_heads;
CREATE POLICY "Audit chain heads are kept by keen functions only" ON keen.audit_chain_heads
    FOR ALL TO keen_owner
    USING (true)
    WITH CHECK (true);

-- keen_auth (BYPASSRLS, SELECT only) reads the secrets; through the policies nobody does.
DROP POLICY IF EXISTS "Secrets are readable by keen_auth alone" ON keen.auth_secrets;
CREATE POLICY "Secrets are readable by keen_auth alone" ON keen.auth_secrets
    FOR ALL
    USING (false)
    WITH CHECK (false);

-- Identity completed (0010): each row is its user's; admins see and revoke any login session.
DROP POLICY IF EXISTS "Login sessions are visible to their owner and to admins" ON keen.login_sessions;
CREATE POLICY "Login sessions are visible to their owner and to admins" ON keen.login_sessions
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_is_admin()));

DROP POLICY IF EXISTS "Refresh tokens are kept for their owner and admins" ON keen.login_refresh_tokens;
CREATE POLICY "Refresh tokens are kept for their owner and admins" ON keen.login_refresh_tokens
    FOR ALL TO keen_owner
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_is_admin()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_is_admin()));

DROP POLICY IF EXISTS "Account tokens are kept for their owner" ON keen.account_tokens;
CREATE POLICY "Account tokens are kept for their owner" ON keen.account_tokens
    FOR ALL TO keen_owner
    USING (user_id = (SELECT keen.actor_id()))
    WITH CHECK (user_id = (SELECT keen.actor_id()));

DROP POLICY IF EXISTS "Second factors are kept for their owner" ON keen.totp_factors;
CREATE POLICY "Second factors are kept for their owner" ON keen.totp_factors
    FOR ALL TO keen_owner
    USING (user_id = (SELECT keen.actor_id()))
    WITH CHECK (user_id = (SELECT keen.actor_id()));

DROP POLICY IF EXISTS "Recovery codes are kept for their owner" ON keen.recovery_codes;
CREATE POLICY "Recovery codes are kept for their owner" ON keen.recovery_codes
    FOR ALL TO keen_owner
    USING (user_id = (SELECT keen.actor_id()))
    WITH CHECK (user_id = (SELECT keen.actor_id()));

DROP POLICY IF EXISTS "API key request slots are kept for the key's owner" ON keen.api_key_request_slots;
CREATE POLICY "API key request slots are kept for the key's owner" ON keen.api_key_request_slots
    FOR ALL TO keen_owner
    USING (user_id = (SELECT keen.actor_id()))
    WITH CHECK (user_id = (SELECT keen.actor_id()));
