-- users.sql: registration, login, API keys, profile, suspension, audit.

-- keen.register_user: creates a user (role 'user') and its credit account (balance 0).
-- Who: anyone with EXECUTE (keen_app); no actor needed, and the caller's actor is unchanged.
-- Raises: 22023 for an invalid e-mail, username (3-64 of letters, digits, '_', '.', '-',
-- starting with a letter or digit) or password (8-72 bytes); 23505 when the e-mail (any case)
-- or the username (any case) is taken.
CREATE OR REPLACE FUNCTION keen.register_user(p_email text, p_username text, p_password text,
                                              p_display_name text DEFAULT NULL)
RETURNS TABLE (id uuid, email text, username text, role text, is_admin boolean,
               account_status text, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_email text := pg_catalog.lower(pg_catalog.btrim(p_email));
    v_id uuid := pg_catalog.gen_random_uuid();
    v_previous_actor text := pg_catalog.current_setting('keen.actor_id', true);
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
    IF p_password IS NULL OR pg_catalog.length(p_password) < 8 OR pg_catalog.octet_length(p_password) > 72 THEN
        RAISE EXCEPTION 'invalid password: 8 characters at least, 72 bytes at most' USING ERRCODE = '22023';
    END IF;
    IF p_display_name IS NOT NULL AND pg_catalog.length(p_display_name) > 255 THEN
        RAISE EXCEPTION 'display name longer than 255 characters' USING ERRCODE = '22023';
    END IF;

    -- The new user is the actor just long enough to write its own rows under RLS.
    PERFORM pg_catalog.set_config('keen.actor_id', v_id::text, true);
    BEGIN
        INSERT INTO keen.users (id, email, username, password_hash, display_name)
        VALUES (v_id, v_email, p_username,
                keen_ext.crypt(p_password, keen_ext.gen_salt('bf', keen.setting_numeric('bcrypt_cost')::int)),
                p_display_name)
        RETURNING * INTO v_user;
    EXCEPTION WHEN unique_violation THEN
        PERFORM pg_catalog.set_config('keen.actor_id', COALESCE(v_previous_actor, ''), true);
        RAISE EXCEPTION 'e-mail or username already registered' USING ERRCODE = '23505';
    END;
    INSERT INTO keen.credit_accounts (user_id) VALUES (v_id);
    PERFORM pg_catalog.set_config('keen.actor_id', COALESCE(v_previous_actor, ''), true);

    RETURN QUERY SELECT v_user.id, v_user.email::text, v_user.username::text, v_user.role::text,
                        v_user.is_admin, v_user.account_status::text, v_user.created_at;
END
$$;
REVOKE ALL ON FUNCTION keen.register_user(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.register_user(text, text, text, text) TO keen_app;
COMMENT ON FUNCTION keen.register_user(text, text, text, text) IS 'Registers a user and its credit account; 22023 invalid input, 23505 duplicate.';
