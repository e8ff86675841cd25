-- 0010: identity completed and hardened.
--   keen.login_sessions          sign-ins of people (dashboard, CLI): one row per login session.
--   keen.login_refresh_tokens    every refresh token ever issued (SHA-256 only); a retired one
--                                presented again is a stolen copy and ends its login session.
--   keen.account_tokens          e-mail verification and password reset tokens (SHA-256 only).
--   keen.totp_factors            a user's TOTP secret, encrypted with a key only keen_auth reads.
--   keen.recovery_codes          ten single-use recovery codes per user, SHA-256 only.
--   keen.api_key_request_slots   per API key, a ring of rate_limit_per_hour request times: the
--                                request `limit` calls back must be an hour old (exact rolling hour).
--   keen.login_attempts gains the attempt's outcome, so that a failure is counted before the
--                                password is even checked (fail closed) and a success clears it
--                                (and makes its source known for the e-mail), and its purpose:
--                                a sign-in, a change_password check or a second-factor code,
--                                each counted on its own.
--   keen.audit_pending           audit entries of an uncommitted transaction: they are linked into
--                                the chain at commit by a deferred trigger, so no caller holds the
--                                chain's lock while it idles.
--   Login roles get statement, idle-in-transaction and lock timeouts and connection limits.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

-- New secrets: the JWT signing key and the TOTP encryption key (keen_auth reads them alone).
-- The check is widened (two more names), not removed: it is dropped and added again at once.
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.auth_secrets DROP CONSTRAINT IF EXISTS auth_secrets_name_check;
ALTER TABLE keen.auth_secrets ADD CONSTRAINT auth_secrets_name_check
    CHECK (name IN ('actor_hmac_key', 'recorder_password', 'recorder_conninfo', 'jwt_hmac_key', 'totp_encryption_key'))
    NOT VALID;  -- a handful of rows, all valid: the check holds for every new one
INSERT INTO keen.auth_secrets (name, value)
VALUES ('jwt_hmac_key', pg_catalog.encode(keen_ext.gen_random_bytes(32), 'hex')),
       ('totp_encryption_key', pg_catalog.encode(keen_ext.gen_random_bytes(32), 'hex'))
ON CONFLICT (name) DO NOTHING;

INSERT INTO keen.settings (key, value, description) VALUES
    ('login_max_failures_per_source', '30', 'failed logins from one source (any e-mail) within the window that refuse the source'),
    ('login_max_failures_per_email', '100', 'failed logins of one e-mail from all sources within the window that refuse it from every source it has not signed in from in the window'),
    ('second_factor_max_failures', '10', 'wrong second-factor codes of one user within the window after which every code is refused'),
    ('access_token_minutes', '15', 'minutes an access token is valid'),
    ('refresh_token_days', '30', 'days a refresh token (and its login session) lives without use')
ON CONFLICT (key) DO NOTHING;

CREATE TABLE keen.login_sessions (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES keen.users (id),
    aal                 text NOT NULL CHECK (aal IN ('aal1', 'aal2')),
    ip                  inet,
    user_agent          text CHECK (pg_catalog.octet_length(user_agent) <= 512),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    refresh_expires_at  timestamptz NOT NULL,
    revoked_at          timestamptz,
    revoked_reason      text,
    UNIQUE (user_id, id)
);
CREATE INDEX login_sessions_user_idx ON keen.login_sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE keen.login_refresh_tokens (
    token_hash        text PRIMARY KEY,
    user_id           uuid NOT NULL,
    login_session_id  uuid NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at        timestamptz NOT NULL,
    retired_at        timestamptz,
    FOREIGN KEY (user_id, login_session_id) REFERENCES keen.login_sessions (user_id, id)
);
CREATE INDEX login_refresh_tokens_session_idx ON keen.login_refresh_tokens (login_session_id);

