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
--   * keen_private.write_audit appends to one hash chain per chain_name, one writer at a time.
--
-- Advisory locks (two-int form, class id first): 7301 = an audit chain, 7302 = logins of one e-mail.

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

-- keen_private.write_audit: appends one entry to the audit chain 'main', in the actor's name
-- (actor_id = keen.actor_id(), is_admin_action = keen.actor_is_admin()).
-- The link is serialized: an advisory lock on the chain, held until the transaction ends, makes
-- concurrent writers take turns, so each reads the head (sequence, hash) its predecessor
-- committed; holding it to the end means no entry ever links to one that rolled back, and the
-- sequence has no gaps. Call it last in a function (after the rows it describes are locked) so
-- the lock is held briefly and always after the area's own locks.
-- Who: keen_owner's SECURITY DEFINER functions (credits, sessions, ...); never keen_app.
-- Raises 22023 for an invalid event type/subtype (lower-case words), risk level or event data.
CREATE OR REPLACE FUNCTION keen_private.write_audit(p_event_type text, p_event_subtype text, p_user_id uuid,
                                            p_event_data jsonb DEFAULT '{}', p_risk_level text DEFAULT 'low',
                                            p_ip inet DEFAULT NULL, p_session_id uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_row keen.audit_logs;
    v_head keen.audit_chain_heads;
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

    v_row.chain_name := 'main';
    PERFORM pg_catalog.pg_advisory_xact_lock(7301, pg_catalog.hashtext(v_row.chain_name));
    SELECT * INTO v_head FROM keen.audit_chain_heads h WHERE h.chain_name = v_row.chain_name;

    v_row.chain_seq := COALESCE(v_head.last_seq, 0) + 1;
    v_row.prev_hash := v_head.last_hash;
    v_row.event_type := p_event_type;
    v_row.event_subtype := p_event_subtype;
    v_row.user_id := p_user_id;
    v_row.actor_id := keen.actor_id();
    v_row.session_id := p_session_id;
    v_row.ip_address := p_ip;
    v_row.event_data := COALESCE(p_event_data, '{}');
    v_row.risk_level := p_risk_level;
    v_row.is_admin_action := keen.actor_is_admin();
    v_row.created_at := pg_catalog.clock_timestamp();
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
END
$$;
REVOKE ALL ON FUNCTION keen_private.write_audit(text, text, uuid, jsonb, text, inet, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.write_audit(text, text, uuid, jsonb, text, inet, uuid) IS
    'Appends a hash-chained audit entry in the actor''s name; for keen''s own functions, never keen_app.';

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
    IF NOT (keen.actor_is_admin() OR keen.session_is_maintenance()) THEN
        RAISE EXCEPTION 'only an admin or the maintenance role may verify the audit chain'
            USING ERRCODE = '42501';
    END IF;
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

-- keen_private.auth_recorder_exec: runs one query (of one text column) over the loopback connection as
-- keen_recorder, which commits on its own. Returns NULL when it ran, else why not (not
-- configured, refused).
-- Who: keen_auth's own functions (it reads the recorder's password). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_recorder_exec(p_sql text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_password text;
    v_conninfo text;
BEGIN
    SELECT s.value INTO v_password FROM keen.auth_secrets s WHERE s.name = 'recorder_password';
    SELECT s.value INTO v_conninfo FROM keen.auth_secrets s WHERE s.name = 'recorder_conninfo';
    IF v_password IS NULL OR v_conninfo IS NULL THEN
        RETURN 'the login recorder is not configured (run keen-db migrate)';
    END IF;
    PERFORM 1 FROM keen_ext.dblink(
        v_conninfo
        || ' dbname=''' || pg_catalog.replace(pg_catalog.replace(pg_catalog.current_database(), '\', '\\'), '''', '\''') || ''''
        || ' user=keen_recorder application_name=keen_login_recorder connect_timeout=5'
        || ' password=''' || pg_catalog.replace(pg_catalog.replace(v_password, '\', '\\'), '''', '\''') || '''',
        p_sql, true) AS r(result text);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLERRM;
END
$$;
ALTER FUNCTION keen_private.auth_recorder_exec(text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_recorder_exec(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.auth_recorder_exec(text) IS 'Internal (keen_auth): one statement over the autonomous loopback connection.';

-- keen_private.auth_record_login_failure: has keen.record_login_failure run on the loopback connection,
-- so that the failure is committed even though the login raises. A recorder that cannot run
-- only costs the count of this failure: a WARNING, and the login still fails.
-- Who: keen.login (keen_owner). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_record_login_failure(p_email text, p_user_id uuid, p_ip inet,
                                                          p_reason text, p_audit boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_error text;
BEGIN
    v_error := keen_private.auth_recorder_exec(pg_catalog.format(
        'SELECT keen.record_login_failure(%L, %L::uuid, %L::inet, %L, %L::boolean)::text',
        p_email, p_user_id, p_ip, p_reason, p_audit));
    IF v_error IS NOT NULL THEN
        RAISE WARNING 'failed login not recorded: %', v_error;
    END IF;
    RETURN v_error IS NULL;
END
$$;
ALTER FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) TO keen_owner;
COMMENT ON FUNCTION keen_private.auth_record_login_failure(text, uuid, inet, text, boolean) IS
    'Internal (keen.login): records a failed login through the autonomous loopback.';

-- keen.login_recorder_status: whether the loopback works (`keen-db doctor` asks).
-- Who: the maintenance role (and superusers). Returns NULL when it works, else why not.
CREATE OR REPLACE FUNCTION keen.login_recorder_status()
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    RETURN keen_private.auth_recorder_exec('SELECT 1::text');
END
$$;
ALTER FUNCTION keen.login_recorder_status() OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen.login_recorder_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.login_recorder_status() TO keen_maintenance;
COMMENT ON FUNCTION keen.login_recorder_status() IS 'NULL when the failed-login recorder can connect, else the reason.';

-- keen.record_login_failure: runs in the loopback session (as keen_recorder, no actor) and
-- commits there: counts a failed login against its e-mail (reason 'bad_credentials') and, when
-- p_audit, writes its audit entry ('inactive': the right password for a suspended or banned
-- account, audited, not counted). Pruning never waits for a row another transaction holds.
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
    v_window interval := pg_catalog.make_interval(mins => keen.setting_numeric('login_failure_window_minutes')::int);
    v_failures bigint;
    v_locked boolean := false;
    v_data jsonb;
BEGIN
    IF p_reason IS NULL OR p_reason NOT IN ('bad_credentials', 'inactive') THEN
        RAISE EXCEPTION 'unknown login failure reason %', p_reason USING ERRCODE = '22023';
    END IF;
    IF p_reason = 'bad_credentials' THEN
        INSERT INTO keen.login_attempts (email, ip_address) VALUES (v_email, p_ip);
        DELETE FROM keen.login_attempts a
         WHERE a.id IN (SELECT b.id FROM keen.login_attempts b
                         WHERE b.attempted_at < pg_catalog.clock_timestamp() - v_window
                         ORDER BY b.attempted_at LIMIT 100
                           FOR UPDATE SKIP LOCKED);
        SELECT pg_catalog.count(*) INTO v_failures
          FROM keen.login_attempts a
         WHERE a.email = v_email AND a.attempted_at > pg_catalog.clock_timestamp() - v_window;
        v_locked := v_failures >= keen.setting_numeric('login_max_failures');
    END IF;
    IF p_audit THEN
        v_data := pg_catalog.jsonb_build_object('email', v_email, 'failures_in_window', v_failures, 'locked_out', v_locked);
        -- The count above must commit whatever happens to its audit entry: an audit chain
        -- held too long (lock_timeout) costs the entry, never the count.
        BEGIN
            BEGIN
                PERFORM keen_private.write_audit('auth', CASE p_reason WHEN 'inactive' THEN 'login_refused_inactive' ELSE 'login_failed' END,
                                         p_user_id, v_data, CASE WHEN v_locked THEN 'high' ELSE 'medium' END, p_ip);
            EXCEPTION WHEN foreign_key_violation THEN
                -- The user was registered by a transaction that has not committed (this session
                -- cannot see it yet): keep its id in the data instead.
                PERFORM keen_private.write_audit('auth', CASE p_reason WHEN 'inactive' THEN 'login_refused_inactive' ELSE 'login_failed' END,
                                         NULL, v_data || pg_catalog.jsonb_build_object('user_id', p_user_id),
                                         CASE WHEN v_locked THEN 'high' ELSE 'medium' END, p_ip);
            END;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'failed login for % counted but not audited: %', v_email, SQLERRM;
        END;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) TO keen_recorder;
COMMENT ON FUNCTION keen.record_login_failure(text, uuid, inet, text, boolean) IS
    'Loopback only (keen_recorder): counts and audits a failed login in its own transaction.';

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
-- expired, its user active), or no row.
-- Who: keen.authenticate_api_key (keen_owner); owned by keen_auth. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.auth_find_api_key(p_token_hash text)
RETURNS TABLE (token_id uuid, user_id uuid)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT t.id, t.user_id
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
-- Who: anyone with EXECUTE (keen_app); no actor needed, and the caller's actor is unchanged.
-- Raises: 22023 for an invalid e-mail, username (3-64 of letters, digits, '_', '.', '-',
-- starting with a letter or digit) or password (8 characters to 72 bytes); 23505 when the
-- e-mail (any case) or the username (any case) is taken.
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
    v_user keen.users;
BEGIN
    IF v_email IS NULL OR pg_catalog.length(v_email) > 255
       OR v_email !~ '^[a-z0-9.!#$%&''*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$' THEN
        RAISE EXCEPTION 'invalid e-mail address' USING ERRCODE = '22023';
    END IF;
    IF p_username IS NULL OR p_username !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$' THEN
        RAISE EXCEPTION 'invalid username: 3 to 64 letters, digits, _ . -, starting with a letter or digit'
            USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.users_check_password(p_password);
    IF p_display_name IS NOT NULL AND pg_catalog.length(p_display_name) > 255 THEN
        RAISE EXCEPTION 'display name longer than 255 characters' USING ERRCODE = '22023';
    END IF;

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
    PERFORM keen_private.set_actor(v_previous_actor);

    PERFORM keen_private.write_audit('user', 'registered', v_id,
                             pg_catalog.jsonb_build_object('email', v_email, 'username', p_username));
    RETURN QUERY SELECT v_user.id, v_user.email::text, v_user.username::text, v_user.role::text,
                        v_user.is_admin, v_user.account_status::text, v_user.created_at;
END
$$;
REVOKE ALL ON FUNCTION keen.register_user(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_user(text, text, text, text) TO keen_app;
COMMENT ON FUNCTION keen.register_user(text, text, text, text) IS 'Registers a user and its credit account; 22023 invalid input, 23505 duplicate.';

-- keen.login: checks an e-mail and password with bcrypt in the database.
--   * 28000 while the e-mail is locked out: login_max_failures (10) failed logins within
--     login_failure_window_minutes (15), counted per e-mail whether or not it exists; the lock
--     lifts as the failures age out of the window; a successful login clears them.
--   * 28P01 for a wrong password and for an unknown (or deleted) e-mail alike: same message,
--     same code, one bcrypt each. The failure is recorded through the loopback (it would
--     otherwise roll back with the error).
--   * 28000 for the right password of a suspended or banned account.
-- On success: records last_login_at / last_login_ip, clears the e-mail's failures, audits,
-- and returns the user; it does not change the caller's actor (use act_as for that).
-- Who: keen_app, no actor needed.
CREATE OR REPLACE FUNCTION keen.login(p_email text, p_password text, p_ip inet DEFAULT NULL)
RETURNS TABLE (user_id uuid, is_admin boolean, role text, admin_privileges jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.left(pg_catalog.lower(pg_catalog.btrim(COALESCE(p_email, ''))), 255);
    v_previous_actor uuid := keen.actor_id();
    v_user_id uuid;
    v_status text;
    v_ok boolean;
    v_chain_locked boolean;
    v_user keen.users;
BEGIN
    -- The failure count is committed by the recorder's own connection: a REPEATABLE READ
    -- snapshot would never see it (and so never lock out).
    PERFORM keen_private.require_read_committed();
    -- One login per e-mail at a time: parallel guesses cannot outrun the failure count.
    PERFORM pg_catalog.pg_advisory_xact_lock(7302, pg_catalog.hashtext(v_email));
    IF (SELECT pg_catalog.count(*) FROM keen.login_attempts a
         WHERE a.email = v_email
           AND a.attempted_at > pg_catalog.clock_timestamp()
                                - pg_catalog.make_interval(mins => keen.setting_numeric('login_failure_window_minutes')::int))
       >= keen.setting_numeric('login_max_failures') THEN
        RAISE EXCEPTION 'too many failed logins for this e-mail; try again later' USING ERRCODE = '28000';
    END IF;

    SELECT c.user_id, c.account_status, c.password_ok INTO v_user_id, v_status, v_ok
      FROM keen_private.auth_check_password(v_email, p_password, keen.setting_numeric('bcrypt_cost')::int) c;

    IF NOT v_ok OR v_status <> 'active' THEN
        -- This transaction may already hold the audit chain (it audited something before):
        -- the loopback would wait for it forever, so it then counts the failure unaudited.
        v_chain_locked := EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                                   WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid()
                                     AND l.classid = 7301 AND l.objsubid = 2 AND l.granted);
        IF v_ok AND v_status IN ('suspended', 'banned') THEN
            PERFORM keen_private.auth_record_login_failure(v_email, v_user_id, p_ip, 'inactive', NOT v_chain_locked);
            RAISE EXCEPTION 'this account is %', v_status USING ERRCODE = '28000';
        END IF;
        PERFORM keen_private.auth_record_login_failure(v_email, v_user_id, p_ip, 'bad_credentials', NOT v_chain_locked);
        RAISE EXCEPTION 'invalid e-mail or password' USING ERRCODE = '28P01';
    END IF;

    DELETE FROM keen.login_attempts a WHERE a.email = v_email;
    PERFORM keen_private.set_actor(v_user_id);
    UPDATE keen.users u
       SET last_login_at = pg_catalog.now(), last_login_ip = p_ip
     WHERE u.id = v_user_id
    RETURNING * INTO v_user;
    PERFORM keen_private.set_actor(v_previous_actor);

    PERFORM keen_private.write_audit('auth', 'login_succeeded', v_user_id,
                             pg_catalog.jsonb_build_object('email', v_email), 'low', p_ip);
    RETURN QUERY SELECT v_user.id, v_user.is_admin, v_user.role::text, v_user.admin_privileges;
END
$$;
REVOKE ALL ON FUNCTION keen.login(text, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.login(text, text, inet) TO keen_app;
COMMENT ON FUNCTION keen.login(text, text, inet) IS
    'bcrypt login; 28P01 wrong password or unknown e-mail alike, 28000 inactive account or locked-out e-mail.';

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
-- itself, or an account in neither state).
CREATE OR REPLACE FUNCTION keen_private.set_account_status(p_user_id uuid, p_from text, p_to text, p_reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_admin();
    v_user keen.users;
BEGIN
    IF p_reason IS NOT NULL AND pg_catalog.length(p_reason) > 1000 THEN
        RAISE EXCEPTION 'reason longer than 1000 characters' USING ERRCODE = '22023';
    END IF;
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
-- account, or a reason over 1000 characters.
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

-- keen.change_password: the actor changes its own password; the current one is required.
-- Who: keen_app with an actor. Raises 28000 without an actor, 28P01 for a wrong current
-- password, 22023 for an invalid new password or one equal to the current.
CREATE OR REPLACE FUNCTION keen.change_password(p_old_password text, p_new_password text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_user keen.users;
BEGIN
    SELECT * INTO v_user FROM keen.users u WHERE u.id = v_actor FOR UPDATE;
    IF p_old_password IS NULL
       OR keen_ext.crypt(p_old_password, v_user.password_hash) <> v_user.password_hash THEN
        RAISE EXCEPTION 'the current password is wrong' USING ERRCODE = '28P01';
    END IF;
    PERFORM keen_private.users_check_password(p_new_password);
    IF p_new_password = p_old_password THEN
        RAISE EXCEPTION 'the new password must differ from the current one' USING ERRCODE = '22023';
    END IF;
    UPDATE keen.users u
       SET password_hash = keen_ext.crypt(p_new_password, keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int)),
           updated_at = pg_catalog.now()
     WHERE u.id = v_actor;
    PERFORM keen_private.write_audit('user', 'password_changed', v_actor, '{}', 'medium');
END
$$;
REVOKE ALL ON FUNCTION keen.change_password(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.change_password(text, text) TO keen_app;
COMMENT ON FUNCTION keen.change_password(text, text) IS 'The actor changes its password (current one required).';

-- keen.update_profile: the actor updates its display name, time zone and preferences; a NULL
-- argument leaves that field as it is. The display name is trimmed (1-255 characters), the
-- time zone must be one of pg_timezone_names, preferences a JSON object of 16 kB at most (it
-- replaces the previous one).
-- Who: keen_app with an actor. Raises 28000 without an actor, 22023 for invalid input.
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
    IF p_display_name IS NOT NULL
       AND (pg_catalog.btrim(p_display_name) = '' OR pg_catalog.length(pg_catalog.btrim(p_display_name)) > 255) THEN
        RAISE EXCEPTION 'display name: 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF p_timezone IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = p_timezone) THEN
        RAISE EXCEPTION 'unknown time zone %', p_timezone USING ERRCODE = '22023';
    END IF;
    IF p_preferences IS NOT NULL
       AND (pg_catalog.jsonb_typeof(p_preferences) <> 'object' OR pg_catalog.octet_length(p_preferences::text) > 16384) THEN
        RAISE EXCEPTION 'preferences must be a JSON object of 16 kB at most' USING ERRCODE = '22023';
    END IF;
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
-- Scopes are lower-case words (letters, digits, _ . : * -, up to 64), at most 32, stored
-- sorted without duplicates; no scope is checked by keen-db itself. An admin holding
-- bypass_rate_limits gets keys with bypass_limits.
-- Who: keen_app with an actor. Raises 28000 without an actor, 22023 for a blank or long name,
-- invalid scopes, or an expiry not in the future.
CREATE OR REPLACE FUNCTION keen.create_api_key(p_name text, p_scopes text[] DEFAULT '{}',
                                               p_expires_at timestamptz DEFAULT NULL)
RETURNS TABLE (token_id uuid, token text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_token text;
    v_id uuid;
    v_scopes text[];
    v_bypass boolean;
BEGIN
    IF p_name IS NULL OR pg_catalog.btrim(p_name) = '' OR pg_catalog.length(p_name) > 255 THEN
        RAISE EXCEPTION 'API key name: 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF p_scopes IS NULL OR pg_catalog.array_ndims(p_scopes) > 1 OR pg_catalog.cardinality(p_scopes) > 32
       OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p_scopes) s WHERE s IS NULL OR s !~ '^[a-z*][a-z0-9_.:*-]{0,63}$') THEN
        RAISE EXCEPTION 'scopes: at most 32 lower-case words of letters, digits, _ . : * -' USING ERRCODE = '22023';
    END IF;
    IF p_expires_at IS NOT NULL AND (p_expires_at <= pg_catalog.now() OR NOT pg_catalog.isfinite(p_expires_at)) THEN
        RAISE EXCEPTION 'an API key must expire in the future (or never: NULL)' USING ERRCODE = '22023';
    END IF;
    v_scopes := COALESCE((SELECT pg_catalog.array_agg(DISTINCT s ORDER BY s) FROM pg_catalog.unnest(p_scopes) s), '{}');
    SELECT u.is_admin AND COALESCE(u.admin_privileges ->> 'bypass_rate_limits', '') = 'true'
      INTO v_bypass
      FROM keen.users u WHERE u.id = v_actor;

    v_token := 'keen_' || pg_catalog.rtrim(pg_catalog.translate(
                   pg_catalog.encode(keen_ext.gen_random_bytes(32), 'base64'), '+/', '-_'), '=');
    INSERT INTO keen.auth_tokens (user_id, token_type, token_hash, token_name, scopes, expires_at, bypass_limits)
    VALUES (v_actor, 'api_key', pg_catalog.encode(keen_ext.digest(v_token, 'sha256'), 'hex'),
            pg_catalog.btrim(p_name), v_scopes, p_expires_at, COALESCE(v_bypass, false))
    RETURNING auth_tokens.id INTO v_id;

    PERFORM keen_private.write_audit('api_key', 'created', v_actor,
                             pg_catalog.jsonb_build_object('token_id', v_id, 'name', pg_catalog.btrim(p_name),
                                                           'scopes', v_scopes, 'expires_at', p_expires_at),
                             'medium');
    RETURN QUERY SELECT v_id, v_token;
END
$$;
REVOKE ALL ON FUNCTION keen.create_api_key(text, text[], timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.create_api_key(text, text[], timestamptz) TO keen_app;
COMMENT ON FUNCTION keen.create_api_key(text, text[], timestamptz) IS 'A new API key for the actor; the token is shown only here.';

-- keen.authenticate_api_key(p_token, p_ip): the key's owner becomes the actor for the rest of
-- the transaction; usage_count, last_used_at and last_used_ip (p_ip) are recorded.
-- Unknown, malformed, revoked and expired keys, and keys of an inactive user, all fail alike.
-- Parallel requests with one key (agents in parallel) never queue behind each other: the usage
-- row is updated only if no other transaction holds it (SKIP LOCKED), so a use that overlaps
-- another in-flight use of the same key is not counted.
-- Who: keen_app, no actor needed. Raises 28000.
CREATE OR REPLACE FUNCTION keen.authenticate_api_key(p_token text, p_ip inet)
RETURNS TABLE (user_id uuid, token_id uuid, scopes text[], is_admin boolean, bypass_limits boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_token_id uuid;
    v_user_id uuid;
    v_token keen.auth_tokens;
BEGIN
    IF p_token IS NOT NULL AND p_token ~ '^keen_[A-Za-z0-9_-]{43}$' THEN
        SELECT f.token_id, f.user_id INTO v_token_id, v_user_id
          FROM keen_private.auth_find_api_key(pg_catalog.encode(keen_ext.digest(p_token, 'sha256'), 'hex')) f;
    END IF;
    IF v_user_id IS NULL THEN
        RAISE EXCEPTION 'invalid API key' USING ERRCODE = '28000';
    END IF;
    PERFORM keen_private.set_actor(v_user_id);
    UPDATE keen.auth_tokens t
       SET usage_count = t.usage_count + 1, last_used_at = pg_catalog.now(), last_used_ip = p_ip
     WHERE t.id = (SELECT l.id FROM keen.auth_tokens l WHERE l.id = v_token_id FOR NO KEY UPDATE SKIP LOCKED);
    SELECT * INTO v_token FROM keen.auth_tokens t WHERE t.id = v_token_id;
    RETURN QUERY
    SELECT v_token.user_id, v_token.id, v_token.scopes, u.is_admin, v_token.bypass_limits
      FROM keen.users u WHERE u.id = v_user_id;
END
$$;
REVOKE ALL ON FUNCTION keen.authenticate_api_key(text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.authenticate_api_key(text, inet) TO keen_app;
COMMENT ON FUNCTION keen.authenticate_api_key(text, inet) IS 'API key -> actor for the transaction, recording the caller''s IP; 28000 if not valid.';

-- keen.authenticate_api_key(p_token): as above, with last_used_ip the address of the
-- connection (inet_client_addr(): the API server's, for a gateway; pass p_ip to record the
-- end user's). Who: keen_app, no actor needed. Raises 28000.
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
COMMENT ON FUNCTION keen.authenticate_api_key(text) IS 'API key -> actor for the transaction; 28000 for an unknown, revoked or expired key.';

-- keen.revoke_api_key: revokes one of the actor's API keys (an admin: anyone's). Revoking a
-- revoked key does nothing more.
-- Who: keen_app with an actor. Raises 28000 without an actor, P0002 for an unknown key or
-- another user's (never told apart).
CREATE OR REPLACE FUNCTION keen.revoke_api_key(p_token_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_actor();
    v_token keen.auth_tokens;
BEGIN
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
