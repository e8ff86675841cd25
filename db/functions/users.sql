-- users.sql: registration, login, API keys, profile, suspension, and the audit trail.
--
-- Who reads what (the rules are in docs/users.md):
--   * keen_owner's SECURITY DEFINER functions read and write under the FORCED policies, as the
--     actor. login and authenticate_api_key run before there is an actor: they ask two small
--     keen_auth functions (BYPASSRLS, column grants on users.email/password_hash and on the
--     token columns only) "whose password/key is this?", then make that user the actor with
--     keen_private.set_actor for their own writes.
--   * A failed login raises 28P01, which rolls back whatever the login wrote. The failure and
--     its audit entry are therefore written by keen.record_login_failure over a loopback dblink
--     connection as keen_recorder, which commits on its own (an autonomous transaction).
--   * keen_private.write_audit records an entry that keen_private.audit_link links into the hash
--     chain when the transaction commits (one committer at a time, never a caller that idles).
--   * Every sign-in attempt is counted by the recorder BEFORE its password is checked (fail
--     closed: an attempt that cannot be counted is refused); a success un-counts it.
--
--   * A function that makes another user the actor for a moment (register_user, login,
--     verify_email, reset_password, request_password_reset) saves the caller's actor and its
--     scopes (keen.actor_id(), keen_private.saved_scopes()) and puts both back with
--     keen_private.restore_actor: a scoped API key's actor never comes back unscoped.
--
-- Advisory locks (two-int form, class id first): 7301 = an audit chain (at commit only),
-- 7302 = the recorder's count of one e-mail's attempts (inside the recorder's own short
-- transaction only).

-- ---------------------------------------------------------------------------------------------
-- Small shared checks
-- ---------------------------------------------------------------------------------------------

-- The actor checks moved to core.sql (keen_private.require_actor, keen_private.require_admin).
DROP FUNCTION IF EXISTS keen.users_require_actor();
DROP FUNCTION IF EXISTS keen.users_require_admin();

