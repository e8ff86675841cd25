-- 0003: identity: the secret behind the actor proof, failed-login bookkeeping, the audit chain
-- heads, the login recorder (an autonomous loopback through dblink) and keen_auth's column grants.
--
--   keen.auth_secrets       readable by keen_auth only: the HMAC key that proves an actor was
--                           set by keen.act_as (see keen.actor_id), and the login recorder's
--                           password and socket (written by `keen-db migrate`/`up`).
--   keen.login_attempts     failed logins per e-mail: 10 within 15 minutes lock the e-mail out.
--   keen.audit_chain_heads  the last sequence number and hash of each audit chain.
--   keen_recorder           LOGIN role whose only right is EXECUTE on keen.record_login_failure:
--                           a failed login raises 28P01, which rolls back everything the login
--                           wrote, so the failure (and its audit row) is written by a second,
--                           autonomous connection that commits on its own.

CREATE EXTENSION IF NOT EXISTS dblink SCHEMA keen_ext;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_recorder') THEN
        CREATE ROLE keen_recorder LOGIN NOINHERIT;
    END IF;
END
$roles$;
GRANT USAGE ON SCHEMA keen TO keen_recorder;

-- dblink opens connections from the server: nobody but keen_auth (the recorder) may use it.
DO $dblink$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT d.objid::regprocedure
          FROM pg_catalog.pg_depend d
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'dblink')
           AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$dblink$;
GRANT EXECUTE ON FUNCTION keen_ext.dblink(text, text, boolean) TO keen_auth;

SET ROLE keen_owner;

CREATE TABLE keen.auth_secrets (
    name        text PRIMARY KEY CHECK (name IN ('actor_hmac_key', 'recorder_password', 'recorder_conninfo')),
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
INSERT INTO keen.auth_secrets (name, value)
VALUES ('actor_hmac_key', pg_catalog.encode(keen_ext.gen_random_bytes(32), 'hex'));

INSERT INTO keen.settings (key, value, description) VALUES
    ('login_max_failures', '10', 'failed logins for one e-mail within the window that lock it out'),
    ('login_failure_window_minutes', '15', 'minutes a failed login counts against its e-mail');

CREATE TABLE keen.login_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         varchar(255) NOT NULL,
    ip_address    inet,
    attempted_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX login_attempts_email_idx ON keen.login_attempts (email, attempted_at);
CREATE INDEX login_attempts_attempted_at_idx ON keen.login_attempts (attempted_at);

CREATE TABLE keen.audit_chain_heads (
    chain_name  text PRIMARY KEY,
    last_seq    bigint NOT NULL CHECK (last_seq > 0),
    last_hash   bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

RESET ROLE;

ALTER TABLE keen.auth_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.auth_secrets FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.login_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.login_attempts FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_chain_heads FORCE ROW LEVEL SECURITY;

REVOKE ALL ON keen.auth_secrets, keen.login_attempts, keen.audit_chain_heads FROM PUBLIC;
-- keen_auth (BYPASSRLS) alone reads the secrets; the other two are kept by keen_owner's functions.
GRANT SELECT ON keen.auth_secrets TO keen_auth;

-- keen_auth checks passwords and API keys for keen_owner's login/authenticate functions:
-- the columns it needs to decide, nothing it could change.
GRANT SELECT (email, password_hash) ON keen.users TO keen_auth;
GRANT SELECT (id, user_id, token_type, token_hash, is_active, revoked_at, expires_at) ON keen.auth_tokens TO keen_auth;
