-- Undoes 0022: random ids again for new rows (the ids written meanwhile stay valid uuids).
SET lock_timeout = '5s';
SET statement_timeout = '60s';

ALTER TABLE keen.llm_usage ALTER COLUMN id SET DEFAULT pg_catalog.gen_random_uuid();
ALTER TABLE keen.credit_transactions ALTER COLUMN id SET DEFAULT pg_catalog.gen_random_uuid();
DROP FUNCTION keen_private.time_ordered_uuid();
