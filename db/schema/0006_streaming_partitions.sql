-- 0006: monthly partitions of keen.streaming_events.
--   0002 created the parent (PARTITION BY RANGE (created_at)) with only a DEFAULT partition.
--   This migration adds the partition machinery and prepares the current and next UTC months:
--     * keen.secure_event_partition(regclass): gives a partition the parent's row-level
--       security (ENABLED + FORCED, the same policies, copied from the parent) and no grants,
--       so a partition is never readable around its parent's policy. db/policies/streaming.sql
--       calls it for every partition on each deploy (policies are applied after migrations,
--       so a partition created here gets its policy copied then).
--     * keen.may_manage_event_partitions(): who may create and drop partitions.
--     * keen.prepare_event_partitions(p_months_ahead, p_from): creates the monthly partitions
--       of the month of p_from and the p_months_ahead months after it, moving any rows of those
--       months out of the default partition first, so creation never fails.
--   They live here, not in db/functions, because this migration must call them and migrations
--   run before the repeatable files are applied. A change to them is a new migration.

SET ROLE keen_owner;

-- keen.secure_event_partition: gives one partition of keen.streaming_events the parent's
-- row-level security: ENABLED and FORCED, exactly the parent's policies (copied from the
-- catalog, so the rule is written once, in db/policies/streaming.sql), no privileges for
-- anyone but the owner. Idempotent: a partition already in step is not touched (no lock).
-- Who: internal (the partition maintenance functions, and the deploy as superuser);
-- EXECUTE is granted to nobody. Raises 22023 when p_partition is not a partition of
-- keen.streaming_events.
CREATE OR REPLACE FUNCTION keen.secure_event_partition(p_partition regclass)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_policy record;
    v_table text;
BEGIN
    IF p_partition IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_inherits i
         WHERE i.inhrelid = p_partition AND i.inhparent = 'keen.streaming_events'::regclass
    ) THEN
        RAISE EXCEPTION '% is not a partition of keen.streaming_events', p_partition
            USING ERRCODE = '22023';
    END IF;
    SELECT c.relname INTO v_table FROM pg_catalog.pg_class c WHERE c.oid = p_partition;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                    WHERE c.oid = p_partition AND c.relrowsecurity AND c.relforcerowsecurity) THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_partition);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p_partition);
    END IF;

    -- The partition's policies must be the parent's, no more and no fewer.
    IF EXISTS (
        (SELECT p.policyname, p.permissive, p.roles, p.cmd, p.qual, p.with_check
           FROM pg_catalog.pg_policies p
          WHERE p.schemaname = 'keen' AND p.tablename = 'streaming_events'
         EXCEPT
         SELECT p.policyname, p.permissive, p.roles, p.cmd, p.qual, p.with_check
           FROM pg_catalog.pg_policies p
          WHERE p.schemaname = 'keen' AND p.tablename = v_table)
        UNION ALL
        (SELECT p.policyname, p.permissive, p.roles, p.cmd, p.qual, p.with_check
           FROM pg_catalog.pg_policies p
          WHERE p.schemaname = 'keen' AND p.tablename = v_table
         EXCEPT
         SELECT p.policyname, p.permissive, p.roles, p.cmd, p.qual, p.with_check
           FROM pg_catalog.pg_policies p
          WHERE p.schemaname = 'keen' AND p.tablename = 'streaming_events')
    ) THEN
        FOR v_policy IN
            SELECT p.polname FROM pg_catalog.pg_policy p WHERE p.polrelid = p_partition
        LOOP
            EXECUTE pg_catalog.format('DROP POLICY %I ON %s', v_policy.polname, p_partition);
        END LOOP;
        FOR v_policy IN
            SELECT p.policyname, p.permissive, p.roles, p.cmd, p.qual, p.with_check
              FROM pg_catalog.pg_policies p
             WHERE p.schemaname = 'keen' AND p.tablename = 'streaming_events'
        LOOP
            EXECUTE pg_catalog.format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s',
                v_policy.policyname, p_partition, v_policy.permissive, v_policy.cmd,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r), ', ') FROM unnest(v_policy.roles) AS r),
                CASE WHEN v_policy.qual IS NULL THEN '' ELSE ' USING (' || v_policy.qual || ')' END,
                CASE WHEN v_policy.with_check IS NULL THEN '' ELSE ' WITH CHECK (' || v_policy.with_check || ')' END);
        END LOOP;
    END IF;

    -- Readers go through the parent (and its policy), never to a partition directly.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
                WHERE c.oid = p_partition AND a.grantee <> c.relowner) THEN
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC, keen_app, keen_maintenance', p_partition);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.secure_event_partition(regclass) FROM PUBLIC;
COMMENT ON FUNCTION keen.secure_event_partition(regclass) IS 'Internal: gives an event partition the parent''s forced RLS and policies, and no grants.';

