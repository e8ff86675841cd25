-- Undoes 0015: the domain, the CHECKs and the keys come back (each validated: a scan of the
-- ledger under lock; a rollback is not online). The ledger functions go back to keen_owner.
SET lock_timeout = '5s';
SET statement_timeout = '1h';

DO $own$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.proowner = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'keen_ledger')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO keen_owner', v_fn);
    END LOOP;
END
$own$;

ALTER TABLE keen.credit_accounts
    ADD CONSTRAINT credit_accounts_current_balance_check CHECK (current_balance >= 0),
    ADD CONSTRAINT credit_accounts_daily_limit_check CHECK (daily_limit >= 0),
    ADD CONSTRAINT credit_accounts_monthly_limit_check CHECK (monthly_limit >= 0),
    ADD CONSTRAINT credit_accounts_auto_recharge_threshold_check CHECK (auto_recharge_threshold >= 0),
    ADD CONSTRAINT credit_accounts_auto_recharge_amount_check CHECK (auto_recharge_amount > 0),
    ADD CONSTRAINT credit_accounts_spent_day_total_check CHECK (spent_day_total >= 0),
    ADD CONSTRAINT credit_accounts_spent_month_check CHECK (EXTRACT(DAY FROM spent_month) = 1),
    ADD CONSTRAINT credit_accounts_spent_month_total_check CHECK (spent_month_total >= 0);
ALTER TABLE keen.credit_transactions
    ADD CONSTRAINT credit_transactions_transaction_type_check
        CHECK (transaction_type IN ('purchase', 'usage', 'refund', 'adjustment', 'admin_bypass')),
    ADD CONSTRAINT credit_transactions_balance_after_check CHECK (balance_after >= 0),
    ADD CONSTRAINT credit_transactions_markup_multiplier_check
        CHECK (markup_multiplier > 0 AND markup_multiplier <> 'NaN'::numeric),
    ADD CONSTRAINT credit_transactions_idempotency_key_check CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 255),
    ADD CONSTRAINT credit_transactions_check CHECK (NOT is_admin_bypass OR (transaction_type = 'admin_bypass' AND amount = 0)),
    ADD CONSTRAINT credit_transactions_check1 CHECK (transaction_type <> 'usage' OR amount < 0),
    ADD CONSTRAINT credit_transactions_check2 CHECK (transaction_type <> 'purchase' OR amount > 0),
    ADD CONSTRAINT credit_transactions_check3 CHECK (refund_of IS NULL OR transaction_type = 'refund'),
    ADD CONSTRAINT credit_transactions_entry_no_key UNIQUE (entry_no),
    ADD CONSTRAINT credit_transactions_user_id_id_key UNIQUE (user_id, id);
ALTER TABLE keen.credit_transactions
    ADD CONSTRAINT credit_transactions_user_id_account_id_fkey FOREIGN KEY (user_id, account_id)
        REFERENCES keen.credit_accounts (user_id, id),
    ADD CONSTRAINT credit_transactions_user_id_session_id_fkey FOREIGN KEY (user_id, session_id)
        REFERENCES keen.agent_sessions (user_id, id),
    ADD CONSTRAINT credit_transactions_user_id_refund_of_fkey FOREIGN KEY (user_id, refund_of)
        REFERENCES keen.credit_transactions (user_id, id);
ALTER TABLE keen.credit_reservations
    ADD CONSTRAINT credit_reservations_user_id_transaction_id_fkey FOREIGN KEY (user_id, transaction_id)
        REFERENCES keen.credit_transactions (user_id, id);
ALTER TABLE keen.credit_recharge_requests
    ADD CONSTRAINT credit_recharge_requests_user_id_triggered_by_fkey FOREIGN KEY (user_id, triggered_by)
        REFERENCES keen.credit_transactions (user_id, id),
    ADD CONSTRAINT credit_recharge_requests_user_id_purchase_transaction_id_fkey FOREIGN KEY (user_id, purchase_transaction_id)
        REFERENCES keen.credit_transactions (user_id, id);

REVOKE ALL ON keen.credit_accounts, keen.credit_transactions, keen.credit_reservations,
              keen.credit_recharge_requests, keen.settings, keen.agent_sessions FROM keen_ledger;
REVOKE ALL ON SEQUENCE keen.credit_transactions_entry_no_seq FROM keen_ledger;
REVOKE ALL ON SCHEMA keen, keen_private FROM keen_ledger;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_advisory_xact_lock(integer, integer) FROM keen_ledger;
-- keen_ledger itself stays: roles are cluster-wide, and the other databases of the cluster
-- (test copies, the bench) may still grant it privileges; without privileges here it reaches nothing.
