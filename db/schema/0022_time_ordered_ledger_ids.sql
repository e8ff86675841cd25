-- 0022: the ledger's rows and the usage rows they price get time-ordered ids (issue 17).
--   keen_private.time_ordered_uuid: a UUID of version 7 (RFC 9562, section 5.7): the first 48
--   bits the Unix time in milliseconds, then the version, then 74 random bits (with the variant)
--   from gen_random_uuid. An id stays a uuid, unique and unguessable (74 random bits; the time it
--   shows is the clock when the row was written, close to its created_at, which its owner reads
--   anyway), and an id made in a later millisecond sorts later (within one, in random order).
--   Why: with gen_random_uuid every insert lands on a random leaf of the primary key. After each
--   checkpoint the first change to a page writes its full image to the WAL, so a random key
--   writes a leaf image on nearly every insert until each leaf has been touched once (measured
--   on the bench database right after a checkpoint: 0.3-0.7 full-page images and 2,200-3,600
--   bytes of WAL per hot-account deduction, against 0.002 and 590 bytes with these ids), and a
--   primary key bigger than memory reads a random leaf from disk per insert. Time-ordered keys
--   go to the few newest leaves.
--   Only the default changes (a catalog change, no rewrite, no scan); the ids already written
--   stay what they are. The usage table is altered first, so that the ledger's brief ACCESS
--   EXCLUSIVE lock is taken last and held only until the commit right after it. The function
--   body is parsed once, here (BEGIN ATOMIC): the caller's search_path cannot redirect it.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

-- keen_private.time_ordered_uuid: a new UUID of version 7 (millisecond time, then random bits).
-- Who: the column defaults of keen.credit_transactions and keen.llm_usage, evaluated as the
-- ledger functions' owners (keen_ledger, keen_owner). Raises nothing of its own: it reads no
-- table and takes no lock (so never 25000 or a lock timeout either).
CREATE FUNCTION keen_private.time_ordered_uuid()
RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.encode(
               pg_catalog.set_bit(pg_catalog.set_bit(
                   pg_catalog.overlay(pg_catalog.uuid_send(pg_catalog.gen_random_uuid()),
                                      pg_catalog.substr(pg_catalog.int8send(pg_catalog.floor(
                                          pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
                                          OPERATOR(pg_catalog.*) 1000)::bigint), 3),
                                      1, 6),
                   52, 1), 53, 1),
               'hex')::uuid;
END;
REVOKE ALL ON FUNCTION keen_private.time_ordered_uuid() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen_private.time_ordered_uuid() TO keen_owner, keen_ledger;
COMMENT ON FUNCTION keen_private.time_ordered_uuid() IS
    'Internal: a new UUID of version 7 (Unix milliseconds, then random bits), the ledger''s row ids.';

ALTER TABLE keen.llm_usage ALTER COLUMN id SET DEFAULT keen_private.time_ordered_uuid();
ALTER TABLE keen.credit_transactions ALTER COLUMN id SET DEFAULT keen_private.time_ordered_uuid();
