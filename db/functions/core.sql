-- core.sql: who the actor is, and the settings every area reads.
-- Applied first; every other file in db/functions may rely on it.

-- keen_private.actor_proof: the proof that keen.act_as (or keen_private.set_actor) chose p_user_id as actor:
-- an HMAC-SHA256 over (user id, backend pid, transaction start, the actor's scope list p_scopes:
-- the setting keen_private.actor_scopes, '' for none), keyed by p_key, the secret
-- actor_hmac_key that only keen_auth can read (keen.auth_secrets). A proof is worthless in
-- another transaction or session, and dropping or changing the scope list of an API key's
-- actor by hand makes it no actor at all. The one expression of the proof: written by
-- keen_private.write_actor, checked by keen.actor_id.
-- SQL without SET, FROM or SECURITY DEFINER, so that it is inlined into both (no call at all);
-- it holds no secret itself (the key is an argument its callers read as keen_auth).
-- Who: keen_auth's functions only (no grant). Raises: nothing.
DROP FUNCTION IF EXISTS keen_private.actor_proof(uuid);  -- read the key itself, called through two definer levels
CREATE OR REPLACE FUNCTION keen_private.actor_proof(p_user_id text, p_scopes text, p_key text)
RETURNS text
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$
    SELECT pg_catalog.encode(keen_ext.hmac(
               p_user_id || ':' || pg_catalog.pg_backend_pid() || ':' || EXTRACT(EPOCH FROM pg_catalog.now()) || ':' || p_scopes,
               p_key, 'sha256'), 'hex')
