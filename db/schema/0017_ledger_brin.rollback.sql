-- transactional: false
SET lock_timeout = '5s';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS credit_transactions_created_at_idx ON keen.credit_transactions (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS credit_transactions_user_idx ON keen.credit_transactions (user_id, entry_no DESC);
CREATE INDEX CONCURRENTLY IF NOT EXISTS credit_transactions_session_idx ON keen.credit_transactions (session_id)
    WHERE session_id IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS keen.credit_transactions_created_at_brin;

ALTER DOMAIN keen.credit_amount
    ADD CONSTRAINT credit_amount_check
        CHECK (VALUE IS NULL OR (VALUE <> 'NaN'::numeric AND VALUE > -100000000000000 AND VALUE < 100000000000000));