-- keen.may_manage_event_partitions: true when the session may create or drop event
-- partitions: a superuser session with no actor (migrations, an operator's psql), the
-- maintenance role, or an admin actor. Partitions are DDL, so unlike data a superuser is
-- counted here; a superuser acting as a user (keen.act_as) is judged as that user.
-- Who: internal (prepare_event_partitions, drop_old_event_partitions). Raises: nothing.
CREATE OR REPLACE FUNCTION keen.may_manage_event_partitions()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    -- Checked first and apart: a migration runs before db/functions (the actor functions)
    -- exists, and must not evaluate them.
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = session_user)
       AND COALESCE(pg_catalog.current_setting('keen.actor_id', true), '') = '' THEN
        RETURN true;
    END IF;
    RETURN keen.session_is_maintenance() OR keen.actor_is_admin();
END
$$;
REVOKE ALL ON FUNCTION keen.may_manage_event_partitions() FROM PUBLIC;
COMMENT ON FUNCTION keen.may_manage_event_partitions() IS 'Internal: superuser session, maintenance role or admin actor.';

-- keen.prepare_event_partitions: creates the monthly partitions (UTC months) of
-- keen.streaming_events for the month of p_from and the p_months_ahead months after it, each
-- named streaming_events_yYYYYmMM and secured like its parent. Rows of such a month that were
-- caught by the default partition are moved into the new partition first, so creating a
-- partition never fails. Months that already have a partition are skipped. Returns one row
-- per partition created.
-- Who: the maintenance role, an admin actor, or a superuser session (migrations, operators);
-- run it from cron (e.g. daily) so the coming months always exist ahead of time.
-- Raises 42501 for anyone else; 22023 for p_months_ahead outside 0..120 or a NULL or
-- infinite p_from.
CREATE OR REPLACE FUNCTION keen.prepare_event_partitions(p_months_ahead integer DEFAULT 2,
                                                        p_from timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, rows_moved bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_first timestamp;
    v_month timestamp;
    v_name text;
    v_moved bigint;
BEGIN
    IF NOT keen.may_manage_event_partitions() THEN
        RAISE EXCEPTION 'only the maintenance role or an admin may prepare event partitions'
            USING ERRCODE = '42501';
    END IF;
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION 'p_months_ahead must be between 0 and 120' USING ERRCODE = '22023';
    END IF;
    IF p_from IS NULL OR NOT pg_catalog.isfinite(p_from) THEN
        RAISE EXCEPTION 'p_from must be a finite timestamp' USING ERRCODE = '22023';
    END IF;

    -- One partition maintainer at a time (prepare and drop take the same lock).
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.streaming_events partitions'));

    v_first := pg_catalog.date_trunc('month', p_from AT TIME ZONE 'UTC');
    FOR i IN 0 .. p_months_ahead LOOP
        v_month := v_first + pg_catalog.make_interval(months => i);
        v_name := 'streaming_events_' || pg_catalog.to_char(v_month, '"y"YYYY"m"MM');
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = 'keen'::regnamespace AND c.relname = v_name);

        partition_name := v_name;
        range_start := v_month AT TIME ZONE 'UTC';
        range_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';

        -- The owner reads the default partition around its policy for the move only, inside
        -- this transaction, which holds the default partition's ACCESS EXCLUSIVE lock from
        -- here to commit: nobody can write or read it in between.
        ALTER TABLE keen.streaming_events_default NO FORCE ROW LEVEL SECURITY;
        EXECUTE pg_catalog.format(
            'CREATE TABLE keen.%I (LIKE keen.streaming_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
        EXECUTE pg_catalog.format(
            'WITH moved AS (DELETE FROM keen.streaming_events_default d
                             WHERE d.created_at >= $1 AND d.created_at < $2 RETURNING d.*)
             INSERT INTO keen.%I SELECT * FROM moved', v_name)
            USING range_start, range_end;
        GET DIAGNOSTICS v_moved = ROW_COUNT;
        ALTER TABLE keen.streaming_events_default FORCE ROW LEVEL SECURITY;
        -- Bounds written in UTC, independent of the session's TimeZone and DateStyle.
        EXECUTE pg_catalog.format(
            'ALTER TABLE keen.streaming_events ATTACH PARTITION keen.%I FOR VALUES FROM (%L) TO (%L)',
            v_name,
            pg_catalog.to_char(v_month, 'YYYY-MM-DD') || ' 00:00:00+00',
            pg_catalog.to_char(v_month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
        PERFORM keen.secure_event_partition(pg_catalog.format('keen.%I', v_name)::regclass);

        rows_moved := v_moved;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.prepare_event_partitions(integer, timestamptz) IS 'Maintenance: creates the monthly event partitions ahead, moving rows out of the default partition; 42501, 22023.';

-- The current and the next UTC month, now.
DO $prepare$
BEGIN
    PERFORM * FROM keen.prepare_event_partitions(1);
END
$prepare$;

RESET ROLE;
