-- 0015: the ledger's hot path, leaner (issue 17). The same rules, kept by the one function that
-- writes each ledger row (keen_private.credit_charge and the few ledger functions beside it,
-- db/functions/credits.sql) instead of by constraints PostgreSQL 15 re-plans on every write:
--   * keen_ledger: a NOLOGIN role with BYPASSRLS that owns the ledger functions that authorize
--     explicitly (docs/credits.md, "Row-level security inside the ledger"). It holds privileges
--     on the ledger tables only (and reads settings and the sessions the ledger points at), so
--     bypassing row policies reaches nothing else; keen_app's own reads stay under RLS.
--   * Foreign keys into and out of credit_transactions dropped: account_id and user_id come
--     from the account row the writing function locked, session_id is checked against the
--     user by it, refund_of by refund_credits, and the rows that pointed at a ledger row
--     (a capture's transaction_id, a recharge request's triggered_by and purchase) are written
--     by the function that just wrote or read that row. With them goes UNIQUE (user_id, id),
--     which only served them, and UNIQUE (entry_no), an identity column no one else assigns.
--   * The CHECKs of credit_transactions and credit_accounts dropped, and the keen.credit_amount
--     domain's: each rule is the writing function's (the balance never below 0: the charge's
--     condition or KN001; amounts, signs and types by construction).
--   Dropping a constraint takes an ACCESS EXCLUSIVE lock for a catalog change only: bounded by
--   lock_timeout, nothing is scanned. Nothing else here scans either: 0011's session cost CHECK
--   is validated by 0018, in a transaction of its own, so that the scan of agent_sessions is not
--   made while this transaction holds the ledger tables' ACCESS EXCLUSIVE locks. 0017 swaps the
--   created_at btree for BRIN, concurrently, and drops the domain's CHECK (in its own transaction: ALTER DOMAIN leaves invalidations that yoyo's next
--   savepoint trips over).
SET lock_timeout = '5s';
SET statement_timeout = '60s';

DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_ledger') THEN
        CREATE ROLE keen_ledger NOLOGIN BYPASSRLS;
    END IF;
END
$role$;
COMMENT ON ROLE keen_ledger IS 'owns the ledger functions that authorize explicitly (BYPASSRLS, ledger tables only)';
GRANT USAGE, CREATE ON SCHEMA keen, keen_private TO keen_ledger;
GRANT SELECT, INSERT, UPDATE ON keen.credit_accounts, keen.credit_transactions, keen.credit_reservations,
                                keen.credit_recharge_requests TO keen_ledger;
GRANT SELECT ON keen.settings, keen.agent_sessions TO keen_ledger;
GRANT USAGE ON SEQUENCE keen.credit_transactions_entry_no_seq TO keen_ledger;
-- The account lock (keen_private.credit_lock; advisory locks are keen's own since 0008).
GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_xact_lock(integer, integer) TO keen_ledger;

-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_reservations DROP CONSTRAINT credit_reservations_user_id_transaction_id_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_recharge_requests DROP CONSTRAINT credit_recharge_requests_user_id_triggered_by_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_recharge_requests DROP CONSTRAINT credit_recharge_requests_user_id_purchase_transaction_id_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_user_id_refund_of_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_user_id_account_id_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_user_id_session_id_fkey;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_user_id_id_key;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_entry_no_key;

DO $checks$
DECLARE
    v_con record;
BEGIN
    FOR v_con IN
        SELECT c.conrelid::regclass AS tbl, c.conname
          FROM pg_catalog.pg_constraint c
         WHERE c.conrelid IN ('keen.credit_transactions'::regclass, 'keen.credit_accounts'::regclass)
           AND c.contype = 'c'
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', v_con.tbl, v_con.conname);
    END LOOP;
END
$checks$;