-- keen_private.users_check_password: the password rule (8 characters at least, 72 bytes at most, the
-- most bcrypt reads). Who: keen_owner's functions. Raises 22023.
CREATE OR REPLACE FUNCTION keen_private.users_check_password(p_password text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    IF p_password IS NULL OR pg_catalog.length(p_password) < 8 OR pg_catalog.octet_length(p_password) > 72 THEN
        RAISE EXCEPTION 'invalid password: 8 characters at least, 72 bytes at most' USING ERRCODE = '22023';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.users_check_password(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.users_check_password(text) IS 'Internal: 22023 unless 8 characters <= password <= 72 bytes.';

-- ---------------------------------------------------------------------------------------------
-- Audit
-- ---------------------------------------------------------------------------------------------

-- keen_private.audit_row_hash: SHA-256 over every column of an audit entry but id and row_hash, in a
-- canonical form (a JSON array; the time as epoch seconds, so no TimeZone setting changes it).
-- prev_hash is inside, which is what chains the entries.
-- Who: write_audit and verify_audit_chain (keen_owner). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.audit_row_hash(p_row keen.audit_logs)
RETURNS bytea
LANGUAGE sql STABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
    SELECT keen_ext.digest(pg_catalog.jsonb_build_array(
               p_row.chain_name, p_row.chain_seq, pg_catalog.encode(p_row.prev_hash, 'hex'),
               p_row.event_type, p_row.event_subtype, p_row.user_id, p_row.actor_id, p_row.session_id,
               p_row.request_id, p_row.ip_address, p_row.user_agent, p_row.event_data, p_row.risk_level,
               p_row.is_admin_action, EXTRACT(EPOCH FROM p_row.created_at)::text)::text,
           'sha256')
$$;
REVOKE ALL ON FUNCTION keen_private.audit_row_hash(keen.audit_logs) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.audit_row_hash(keen.audit_logs) IS 'Internal: the SHA-256 that chains an audit entry.';

-- keen_private.write_audit: records one audit entry for the chain 'main', in the actor's name
-- (actor_id = keen.actor_id(), is_admin_action = keen.actor_is_admin()). The entry waits in
-- keen.audit_pending until the transaction commits; keen_private.audit_link then links it into
-- the chain. So no lock is taken here: a caller that audits something and then idles holds no
-- lock any other caller needs (the attack of issue 16), and an entry whose transaction rolls
-- back never existed.
-- Who: keen_owner's SECURITY DEFINER functions (credits, sessions, ...); never keen_app.
-- Raises 22023 for an invalid event type/subtype (lower-case words), risk level or event data.
CREATE OR REPLACE FUNCTION keen_private.write_audit(p_event_type text, p_event_subtype text, p_user_id uuid,
                                            p_event_data jsonb DEFAULT '{}', p_risk_level text DEFAULT 'low',
                                            p_ip inet DEFAULT NULL, p_session_id uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF p_event_type IS NULL OR p_event_type !~ '^[a-z][a-z0-9_.]{0,29}$' THEN
        RAISE EXCEPTION 'invalid audit event type %', p_event_type USING ERRCODE = '22023';
    END IF;
    IF p_event_subtype IS NOT NULL AND p_event_subtype !~ '^[a-z][a-z0-9_.]{0,49}$' THEN
        RAISE EXCEPTION 'invalid audit event subtype %', p_event_subtype USING ERRCODE = '22023';
    END IF;
    IF p_risk_level IS NULL OR p_risk_level NOT IN ('low', 'medium', 'high', 'critical') THEN
        RAISE EXCEPTION 'invalid risk level %', p_risk_level USING ERRCODE = '22023';
    END IF;
    IF p_event_data IS NOT NULL AND pg_catalog.jsonb_typeof(p_event_data) <> 'object' THEN
        RAISE EXCEPTION 'audit event data must be a JSON object' USING ERRCODE = '22023';
    END IF;
    INSERT INTO keen.audit_pending (event_type, event_subtype, user_id, actor_id, session_id, ip_address,
                                    event_data, risk_level, is_admin_action, created_at)
    VALUES (p_event_type, p_event_subtype, p_user_id, keen.actor_id(), p_session_id, p_ip,
            COALESCE(p_event_data, '{}'), p_risk_level, keen.actor_is_admin(), pg_catalog.clock_timestamp());
END
$$;
REVOKE ALL ON FUNCTION keen_private.write_audit(text, text, uuid, jsonb, text, inet, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.write_audit(text, text, uuid, jsonb, text, inet, uuid) IS
    'Records a hash-chained audit entry (linked at commit) in the actor''s name; for keen''s own functions.';

-- keen_private.audit_link: the deferred constraint trigger on keen.audit_pending: at COMMIT it
-- links each pending entry into keen.audit_logs and removes it from audit_pending. The link is
-- serialized by an advisory lock on the chain, taken here, at commit, and released when the
-- commit ends: concurrent committers take turns, each reads the head (sequence, hash) its
-- predecessor committed, the sequence has no gaps, and no entry links to one that rolled back.
-- The wait is bounded (lock_timeout 5 s: the COMMIT then fails and the transaction is rolled
-- back). A caller that runs SET CONSTRAINTS ALL IMMEDIATE links at once and holds the chain until
-- it ends. The role's idle_in_transaction_session_timeout does not bound that (a keen_app
-- session may change its own timeouts); the watchdog does: keen.reap_idle_transactions (in
-- streaming.sql's job catalog) terminates login-role backends idle in a transaction over 60 s
-- (docs/security.md).
-- Who: the trigger. Raises 55P03 when the chain's lock is not granted in time.
CREATE OR REPLACE FUNCTION keen_private.audit_link()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    v_row keen.audit_logs;
    v_head keen.audit_chain_heads;
BEGIN
    v_row.chain_name := 'main';
    PERFORM pg_catalog.pg_advisory_xact_lock(7301, pg_catalog.hashtext(v_row.chain_name));
    SELECT * INTO v_head FROM keen.audit_chain_heads h WHERE h.chain_name = v_row.chain_name;

    v_row.chain_seq := COALESCE(v_head.last_seq, 0) + 1;
    v_row.prev_hash := v_head.last_hash;
    v_row.event_type := NEW.event_type;
    v_row.event_subtype := NEW.event_subtype;
    v_row.user_id := NEW.user_id;
    v_row.actor_id := NEW.actor_id;
    v_row.session_id := NEW.session_id;
    v_row.ip_address := NEW.ip_address;
    v_row.event_data := NEW.event_data;
    v_row.risk_level := NEW.risk_level;
    v_row.is_admin_action := NEW.is_admin_action;
    v_row.created_at := NEW.created_at;
    v_row.row_hash := keen_private.audit_row_hash(v_row);

    INSERT INTO keen.audit_logs (chain_name, chain_seq, prev_hash, row_hash, event_type, event_subtype,
                                 user_id, actor_id, session_id, ip_address, event_data, risk_level,
                                 is_admin_action, created_at)
    VALUES (v_row.chain_name, v_row.chain_seq, v_row.prev_hash, v_row.row_hash, v_row.event_type,
            v_row.event_subtype, v_row.user_id, v_row.actor_id, v_row.session_id, v_row.ip_address,
            v_row.event_data, v_row.risk_level, v_row.is_admin_action, v_row.created_at);
    INSERT INTO keen.audit_chain_heads AS h (chain_name, last_seq, last_hash)
    VALUES (v_row.chain_name, v_row.chain_seq, v_row.row_hash)
    ON CONFLICT (chain_name) DO UPDATE
       SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash, updated_at = pg_catalog.now();
    DELETE FROM keen.audit_pending p WHERE p.id = NEW.id;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION keen_private.audit_link() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.audit_link() IS 'Trigger (deferred to commit): links pending audit entries into the chain.';
DROP TRIGGER IF EXISTS audit_link ON keen.audit_pending;
CREATE CONSTRAINT TRIGGER audit_link
    AFTER INSERT ON keen.audit_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION keen_private.audit_link();

-- keen_private.audit_logs_append_only: the trigger that refuses UPDATE, DELETE and TRUNCATE on
-- keen.audit_logs for every role, superusers included (statement level, so it fires even when
-- no row matches). Raises 42501.
CREATE OR REPLACE FUNCTION keen_private.audit_logs_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'keen.audit_logs is append-only: % refused', TG_OP USING ERRCODE = '42501';
END
$$;
REVOKE ALL ON FUNCTION keen_private.audit_logs_append_only() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.audit_logs_append_only() IS 'Trigger: keen.audit_logs accepts INSERT only.';
DROP TRIGGER IF EXISTS audit_logs_append_only ON keen.audit_logs;
CREATE TRIGGER audit_logs_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON keen.audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION keen_private.audit_logs_append_only();

-- keen.verify_audit_chain: walks every chain in sequence order and returns its first broken
-- link, if any: a sequence gap, a prev_hash that is not the previous entry's row_hash, a
-- row_hash that does not match the entry's content, or a chain head that disagrees with the
-- last entry (entries deleted at the end, or the head itself changed). No row: intact.
-- STABLE: the whole walk reads one snapshot, in which an entry and the head it moved are
-- visible together or not at all, so writers committing meanwhile cause no false alarm.
-- Who: an admin actor or the maintenance role. Raises 42501 otherwise.
CREATE OR REPLACE FUNCTION keen.verify_audit_chain()
RETURNS TABLE (chain_name text, chain_seq bigint, audit_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_chain text;
    v_head_seq bigint;
    v_head_hash bytea;
    v_max_seq bigint;
    v_row keen.audit_logs;
    v_expected bigint;
    v_prev bytea;
    v_problem text;
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may verify the audit chain');
    FOR v_chain IN
        SELECT a.chain_name FROM keen.audit_logs a
        UNION
        SELECT h.chain_name FROM keen.audit_chain_heads h
        ORDER BY 1
    LOOP
        SELECT h.last_seq, h.last_hash,
               (SELECT pg_catalog.max(a.chain_seq) FROM keen.audit_logs a WHERE a.chain_name = v_chain)
          INTO v_head_seq, v_head_hash, v_max_seq
          FROM (SELECT 1) AS one
          LEFT JOIN keen.audit_chain_heads h ON h.chain_name = v_chain;

        v_expected := 1;
        v_prev := NULL;
        v_problem := NULL;
        FOR v_row IN
            SELECT * FROM keen.audit_logs a
             WHERE a.chain_name = v_chain
             ORDER BY a.chain_seq
        LOOP
            IF v_row.chain_seq <> v_expected THEN
                v_problem := pg_catalog.format('entries %s to %s are missing', v_expected, v_row.chain_seq - 1);
            ELSIF v_row.prev_hash IS DISTINCT FROM v_prev THEN
                v_problem := 'prev_hash is not the row_hash of the previous entry';
            ELSIF v_row.row_hash IS DISTINCT FROM keen_private.audit_row_hash(v_row) THEN
                v_problem := 'row_hash does not match the entry (its content was changed)';
            END IF;
            IF v_problem IS NOT NULL THEN
                RETURN QUERY SELECT v_chain, v_row.chain_seq, v_row.id, v_problem;
                EXIT;
            END IF;
            v_prev := v_row.row_hash;
            v_expected := v_expected + 1;
        END LOOP;
        CONTINUE WHEN v_problem IS NOT NULL;

        IF v_head_seq IS NULL AND v_max_seq IS NOT NULL THEN
            RETURN QUERY SELECT v_chain, v_max_seq, NULL::bigint, 'the chain head is missing'::text;
        ELSIF v_head_seq IS NOT NULL AND (v_expected - 1 <> v_head_seq OR v_prev IS DISTINCT FROM v_head_hash) THEN
            RETURN QUERY SELECT v_chain, v_expected, NULL::bigint,
                                pg_catalog.format('the head says the chain ends at entry %s with another hash: entries %s to %s are missing or the head was changed',
                                                  v_head_seq, v_expected, v_head_seq);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION keen.verify_audit_chain() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.verify_audit_chain() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.verify_audit_chain() IS 'The first broken link of each audit chain (no row: intact); admin or maintenance, 42501 otherwise.';

-- ---------------------------------------------------------------------------------------------
-- The login recorder: failed logins survive the rollback of the login that raised 28P01
-- ---------------------------------------------------------------------------------------------

-- keen_private.configure_login_recorder: stores the recorder role's password and where this server's
-- socket is, for the loopback connection (`keen-db migrate`/`up` call it after setting the
-- keen_recorder password). Runs as its caller (not a definer): it reads a superuser-only
-- setting and writes the secrets table.
-- Who: a superuser (the deploy). Raises 42501 for anyone else, 22023 for a short password.
CREATE OR REPLACE FUNCTION keen_private.configure_login_recorder(p_password text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_socket text;
BEGIN
    IF NOT COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'only a superuser configures the login recorder' USING ERRCODE = '42501';
    END IF;
    IF p_password IS NULL OR pg_catalog.length(p_password) < 16 THEN
        RAISE EXCEPTION 'the recorder password needs 16 characters at least' USING ERRCODE = '22023';
    END IF;
    v_socket := pg_catalog.btrim(pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), ',', 1));
    INSERT INTO keen.auth_secrets AS s (name, value)
    VALUES ('recorder_password', p_password),
           ('recorder_conninfo', pg_catalog.format('host=''%s'' port=%s',
                pg_catalog.replace(pg_catalog.replace(CASE WHEN v_socket = '' THEN 'localhost' ELSE v_socket END,
                                                      '\', '\\'), '''', '\'''),
                pg_catalog.current_setting('port')))
    ON CONFLICT (name) DO UPDATE
       SET value = EXCLUDED.value, updated_at = pg_catalog.now()
     WHERE s.value IS DISTINCT FROM EXCLUDED.value;
END
$$;
REVOKE ALL ON FUNCTION keen_private.configure_login_recorder(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.configure_login_recorder(text) IS 'Deploy only (superuser): the loopback credentials of the login recorder.';

-- The login recorder's connection (keen_private.auth_recorder_query replaces the old exec).
DROP FUNCTION IF EXISTS keen_private.auth_recorder_exec(text);

-- keen_private.auth_recorder_query: runs one query (of one text column) over the loopback
-- connection as keen_recorder, which commits on its own, and returns its first value; NULL when
-- the loopback failed (not configured, no connection slot, refused, timed out): the sign-in
-- functions then refuse the attempt (fail closed). keen_recorder has connections of its own
-- (CONNECTION LIMIT 10, below max_connections with keen_app capped at 150).
-- Who: keen_owner's sign-in functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_recorder_query(p_sql text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_password text;
    v_conninfo text;
    v_result text;
BEGIN
    SELECT s.value INTO v_password FROM keen.auth_secrets s WHERE s.name = 'recorder_password';
    SELECT s.value INTO v_conninfo FROM keen.auth_secrets s WHERE s.name = 'recorder_conninfo';
    IF v_password IS NULL OR v_conninfo IS NULL THEN
        RAISE LOG 'keen login recorder: not configured (run keen-db migrate)';
        RETURN NULL;
    END IF;
    SELECT r.result INTO v_result FROM keen_ext.dblink(
        v_conninfo
        || ' dbname=''' || pg_catalog.replace(pg_catalog.replace(pg_catalog.current_database(), '\', '\\'), '''', '\''') || ''''
        || ' user=keen_recorder application_name=keen_login_recorder connect_timeout=5'
        || ' password=''' || pg_catalog.replace(pg_catalog.replace(v_password, '\', '\\'), '''', '\''') || '''',
        p_sql, true) AS r(result text);
    RETURN COALESCE(v_result, '');
EXCEPTION WHEN OTHERS THEN
    RAISE LOG 'keen login recorder failed: %', SQLERRM;
    RETURN NULL;
END
$$;
ALTER FUNCTION keen_private.auth_recorder_query(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_recorder_query(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_recorder_query(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_recorder_query(text) IS 'Internal (keen_auth): one query over the autonomous loopback; NULL if it failed.';

-- keen_private.auth_record_login_failure: has keen.record_login_failure audit a refused sign-in on
-- the loopback, so that the entry is committed although the sign-in raises. (The attempt was
-- counted before its password was checked: keen_private.login_check.)
-- Who: keen_owner's sign-in functions. Raises: nothing; returns whether the entry was written.
CREATE OR REPLACE FUNCTION keen_private.auth_record_login_failure(p_email text, p_user_id uuid, p_ip inet,
                                                          p_reason text, p_audit boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF NOT p_audit THEN
        RETURN true;
    END IF;
    RETURN keen_private.auth_recorder_query(pg_catalog.format(
        'SELECT keen.record_login_failure(%L, %L::uuid, %L::inet, %L, true)::text',
        p_email, p_user_id, p_ip, p_reason)) IS NOT NULL;
END
$$;
ALTER FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) IS
    'Internal (sign-in): audits a refused sign-in through the autonomous loopback.';

-- keen.login_recorder_status: whether the loopback works (`keen-db doctor` asks).
-- Who: the maintenance role (and superusers). Returns NULL when it works, else why not.
CREATE OR REPLACE FUNCTION keen.login_recorder_status()
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF keen_private.auth_recorder_query('SELECT 1::text') IS NULL THEN
        RETURN 'the login recorder cannot connect (see the server log)';
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION keen.login_recorder_status() OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen.login_recorder_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.login_recorder_status() TO keen_maintenance;
COMMENT ON FUNCTION keen.login_recorder_status() IS 'NULL when the failed-login recorder can connect, else the reason.';

-- keen.record_login_attempt: runs in the loopback session (as keen_recorder, no actor) and
-- commits there: counts one attempt of p_email from source p_ip (NULL is a source too) as a
-- failure, before its password or code is checked, and says whether it may be checked ('ok')
-- or not ('refused'). p_purpose:
--   'sign_in' (login, start_login_session): refused when, within login_failure_window_minutes,
--     the (e-mail, source) pair already had login_max_failures failures, or the source
--     login_max_failures_per_source (any e-mail), or the e-mail login_max_failures_per_email
--     across all sources and this source has had no successful sign-in of the e-mail in the
--     window (p_ip is the caller's word: a guesser rotating it meets the per-e-mail cap, while
--     the owner at a source it signed in from passes);
--   'change_password': refused after login_max_failures failures of the e-mail (the user) in
--     the window, whatever the source (the connection's address is the gateway's for all);
--   'second_factor' (start_login_session, disable_totp): refused after
--     second_factor_max_failures failed codes of the e-mail (the user) in the window, whatever
--     the source: every code is then KN006 until they age out.
-- A success marks its attempt succeeded and deletes the earlier failures it clears, in the
-- checking function's own transaction. A refused attempt gets the answer of a wrong password
-- (or code), so a lock-out is not told apart. The attempts of one e-mail are counted one at a
-- time (advisory lock 7302, inside this short transaction only), so parallel guesses cannot
-- outrun a cap.
-- Who: keen_recorder only. Raises 22023 for an unknown purpose.
DROP FUNCTION IF EXISTS keen.record_login_attempt(text, inet, uuid);
CREATE OR REPLACE FUNCTION keen.record_login_attempt(p_email text, p_ip inet, p_attempt_id uuid, p_purpose text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    v_email text := pg_catalog.left(pg_catalog.lower(COALESCE(p_email, '')), 255);
    v_since timestamptz := pg_catalog.clock_timestamp()
                           - pg_catalog.make_interval(mins => keen.setting_numeric('login_failure_window_minutes')::int);
    v_pair bigint;
    v_email_failures bigint;
    v_source bigint := 0;
    v_known boolean;
    v_refused boolean;
BEGIN
    IF p_purpose IS NULL OR p_purpose NOT IN ('sign_in', 'change_password', 'second_factor') THEN
        RAISE EXCEPTION 'unknown login attempt purpose %', p_purpose USING ERRCODE = '22023';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(7302, pg_catalog.hashtext(v_email));
    SELECT pg_catalog.count(*) FILTER (WHERE NOT a.succeeded AND a.ip_address IS NOT DISTINCT FROM p_ip),
           pg_catalog.count(*) FILTER (WHERE NOT a.succeeded),
           COALESCE(pg_catalog.bool_or(a.succeeded AND a.ip_address IS NOT DISTINCT FROM p_ip), false)
      INTO v_pair, v_email_failures, v_known
      FROM keen.login_attempts a
     WHERE a.email = v_email AND a.purpose = p_purpose AND a.attempted_at > v_since;
    -- A NULL source (the caller did not say) is its own pair per e-mail, never a shared source:
    -- 30 failures without p_ip must not refuse every sign-in that comes without one.
    IF p_purpose = 'sign_in' AND p_ip IS NOT NULL THEN
        SELECT pg_catalog.count(*) INTO v_source
          FROM keen.login_attempts a
         WHERE a.ip_address = p_ip AND a.purpose = 'sign_in' AND NOT a.succeeded AND a.attempted_at > v_since;
    END IF;
    INSERT INTO keen.login_attempts (email, ip_address, attempt_id, purpose) VALUES (v_email, p_ip, p_attempt_id, p_purpose);
    DELETE FROM keen.login_attempts a
     WHERE a.id IN (SELECT b.id FROM keen.login_attempts b
                     WHERE b.attempted_at < v_since
                     ORDER BY b.attempted_at LIMIT 100
                       FOR UPDATE SKIP LOCKED);
    v_refused := CASE p_purpose
        WHEN 'sign_in' THEN v_pair >= keen.setting_numeric('login_max_failures')
                            OR v_source >= keen.setting_numeric('login_max_failures_per_source')
                            OR (v_email_failures >= keen.setting_numeric('login_max_failures_per_email') AND NOT v_known)
        WHEN 'change_password' THEN v_email_failures >= keen.setting_numeric('login_max_failures')
        ELSE v_email_failures >= keen.setting_numeric('second_factor_max_failures')
    END;
    RETURN CASE WHEN v_refused THEN 'refused' ELSE 'ok' END;
END
$$;
REVOKE ALL ON FUNCTION keen.record_login_attempt(text, inet, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_login_attempt(text, inet, uuid, text) TO keen_recorder;
COMMENT ON FUNCTION keen.record_login_attempt(text, inet, uuid, text) IS
    'Loopback only (keen_recorder): counts a sign-in, change_password or second-factor attempt before its check; ''refused'' when locked out.';

-- keen.record_login_failure: runs in the loopback session (as keen_recorder) and commits there:
-- the audit entry of a refused sign-in (record_login_attempt counted it). Reasons:
-- 'bad_credentials', 'inactive' (the right password of a suspended or banned account),
-- 'locked_out' (not checked: the pair or the source is locked out), 'second_factor' (KN006).
-- Who: keen_recorder only. Raises 22023 for an unknown reason.
CREATE OR REPLACE FUNCTION keen.record_login_failure(p_email text, p_user_id uuid, p_ip inet,
                                                     p_reason text, p_audit boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    v_email text := pg_catalog.left(pg_catalog.lower(COALESCE(p_email, '')), 255);
    v_data jsonb;
    v_subtype text;
    v_risk text := CASE WHEN p_reason = 'locked_out' THEN 'high' ELSE 'medium' END;
BEGIN
    IF p_reason IS NULL OR p_reason NOT IN ('bad_credentials', 'inactive', 'locked_out', 'second_factor') THEN
        RAISE EXCEPTION 'unknown login failure reason %', p_reason USING ERRCODE = '22023';
    END IF;
    IF NOT COALESCE(p_audit, true) THEN
        RETURN;
    END IF;
    v_subtype := CASE p_reason WHEN 'inactive' THEN 'login_refused_inactive'
                               WHEN 'locked_out' THEN 'login_refused_locked_out'
                               WHEN 'second_factor' THEN 'login_second_factor_failed'
                               ELSE 'login_failed' END;
    v_data := pg_catalog.jsonb_build_object('email', v_email, 'locked_out', p_reason = 'locked_out');
    IF p_user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM keen_private.auth_user_status(p_user_id)) THEN
        -- registered by a transaction that has not committed: keep the id in the data instead
        v_data := v_data || pg_catalog.jsonb_build_object('user_id', p_user_id);
        PERFORM keen_private.write_audit('auth', v_subtype, NULL, v_data, v_risk, p_ip);
    ELSE
        PERFORM keen_private.write_audit('auth', v_subtype, p_user_id, v_data, v_risk, p_ip);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) TO keen_recorder;
COMMENT ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) IS
    'Loopback only (keen_recorder): audits a refused sign-in in its own transaction.';

-- keen_private.auth_find_email: the user holding an e-mail and its status, with no actor.
-- Who: request_password_reset (keen_owner); owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_find_email(p_email text)
RETURNS TABLE (user_id uuid, account_status text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT u.id, u.account_status::text FROM keen.users u WHERE u.email = p_email;
END
$$;
ALTER FUNCTION keen_private.auth_find_email(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_find_email(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_find_email(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_find_email(text) IS 'Internal (keen_auth): the user of an e-mail, with no actor.';

-- keen_private.auth_user_status: the status and admin flag of a user, with no actor.
-- Who: keen's sign-in functions (keen_owner); owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_user_status(p_user_id uuid)
RETURNS TABLE (account_status text, is_admin boolean, email text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT u.account_status::text, u.is_admin, u.email::text FROM keen.users u WHERE u.id = p_user_id;
END
$$;
ALTER FUNCTION keen_private.auth_user_status(uuid) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_user_status(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_user_status(uuid) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_user_status(uuid) IS 'Internal: a user''s status and admin flag, with no actor.';

-- keen_private.auth_check_password: the user holding p_email, its status, and whether p_password is its
-- password. An unknown e-mail costs one bcrypt too (a fresh salt at p_dummy_cost), so the time
-- taken does not tell a wrong password from an unknown e-mail.
-- Who: keen.login (keen_owner); owned by keen_auth, which alone reads password_hash with no
-- actor. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_check_password(p_email text, p_password text, p_dummy_cost integer)
RETURNS TABLE (user_id uuid, account_status text, password_ok boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_id uuid;
    v_hash text;
    v_status text;
BEGIN
    SELECT u.id, u.password_hash, u.account_status INTO v_id, v_hash, v_status
      FROM keen.users u
     WHERE u.email = p_email;
    IF v_id IS NULL THEN
        PERFORM keen_ext.crypt(COALESCE(p_password, ''), keen_ext.gen_salt('bf', p_dummy_cost));
        RETURN QUERY SELECT NULL::uuid, NULL::text, false;
        RETURN;
    END IF;
    RETURN QUERY SELECT v_id, v_status,
                        keen_ext.crypt(COALESCE(p_password, ''), v_hash) = v_hash
                        AND p_password IS NOT NULL AND pg_catalog.octet_length(p_password) <= 72;
END
$$;
ALTER FUNCTION keen_private.auth_check_password(text, text, integer) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_check_password(text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_check_password(text, text, integer) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_check_password(text, text, integer) IS 'Internal (keen.login): bcrypt check with no actor.';

-- keen_private.auth_find_api_key: the live API key with this SHA-256 (active, not revoked, not
-- expired, its user active) with its scopes and limit, or no row.
DROP FUNCTION IF EXISTS keen_private.auth_find_api_key(text);
-- Who: keen.authenticate_api_key (keen_owner); owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_find_api_key(p_token_hash text)
RETURNS TABLE (token_id uuid, user_id uuid, scopes text[], rate_limit_per_hour integer, bypass_limits boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT t.id, t.user_id, t.scopes, COALESCE(t.rate_limit_per_hour, 1000), t.bypass_limits
      FROM keen.auth_tokens t
      JOIN keen.users u ON u.id = t.user_id
     WHERE t.token_hash = p_token_hash
       AND t.token_type = 'api_key'
       AND t.is_active AND t.revoked_at IS NULL
       AND (t.expires_at IS NULL OR t.expires_at > pg_catalog.now())
       AND u.account_status = 'active';
END
$$;
ALTER FUNCTION keen_private.auth_find_api_key(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_find_api_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_find_api_key(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_find_api_key(text) IS 'Internal (authenticate_api_key): the live key with this hash.';

-- ---------------------------------------------------------------------------------------------
-- Users
-- ---------------------------------------------------------------------------------------------

-- keen.register_user: creates a user (role 'user') and its credit account (balance 0), and
-- audits it (in the caller's name: no actor for a sign-up, the admin when an admin registers
-- someone).
-- Who: anyone with EXECUTE (keen_app); no actor needed, and the caller's actor is unchanged
-- (scopes included: keen_private.restore_actor).
-- Raises: 22023 for an invalid e-mail (over 255 bytes too), username (3-64 of letters, digits,
-- '_', '.', '-', starting with a letter or digit), password (8 characters to 72 bytes) or a
-- display name over 255 bytes; 23505 when the e-mail (any case) or the username (any case) is
-- taken.
CREATE OR REPLACE FUNCTION keen.register_user(p_email text, p_username text, p_password text,
                                              p_display_name text DEFAULT NULL)
RETURNS TABLE (id uuid, email text, username text, role text, is_admin boolean,
               account_status text, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.lower(pg_catalog.btrim(p_email));
    v_id uuid := pg_catalog.gen_random_uuid();
    v_previous_actor uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
    v_user keen.users;
BEGIN
    PERFORM keen_private.require_size('email', v_email);
    IF v_email IS NULL
       OR v_email !~ '^[a-z0-9.!#$%&''*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$' THEN
        RAISE EXCEPTION 'invalid e-mail address' USING ERRCODE = '22023';
    END IF;
    IF p_username IS NULL OR p_username !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$' THEN
        RAISE EXCEPTION 'invalid username: 3 to 64 letters, digits, _ . -, starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.users_check_password(p_password);
    PERFORM keen_private.require_size('label', p_display_name);

    -- The new user is the actor just long enough to write its own rows under RLS.
    PERFORM keen_private.set_actor(v_id);
    BEGIN
        INSERT INTO keen.users (id, email, username, password_hash, display_name)
        VALUES (v_id, v_email, p_username,
                keen_ext.crypt(p_password, keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int)),
                p_display_name)
        RETURNING * INTO v_user;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'e-mail or username already registered' USING ERRCODE = '23505';
    END;
    INSERT INTO keen.credit_accounts (user_id) VALUES (v_id);
    PERFORM keen_private.restore_actor(v_previous_actor, v_previous_scopes);

    PERFORM keen_private.write_audit('user', 'registered', v_id,
                             pg_catalog.jsonb_build_object('email', v_email, 'username', p_username));
    RETURN QUERY SELECT v_user.id, v_user.email::text, v_user.username::text, v_user.role::text,
                        v_user.is_admin, v_user.account_status::text, v_user.created_at;
END
$$;
REVOKE ALL ON FUNCTION keen.register_user(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_user(text, text, text, text) TO keen_app;
COMMENT ON FUNCTION keen.register_user(text, text, text, text) IS 'Registers a user and its credit account; 22023 invalid input, 23505 duplicate.';

-- keen_private.login_check: the one password check of every sign-in (keen.login,
-- keen.start_login_session) and of keen.change_password. In order:
--   1. the attempt is counted, as a failure, by the recorder's own committed transaction
--      (keen.record_login_attempt, with p_purpose: 'sign_in' or 'change_password') BEFORE the
--      password is looked at; when it cannot be counted (the recorder cannot connect) the
--      attempt is refused: no guess is ever checked uncounted;
--   2. a refused (locked-out) attempt gets 28P01, with one bcrypt spent as for any other
--      attempt, so neither the code nor the time tells a lock-out from a wrong password;
--   3. a wrong password or an unknown e-mail is 28P01 (audited through the recorder), the right
--      password of a suspended or banned account 28000;
--   4. on success (this transaction) the attempt is kept as a success (for sign-ins: the source
--      is then known for the e-mail, record_login_attempt's per-e-mail cap spares it) and the
--      earlier failures of its (e-mail, source, purpose) are deleted.
-- Who: keen_owner's sign-in functions. Raises 25000 outside READ COMMITTED, 22023 for an
-- e-mail over 255 bytes (keen_private.require_size), 28P01, 28000.
DROP FUNCTION IF EXISTS keen_private.login_check(text, text, inet);
CREATE OR REPLACE FUNCTION keen_private.login_check(p_email text, p_password text, p_ip inet, p_purpose text)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.lower(pg_catalog.btrim(COALESCE(p_email, '')));
    v_attempt uuid := pg_catalog.gen_random_uuid();
    v_verdict text;
    v_user_id uuid;
    v_status text;
    v_ok boolean;
BEGIN
    -- The counts are committed by the recorder's own connection: a REPEATABLE READ snapshot
    -- would never see them (and so never lock out).
    PERFORM keen_private.require_read_committed();
    PERFORM keen_private.require_size('email', v_email);
    v_verdict := keen_private.auth_recorder_query(pg_catalog.format(
        'SELECT keen.record_login_attempt(%L, %L::inet, %L::uuid, %L)', v_email, p_ip, v_attempt, p_purpose));
    IF v_verdict IS NULL OR v_verdict <> 'ok' THEN
        PERFORM keen_ext.crypt(COALESCE(p_password, ''), keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int));
        IF v_verdict IS NOT NULL THEN
            PERFORM keen_private.auth_record_login_failure(v_email, NULL, p_ip, 'locked_out', true);
        END IF;
        RAISE EXCEPTION 'invalid e-mail or password' USING ERRCODE = '28P01';
    END IF;

    SELECT c.user_id, c.account_status, c.password_ok INTO v_user_id, v_status, v_ok
      FROM keen_private.auth_check_password(v_email, p_password, keen.setting_numeric('bcrypt_cost')::int) c;
    IF NOT v_ok OR v_status <> 'active' THEN
        IF v_ok AND v_status IN ('suspended', 'banned') THEN
            PERFORM keen_private.auth_record_login_failure(v_email, v_user_id, p_ip, 'inactive', true);
            RAISE EXCEPTION 'this account is %', v_status USING ERRCODE = '28000';
        END IF;
        PERFORM keen_private.auth_record_login_failure(v_email, v_user_id, p_ip, 'bad_credentials', true);
        RAISE EXCEPTION 'invalid e-mail or password' USING ERRCODE = '28P01';
    END IF;
    UPDATE keen.login_attempts a SET succeeded = true WHERE a.email = v_email AND a.attempt_id = v_attempt;
    DELETE FROM keen.login_attempts a
     WHERE a.email = v_email AND a.purpose = p_purpose AND a.ip_address IS NOT DISTINCT FROM p_ip
       AND NOT a.succeeded;
    RETURN v_user_id;
END
$$;
REVOKE ALL ON FUNCTION keen_private.login_check(text, text, inet, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.login_check(text, text, inet, text) IS
    'Internal: counted-first password check of every sign-in and change_password; 28P01 / 28000.';

-- keen.login: checks an e-mail and password with bcrypt in the database (keen_private.login_check:
-- counted first, lock-out per e-mail and source, per source and per e-mail across sources,
-- 28P01 for a wrong password, an unknown e-mail and a lock-out alike, 28000 for the right
-- password of a suspended or banned account). On success: records last_login_at /
-- last_login_ip, audits, and returns the user; it does not change the caller's actor (its
-- scopes included: keen_private.restore_actor; start_login_session signs in for real).
-- Who: keen_app, no actor needed. Raises 25000 outside READ COMMITTED, 22023 for an e-mail over
-- 255 bytes, 28P01, 28000.
CREATE OR REPLACE FUNCTION keen.login(p_email text, p_password text, p_ip inet DEFAULT NULL)
RETURNS TABLE (user_id uuid, is_admin boolean, role text, admin_privileges jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_previous_actor uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
    v_user_id uuid := keen_private.login_check(p_email, p_password, p_ip, 'sign_in');
    v_user keen.users;
BEGIN
    PERFORM keen_private.set_actor(v_user_id);
    UPDATE keen.users u
       SET last_login_at = pg_catalog.now(), last_login_ip = p_ip
     WHERE u.id = v_user_id
    RETURNING * INTO v_user;
    PERFORM keen_private.write_audit('auth', 'login_succeeded', v_user_id,
                             pg_catalog.jsonb_build_object('email', v_user.email), 'low', p_ip);
    PERFORM keen_private.restore_actor(v_previous_actor, v_previous_scopes);
    RETURN QUERY SELECT v_user.id, v_user.is_admin, v_user.role::text, v_user.admin_privileges;
END
$$;
REVOKE ALL ON FUNCTION keen.login(text, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.login(text, text, inet) TO keen_app;
COMMENT ON FUNCTION keen.login(text, text, inet) IS
    'bcrypt login; 28P01 wrong password, unknown e-mail or lock-out alike, 28000 inactive account.';

-- keen.list_users: every user, oldest first, a page at a time (audited as an admin action).
-- Who: an admin actor. Raises 42501 otherwise; 22023 for a limit outside 1..1000 or a negative offset.
CREATE OR REPLACE FUNCTION keen.list_users(p_limit int DEFAULT 100, p_offset int DEFAULT 0)
RETURNS TABLE (id uuid, email text, username text, display_name text, role text, is_admin boolean,
               account_status text, email_verified boolean, created_at timestamptz,
               last_login_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_admin();
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        RAISE EXCEPTION 'offset must not be negative' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.write_audit('admin', 'users_listed', NULL,
                             pg_catalog.jsonb_build_object('limit', p_limit, 'offset', p_offset));
    RETURN QUERY
    SELECT u.id, u.email::text, u.username::text, u.display_name::text, u.role::text, u.is_admin,
           u.account_status::text, u.email_verified, u.created_at, u.last_login_at
      FROM keen.users u
     ORDER BY u.created_at, u.id
     LIMIT p_limit OFFSET p_offset;
END
$$;
REVOKE ALL ON FUNCTION keen.list_users(int, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.list_users(int, int) TO keen_app;
COMMENT ON FUNCTION keen.list_users(int, int) IS 'Admin only (42501): a page of users, oldest first.';

-- keen_private.set_account_status: the common part of suspend_user and reactivate_user: the admin
-- actor moves p_user_id from p_from to p_to and audits it. Returns false when the account was
-- already in p_to (nothing done).
-- Who: suspend_user / reactivate_user. Raises 42501 (not an admin; the target is a super-admin,
-- or an admin and the actor is not a super-admin), P0002 (no such user), 22023 (the actor
-- itself, an account in neither state, or a reason over 1000 bytes).
CREATE OR REPLACE FUNCTION keen_private.set_account_status(p_user_id uuid, p_from text, p_to text, p_reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_admin();
    v_user keen.users;
BEGIN
    PERFORM keen_private.require_size('reason', p_reason);
    SELECT * INTO v_user FROM keen.users u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user not found' USING ERRCODE = 'P0002';
    END IF;
    IF v_user.id = v_actor THEN
        RAISE EXCEPTION 'an admin cannot change the status of their own account' USING ERRCODE = '22023';
    END IF;
    IF v_user.role = 'super_admin' THEN
        RAISE EXCEPTION 'a super-admin account cannot be suspended' USING ERRCODE = '42501';
    END IF;
    IF v_user.is_admin AND NOT EXISTS (SELECT 1 FROM keen.users a WHERE a.id = v_actor AND a.role = 'super_admin') THEN
        RAISE EXCEPTION 'only a super-admin may change an admin''s status' USING ERRCODE = '42501';
    END IF;
    IF v_user.account_status = p_to THEN
        RETURN false;
    END IF;
    IF v_user.account_status <> p_from THEN
        RAISE EXCEPTION 'the account is %, not %', v_user.account_status, p_from USING ERRCODE = '22023';
    END IF;
    UPDATE keen.users u SET account_status = p_to, updated_at = pg_catalog.now() WHERE u.id = p_user_id;
    IF p_to = 'suspended' THEN
        PERFORM keen_private.revoke_login_sessions(p_user_id, NULL, 'suspended');
    END IF;
    PERFORM keen_private.write_audit('admin', CASE p_to WHEN 'suspended' THEN 'user_suspended' ELSE 'user_reactivated' END,
                             p_user_id, pg_catalog.jsonb_build_object('from', p_from, 'to', p_to, 'reason', p_reason),
                             CASE p_to WHEN 'suspended' THEN 'high' ELSE 'medium' END);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION keen_private.set_account_status(uuid, text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.set_account_status(uuid, text, text, text) IS 'Internal: suspend_user / reactivate_user.';

-- keen.suspend_user: an admin suspends a user: it can no longer log in (28000), be acted as
-- (act_as 28000) or use its API keys. Suspending a suspended user does nothing.
-- Who: an admin actor (42501 otherwise; a super-admin to suspend an admin; nobody suspends a
-- super-admin). Raises P0002 for an unknown user, 22023 for oneself, a banned or deleted
-- account, or a reason over 1000 bytes.
CREATE OR REPLACE FUNCTION keen.suspend_user(p_user_id uuid, p_reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.set_account_status(p_user_id, 'active', 'suspended', p_reason);
END
$$;
REVOKE ALL ON FUNCTION keen.suspend_user(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.suspend_user(uuid, text) TO keen_app;
COMMENT ON FUNCTION keen.suspend_user(uuid, text) IS 'Admin: suspends a user (no login, no act_as, no API key).';

-- keen.reactivate_user: an admin lifts a suspension. Reactivating an active user does nothing.
-- Who: an admin actor (as for suspend_user). Raises 42501, P0002, 22023 as suspend_user does
-- (22023 also for a banned or deleted account: only a suspension is lifted here).
CREATE OR REPLACE FUNCTION keen.reactivate_user(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.set_account_status(p_user_id, 'suspended', 'active', NULL);
END
$$;
REVOKE ALL ON FUNCTION keen.reactivate_user(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.reactivate_user(uuid) TO keen_app;
COMMENT ON FUNCTION keen.reactivate_user(uuid) IS 'Admin: lifts a suspension.';

-- keen.change_password: the actor changes its own password; the current one is required and is
-- checked like a sign-in (keen_private.login_check: counted first, so a stolen API key or access
-- token cannot guess it faster than a login could). Its failures are counted per user (the
-- pair (e-mail, purpose 'change_password'), no source): the connection's address is the
-- gateway's for everyone, so counting per source would let 30 wrong guesses from anyone block
-- every user's change_password. They do not count against the user's sign-ins either.
-- Every login session of the user is revoked (sign in again with the new password). Audited.
-- Who: keen_app with an actor (not a scoped key). Raises 25000 outside READ COMMITTED (through
-- login_check), 28000 without an actor (or when the account is inactive), 42501 for a scoped
-- key, 28P01 for a wrong current password (or after login_max_failures of them within the
-- window), 22023 for an invalid new password or one equal to the current.
CREATE OR REPLACE FUNCTION keen.change_password(p_old_password text, p_new_password text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_user keen.users;
    v_revoked integer;
BEGIN
    PERFORM keen_private.require_scope(NULL);
    SELECT * INTO v_user FROM keen.users u WHERE u.id = v_actor;
    PERFORM keen_private.users_check_password(p_new_password);
    IF p_new_password = p_old_password THEN
        RAISE EXCEPTION 'the new password must differ from the current one' USING ERRCODE = '22023';
    END IF;
    IF keen_private.login_check(v_user.email, p_old_password, NULL, 'change_password') IS DISTINCT FROM v_actor THEN
        RAISE EXCEPTION 'the current password is wrong' USING ERRCODE = '28P01';
    END IF;
    UPDATE keen.users u
       SET password_hash = keen_ext.crypt(p_new_password, keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int)),
           updated_at = pg_catalog.now()
     WHERE u.id = v_actor;
    v_revoked := keen_private.revoke_login_sessions(v_actor, NULL, 'password_changed');
    PERFORM keen_private.write_audit('user', 'password_changed', v_actor,
                                     pg_catalog.jsonb_build_object('login_sessions_revoked', v_revoked), 'medium');
END
$$;
REVOKE ALL ON FUNCTION keen.change_password(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.change_password(text, text) TO keen_app;
COMMENT ON FUNCTION keen.change_password(text, text) IS 'The actor changes its password (current one required, counted like a sign-in); revokes its login sessions.';

-- keen.update_profile: the actor updates its display name, time zone and preferences; a NULL
-- argument leaves that field as it is. The display name is trimmed (1-255 characters), the
-- time zone must be one of pg_timezone_names, preferences a JSON object of 16 kB at most (it
-- replaces the previous one).
-- Who: keen_app with an actor (not a scoped key). Raises 28000 without an actor, 42501 for a
-- scoped key, 22023 for invalid input.
CREATE OR REPLACE FUNCTION keen.update_profile(p_display_name text DEFAULT NULL, p_timezone text DEFAULT NULL,
                                               p_preferences jsonb DEFAULT NULL)
RETURNS TABLE (id uuid, email text, username text, display_name text, timezone text,
               preferences jsonb, updated_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_user keen.users;
BEGIN
    PERFORM keen_private.require_scope(NULL);
    IF p_display_name IS NOT NULL AND pg_catalog.btrim(p_display_name) = '' THEN
        RAISE EXCEPTION 'display name: 1 to 255 bytes' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('label', pg_catalog.btrim(p_display_name));
    IF p_timezone IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = p_timezone) THEN
        RAISE EXCEPTION 'unknown time zone %', p_timezone USING ERRCODE = '22023';
    END IF;
    IF p_preferences IS NOT NULL AND pg_catalog.jsonb_typeof(p_preferences) <> 'object' THEN
        RAISE EXCEPTION 'preferences must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('preferences', p_preferences);
    UPDATE keen.users u
       SET display_name = COALESCE(pg_catalog.btrim(p_display_name), u.display_name),
           timezone = COALESCE(p_timezone, u.timezone),
           preferences = COALESCE(p_preferences, u.preferences),
           updated_at = pg_catalog.now()
     WHERE u.id = v_actor
    RETURNING * INTO v_user;
    PERFORM keen_private.write_audit('user', 'profile_updated', v_actor,
                             pg_catalog.jsonb_build_object('display_name', p_display_name IS NOT NULL,
                                                           'timezone', p_timezone, 'preferences', p_preferences IS NOT NULL));
    RETURN QUERY SELECT v_user.id, v_user.email::text, v_user.username::text, v_user.display_name::text,
                        v_user.timezone::text, v_user.preferences, v_user.updated_at;
END
$$;
REVOKE ALL ON FUNCTION keen.update_profile(text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.update_profile(text, text, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.update_profile(text, text, jsonb) IS 'The actor updates display name, time zone, preferences.';

-- ---------------------------------------------------------------------------------------------
-- API keys
-- ---------------------------------------------------------------------------------------------

-- keen.create_api_key: a new API key for the actor: 'keen_' + 43 URL-safe characters (32
-- random bytes). The token is returned only here; keen.auth_tokens keeps its SHA-256 (hex).
-- Scopes come from the contract's list (keen_private.api_scopes), stored sorted without
-- duplicates; '{}' means everything the user may do. A key made under a scoped key needs
-- keys:manage and can carry only scopes of that key (a key never grants more than its maker).
-- p_rate_limit_per_hour: 1 to 1,000,000 requests in any rolling hour (authenticate_api_key).
-- An admin holding bypass_rate_limits gets keys with bypass_limits (never limited).
-- Who: keen_app with an actor. Raises 28000 without an actor, 42501 for a scoped key without
-- keys:manage or asking for more than it has, 22023 for a blank or long name, an unknown scope,
-- a rate limit outside 1..1,000,000, or an expiry not in the future.
DROP FUNCTION IF EXISTS keen.create_api_key(text, text[], timestamptz);
CREATE OR REPLACE FUNCTION keen.create_api_key(p_name text, p_scopes text[] DEFAULT '{}',
                                               p_expires_at timestamptz DEFAULT NULL,
                                               p_rate_limit_per_hour int DEFAULT 1000)
RETURNS TABLE (token_id uuid, token text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_actor_scopes text[] := pg_catalog.string_to_array(NULLIF(pg_catalog.current_setting('keen_private.actor_scopes', true), ''), ',');
    v_token text;
    v_id uuid;
    v_scopes text[];
    v_bypass boolean;
BEGIN
    PERFORM keen_private.require_scope('keys:manage');
    IF p_name IS NULL OR pg_catalog.btrim(p_name) = '' THEN
        RAISE EXCEPTION 'API key name: 1 to 255 bytes' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('label', p_name);
    IF p_scopes IS NULL OR pg_catalog.array_ndims(p_scopes) > 1
       OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p_scopes) s WHERE s IS NULL OR NOT (s = ANY (keen_private.api_scopes()))) THEN
        RAISE EXCEPTION 'scopes: only %', pg_catalog.array_to_string(keen_private.api_scopes(), ', ') USING ERRCODE = '22023';
    END IF;
    IF p_rate_limit_per_hour IS NULL OR p_rate_limit_per_hour NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'rate limit: 1 to 1,000,000 requests per hour' USING ERRCODE = '22023';
    END IF;
    IF p_expires_at IS NOT NULL AND (p_expires_at <= pg_catalog.now() OR NOT pg_catalog.isfinite(p_expires_at)) THEN
        RAISE EXCEPTION 'an API key must expire in the future (or never: NULL)' USING ERRCODE = '22023';
    END IF;
    v_scopes := COALESCE((SELECT pg_catalog.array_agg(DISTINCT s ORDER BY s) FROM pg_catalog.unnest(p_scopes) s), '{}');
    IF v_actor_scopes IS NOT NULL AND (v_scopes = '{}' OR NOT (v_scopes <@ v_actor_scopes)) THEN
        RAISE EXCEPTION 'a key made with a scoped key can only carry its scopes (%)', pg_catalog.array_to_string(v_actor_scopes, ', ')
            USING ERRCODE = '42501';
    END IF;
    SELECT u.is_admin AND COALESCE(u.admin_privileges ->> 'bypass_rate_limits', '') = 'true'
      INTO v_bypass
      FROM keen.users u WHERE u.id = v_actor;

    v_token := keen_private.random_token('keen_');
    INSERT INTO keen.auth_tokens (user_id, token_type, token_hash, token_name, scopes, expires_at, bypass_limits,
                                  rate_limit_per_hour)
    VALUES (v_actor, 'api_key', keen_private.token_hash(v_token), pg_catalog.btrim(p_name), v_scopes, p_expires_at,
            COALESCE(v_bypass, false), p_rate_limit_per_hour)
    RETURNING auth_tokens.id INTO v_id;

    PERFORM keen_private.write_audit('api_key', 'created', v_actor,
                             pg_catalog.jsonb_build_object('token_id', v_id, 'name', pg_catalog.btrim(p_name),
                                                           'scopes', v_scopes, 'expires_at', p_expires_at,
                                                           'rate_limit_per_hour', p_rate_limit_per_hour),
                             'medium');
    RETURN QUERY SELECT v_id, v_token;
END
$$;
REVOKE ALL ON FUNCTION keen.create_api_key(text, text[], timestamptz, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.create_api_key(text, text[], timestamptz, int) TO keen_app;
COMMENT ON FUNCTION keen.create_api_key(text, text[], timestamptz, int) IS 'A new API key for the actor; the token is shown only here.';

-- keen.authenticate_api_key(p_token, p_ip): the key's owner becomes the actor for the rest of
-- the transaction, limited to the key's scopes (keen_private.set_actor_scoped); usage_count,
-- last_used_at and last_used_ip (p_ip) are recorded. Unknown, malformed, revoked and expired
-- keys, and keys of an inactive user, all fail alike (28000).
-- Rate limit (keys without bypass_limits): each call is one request; more than
-- rate_limit_per_hour calls in any rolling hour is KN007. Exact: the key's row is locked until
-- the caller's transaction ends (so calls of one key take turns; each wait is bounded by
-- lock_timeout, and a holder idling in its transaction is ended by the watchdog,
-- keen.reap_idle_transactions in streaming.sql's job catalog, after 60 s: the role's own
-- idle timeout does not bound it, a keen_app session may change it) and the key keeps a ring of
-- rate_limit_per_hour request times (keen.api_key_request_slots); a call is allowed when the
-- slot it would overwrite, the request rate_limit_per_hour calls back, is an hour old. KN007's
-- DETAIL says when the next request is allowed (that slot's time plus an hour). A refused call
-- is not counted. Known limitation (docs/security.md, "API key rate limit"): the slot is
-- written in the caller's transaction, so a call whose transaction rolls back (any error after
-- the authentication) is not counted: the limit counts requests that committed, not every call.
-- Keys with bypass_limits (the admin's) are never limited nor queued: their usage is recorded
-- only when no other transaction holds the row (SKIP LOCKED).
-- Who: keen_app, no actor needed. Raises 28000, KN007.
CREATE OR REPLACE FUNCTION keen.authenticate_api_key(p_token text, p_ip inet)
RETURNS TABLE (user_id uuid, token_id uuid, scopes text[], is_admin boolean, bypass_limits boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_key record;
    v_count integer;
    v_slot_at timestamptz;
    v_now timestamptz;
BEGIN
    IF p_token IS NULL OR p_token !~ '^keen_[A-Za-z0-9_-]{43}$' THEN
        RAISE EXCEPTION 'invalid API key' USING ERRCODE = '28000';
    END IF;
    SELECT * INTO v_key FROM keen_private.auth_find_api_key(keen_private.token_hash(p_token)) f;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid API key' USING ERRCODE = '28000';
    END IF;
    PERFORM keen_private.set_actor_scoped(v_key.user_id, v_key.scopes);
    IF v_key.bypass_limits THEN
        UPDATE keen.auth_tokens t
           SET usage_count = t.usage_count + 1, last_used_at = pg_catalog.now(), last_used_ip = p_ip
         WHERE t.id = (SELECT l.id FROM keen.auth_tokens l WHERE l.id = v_key.token_id FOR NO KEY UPDATE SKIP LOCKED);
    ELSE
        UPDATE keen.auth_tokens t
           SET usage_count = t.usage_count + 1, last_used_at = pg_catalog.now(), last_used_ip = p_ip
         WHERE t.id = v_key.token_id
        RETURNING t.usage_count INTO v_count;
        v_now := pg_catalog.clock_timestamp();
        -- One statement on the allowed path: take the slot unless the request it holds (the one
        -- rate_limit_per_hour calls back) is less than an hour old.
        INSERT INTO keen.api_key_request_slots AS s (token_id, user_id, slot, requested_at)
        VALUES (v_key.token_id, v_key.user_id, v_count % v_key.rate_limit_per_hour, v_now)
        ON CONFLICT ON CONSTRAINT api_key_request_slots_pkey DO UPDATE SET requested_at = EXCLUDED.requested_at
         WHERE s.requested_at <= v_now - interval '1 hour';
        IF NOT FOUND THEN
            SELECT s.requested_at INTO v_slot_at FROM keen.api_key_request_slots s
             WHERE s.token_id = v_key.token_id AND s.slot = v_count % v_key.rate_limit_per_hour;
            RAISE EXCEPTION 'rate limit of % requests per hour reached for this API key', v_key.rate_limit_per_hour
                USING ERRCODE = 'KN007',
                      DETAIL = pg_catalog.format('next request allowed at %s',
                                                 pg_catalog.to_char((v_slot_at + interval '1 hour') AT TIME ZONE 'UTC',
                                                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
        END IF;
    END IF;
    RETURN QUERY
    SELECT v_key.user_id, v_key.token_id, v_key.scopes, u.is_admin, v_key.bypass_limits
      FROM keen.users u WHERE u.id = v_key.user_id;
END
$$;
REVOKE ALL ON FUNCTION keen.authenticate_api_key(text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.authenticate_api_key(text, inet) TO keen_app;
COMMENT ON FUNCTION keen.authenticate_api_key(text, inet) IS
    'API key -> scoped actor for the transaction, recording the caller''s IP; 28000 not valid, KN007 rate limit.';
-- keen.authenticate_api_key(p_token): as above, with last_used_ip the address of the
-- connection (inet_client_addr(): the API server's, for a gateway; pass p_ip to record the
-- end user's). Who: keen_app, no actor needed. Raises 28000, KN007 (as above).
CREATE OR REPLACE FUNCTION keen.authenticate_api_key(p_token text)
RETURNS TABLE (user_id uuid, token_id uuid, scopes text[], is_admin boolean, bypass_limits boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM keen.authenticate_api_key(p_token, pg_catalog.inet_client_addr());
END
$$;
REVOKE ALL ON FUNCTION keen.authenticate_api_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.authenticate_api_key(text) TO keen_app;
COMMENT ON FUNCTION keen.authenticate_api_key(text) IS 'API key -> actor for the transaction; 28000 for an unknown, revoked or expired key, KN007 rate limit.';

-- keen.revoke_api_key: revokes one of the actor's API keys (an admin: anyone's). Revoking a
-- revoked key does nothing more.
-- Who: keen_app with an actor. Raises 28000 without an actor, 42501 for a scoped key without
-- keys:manage, P0002 for an unknown key or another user's (never told apart).
CREATE OR REPLACE FUNCTION keen.revoke_api_key(p_token_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_token keen.auth_tokens;
BEGIN
    PERFORM keen_private.require_scope('keys:manage');
    SELECT * INTO v_token FROM keen.auth_tokens t WHERE t.id = p_token_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key not found' USING ERRCODE = 'P0002';
    END IF;
    IF v_token.revoked_at IS NOT NULL THEN
        RETURN;
    END IF;
    UPDATE keen.auth_tokens t
       SET is_active = false, revoked_at = pg_catalog.now(), updated_at = pg_catalog.now()
     WHERE t.id = p_token_id;
    PERFORM keen_private.write_audit('api_key', 'revoked', v_token.user_id,
                             pg_catalog.jsonb_build_object('token_id', p_token_id, 'name', v_token.token_name,
                                                           'by_owner', v_token.user_id = v_actor));
END
$$;
REVOKE ALL ON FUNCTION keen.revoke_api_key(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.revoke_api_key(uuid) TO keen_app;
COMMENT ON FUNCTION keen.revoke_api_key(uuid) IS 'Revokes an API key of the actor (admin: any); P0002 if not found.';

-- ---------------------------------------------------------------------------------------------
-- Login sessions: rotating refresh tokens, signed access tokens (JWT HS256)
-- ---------------------------------------------------------------------------------------------

-- keen_private.random_token: a fresh random token: p_prefix + 43 URL-safe characters (32 bytes).
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.random_token(p_prefix text)
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, keen, pg_temp
AS $$
    SELECT p_prefix || pg_catalog.rtrim(pg_catalog.translate(
               pg_catalog.encode(keen_ext.gen_random_bytes(32), 'base64'), '+/', '-_'), '=')
$$;
REVOKE ALL ON FUNCTION keen_private.random_token(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.random_token(text) IS 'Internal: a random 256-bit token with a prefix.';

-- keen_private.token_hash: how every token is stored: its SHA-256, hex.
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.token_hash(p_token text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, keen, pg_temp
AS $$
    SELECT pg_catalog.encode(keen_ext.digest(COALESCE(p_token, ''), 'sha256'), 'hex')
$$;
REVOKE ALL ON FUNCTION keen_private.token_hash(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.token_hash(text) IS 'Internal: the SHA-256 (hex) a token is stored as.';

-- keen_private.base64url: unpadded base64url of bytes (JWT's encoding). No SET clause: inlined
-- into its callers (every name is schema-qualified). Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.base64url(p_bytes bytea)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.rtrim(pg_catalog.translate(pg_catalog.encode(p_bytes, 'base64'), E'+/\n', '-_'), '=')
$$;
REVOKE ALL ON FUNCTION keen_private.base64url(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.base64url(bytea) TO keen_auth;
COMMENT ON FUNCTION keen_private.base64url(bytea) IS 'Internal: unpadded base64url.';

-- keen_private.auth_jwt_sign: an HS256 JWT of p_claims, signed with keen.auth_secrets'
-- jwt_hmac_key, which only keen_auth reads.
-- Who: keen_owner's sign-in functions; owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_jwt_sign(p_claims jsonb)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_input text := 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.'  -- {"alg":"HS256","typ":"JWT"}
                    || keen_private.base64url(pg_catalog.convert_to(p_claims::text, 'UTF8'));
BEGIN
    RETURN v_input || '.' || keen_private.base64url(keen_ext.hmac(pg_catalog.convert_to(v_input, 'UTF8'),
        (SELECT pg_catalog.decode(k.value, 'hex') FROM keen.auth_secrets k WHERE k.name = 'jwt_hmac_key'), 'sha256'));
END
$$;
ALTER FUNCTION keen_private.auth_jwt_sign(jsonb) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_jwt_sign(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_jwt_sign(jsonb) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_jwt_sign(jsonb) IS 'Internal (keen_auth): signs an access token.';

-- keen_private.auth_check_access_token: the user, login session and aal of an access token whose
-- HS256 signature is valid, that has not expired, whose login session is live (not revoked, not
-- past its refresh expiry) and whose user is active; no row otherwise.
-- Who: keen.authenticate_access_token; owned by keen_auth (the key, and no actor yet). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_check_access_token(p_token text)
RETURNS TABLE (user_id uuid, login_session_id uuid, is_admin boolean, aal text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_dot int;
    v_body text;
    v_claims jsonb;
BEGIN
    -- One pass of cheap checks, then one HMAC (this runs on every request). size_cap and
    -- base64url are SQL functions without a SET clause: inlined, so they cost nothing more.
    IF p_token IS NULL OR pg_catalog.octet_length(p_token) > keen_private.size_cap('access_token')
       OR p_token !~ '^eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$' THEN
        RETURN;
    END IF;
    v_dot := pg_catalog.length(p_token) - 44;  -- the last '.': the signature is 43 characters
    IF pg_catalog.substr(p_token, v_dot + 2) IS DISTINCT FROM keen_private.base64url(
           keen_ext.hmac(pg_catalog.convert_to(pg_catalog.substr(p_token, 1, v_dot), 'UTF8'),
                         (SELECT pg_catalog.decode(k.value, 'hex') FROM keen.auth_secrets k WHERE k.name = 'jwt_hmac_key'),
                         'sha256')) THEN
        RETURN;
    END IF;
    v_body := pg_catalog.translate(pg_catalog.substr(p_token, 38, v_dot - 37), '-_', '+/');
    v_claims := pg_catalog.convert_from(pg_catalog.decode(v_body || pg_catalog.repeat('=', (4 - pg_catalog.length(v_body) % 4) % 4),
                                                          'base64'), 'UTF8')::jsonb;
    IF (v_claims ->> 'exp')::numeric <= EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT u.id, s.id, u.is_admin, s.aal
      FROM keen.login_sessions s
      JOIN keen.users u ON u.id = s.user_id
     WHERE s.id = (v_claims ->> 'sid')::uuid
       AND s.user_id = (v_claims ->> 'sub')::uuid
       AND s.revoked_at IS NULL
       AND s.refresh_expires_at > pg_catalog.clock_timestamp()
       AND u.account_status = 'active';
END
$$;
ALTER FUNCTION keen_private.auth_check_access_token(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_check_access_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_check_access_token(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_check_access_token(text) IS 'Internal (keen_auth): verifies an access token.';

-- keen_private.auth_find_refresh_token: the refresh token with this SHA-256, read with no actor
-- and no lock: its user and login session, and whether it was retired already.
-- Who: keen.refresh_login_session; owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_find_refresh_token(p_token_hash text)
RETURNS TABLE (user_id uuid, login_session_id uuid, retired boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT t.user_id, t.login_session_id, t.retired_at IS NOT NULL
                   FROM keen.login_refresh_tokens t WHERE t.token_hash = p_token_hash;
END
$$;
ALTER FUNCTION keen_private.auth_find_refresh_token(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_find_refresh_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_find_refresh_token(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_find_refresh_token(text) IS 'Internal (keen_auth): who holds a refresh token.';

-- keen_private.issue_login_tokens: a new refresh token (30 days: refresh_token_days) and access
-- token (15 minutes: access_token_minutes) for a live login session of the actor; the session's
-- refresh expiry moves with the new refresh token.
-- Who: start_login_session, refresh_login_session. Raises: nothing of its own.
CREATE OR REPLACE FUNCTION keen_private.issue_login_tokens(p_session keen.login_sessions)
RETURNS TABLE (user_id uuid, login_session_id uuid, refresh_token text, refresh_expires_at timestamptz,
               access_token text, access_expires_at timestamptz, is_admin boolean, aal text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_refresh text := keen_private.random_token('keenr_');
    v_refresh_expires timestamptz := pg_catalog.clock_timestamp()
                                     + pg_catalog.make_interval(days => keen.setting_numeric('refresh_token_days')::int);
    v_access_expires timestamptz := pg_catalog.date_trunc('second', pg_catalog.clock_timestamp())
                                    + pg_catalog.make_interval(mins => keen.setting_numeric('access_token_minutes')::int);
    v_access text;
BEGIN
    INSERT INTO keen.login_refresh_tokens (token_hash, user_id, login_session_id, expires_at)
    VALUES (keen_private.token_hash(v_refresh), p_session.user_id, p_session.id, v_refresh_expires);
    UPDATE keen.login_sessions s SET refresh_expires_at = v_refresh_expires, last_used_at = pg_catalog.now()
     WHERE s.id = p_session.id;
    v_access := keen_private.auth_jwt_sign(pg_catalog.jsonb_build_object(
        'sub', p_session.user_id, 'sid', p_session.id, 'aal', p_session.aal,
        'iat', EXTRACT(EPOCH FROM pg_catalog.date_trunc('second', pg_catalog.clock_timestamp()))::bigint,
        'exp', EXTRACT(EPOCH FROM v_access_expires)::bigint,
        'jti', pg_catalog.gen_random_uuid()));
    RETURN QUERY SELECT p_session.user_id, p_session.id, v_refresh, v_refresh_expires, v_access, v_access_expires,
                        u.is_admin, p_session.aal
                   FROM keen.users u WHERE u.id = p_session.user_id;
END
$$;
REVOKE ALL ON FUNCTION keen_private.issue_login_tokens(keen.login_sessions) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.issue_login_tokens(keen.login_sessions) IS 'Internal: a new refresh and access token for a login session.';

-- keen.start_login_session: signs a person in. The password check and lock-out of keen.login
-- (keen_private.login_check: 28P01 / 28000 alike); when the user has a second factor on,
-- p_second_factor must be a current TOTP code or an unused recovery code, else KN006 and nothing
-- is issued (the attempt stays counted as a failure). The code is counted first, per user
-- (keen_private.counted_second_factor): after second_factor_max_failures wrong codes in the
-- window every code is KN006, from any source, until they age out. Opens a login session
-- (aal1: password, aal2: password and second factor) and returns its refresh token (30 days)
-- and access token (15 minutes), each only here; the user becomes the actor; audited.
-- Who: keen_app, no actor needed. Raises 25000, 28P01, 28000, KN006, 22023 (a user agent over
-- 512 bytes, a second factor over 64, an e-mail over 255).
CREATE OR REPLACE FUNCTION keen.start_login_session(p_email text, p_password text, p_second_factor text DEFAULT NULL,
                                                    p_ip inet DEFAULT NULL, p_user_agent text DEFAULT NULL)
RETURNS TABLE (user_id uuid, login_session_id uuid, refresh_token text, refresh_expires_at timestamptz,
               access_token text, access_expires_at timestamptz, is_admin boolean, aal text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_user_id uuid;
    v_user keen.users;
    v_session keen.login_sessions;
    v_aal text := 'aal1';
BEGIN
    PERFORM keen_private.require_size('user_agent', p_user_agent);
    PERFORM keen_private.require_size('second_factor', p_second_factor);
    v_user_id := keen_private.login_check(p_email, p_password, p_ip, 'sign_in');
    PERFORM keen_private.set_actor(v_user_id);
    SELECT * INTO v_user FROM keen.users u WHERE u.id = v_user_id;
    IF v_user.mfa_enabled THEN
        IF NOT keen_private.counted_second_factor(v_user_id, v_user.email, p_second_factor, p_ip) THEN
            PERFORM keen_private.auth_record_login_failure(v_user.email, v_user_id, p_ip, 'second_factor', true);
            RAISE EXCEPTION 'a second factor is required: a current TOTP code or an unused recovery code'
                USING ERRCODE = 'KN006';
        END IF;
        v_aal := 'aal2';
    END IF;
    UPDATE keen.users u SET last_login_at = pg_catalog.now(), last_login_ip = p_ip WHERE u.id = v_user_id;
    INSERT INTO keen.login_sessions (user_id, aal, ip, user_agent, refresh_expires_at)
    VALUES (v_user_id, v_aal, p_ip, p_user_agent, pg_catalog.now())
    RETURNING * INTO v_session;
    PERFORM keen_private.write_audit('auth', 'login_session_started', v_user_id,
                                     pg_catalog.jsonb_build_object('login_session_id', v_session.id, 'aal', v_aal,
                                                                   'user_agent', p_user_agent),
                                     CASE WHEN v_user.is_admin THEN 'medium' ELSE 'low' END, p_ip);
    RETURN QUERY SELECT * FROM keen_private.issue_login_tokens(v_session);
END
$$;
REVOKE ALL ON FUNCTION keen.start_login_session(text, text, text, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.start_login_session(text, text, text, inet, text) TO keen_app;
COMMENT ON FUNCTION keen.start_login_session(text, text, text, inet, text) IS
    'Sign-in: a login session with a refresh and an access token; 28P01/28000 as login, KN006 second factor.';

-- keen.refresh_login_session: rotation. The presented refresh token is retired and a new refresh
-- token and access token are issued; the user becomes the actor.
--   * A token already retired when it is presented is a stolen copy (or a client replaying an
--     old one): the whole login session is revoked, through the recorder's own committed
--     transaction (the 28000 would roll it back otherwise), audited, and 28000.
--   * Two refreshes of the same token at the same moment: the token's row is locked (a bounded
--     wait, lock_timeout); exactly one wins and rotates; the other finds it retired after its
--     wait and gets 28000, and the session lives on (it is a race, not a replay: the token was
--     live when that request arrived). A later replay of the token revokes the session.
--   * Expired, revoked, unknown, or a suspended user: 28000.
-- Who: keen_app, no actor needed. Raises 25000, 28000.
CREATE OR REPLACE FUNCTION keen.refresh_login_session(p_refresh_token text, p_ip inet DEFAULT NULL)
RETURNS TABLE (user_id uuid, login_session_id uuid, refresh_token text, refresh_expires_at timestamptz,
               access_token text, access_expires_at timestamptz, is_admin boolean, aal text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_hash text;
    v_found record;
    v_token keen.login_refresh_tokens;
    v_session keen.login_sessions;
BEGIN
    PERFORM keen_private.require_read_committed();
    IF p_refresh_token IS NULL OR p_refresh_token !~ '^keenr_[A-Za-z0-9_-]{43}$' THEN
        RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = '28000';
    END IF;
    v_hash := keen_private.token_hash(p_refresh_token);
    SELECT * INTO v_found FROM keen_private.auth_find_refresh_token(v_hash);
    IF v_found.user_id IS NULL THEN
        RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = '28000';
    END IF;
    IF v_found.retired THEN
        IF keen_private.auth_recorder_query(pg_catalog.format(
               'SELECT keen.record_refresh_reuse(%L::uuid, %L::uuid, %L::inet)::text',
               v_found.login_session_id, v_found.user_id, p_ip)) IS NULL THEN
            RAISE LOG 'keen: refresh token reuse on login session % not recorded', v_found.login_session_id;
        END IF;
        RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = '28000';
    END IF;
    PERFORM keen_private.set_actor(v_found.user_id);
    SELECT * INTO v_token FROM keen.login_refresh_tokens t WHERE t.token_hash = v_hash FOR UPDATE;
    SELECT * INTO v_session FROM keen.login_sessions s WHERE s.id = v_token.login_session_id;
    IF v_token.retired_at IS NOT NULL OR v_token.expires_at <= pg_catalog.clock_timestamp()
       OR v_session.revoked_at IS NOT NULL OR v_session.refresh_expires_at <= pg_catalog.clock_timestamp()
       OR NOT EXISTS (SELECT 1 FROM keen.users u WHERE u.id = v_token.user_id AND u.account_status = 'active') THEN
        PERFORM keen_private.set_actor(NULL);
        RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = '28000';
    END IF;
    UPDATE keen.login_refresh_tokens t SET retired_at = pg_catalog.clock_timestamp() WHERE t.token_hash = v_hash;
    UPDATE keen.login_sessions s SET ip = COALESCE(p_ip, s.ip) WHERE s.id = v_session.id;
    RETURN QUERY SELECT * FROM keen_private.issue_login_tokens(v_session);
END
$$;
REVOKE ALL ON FUNCTION keen.refresh_login_session(text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.refresh_login_session(text, inet) TO keen_app;
COMMENT ON FUNCTION keen.refresh_login_session(text, inet) IS
    'Rotates a refresh token; a retired one presented again revokes the login session (28000).';

-- keen.record_refresh_reuse: runs in the loopback session (as keen_recorder) and commits there:
-- a retired refresh token was presented again, so its login session is revoked (every token of
-- it retired) and the reuse audited.
-- Who: keen_recorder only. Raises: nothing of its own.
CREATE OR REPLACE FUNCTION keen.record_refresh_reuse(p_login_session_id uuid, p_user_id uuid, p_ip inet)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET lock_timeout = '2s'
AS $$
BEGIN
    PERFORM keen_private.set_actor(p_user_id);
    PERFORM keen_private.revoke_login_sessions(p_user_id, p_login_session_id, 'refresh_token_reused');
    PERFORM keen_private.set_actor(NULL);
    PERFORM keen_private.write_audit('auth', 'refresh_token_reused', p_user_id,
                                     pg_catalog.jsonb_build_object('login_session_id', p_login_session_id),
                                     'high', p_ip);
END
$$;
REVOKE ALL ON FUNCTION keen.record_refresh_reuse(uuid, uuid, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_refresh_reuse(uuid, uuid, inet) TO keen_recorder;
COMMENT ON FUNCTION keen.record_refresh_reuse(uuid, uuid, inet) IS
    'Loopback only (keen_recorder): revokes a login session whose retired refresh token came back.';

-- keen_private.revoke_login_sessions: revokes p_user_id's live login sessions (all of them, or the
-- one p_login_session_id) and retires their refresh tokens; their access tokens die with them.
-- Returns how many were revoked. Runs under RLS as the actor (the user, or an admin).
-- Who: keen's functions. Raises: nothing of its own.
CREATE OR REPLACE FUNCTION keen_private.revoke_login_sessions(p_user_id uuid, p_login_session_id uuid, p_reason text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    WITH revoked AS (
        UPDATE keen.login_sessions s
           SET revoked_at = pg_catalog.clock_timestamp(), revoked_reason = p_reason
         WHERE s.user_id = p_user_id AND s.revoked_at IS NULL
           AND (p_login_session_id IS NULL OR s.id = p_login_session_id)
        RETURNING s.id
    ), retired AS (
        UPDATE keen.login_refresh_tokens t SET retired_at = pg_catalog.clock_timestamp()
         WHERE t.login_session_id IN (SELECT r.id FROM revoked r) AND t.retired_at IS NULL
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO v_count FROM revoked;
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION keen_private.revoke_login_sessions(uuid, uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.revoke_login_sessions(uuid, uuid, text) IS 'Internal: revokes login sessions of a user.';

-- keen.authenticate_access_token: the access token's user becomes the actor for the transaction.
-- The token is a JWT (HS256) signed with a key only keen_auth reads; it must have a valid
-- signature, not be expired, and its login session must be live and its user active.
-- Who: keen_app, no actor needed. Raises 28000 otherwise.
CREATE OR REPLACE FUNCTION keen.authenticate_access_token(p_access_token text)
RETURNS TABLE (user_id uuid, login_session_id uuid, is_admin boolean, aal text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_row record;
BEGIN
    SELECT * INTO v_row FROM keen_private.auth_check_access_token(p_access_token);
    IF v_row.user_id IS NULL THEN
        RAISE EXCEPTION 'invalid or expired access token' USING ERRCODE = '28000';
    END IF;
    PERFORM keen_private.set_actor_scoped(v_row.user_id, '{}');
    RETURN QUERY SELECT v_row.user_id, v_row.login_session_id, v_row.is_admin, v_row.aal;
END
$$;
REVOKE ALL ON FUNCTION keen.authenticate_access_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.authenticate_access_token(text) TO keen_app;
COMMENT ON FUNCTION keen.authenticate_access_token(text) IS 'Access token (JWT) -> actor for the transaction; 28000 if not valid.';

-- keen.list_login_sessions: the actor's live login sessions, newest first.
-- Who: keen_app with an actor (not a scoped API key). Raises 28000 without an actor, 42501 for a scoped key.
CREATE OR REPLACE FUNCTION keen.list_login_sessions()
RETURNS TABLE (login_session_id uuid, created_at timestamptz, last_used_at timestamptz, ip inet,
               user_agent text, aal text, refresh_expires_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
BEGIN
    PERFORM keen_private.require_scope(NULL);
    RETURN QUERY
    SELECT s.id, s.created_at, s.last_used_at, s.ip, s.user_agent, s.aal, s.refresh_expires_at
      FROM keen.login_sessions s
     WHERE s.user_id = v_actor AND s.revoked_at IS NULL AND s.refresh_expires_at > pg_catalog.now()
     ORDER BY s.created_at DESC;
END
$$;
REVOKE ALL ON FUNCTION keen.list_login_sessions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.list_login_sessions() TO keen_app;
COMMENT ON FUNCTION keen.list_login_sessions() IS 'The actor''s live login sessions.';

-- keen.revoke_login_session: revokes one login session: the actor's own, or anyone's for an
-- admin; revoking a revoked one does nothing more. Audited.
-- Who: keen_app with an actor. Raises 28000 without an actor, 42501 for a scoped key, P0002 for
-- an unknown session or another user's (never told apart).
CREATE OR REPLACE FUNCTION keen.revoke_login_session(p_login_session_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_session keen.login_sessions;
BEGIN
    PERFORM keen_private.require_scope(NULL);
    SELECT * INTO v_session FROM keen.login_sessions s WHERE s.id = p_login_session_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'login session not found' USING ERRCODE = 'P0002';
    END IF;
    IF v_session.revoked_at IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM keen_private.revoke_login_sessions(v_session.user_id, v_session.id, 'revoked');
    PERFORM keen_private.write_audit('auth', 'login_session_revoked', v_session.user_id,
                                     pg_catalog.jsonb_build_object('login_session_id', v_session.id,
                                                                   'by_owner', v_session.user_id = v_actor), 'medium');
END
$$;
REVOKE ALL ON FUNCTION keen.revoke_login_session(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.revoke_login_session(uuid) TO keen_app;
COMMENT ON FUNCTION keen.revoke_login_session(uuid) IS 'Revokes a login session (own, or any for an admin); P0002 if not found.';

-- keen.revoke_all_login_sessions: revokes every live login session of p_user_id (the actor, or
-- anyone for an admin); returns how many. Audited.
-- Who: keen_app with an actor. Raises 28000 without an actor, 42501 for another user (not an
-- admin) or a scoped key, P0002 for an unknown user.
CREATE OR REPLACE FUNCTION keen.revoke_all_login_sessions(p_user_id uuid)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_count integer;
BEGIN
    PERFORM keen_private.require_scope(NULL);
    IF p_user_id IS DISTINCT FROM v_actor THEN
        PERFORM keen_private.require_admin();
        IF NOT EXISTS (SELECT 1 FROM keen.users u WHERE u.id = p_user_id) THEN
            RAISE EXCEPTION 'user not found' USING ERRCODE = 'P0002';
        END IF;
    END IF;
    v_count := keen_private.revoke_login_sessions(p_user_id, NULL, 'revoked_all');
    PERFORM keen_private.write_audit('auth', 'login_sessions_revoked', p_user_id,
                                     pg_catalog.jsonb_build_object('count', v_count, 'by_owner', p_user_id = v_actor),
                                     'medium');
    RETURN v_count;
END
$$;
REVOKE ALL ON FUNCTION keen.revoke_all_login_sessions(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.revoke_all_login_sessions(uuid) TO keen_app;
COMMENT ON FUNCTION keen.revoke_all_login_sessions(uuid) IS 'Revokes every login session of a user (own or admin); how many.';


-- ---------------------------------------------------------------------------------------------
-- Second factor: TOTP (RFC 6238) and recovery codes
-- ---------------------------------------------------------------------------------------------

-- keen.totp_code: the RFC 6238 code (HMAC-SHA1, RFC 4226's dynamic truncation) of p_secret at
-- p_at: the counter is floor(epoch / p_step_seconds) as 8 big-endian bytes.
-- Who: anyone with EXECUTE (keen_app): a pure function. Raises 22023 for a NULL or empty secret,
-- digits outside 6..10, a step outside 1..3600.
CREATE OR REPLACE FUNCTION keen.totp_code(p_secret bytea, p_at timestamptz, p_digits int DEFAULT 6,
                                          p_step_seconds int DEFAULT 30)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_mac bytea;
    v_offset int;
    v_binary bigint;
BEGIN
    IF p_secret IS NULL OR pg_catalog.length(p_secret) = 0 OR p_at IS NULL
       OR p_digits IS NULL OR p_digits NOT BETWEEN 6 AND 10
       OR p_step_seconds IS NULL OR p_step_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'totp_code: a secret, a time, 6 to 10 digits and a step of 1 to 3600 s'
            USING ERRCODE = '22023';
    END IF;
    v_mac := keen_ext.hmac(pg_catalog.int8send(pg_catalog.floor(EXTRACT(EPOCH FROM p_at) / p_step_seconds)::bigint),
                           p_secret, 'sha1');
    v_offset := pg_catalog.get_byte(v_mac, 19) & 15;
    v_binary := ((pg_catalog.get_byte(v_mac, v_offset) & 127)::bigint << 24)
              | (pg_catalog.get_byte(v_mac, v_offset + 1)::bigint << 16)
              | (pg_catalog.get_byte(v_mac, v_offset + 2)::bigint << 8)
              | pg_catalog.get_byte(v_mac, v_offset + 3)::bigint;
    RETURN pg_catalog.lpad((v_binary % (10::bigint ^ p_digits)::bigint)::text, p_digits, '0');
END
$$;
REVOKE ALL ON FUNCTION keen.totp_code(bytea, timestamptz, int, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.totp_code(bytea, timestamptz, int, int) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.totp_code(bytea, timestamptz, int, int) IS 'RFC 6238 TOTP code (HMAC-SHA1) of a secret at a time.';

-- keen_private.base32: RFC 4648 base32 (no padding) of bytes: how authenticator apps take a secret.
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.base32(p_bytes bytea)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_alphabet constant text := 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
    v_out text := '';
    v_buffer bigint := 0;
    v_bits int := 0;
    i int;
BEGIN
    FOR i IN 0 .. pg_catalog.length(p_bytes) - 1 LOOP
        v_buffer := ((v_buffer << 8) | pg_catalog.get_byte(p_bytes, i)) & 65535;
        v_bits := v_bits + 8;
        WHILE v_bits >= 5 LOOP
            v_out := v_out || pg_catalog.substr(v_alphabet, ((v_buffer >> (v_bits - 5)) & 31)::int + 1, 1);
            v_bits := v_bits - 5;
        END LOOP;
    END LOOP;
    IF v_bits > 0 THEN
        v_out := v_out || pg_catalog.substr(v_alphabet, ((v_buffer << (5 - v_bits)) & 31)::int + 1, 1);
    END IF;
    RETURN v_out;
END
$$;
REVOKE ALL ON FUNCTION keen_private.base32(bytea) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.base32(bytea) IS 'Internal: RFC 4648 base32 without padding.';

-- keen_private.auth_totp_encrypt / auth_totp_decrypt: a TOTP secret sealed with pgcrypto's
-- pgp_sym_encrypt (AES-256) under keen.auth_secrets' totp_encryption_key, which only keen_auth
-- reads. keen_app can read neither the table nor the key.
-- Who: keen_owner's second-factor functions; owned by keen_auth. Raises: nothing of their own.
CREATE OR REPLACE FUNCTION keen_private.auth_totp_encrypt(p_secret bytea)
RETURNS bytea
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN keen_ext.pgp_sym_encrypt_bytea(p_secret,
        (SELECT k.value FROM keen.auth_secrets k WHERE k.name = 'totp_encryption_key'), 'cipher-algo=aes256');
END
$$;
ALTER FUNCTION keen_private.auth_totp_encrypt(bytea) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_totp_encrypt(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_totp_encrypt(bytea) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_totp_encrypt(bytea) IS 'Internal (keen_auth): seals a TOTP secret.';

CREATE OR REPLACE FUNCTION keen_private.auth_totp_decrypt(p_sealed bytea)
RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN keen_ext.pgp_sym_decrypt_bytea(p_sealed,
        (SELECT k.value FROM keen.auth_secrets k WHERE k.name = 'totp_encryption_key'));
END
$$;
ALTER FUNCTION keen_private.auth_totp_decrypt(bytea) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_totp_decrypt(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_totp_decrypt(bytea) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_totp_decrypt(bytea) IS 'Internal (keen_auth): opens a TOTP secret.';

-- keen_private.totp_matches: the time step (one early, now, one late, each after the last step
-- already used) at which p_code is the code of the sealed secret, or NULL.
-- Who: keen's second-factor functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.totp_matches(p_sealed bytea, p_code text, p_after_step bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_secret bytea;
    v_now bigint := pg_catalog.floor(EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) / 30)::bigint;
    v_step bigint;
BEGIN
    IF p_code IS NULL OR p_code !~ '^[0-9]{6}$' THEN
        RETURN NULL;
    END IF;
    v_secret := keen_private.auth_totp_decrypt(p_sealed);
    FOR v_step IN v_now - 1 .. v_now + 1 LOOP
        IF (p_after_step IS NULL OR v_step > p_after_step)
           AND keen.totp_code(v_secret, pg_catalog.to_timestamp(v_step * 30), 6, 30) = p_code THEN
            RETURN v_step;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION keen_private.totp_matches(bytea, text, bigint) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.totp_matches(bytea, text, bigint) IS 'Internal: the step a TOTP code matches, or NULL.';

-- keen_private.check_second_factor: whether p_code is a current TOTP code of p_user_id's
-- confirmed secret (not used before: the step is remembered, so a code is refused the second
-- time) or one of its unused recovery codes (then used up). Runs as the user (RLS).
-- Who: keen's sign-in functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.check_second_factor(p_user_id uuid, p_code text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_factor keen.totp_factors;
    v_step bigint;
    v_code text := pg_catalog.upper(pg_catalog.replace(pg_catalog.btrim(COALESCE(p_code, '')), '-', ''));
BEGIN
    SELECT * INTO v_factor FROM keen.totp_factors f
     WHERE f.user_id = p_user_id AND f.confirmed_at IS NOT NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    v_step := keen_private.totp_matches(v_factor.secret_encrypted, v_code, v_factor.last_used_step);
    IF v_step IS NOT NULL THEN
        UPDATE keen.totp_factors f SET last_used_step = v_step WHERE f.user_id = p_user_id;
        RETURN true;
    END IF;
    UPDATE keen.recovery_codes r SET used_at = pg_catalog.now()
     WHERE r.user_id = p_user_id AND r.code_hash = keen_private.token_hash(v_code) AND r.used_at IS NULL;
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION keen_private.check_second_factor(uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.check_second_factor(uuid, text) IS 'Internal: a TOTP code (once) or an unused recovery code.';

-- keen_private.counted_second_factor: keen_private.check_second_factor, counted first like a
-- password: the recorder commits the attempt as a failure (keen.record_login_attempt, purpose
-- 'second_factor', per user: the e-mail, any source) before the code is looked at, so the
-- count survives the KN006 that rolls the caller back. After second_factor_max_failures
-- failures in the window the code is not checked at all (false: KN006 for every code until
-- they age out); an attempt that cannot be counted is refused too (fail closed). A match
-- deletes the user's second-factor failures (this transaction).
-- Who: start_login_session, disable_totp. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.counted_second_factor(p_user_id uuid, p_email text, p_code text, p_ip inet)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.lower(COALESCE(p_email, ''));
    v_verdict text;
BEGIN
    v_verdict := keen_private.auth_recorder_query(pg_catalog.format(
        'SELECT keen.record_login_attempt(%L, %L::inet, %L::uuid, %L)', v_email, p_ip, pg_catalog.gen_random_uuid(),
        'second_factor'));
    IF v_verdict IS DISTINCT FROM 'ok' OR NOT keen_private.check_second_factor(p_user_id, p_code) THEN
        RETURN false;
    END IF;
    DELETE FROM keen.login_attempts a WHERE a.email = v_email AND a.purpose = 'second_factor';
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION keen_private.counted_second_factor(uuid, text, text, inet) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.counted_second_factor(uuid, text, text, inet) IS
    'Internal: a second-factor check counted first per user; false past second_factor_max_failures.';

-- keen.enroll_totp: a new 160-bit TOTP secret for the actor, pending until confirm_totp; it
-- replaces an earlier pending one. Stored sealed (auth_totp_encrypt); the secret is shown only here.
-- Who: keen_app with an actor (not a scoped API key). Raises 28000 without an actor, 42501 for a
-- scoped key, 22023 when the second factor is already on (disable it first).
CREATE OR REPLACE FUNCTION keen.enroll_totp()
RETURNS TABLE (secret_base32 text, otpauth_uri text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_secret bytea := keen_ext.gen_random_bytes(20);
    v_email text;
BEGIN
    PERFORM keen_private.require_scope(NULL);
    IF EXISTS (SELECT 1 FROM keen.totp_factors f WHERE f.user_id = v_actor AND f.confirmed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'the second factor is already on: disable it first' USING ERRCODE = '22023';
    END IF;
    INSERT INTO keen.totp_factors AS f (user_id, secret_encrypted)
    VALUES (v_actor, keen_private.auth_totp_encrypt(v_secret))
    ON CONFLICT (user_id) DO UPDATE
       SET secret_encrypted = EXCLUDED.secret_encrypted, last_used_step = NULL, created_at = pg_catalog.now();
    SELECT u.email INTO v_email FROM keen.users u WHERE u.id = v_actor;
    RETURN QUERY SELECT keen_private.base32(v_secret),
                        'otpauth://totp/keen:' || pg_catalog.replace(v_email, '@', '%40')
                        || '?secret=' || keen_private.base32(v_secret)
                        || '&issuer=keen&algorithm=SHA1&digits=6&period=30';
END
$$;
REVOKE ALL ON FUNCTION keen.enroll_totp() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.enroll_totp() TO keen_app;
COMMENT ON FUNCTION keen.enroll_totp() IS 'A pending TOTP secret for the actor (shown once).';

-- keen.confirm_totp: turns the second factor on when p_code is a current code of the pending
-- secret, and returns ten single-use recovery codes (shown only here, stored as SHA-256). Audited.
-- Who: keen_app with an actor (not a scoped key). Raises 28000 without an actor, 42501 for a
-- scoped key, KN006 when there is no pending secret or the code does not match.
CREATE OR REPLACE FUNCTION keen.confirm_totp(p_code text)
RETURNS TABLE (recovery_code text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_factor keen.totp_factors;
    v_step bigint;
    v_codes text[];
BEGIN
    PERFORM keen_private.require_scope(NULL);
    PERFORM keen_private.require_size('second_factor', p_code);
    SELECT * INTO v_factor FROM keen.totp_factors f
     WHERE f.user_id = v_actor AND f.confirmed_at IS NULL FOR UPDATE;
    IF FOUND THEN
        v_step := keen_private.totp_matches(v_factor.secret_encrypted, pg_catalog.btrim(p_code), NULL);
    END IF;
    IF v_step IS NULL THEN
        RAISE EXCEPTION 'the code does not match the pending TOTP secret' USING ERRCODE = 'KN006';
    END IF;
    UPDATE keen.totp_factors f SET confirmed_at = pg_catalog.now(), last_used_step = v_step WHERE f.user_id = v_actor;
    UPDATE keen.users u SET mfa_enabled = true, updated_at = pg_catalog.now() WHERE u.id = v_actor;
    DELETE FROM keen.recovery_codes r WHERE r.user_id = v_actor;
    SELECT pg_catalog.array_agg(pg_catalog.substr(c, 1, 5) || '-' || pg_catalog.substr(c, 6, 5))
      INTO v_codes
      FROM (SELECT keen_private.base32(keen_ext.gen_random_bytes(7)) AS c FROM pg_catalog.generate_series(1, 10)) g;
    INSERT INTO keen.recovery_codes (user_id, code_hash)
    SELECT v_actor, keen_private.token_hash(pg_catalog.replace(c, '-', '')) FROM pg_catalog.unnest(v_codes) c;
    PERFORM keen_private.write_audit('auth', 'second_factor_enabled', v_actor, '{}', 'medium');
    RETURN QUERY SELECT c FROM pg_catalog.unnest(v_codes) c;
END
$$;
REVOKE ALL ON FUNCTION keen.confirm_totp(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.confirm_totp(text) TO keen_app;
COMMENT ON FUNCTION keen.confirm_totp(text) IS 'Turns TOTP on (KN006 for a wrong code); ten recovery codes, shown once.';

-- keen.disable_totp: turns the actor's second factor off; needs a current code (not used before)
-- or an unused recovery code, counted like a sign-in's (keen_private.counted_second_factor: a
-- stolen access token cannot guess codes without limit). The secret and the recovery codes
-- are deleted. Audited.
-- Who: keen_app with an actor (not a scoped key). Raises 28000 without an actor, 42501 for a
-- scoped key, 22023 for a code over 64 bytes, KN006 for a wrong or used code (or no second
-- factor on, or past second_factor_max_failures).
CREATE OR REPLACE FUNCTION keen.disable_totp(p_code text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
BEGIN
    PERFORM keen_private.require_scope(NULL);
    PERFORM keen_private.require_size('second_factor', p_code);
    IF NOT keen_private.counted_second_factor(v_actor, (SELECT u.email FROM keen.users u WHERE u.id = v_actor),
                                              p_code, NULL) THEN
        RAISE EXCEPTION 'a current TOTP code or an unused recovery code is required' USING ERRCODE = 'KN006';
    END IF;
    DELETE FROM keen.totp_factors f WHERE f.user_id = v_actor;
    DELETE FROM keen.recovery_codes r WHERE r.user_id = v_actor;
    UPDATE keen.users u SET mfa_enabled = false, updated_at = pg_catalog.now() WHERE u.id = v_actor;
    PERFORM keen_private.write_audit('auth', 'second_factor_disabled', v_actor, '{}', 'high');
END
$$;
REVOKE ALL ON FUNCTION keen.disable_totp(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.disable_totp(text) TO keen_app;
COMMENT ON FUNCTION keen.disable_totp(text) IS 'Turns TOTP off (KN006 without a valid code).';

-- ---------------------------------------------------------------------------------------------
-- E-mail verification and password reset
-- ---------------------------------------------------------------------------------------------

-- keen_private.auth_find_account_token: the user, e-mail and purpose of an account token with
-- this SHA-256, read with no actor. Who: verify_email, reset_password; owned by keen_auth.
CREATE OR REPLACE FUNCTION keen_private.auth_find_account_token(p_token_hash text)
RETURNS TABLE (user_id uuid, purpose text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT t.user_id, t.purpose FROM keen.account_tokens t WHERE t.token_hash = p_token_hash;
END
$$;
ALTER FUNCTION keen_private.auth_find_account_token(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_find_account_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_find_account_token(text) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_find_account_token(text) IS 'Internal (keen_auth): who holds an account token.';

-- keen_private.use_account_token: locks the live token of p_purpose with this text, marks it used
-- and returns its row; the token's user is then the actor (the caller saves its own actor and
-- scopes first and restores them: keen_private.restore_actor). NULL row (and no actor change,
-- scopes included) for an unknown, used, expired, over-long (size_cap 'token') or
-- other-purpose token. p_use false: checked and locked, not used.
-- Who: verify_email, reset_password. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.use_account_token(p_token text, p_purpose text, p_use boolean)
RETURNS keen.account_tokens
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_hash text := keen_private.token_hash(p_token);
    v_found record;
    v_row keen.account_tokens;
    v_previous uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
BEGIN
    -- Over the cap is an invalid token (28000 for the caller), not 22023: a credential check
    -- tells nothing about why a token is refused.
    IF p_token IS NULL OR pg_catalog.octet_length(p_token) > keen_private.size_cap('token') THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_found FROM keen_private.auth_find_account_token(v_hash);
    IF v_found.user_id IS NULL OR v_found.purpose <> p_purpose THEN
        RETURN NULL;
    END IF;
    PERFORM keen_private.set_actor(v_found.user_id);
    SELECT * INTO v_row FROM keen.account_tokens t WHERE t.token_hash = v_hash FOR UPDATE;
    IF v_row.used_at IS NOT NULL OR v_row.expires_at <= pg_catalog.clock_timestamp()
       OR NOT EXISTS (SELECT 1 FROM keen.users u WHERE u.id = v_row.user_id AND u.email = v_row.email
                                                  AND u.account_status = 'active') THEN
        PERFORM keen_private.restore_actor(v_previous, v_previous_scopes);
        RETURN NULL;
    END IF;
    IF p_use THEN
        UPDATE keen.account_tokens t SET used_at = pg_catalog.clock_timestamp() WHERE t.token_hash = v_hash;
    END IF;
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen_private.use_account_token(text, text, boolean) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.use_account_token(text, text, boolean) IS 'Internal: checks and uses a single-use account token.';

-- keen.request_email_verification: a token for the actor's e-mail, valid 24 hours, single use
-- (the gateway mails it; only its SHA-256 is kept).
-- Who: keen_app with an actor (not a scoped key). Raises 28000 without an actor, 42501 for a scoped key.
CREATE OR REPLACE FUNCTION keen.request_email_verification()
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_token text := keen_private.random_token('keenv_');
BEGIN
    PERFORM keen_private.require_scope(NULL);
    INSERT INTO keen.account_tokens (token_hash, user_id, purpose, email, expires_at)
    SELECT keen_private.token_hash(v_token), u.id, 'email_verification', u.email, pg_catalog.now() + interval '24 hours'
      FROM keen.users u WHERE u.id = v_actor;
    RETURN v_token;
END
$$;
REVOKE ALL ON FUNCTION keen.request_email_verification() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.request_email_verification() TO keen_app;
COMMENT ON FUNCTION keen.request_email_verification() IS 'A single-use e-mail verification token (24 h) for the actor.';

-- keen.verify_email: marks the token's e-mail verified (the token is used up) and returns the
-- user id; the caller's actor is unchanged (its scopes included: keen_private.restore_actor).
-- Audited.
-- Who: keen_app, no actor needed. Raises 28000 for an unknown, used or expired token (or one
-- for an e-mail the user no longer has).
CREATE OR REPLACE FUNCTION keen.verify_email(p_token text)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_previous uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
    v_row keen.account_tokens;
BEGIN
    v_row := keen_private.use_account_token(p_token, 'email_verification', true);
    IF v_row.user_id IS NULL THEN
        RAISE EXCEPTION 'invalid or expired verification token' USING ERRCODE = '28000';
    END IF;
    UPDATE keen.users u SET email_verified = true, updated_at = pg_catalog.now() WHERE u.id = v_row.user_id;
    PERFORM keen_private.write_audit('user', 'email_verified', v_row.user_id,
                                     pg_catalog.jsonb_build_object('email', v_row.email));
    PERFORM keen_private.restore_actor(v_previous, v_previous_scopes);
    RETURN v_row.user_id;
END
$$;
REVOKE ALL ON FUNCTION keen.verify_email(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.verify_email(text) TO keen_app;
COMMENT ON FUNCTION keen.verify_email(text) IS 'Uses an e-mail verification token; 28000 if unknown, used or expired.';

-- keen.request_password_reset: a reset token for the active account with this e-mail, valid 1
-- hour, single use; NULL for an unknown or inactive e-mail. Both paths do the same work but one
-- small insert (a random token, its hash, one index look-up; no bcrypt on either), so the time
-- does not tell them apart (tests/test_login_sessions.py compares the two).
-- The caller's actor is unchanged (its scopes included: keen_private.restore_actor).
-- Who: keen_app, no actor needed. Raises 22023 for an e-mail over 255 bytes.
CREATE OR REPLACE FUNCTION keen.request_password_reset(p_email text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.lower(pg_catalog.btrim(COALESCE(p_email, '')));
    v_previous uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
    v_token text := keen_private.random_token('keenp_');
    v_user_id uuid;
    v_status text;
BEGIN
    PERFORM keen_private.require_size('email', v_email);
    SELECT f.user_id, f.account_status INTO v_user_id, v_status FROM keen_private.auth_find_email(v_email) f;
    IF v_user_id IS NULL OR v_status <> 'active' THEN
        PERFORM keen_private.token_hash(v_token);
        RETURN NULL;
    END IF;
    PERFORM keen_private.set_actor(v_user_id);
    INSERT INTO keen.account_tokens (token_hash, user_id, purpose, email, expires_at)
    VALUES (keen_private.token_hash(v_token), v_user_id, 'password_reset', v_email, pg_catalog.now() + interval '1 hour');
    PERFORM keen_private.restore_actor(v_previous, v_previous_scopes);
    RETURN v_token;
END
$$;
REVOKE ALL ON FUNCTION keen.request_password_reset(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.request_password_reset(text) TO keen_app;
COMMENT ON FUNCTION keen.request_password_reset(text) IS 'A single-use password reset token (1 h); NULL for an unknown e-mail, in the same time.';

-- keen.reset_password: sets a new password with a reset token: the password rules of
-- register_user first (22023, and the token stays usable), then the token is used up, every login
-- session of the user is revoked, the e-mail's failed sign-ins are cleared; returns the user id.
-- The caller's actor is unchanged (its scopes included: keen_private.restore_actor). Audited.
-- Who: keen_app, no actor needed. Raises 22023 for an invalid new password, 28000 for an
-- unknown, used or expired token.
CREATE OR REPLACE FUNCTION keen.reset_password(p_token text, p_new_password text)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_previous uuid := keen.actor_id();
    v_previous_scopes text := keen_private.saved_scopes();
    v_row keen.account_tokens;
    v_revoked integer;
BEGIN
    v_row := keen_private.use_account_token(p_token, 'password_reset', false);
    IF v_row.user_id IS NULL THEN
        RAISE EXCEPTION 'invalid or expired reset token' USING ERRCODE = '28000';
    END IF;
    PERFORM keen_private.users_check_password(p_new_password);
    UPDATE keen.account_tokens t SET used_at = pg_catalog.clock_timestamp() WHERE t.token_hash = v_row.token_hash;
    UPDATE keen.users u
       SET password_hash = keen_ext.crypt(p_new_password, keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int)),
           updated_at = pg_catalog.now()
     WHERE u.id = v_row.user_id;
    v_revoked := keen_private.revoke_login_sessions(v_row.user_id, NULL, 'password_reset');
    DELETE FROM keen.login_attempts a WHERE a.email = v_row.email AND a.purpose IN ('sign_in', 'change_password');
    PERFORM keen_private.write_audit('user', 'password_reset', v_row.user_id,
                                     pg_catalog.jsonb_build_object('login_sessions_revoked', v_revoked), 'high');
    PERFORM keen_private.restore_actor(v_previous, v_previous_scopes);
    RETURN v_row.user_id;
END
$$;
REVOKE ALL ON FUNCTION keen.reset_password(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.reset_password(text, text) TO keen_app;
COMMENT ON FUNCTION keen.reset_password(text, text) IS 'New password with a reset token; revokes every login session; 28000 bad token.';
