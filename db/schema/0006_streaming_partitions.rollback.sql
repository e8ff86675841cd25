-- Undoes 0006: every monthly partition is detached, its rows go back to the parent (so to the
-- default partition, as before 0006; the rollback runs as superuser, around row-level
-- security) and it is dropped; then the partition machinery. The repeatable streaming
-- functions that call it go first (the next `keen-db migrate` re-creates them).
DROP FUNCTION IF EXISTS keen.drop_old_event_partitions(interval);
DO $rollback$
DECLARE
    v_partition regclass;
BEGIN
    FOR v_partition IN
        SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'keen.streaming_events'::regclass
           AND i.inhrelid <> 'keen.streaming_events_default'::regclass
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE keen.streaming_events DETACH PARTITION %s', v_partition);
        EXECUTE pg_catalog.format('INSERT INTO keen.streaming_events SELECT * FROM %s', v_partition);
        EXECUTE pg_catalog.format('DROP TABLE %s', v_partition);
    END LOOP;
END
$rollback$;
DROP FUNCTION IF EXISTS keen.prepare_event_partitions(integer, timestamptz);
DROP FUNCTION IF EXISTS keen.secure_event_partition(regclass);
DROP FUNCTION IF EXISTS keen.may_manage_event_partitions();
