-- Rolls 0010 back: the login sessions, tokens, second factors and request slots go (with their
-- rows); audit entries are linked as they are written again.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

ALTER ROLE keen_app CONNECTION LIMIT -1;
ALTER ROLE keen_maintenance CONNECTION LIMIT -1;
ALTER ROLE keen_recorder CONNECTION LIMIT -1;
-- Only the role settings 0010 set (another migration's or an operator's stay).
ALTER ROLE keen_app RESET statement_timeout;
ALTER ROLE keen_app RESET idle_in_transaction_session_timeout;
ALTER ROLE keen_app RESET lock_timeout;
ALTER ROLE keen_maintenance RESET statement_timeout;
ALTER ROLE keen_maintenance RESET idle_in_transaction_session_timeout;
ALTER ROLE keen_maintenance RESET lock_timeout;
ALTER ROLE keen_recorder RESET statement_timeout;
ALTER ROLE keen_recorder RESET idle_in_transaction_session_timeout;
ALTER ROLE keen_recorder RESET lock_timeout;

REVOKE SELECT (scopes, rate_limit_per_hour, bypass_limits) ON keen.auth_tokens FROM keen_auth;

-- Repeatable functions whose arguments or results are these tables' row types go first (the
-- next `keen-db migrate` of the release that has them re-creates them from db/functions).
DO $drop$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT DISTINCT d.objid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_type t ON t.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_type'::regclass
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass
           AND t.typrelid IN (SELECT c.oid FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = 'keen'::regnamespace
                                 AND c.relname IN ('audit_pending', 'api_key_request_slots', 'recovery_codes',
                                                   'totp_factors', 'account_tokens', 'login_refresh_tokens',
                                                   'login_sessions'))
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', v_fn);
    END LOOP;
END
$drop$;

DROP TABLE IF EXISTS keen.audit_pending, keen.api_key_request_slots, keen.recovery_codes, keen.totp_factors, keen.account_tokens,
                     keen.login_refresh_tokens, keen.login_sessions;
ALTER TABLE keen.login_attempts DROP COLUMN IF EXISTS attempt_id;
ALTER TABLE keen.login_attempts DROP COLUMN IF EXISTS succeeded;
ALTER TABLE keen.login_attempts DROP COLUMN IF EXISTS purpose;
DELETE FROM keen.settings WHERE key IN ('login_max_failures_per_source', 'login_max_failures_per_email',
                                        'second_factor_max_failures', 'access_token_minutes', 'refresh_token_days');
DELETE FROM keen.auth_secrets WHERE name IN ('jwt_hmac_key', 'totp_encryption_key');
ALTER TABLE keen.auth_secrets DROP CONSTRAINT IF EXISTS auth_secrets_name_check;
ALTER TABLE keen.auth_secrets ADD CONSTRAINT auth_secrets_name_check
    CHECK (name IN ('actor_hmac_key', 'recorder_password', 'recorder_conninfo')) NOT VALID;
