-- 0004: what the credit ledger adds to the schema.
--   * keen.credit_accounts gets usage counters keyed by UTC day and month, so a spending limit
--     is checked against one row, never by summing the account's history, and live_holds_until,
--     the latest expiry of any hold placed on the account: while it is in the past no hold can
--     be live and a deduction skips the reservations table entirely. A lower fillfactor leaves
--     room on each page for HOT updates of a busy account row.
--   * keen.credit_transactions gets refund_of: a refund row points at the transaction it
--     refunds, and a unique index lets each transaction be refunded at most once.
--   * keen.credit_recharge_requests: one pending auto-recharge request per account, recorded
--     when a usage takes a balance below its threshold, for the payment side to pick up.
--   * keen.credit_transactions is append-only for every role: a trigger refuses UPDATE, DELETE
--     and TRUNCATE.

SET ROLE keen_owner;

ALTER TABLE keen.credit_accounts
    ADD COLUMN spent_day          date,
    ADD COLUMN spent_day_total    keen.credit_amount NOT NULL DEFAULT 0 CHECK (spent_day_total >= 0),
    ADD COLUMN spent_month        date CHECK (EXTRACT(DAY FROM spent_month) = 1),
    ADD COLUMN spent_month_total  keen.credit_amount NOT NULL DEFAULT 0 CHECK (spent_month_total >= 0),
    ADD COLUMN live_holds_until   timestamptz;
ALTER TABLE keen.credit_accounts SET (fillfactor = 50);

COMMENT ON COLUMN keen.credit_accounts.spent_day IS 'UTC day that spent_day_total counts; an older day means nothing spent today';
COMMENT ON COLUMN keen.credit_accounts.spent_day_total IS 'usage charges of the UTC day spent_day (checked against daily_limit)';
COMMENT ON COLUMN keen.credit_accounts.spent_month IS 'first day of the UTC month that spent_month_total counts';
COMMENT ON COLUMN keen.credit_accounts.spent_month_total IS 'usage charges of the UTC month spent_month (checked against monthly_limit)';
COMMENT ON COLUMN keen.credit_accounts.live_holds_until IS 'latest expires_at of any hold placed; in the past (or NULL) means no hold can be live';

ALTER TABLE keen.credit_transactions
    ADD COLUMN refund_of uuid,
    ADD FOREIGN KEY (user_id, refund_of) REFERENCES keen.credit_transactions (user_id, id),
    ADD CHECK (refund_of IS NULL OR transaction_type = 'refund');
CREATE UNIQUE INDEX credit_transactions_refund_of_key ON keen.credit_transactions (refund_of)
    WHERE refund_of IS NOT NULL;
COMMENT ON COLUMN keen.credit_transactions.refund_of IS 'the transaction a refund row gives back (each at most once)';

CREATE TABLE keen.credit_recharge_requests (
    id                       uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                  uuid NOT NULL,
    account_id               uuid NOT NULL,
    status                   varchar(20) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
    threshold                keen.credit_amount NOT NULL CHECK (threshold >= 0),
    requested_amount         keen.credit_amount NOT NULL CHECK (requested_amount > 0),
    balance_at_request       keen.credit_amount NOT NULL CHECK (balance_at_request >= 0),
    triggered_by             uuid NOT NULL,
    purchase_transaction_id  uuid,
    resolution_note          text,
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resolved_at              timestamptz,
    UNIQUE (user_id, id),
    FOREIGN KEY (user_id, account_id) REFERENCES keen.credit_accounts (user_id, id),
    FOREIGN KEY (user_id, triggered_by) REFERENCES keen.credit_transactions (user_id, id),
    FOREIGN KEY (user_id, purchase_transaction_id) REFERENCES keen.credit_transactions (user_id, id),
    CHECK ((status = 'pending') = (resolved_at IS NULL))
);
-- One pending request per account: a second crossing while one waits adds nothing.
CREATE UNIQUE INDEX credit_recharge_requests_pending_key ON keen.credit_recharge_requests (account_id)
    WHERE status = 'pending';
CREATE INDEX credit_recharge_requests_status_idx ON keen.credit_recharge_requests (status, created_at);
COMMENT ON TABLE keen.credit_recharge_requests IS 'auto-recharge requests for the payment side; no payment is made in the database';

-- keen.refuse_ledger_change: trigger function that makes credit_transactions append-only.
-- Who: fires for every role, the owner and superusers included (only
-- session_replication_role = replica, a superuser's switch for replication, skips triggers).
-- Raises: 42501 on any UPDATE, DELETE or TRUNCATE. Corrections are new rows (refund, adjustment).
CREATE FUNCTION keen.refuse_ledger_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'keen.credit_transactions is append-only: % refused (write a refund or adjustment row instead)', TG_OP
        USING ERRCODE = '42501';
END
$$;
REVOKE ALL ON FUNCTION keen.refuse_ledger_change() FROM PUBLIC;
COMMENT ON FUNCTION keen.refuse_ledger_change() IS 'Refuses UPDATE, DELETE and TRUNCATE on the ledger (42501).';

CREATE TRIGGER credit_transactions_append_only
    BEFORE UPDATE OR DELETE ON keen.credit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION keen.refuse_ledger_change();
CREATE TRIGGER credit_transactions_no_truncate
    BEFORE TRUNCATE ON keen.credit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION keen.refuse_ledger_change();

RESET ROLE;

ALTER TABLE keen.credit_recharge_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_recharge_requests FORCE ROW LEVEL SECURITY;
REVOKE ALL ON keen.credit_recharge_requests FROM PUBLIC;
GRANT SELECT ON keen.credit_recharge_requests TO keen_app, keen_maintenance;

-- Existing accounts: start the counters from the ledger of the current UTC day and month
-- (run as the migrating superuser, which row-level security does not filter).
UPDATE keen.credit_accounts a
   SET spent_day = u.today,
       spent_day_total = u.day_total,
       spent_month = pg_catalog.date_trunc('month', u.today::timestamp)::date,
       spent_month_total = u.month_total
  FROM (SELECT t.account_id,
               (pg_catalog.now() AT TIME ZONE 'UTC')::date AS today,
               COALESCE(-pg_catalog.sum(t.amount) FILTER (
                   WHERE (t.created_at AT TIME ZONE 'UTC')::date = (pg_catalog.now() AT TIME ZONE 'UTC')::date), 0) AS day_total,
               -pg_catalog.sum(t.amount) AS month_total
          FROM keen.credit_transactions t
         WHERE t.transaction_type = 'usage'
           AND t.created_at >= pg_catalog.date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         GROUP BY t.account_id) u
 WHERE u.account_id = a.id;
UPDATE keen.credit_accounts a
   SET live_holds_until = r.until
  FROM (SELECT r.account_id, pg_catalog.max(r.expires_at) AS until
          FROM keen.credit_reservations r
         WHERE r.status = 'held'
         GROUP BY r.account_id) r
 WHERE r.account_id = a.id;
