-- transactional: false
-- 0017: credit_transactions' created_at btree becomes BRIN (issue 17). The ledger is
-- append-only, so created_at follows the physical order and a BRIN range serves the day ranges
-- the rollup, the system snapshot and the bench read, at no cost per insert. The two other
-- indexes no query needs go too: (user_id, entry_no) duplicates (account_id, entry_no), which
-- credit_history reads (one account per user), and the session index, which no function reads.
-- Built and dropped CONCURRENTLY: writes go on. And the keen.credit_amount domain's CHECK goes
-- (0015 dropped the ledger tables' own).
-- yoyo runs this file outside a transaction (first line); squawk assumes one for every file.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
SET lock_timeout = '5s';
SET statement_timeout = '0';

-- The keen.credit_amount domain keeps its name and type, without its CHECK (not NaN, below
-- 10^14 in size): every money input is refused by the functions above 10^12 and NaN never
-- passes them (keen_private.credit_check_amount), and a domain CHECK is evaluated, re-planned,
-- on every write of every money column.
-- squawk-ignore ban-drop-constraint
ALTER DOMAIN keen.credit_amount DROP CONSTRAINT IF EXISTS credit_amount_check;

CREATE INDEX CONCURRENTLY IF NOT EXISTS credit_transactions_created_at_brin
    ON keen.credit_transactions USING brin (created_at);
DROP INDEX CONCURRENTLY IF EXISTS keen.credit_transactions_created_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS keen.credit_transactions_user_idx;
DROP INDEX CONCURRENTLY IF EXISTS keen.credit_transactions_session_idx;
