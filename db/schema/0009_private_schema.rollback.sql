-- Moves the helpers back into schema keen and drops keen_private. Their bodies then name
-- keen_private until the previous release's db/functions is applied again.
DO $back$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'keen_private'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET SCHEMA keen', v_fn);
    END LOOP;
END
$back$;
DROP SCHEMA IF EXISTS keen_private CASCADE;
