-- Undoes 0003. The functions of db/functions/users.sql that use these tables are re-created by
-- the next deploy; keen_recorder is dropped only when no other database still uses it.
REVOKE SELECT (email, password_hash) ON keen.users FROM keen_auth;
REVOKE SELECT (id, user_id, token_type, token_hash, is_active, revoked_at, expires_at) ON keen.auth_tokens FROM keen_auth;
DELETE FROM keen.settings WHERE key IN ('login_max_failures', 'login_failure_window_minutes');

DROP TABLE IF EXISTS keen.audit_chain_heads;
DROP TABLE IF EXISTS keen.login_attempts;
DROP TABLE IF EXISTS keen.auth_secrets;

DROP EXTENSION IF EXISTS dblink;

DROP OWNED BY keen_recorder;
DO $roles$
BEGIN
    DROP ROLE IF EXISTS keen_recorder;
EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
    RAISE NOTICE 'role keen_recorder kept: other databases still use it';
END
$roles$;
