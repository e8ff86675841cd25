-- Roles are shared by every database on the server: drop them only when nothing else
-- (another keen database) still depends on them.
DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['keen_maintenance', 'keen_app', 'keen_auth', 'keen_owner'] LOOP
        BEGIN
            EXECUTE pg_catalog.format('DROP ROLE IF EXISTS %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
            RAISE NOTICE 'role % kept: other databases still use it', v_role;
        END;
    END LOOP;
END
$roles$;