CREATE TABLE keen.account_tokens (
    token_hash  text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES keen.users (id),
    purpose     text NOT NULL CHECK (purpose IN ('email_verification', 'password_reset')),
    email       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX account_tokens_user_idx ON keen.account_tokens (user_id, purpose);

CREATE TABLE keen.totp_factors (
    user_id           uuid PRIMARY KEY REFERENCES keen.users (id),
    secret_encrypted  bytea NOT NULL,
    confirmed_at      timestamptz,
    last_used_step    bigint,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE keen.recovery_codes (
    user_id    uuid NOT NULL REFERENCES keen.users (id),
    code_hash  text NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE keen.api_key_request_slots (
    token_id      uuid NOT NULL,
    user_id       uuid NOT NULL,
    slot          bigint NOT NULL CHECK (slot >= 0),
    requested_at  timestamptz NOT NULL,
    PRIMARY KEY (token_id, slot),
    FOREIGN KEY (user_id, token_id) REFERENCES keen.auth_tokens (user_id, id)
);

ALTER TABLE keen.login_attempts ADD COLUMN IF NOT EXISTS attempt_id uuid;
ALTER TABLE keen.login_attempts ADD COLUMN IF NOT EXISTS succeeded boolean NOT NULL DEFAULT false;
ALTER TABLE keen.login_attempts ADD COLUMN IF NOT EXISTS purpose text NOT NULL DEFAULT 'sign_in';
ALTER TABLE keen.login_attempts ADD CONSTRAINT login_attempts_purpose_check
    CHECK (purpose IN ('sign_in', 'change_password', 'second_factor'))
    NOT VALID;  -- every existing row has the default 'sign_in': the check holds for every new one

-- Audit entries wait here until their transaction commits; a deferred constraint trigger then
-- links them into keen.audit_logs (keen_private.audit_link) and deletes them from here.
CREATE TABLE keen.audit_pending (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type       text NOT NULL,
    event_subtype    text,
    user_id          uuid,
    actor_id         uuid,
    session_id       uuid,
    ip_address       inet,
    event_data       jsonb NOT NULL DEFAULT '{}',
    risk_level       text NOT NULL,
    is_admin_action  boolean NOT NULL,
    created_at       timestamptz NOT NULL
);

ALTER TABLE keen.login_sessions OWNER TO keen_owner;
ALTER TABLE keen.login_refresh_tokens OWNER TO keen_owner;
ALTER TABLE keen.account_tokens OWNER TO keen_owner;
ALTER TABLE keen.totp_factors OWNER TO keen_owner;
ALTER TABLE keen.recovery_codes OWNER TO keen_owner;
ALTER TABLE keen.api_key_request_slots OWNER TO keen_owner;
ALTER TABLE keen.audit_pending OWNER TO keen_owner;

ALTER TABLE keen.login_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.login_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.login_refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.login_refresh_tokens FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.account_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.account_tokens FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.totp_factors ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.totp_factors FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.recovery_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.recovery_codes FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.api_key_request_slots ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.api_key_request_slots FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_pending FORCE ROW LEVEL SECURITY;

REVOKE ALL ON keen.login_sessions, keen.login_refresh_tokens, keen.account_tokens, keen.totp_factors,
              keen.recovery_codes, keen.api_key_request_slots, keen.audit_pending FROM PUBLIC;
-- keen_app reads its own login sessions (under RLS); token hashes, secrets and codes: nobody.
GRANT SELECT ON keen.login_sessions TO keen_app, keen_maintenance;
-- keen_auth decides who holds a refresh token or a login session with no actor yet.
GRANT SELECT ON keen.login_refresh_tokens TO keen_auth;
GRANT SELECT (id, user_id, revoked_at, refresh_expires_at, aal) ON keen.login_sessions TO keen_auth;
GRANT SELECT (token_hash, user_id, purpose) ON keen.account_tokens TO keen_auth;
GRANT SELECT (scopes, rate_limit_per_hour, bypass_limits) ON keen.auth_tokens TO keen_auth;

-- Every role that logs in is bounded (cluster-wide role settings; the client may lower them).
-- max_connections is 200 on the embedded cluster: 150 + 20 + 10 leaves 17 for operators
-- above the 3 superuser slots; keen_recorder's 10 are its own (it records failed logins).
ALTER ROLE keen_app CONNECTION LIMIT 150;
ALTER ROLE keen_maintenance CONNECTION LIMIT 20;
ALTER ROLE keen_recorder CONNECTION LIMIT 10;
ALTER ROLE keen_app SET statement_timeout = '30s';
ALTER ROLE keen_app SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE keen_app SET lock_timeout = '5s';
ALTER ROLE keen_maintenance SET statement_timeout = '10min';
ALTER ROLE keen_maintenance SET idle_in_transaction_session_timeout = '5min';
ALTER ROLE keen_maintenance SET lock_timeout = '10s';
ALTER ROLE keen_recorder SET statement_timeout = '10s';
ALTER ROLE keen_recorder SET idle_in_transaction_session_timeout = '10s';
ALTER ROLE keen_recorder SET lock_timeout = '2s';