$$;
ALTER FUNCTION keen_private.actor_proof(text, text, text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.actor_proof(text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.actor_proof(text, text, text) IS 'HMAC binding an actor (and its scopes) to this backend and transaction; keen_auth only.';

-- keen_private.write_actor: the one writer of the actor settings: makes p_user_id (or nobody,
-- for NULL) the actor for the rest of the transaction, limited to p_scopes ('' for no
-- restriction, else a comma-separated list), with its keen_private.actor_proof. One statement,
-- and no SET or SECURITY DEFINER of its own: it runs as its caller, and only keen_auth's definer
-- functions (act_as, set_actor, set_actor_scoped) can read the key it needs; anyone else gets
-- 42501 on keen.auth_secrets. Saves the two nested definer calls act_as used to make.
-- Who: keen_auth's functions only (no grant). Raises: nothing (42501 for any other caller).
CREATE OR REPLACE FUNCTION keen_private.write_actor(p_user_id uuid, p_scopes text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_catalog.set_config('keen.actor_id', COALESCE(p_user_id::text, ''), true),
            pg_catalog.set_config('keen_private.actor_scopes', CASE WHEN p_user_id IS NULL THEN '' ELSE p_scopes END, true),
            pg_catalog.set_config('keen_private.actor_proof',
                                  CASE WHEN p_user_id IS NULL THEN ''
                                       ELSE keen_private.actor_proof(p_user_id::text, p_scopes, k.value) END, true)
       FROM keen.auth_secrets k
      WHERE k.name = 'actor_hmac_key';
END
$$;
ALTER FUNCTION keen_private.write_actor(uuid, text) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.write_actor(uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.write_actor(uuid, text) IS 'Internal: sets (or clears) the actor, its scopes and its proof; keen_auth''s functions only.';

-- keen.actor_id: the user the current transaction acts as, or NULL.
-- The id in the setting keen.actor_id counts only with a matching keen_private.actor_proof, which only
-- keen.act_as / keen_private.set_actor can compute: `SET LOCAL keen.actor_id = '<uuid>'` by hand (to
-- skip act_as's "active user" check), or a proof replayed from another transaction, reads as
-- no actor. PARALLEL RESTRICTED: the proof is bound to the leader's backend pid.
-- Who: anyone (policies call it). Owned by keen_auth to read the key. Raises: nothing; an
-- empty, malformed, stale or forged setting reads as NULL.
CREATE OR REPLACE FUNCTION keen.actor_id()
RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_id text := pg_catalog.current_setting('keen.actor_id', true);
    v_key text;
BEGIN
    IF v_id IS NULL OR v_id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN NULL;
    END IF;
    SELECT k.value INTO v_key FROM keen.auth_secrets k WHERE k.name = 'actor_hmac_key';
    -- keen_private.actor_proof is inlined here by the planner (SQL, no SET): no call.
    IF pg_catalog.current_setting('keen_private.actor_proof', true) IS DISTINCT FROM keen_private.actor_proof(
           v_id, COALESCE(pg_catalog.current_setting('keen_private.actor_scopes', true), ''), v_key) THEN
        RETURN NULL;
    END IF;
    RETURN v_id::uuid;
END
$$;
ALTER FUNCTION keen.actor_id() OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen.actor_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.actor_id() TO keen_owner, keen_app, keen_maintenance, keen_auth;
COMMENT ON FUNCTION keen.actor_id() IS 'The acting user of this transaction (set by keen.act_as), or NULL.';

-- keen.actor_is_admin: true only when the actor's own row in keen.users says is_admin and the
-- account is active. No setting, GUC or parameter can make it true.
-- Who: anyone (policies call it). Owned by keen_auth (BYPASSRLS) so that the users policy,
-- which calls it, does not recurse. Raises: nothing.
CREATE OR REPLACE FUNCTION keen.actor_is_admin()
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call.
    RETURN COALESCE(
        (SELECT u.is_admin AND u.account_status = 'active'
           FROM keen.users u
          WHERE u.id = keen.actor_id()),
        false);
END
$$;
ALTER FUNCTION keen.actor_is_admin() OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen.actor_is_admin() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.actor_is_admin() TO keen_owner, keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.actor_is_admin() IS 'True only if the actor''s row in keen.users is an active admin.';

-- keen.session_is_maintenance: true when the logged-in role is keen_maintenance or a role
-- granted it directly. session_user cannot be changed by SET ROLE, so keen_app cannot pretend;
-- a superuser is not counted (it owns DDL, not data: tests run as one and must see RLS).
-- Who: anyone (policies call it). Raises: nothing.
CREATE OR REPLACE FUNCTION keen.session_is_maintenance()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN session_user = 'keen_maintenance'
        OR EXISTS (SELECT 1
                     FROM pg_catalog.pg_auth_members m
                    WHERE m.roleid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'keen_maintenance')
                      AND m.member = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = session_user));
END
$$;
REVOKE ALL ON FUNCTION keen.session_is_maintenance() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.session_is_maintenance() TO keen_app, keen_maintenance, keen_auth;
COMMENT ON FUNCTION keen.session_is_maintenance() IS 'True when the login role is the maintenance role (cross-tenant jobs).';

-- keen.actor_sees_all_tenants: admins and the maintenance role see every tenant's rows.
-- Who: anyone (policies call it as (SELECT keen.actor_sees_all_tenants())). Raises: nothing.
CREATE OR REPLACE FUNCTION keen.actor_sees_all_tenants()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN keen.actor_is_admin() OR keen.session_is_maintenance();
END
$$;
REVOKE ALL ON FUNCTION keen.actor_sees_all_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.actor_sees_all_tenants() TO keen_app, keen_maintenance, keen_auth;
COMMENT ON FUNCTION keen.actor_sees_all_tenants() IS 'Admin actor or maintenance session: may see every tenant.';

-- keen.act_as: makes p_user_id the actor for the rest of the current transaction only, with no
-- scope restriction. Never an admin: a leaked keen_app connection must not become the admin,
-- so an admin acts only through a credential the database verifies (authenticate_access_token,
-- authenticate_api_key, start_login_session / refresh_login_session).
-- Who: keen_app, keen_maintenance. Raises 28000 when the user does not exist or is not active,
-- 42501 when the user is an admin.
CREATE OR REPLACE FUNCTION keen.act_as(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_is_admin boolean;
BEGIN
    SELECT u.is_admin INTO v_is_admin FROM keen.users u WHERE u.id = p_user_id AND u.account_status = 'active';
    IF v_is_admin IS NULL THEN
        RAISE EXCEPTION 'no active user to act as'
            USING ERRCODE = '28000';
    END IF;
    IF v_is_admin THEN
        RAISE EXCEPTION 'an admin acts only through a credential'
            USING ERRCODE = '42501',
                  HINT = 'sign in with keen.start_login_session and use keen.authenticate_access_token, or keen.authenticate_api_key';
    END IF;
    PERFORM keen_private.write_actor(p_user_id, '');
END
$$;
ALTER FUNCTION keen.act_as(uuid) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen.act_as(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.act_as(uuid) TO keen_owner, keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.act_as(uuid) IS 'Sets a non-admin actor for the current transaction; 28000 missing or inactive, 42501 an admin.';

-- keen_private.set_actor: makes p_user_id (or nobody, for NULL) the actor for the rest of the
-- transaction with no "active" check and no scope restriction: for keen's own functions that
-- have already decided who the actor is (register_user writes the new user's rows as that user;
-- a verified credential acts as its owner). Never to put back a previous actor: that actor may
-- have come from a scoped API key, and this would drop its scopes (keen_private.saved_scopes /
-- keen_private.restore_actor do that).
-- Who: keen_owner's functions only (never granted to keen_app). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.set_actor(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.write_actor(p_user_id, '');
END
$$;
ALTER FUNCTION keen_private.set_actor(uuid) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.set_actor(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.set_actor(uuid) TO keen_owner;
COMMENT ON FUNCTION keen_private.set_actor(uuid) IS 'Internal: sets (or clears) the actor with its proof; keen_owner''s functions only.';

-- keen_private.set_actor_scoped: as set_actor, limited to p_scopes (an API key's; '{}' means
-- everything the user may do). The list is part of the actor proof: it cannot be dropped or
-- widened by hand (keen.actor_id is then NULL).
-- Who: keen_owner's functions only (authenticate_api_key). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.set_actor_scoped(p_user_id uuid, p_scopes text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.write_actor(p_user_id, COALESCE(pg_catalog.array_to_string(p_scopes, ','), ''));
END
$$;
ALTER FUNCTION keen_private.set_actor_scoped(uuid, text[]) OWNER TO keen_auth;
REVOKE ALL ON FUNCTION keen_private.set_actor_scoped(uuid, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.set_actor_scoped(uuid, text[]) TO keen_owner, keen_auth;
COMMENT ON FUNCTION keen_private.set_actor_scoped(uuid, text[]) IS 'Internal: sets the actor limited to an API key''s scopes.';

-- keen_private.saved_scopes: the actor's scope list as keen_private.restore_actor takes it back
-- ('' for none). A function that makes someone else the actor for a moment saves
-- (keen.actor_id(), keen_private.saved_scopes()) first and restores both with restore_actor:
-- one pair for every such function, so no restore can widen a scoped API key's actor.
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.saved_scopes()
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT COALESCE(pg_catalog.current_setting('keen_private.actor_scopes', true), '')
$$;
REVOKE ALL ON FUNCTION keen_private.saved_scopes() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.saved_scopes() IS 'Internal: the actor''s scope list, saved for keen_private.restore_actor.';

-- keen_private.restore_actor: puts back the actor saved before a function changed it, with the
-- scopes it had (p_scopes from keen_private.saved_scopes: '' for no restriction, else the
-- comma-separated list); NULL p_actor clears the actor.
-- Who: keen_owner's functions (register_user, login, request_password_reset, verify_email,
-- reset_password, use_account_token). Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.restore_actor(p_actor uuid, p_scopes text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.set_actor_scoped(p_actor, pg_catalog.string_to_array(NULLIF(p_scopes, ''), ','));
END
$$;
REVOKE ALL ON FUNCTION keen_private.restore_actor(uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.restore_actor(uuid, text) IS 'Internal: restores a saved actor with its saved scopes.';

-- keen_private.api_scopes: the scopes an API key may carry (CONTRACT.md, "Scopes").
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.api_scopes()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ARRAY['credits:read', 'credits:write', 'keys:manage', 'sessions:read', 'sessions:write']::text[]
$$;
REVOKE ALL ON FUNCTION keen_private.api_scopes() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.api_scopes() IS 'Internal: the scopes an API key may carry.';

-- keen_private.require_scope: the one scope check. A transaction whose actor came from an API
-- key with a non-empty scope list may call only what those scopes cover; each API function
-- names its scope at its top (PERFORM keen_private.require_scope('credits:write')), and a
-- function no scope covers passes NULL (account and admin work: refused to every scoped key).
-- The list is read from keen_private.actor_scopes, which the actor proof covers: an empty or
-- changed list with a scoped proof is no actor at all, so the function's actor check refuses.
-- No SET (a keen_private invoker helper: it runs under its definer caller's pinned search_path,
-- and every name in it is qualified): a SET is a settings save and restore per call (about
-- 4 us, measured in a loop of calls), on every API call.
-- Who: keen's functions (every area). Raises 42501 when the scope is not in the actor's list.
CREATE OR REPLACE FUNCTION keen_private.require_scope(p_scope text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_scopes text := pg_catalog.current_setting('keen_private.actor_scopes', true);
BEGIN
    IF v_scopes IS NULL OR v_scopes = '' THEN
        RETURN;
    END IF;
    IF p_scope IS NULL OR NOT (p_scope = ANY (pg_catalog.string_to_array(v_scopes, ','))) THEN
        RAISE EXCEPTION 'this API key''s scopes (%) do not cover %', v_scopes, COALESCE(p_scope, 'this call')
            USING ERRCODE = '42501';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_scope(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_scope(text) IS 'Internal: 42501 unless the actor''s API key scopes cover p_scope.';

-- keen_private.require_actor: the actor of the transaction. Runs as its caller (every caller is
-- one of keen's definer functions, with its search_path pinned, and may call keen.actor_id):
-- a definer call of its own would add a user switch and a settings save and restore per call.
-- Who: keen's functions (every area). Raises 28000 when there is no (valid) actor.
CREATE OR REPLACE FUNCTION keen_private.require_actor()
RETURNS uuid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_actor uuid := keen.actor_id();
BEGIN
    IF v_actor IS NULL THEN
        RAISE EXCEPTION 'no actor: call keen.act_as or keen.authenticate_api_key first'
            USING ERRCODE = '28000';
    END IF;
    RETURN v_actor;
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_actor() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_actor() IS 'Internal: the actor, or 28000.';

-- keen_private.require_admin: the actor, who must be an admin according to keen.users.
-- No scope covers admin work: an admin's API key with a scope list cannot do it.
-- Who: keen's functions (every area). Raises 42501 when there is no actor or it is not an active
-- admin, or its API key has a scope list.
CREATE OR REPLACE FUNCTION keen_private.require_admin()
RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF NOT keen.actor_is_admin() THEN
        RAISE EXCEPTION 'only an admin may do this' USING ERRCODE = '42501';
    END IF;
    PERFORM keen_private.require_scope(NULL);
    RETURN keen.actor_id();
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_admin() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_admin() IS 'Internal: the admin actor, or 42501.';

-- keen_private.require_all_tenants: the caller may act on every tenant: the maintenance role,
-- or an admin actor (whose API key, if any, has no scope list: no scope covers admin work).
-- p_refusal is the message of the refusal, naming what was refused.
-- Who: keen's cross-tenant functions (rollups, ledger check, upkeep, reaping, metrics).
-- Raises 42501 for anyone else.
CREATE OR REPLACE FUNCTION keen_private.require_all_tenants(p_refusal text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF keen.session_is_maintenance() THEN
        RETURN;
    END IF;
    IF NOT keen.actor_is_admin() THEN
        RAISE EXCEPTION '%', p_refusal USING ERRCODE = '42501';
    END IF;
    PERFORM keen_private.require_scope(NULL);
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_all_tenants(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_all_tenants(text) IS 'Internal: the maintenance role or an admin actor, or 42501.';

-- keen_private.require_read_committed: the ledger and login rules read what other transactions
-- committed a moment ago (live holds, failure counts written by the login recorder); in a
-- REPEATABLE READ or SERIALIZABLE snapshot they would not see it, so those levels are refused.
-- Who: keen's functions (keen_owner, keen_auth). Raises 25000 at any other isolation level.
CREATE OR REPLACE FUNCTION keen_private.require_read_committed()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'keen-db''s ledger and login functions run at READ COMMITTED, not %',
            pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '25000';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_read_committed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.require_read_committed() TO keen_auth;
COMMENT ON FUNCTION keen_private.require_read_committed() IS 'Internal: 25000 unless the transaction is READ COMMITTED.';

-- keen.setting_numeric: a numeric platform setting.
-- Who: keen functions (owner) and keen_app. Raises 22023 for an unknown or non-numeric key.
CREATE OR REPLACE FUNCTION keen.setting_numeric(p_key text)
RETURNS numeric
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_value jsonb;
BEGIN
    SELECT s.value INTO v_value FROM keen.settings s WHERE s.key = p_key;
    IF v_value IS NULL OR pg_catalog.jsonb_typeof(v_value) <> 'number' THEN
        RAISE EXCEPTION 'setting % is missing or not a number', p_key
            USING ERRCODE = '22023';
    END IF;
    RETURN v_value::text::numeric;
END
$$;
REVOKE ALL ON FUNCTION keen.setting_numeric(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.setting_numeric(text) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.setting_numeric(text) IS 'A numeric value from keen.settings; 22023 if missing.';

-- keen_private.setting_bounds: the smallest and largest value each numeric setting accepts; the
-- one place they are written (docs/security.md lists them). No row for a key without bounds:
-- keen.set_setting then refuses to change it (a new setting must be given bounds here).
-- Who: keen's functions. Raises: nothing.
CREATE OR REPLACE FUNCTION keen_private.setting_bounds(p_key text)
RETURNS TABLE (min_value numeric, max_value numeric)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT b.min_value, b.max_value
      FROM (VALUES ('markup_multiplier', 0.1, 100),
                   ('bcrypt_cost', 10, 14),
                   ('default_max_session_depth', 1, 100),
                   ('hard_max_session_depth', 1, 100),
                   ('login_max_failures', 3, 100),
                   ('login_max_failures_per_source', 10, 10000),
                   ('login_max_failures_per_email', 10, 100000),
                   ('second_factor_max_failures', 3, 100),
                   ('login_failure_window_minutes', 1, 1440),
                   ('access_token_minutes', 1, 60),
                   ('refresh_token_days', 1, 90)) AS b(key, min_value, max_value)
     WHERE b.key = p_key
$$;
REVOKE ALL ON FUNCTION keen_private.setting_bounds(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.setting_bounds(text) IS 'Internal: the bounds of each numeric setting.';

-- keen.set_setting: an admin changes a platform setting (the markup multiplier, depth limits,
-- bcrypt cost, lock-out thresholds), within the key's bounds (keen_private.setting_bounds);
-- every change is audited with the old and the new value.
-- Who: admin actor (42501 otherwise, also for an admin API key with a scope list). Raises 22023
-- for an unknown key, a value of another JSON type than the current one, a number outside the
-- key's bounds, or a numeric key that has no bounds.
CREATE OR REPLACE FUNCTION keen.set_setting(p_key text, p_value jsonb)
RETURNS keen.settings
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_row keen.settings;
    v_old jsonb;
    v_min numeric;
    v_max numeric;
BEGIN
    PERFORM keen_private.require_admin();
    SELECT * INTO v_row FROM keen.settings s WHERE s.key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', p_key USING ERRCODE = '22023';
    END IF;
    IF p_value IS NULL OR pg_catalog.jsonb_typeof(p_value) <> pg_catalog.jsonb_typeof(v_row.value) THEN
        RAISE EXCEPTION 'setting % needs a % value', p_key, pg_catalog.jsonb_typeof(v_row.value)
            USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.jsonb_typeof(p_value) = 'number' THEN
        SELECT b.min_value, b.max_value INTO v_min, v_max FROM keen_private.setting_bounds(p_key) b;
        IF v_min IS NULL THEN
            RAISE EXCEPTION 'setting % has no bounds and cannot be changed here', p_key USING ERRCODE = '22023';
        END IF;
        IF p_value::text::numeric < v_min OR p_value::text::numeric > v_max THEN
            RAISE EXCEPTION 'setting % must be between % and %', p_key, v_min, v_max USING ERRCODE = '22023';
        END IF;
    END IF;
    v_old := v_row.value;
    UPDATE keen.settings s SET value = p_value, updated_at = pg_catalog.now()
     WHERE s.key = p_key
    RETURNING * INTO v_row;
    PERFORM keen_private.write_audit('admin', 'setting_changed', NULL,
                                     pg_catalog.jsonb_build_object('key', p_key, 'old_value', v_old, 'new_value', p_value),
                                     'high');
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.set_setting(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.set_setting(text, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.set_setting(text, jsonb) IS 'Admin-only change of a platform setting, bounded per key and audited (old and new value).';

-- keen_private.size_cap: the largest accepted size, in bytes, of each free-form input; the one
-- place the caps are written (the README lists them). NULL for an unknown kind.
-- Who: keen's functions. Raises: nothing. LANGUAGE sql without SET: inlined into its callers.
CREATE OR REPLACE FUNCTION keen_private.size_cap(p_what text)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE p_what
        WHEN 'event_data' THEN 65536
        WHEN 'tool_parameters' THEN 65536
        WHEN 'tool_result' THEN 262144
        WHEN 'git_details' THEN 16384
        WHEN 'vision' THEN 16384
        WHEN 'working_directory' THEN 4096
        WHEN 'description' THEN 1024
        WHEN 'metadata' THEN 16384
        WHEN 'error_message' THEN 16384
        WHEN 'completion_report' THEN 262144
        WHEN 'user_agent' THEN 512
        WHEN 'name' THEN 256
        WHEN 'second_factor' THEN 64
        WHEN 'connection_id' THEN 255
        WHEN 'event_type' THEN 50
        WHEN 'email' THEN 255
        WHEN 'label' THEN 255
        WHEN 'reason' THEN 1000
        WHEN 'preferences' THEN 16384
        WHEN 'token' THEN 512
        WHEN 'access_token' THEN 1024
    END
$$;
REVOKE ALL ON FUNCTION keen_private.size_cap(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.size_cap(text) TO keen_auth;  -- auth_check_access_token's cap
COMMENT ON FUNCTION keen_private.size_cap(text) IS 'Internal: the size cap in bytes of a kind of free-form input.';

-- keen_private.require_size: refuses a free-form value larger than its kind's cap (NULL passes).
-- Who: keen's functions. Raises 22023 above the cap (the message names the input, its size and
-- the cap); 22023 for a kind with no cap (a programming error, caught by the tests).
CREATE OR REPLACE FUNCTION keen_private.require_size(p_what text, p_value text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_cap integer := keen_private.size_cap(p_what);
BEGIN
    IF v_cap IS NULL THEN
        RAISE EXCEPTION 'no size cap for %', p_what USING ERRCODE = '22023';
    END IF;
    IF p_value IS NOT NULL AND pg_catalog.octet_length(p_value) > v_cap THEN
        RAISE EXCEPTION '% is % bytes; at most % are accepted', p_what, pg_catalog.octet_length(p_value), v_cap
            USING ERRCODE = '22023';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_size(text, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_size(text, text) IS 'Internal: 22023 when a free-form value passes its size cap.';

-- keen_private.require_size (jsonb): the same cap, measured on the value's text form.
-- Who: keen's functions. Raises 22023 as above.
CREATE OR REPLACE FUNCTION keen_private.require_size(p_what text, p_value jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_size(p_what, p_value::text);
END
$$;
REVOKE ALL ON FUNCTION keen_private.require_size(text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.require_size(text, jsonb) IS 'Internal: 22023 when a JSON value passes its size cap.';
