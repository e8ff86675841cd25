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
