-- Undoes 0004. The repeatable ledger functions that read what 0004 added go first (the next
-- `keen-db migrate` re-creates them from db/functions/credits.sql).
DROP FUNCTION IF EXISTS keen.recharge_requests(text, integer);
DROP FUNCTION IF EXISTS keen.resolve_recharge_request(uuid, text, uuid, text);
DROP FUNCTION IF EXISTS keen.set_auto_recharge(uuid, boolean, numeric, numeric);
DROP FUNCTION IF EXISTS keen.credit_note_usage(keen.credit_transactions, boolean, numeric, numeric, numeric);
DROP FUNCTION IF EXISTS keen.refund_credits(uuid, text, numeric);
DROP TRIGGER IF EXISTS credit_transactions_append_only ON keen.credit_transactions;
DROP TRIGGER IF EXISTS credit_transactions_no_truncate ON keen.credit_transactions;
DROP FUNCTION IF EXISTS keen.refuse_ledger_change();
DROP TABLE IF EXISTS keen.credit_recharge_requests;
DROP INDEX IF EXISTS keen.credit_transactions_refund_of_key;
ALTER TABLE keen.credit_transactions DROP COLUMN IF EXISTS refund_of;
ALTER TABLE keen.credit_accounts RESET (fillfactor);
ALTER TABLE keen.credit_accounts
    DROP COLUMN IF EXISTS spent_day,
    DROP COLUMN IF EXISTS spent_day_total,
    DROP COLUMN IF EXISTS spent_month,
    DROP COLUMN IF EXISTS spent_month_total,
    DROP COLUMN IF EXISTS live_holds_until;
